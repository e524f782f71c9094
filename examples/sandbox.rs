//! `cargo run --example sandbox`: everything on this machine, nothing to install. A real
//! local control plane and the Eagle Eye auth stand-in (both from the `eagle-eye-testbed`
//! crate, which the shipped binary never contains), a registered client and a Phase 1 login,
//! the operator, and a sample credential whose target Secret and status are shown. With
//! `--node` (root) the cluster has a node too, and a pod that consumes the token shows what it
//! reads at each rotation.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_operator::operator::RunArgs;
use eagle_eye_testbed::ControlPlane;
use eagle_eye_testbed::consumer::{self, Delivery, NUDGE_LABEL};
use eagle_eye_testbed::node::NodeOptions;
use eagle_eye_testbed::standin::{StandIn, StandInConfig};

/// Start a throwaway local cluster, an Eagle Eye auth stand-in, the operator and a sample
/// credential, show the result, and keep refreshing until Ctrl-C.
#[derive(Parser, Debug)]
#[command(name = "sandbox")]
struct SandboxArgs {
    /// Access-token lifetime the stand-in hands out, in seconds (short, to watch refreshes).
    #[arg(long, default_value_t = 60)]
    access_ttl_secs: u64,
    /// Exit once the sample credential is Ready instead of running until Ctrl-C.
    #[arg(long)]
    exit_when_ready: bool,
    /// Log level or filter for the operator running inside, e.g. `debug`. Overrides RUST_LOG.
    #[arg(long)]
    log_level: Option<String>,
    /// Also start a node (kubelet, containerd; needs root) and a pod that mounts the token
    /// Secret, is nudged at each rotation, and calls the API every 100 ms; print what it reads.
    #[arg(long)]
    node: bool,
}

#[path = "common/sample.rs"]
mod sample;

const NS: &str = "default";

#[tokio::main]
async fn main() -> ExitCode {
    let args = SandboxArgs::parse();
    eagle_eye_operator::logging::init(
        eagle_eye_operator::logging::Format::Text,
        args.log_level.as_deref(),
    );
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    eprintln!("starting a local control plane (the first run builds it: 15-25 minutes)...");
    let plane = if args.node {
        ControlPlane::start_with_node(NodeOptions::default()).await
    } else {
        ControlPlane::start().await
    }
    .context("starting the control plane")?;
    // Pods reach the stand-in on the node's host address; without a node, loopback.
    let host = plane
        .node()
        .map_or(std::net::Ipv4Addr::LOCALHOST, |n| n.host_ip());
    let client = plane.client().await?;
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    plane.install_crds(&client, &crds).await?;

    let stand_in = StandIn::start_on(
        StandInConfig {
            access_ttl: Duration::from_secs(args.access_ttl_secs),
            ..Default::default()
        },
        host,
    )
    .await
    .context("starting the auth stand-in")?;
    let ca = std::env::temp_dir().join(format!("eagle-eye-sandbox-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, stand_in.ca_pem().unwrap_or_default())?;
    let consumers = args.node.then(
        || serde_json::json!({"podSelector": {"matchLabels": {NUDGE_LABEL.0: NUDGE_LABEL.1}}}),
    );
    sample::create(&client, NS, &stand_in, "sandbox-client", consumers).await?;
    let credentials: Api<EagleEyeCredential> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);

    let ca_path = ca.to_string_lossy().into_owned();
    // The stand-in's own port only: an entry without one means 443.
    let auth_hosts = format!(
        "{host}:{}",
        stand_in.url().port_or_known_default().unwrap_or_default()
    );
    let api_hosts = host.to_string();
    let mut flags = vec![
        "--namespaces",
        NS,
        "--auth-ca-file",
        &ca_path,
        "--allowed-api-hosts",
        &api_hosts,
        "--allowed-auth-hosts",
        &auth_hosts,
        "--instance",
        "sandbox",
        "--admin-port",
        "0",
        "--admin-address",
        "127.0.0.1",
        "--metrics-insecure",
        "--no-leader-election",
    ];
    if args.node {
        flags.push("--nudge-pods");
    }
    let run_args = RunArgs::from_flags(&flags)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(eagle_eye_operator::operator::run(
        client.clone(),
        eagle_eye_operator::api_requests::Reachability::new(jiff::Timestamp::now),
        run_args,
        async {
            let _ = stopped.await;
        },
    ));

    let ready = wait_ready(&credentials).await?;
    println!("\nEagleEyeCredential default/sample is Ready:");
    println!("{}", serde_saphyr::to_string(&ready.status)?);
    let target = secrets.get("sample-token").await?;
    println!("Secret default/sample-token holds (values of the token omitted):");
    for (k, v) in target.data.unwrap_or_default() {
        let shown = if k == "access_token" {
            format!("<{} bytes>", v.0.len())
        } else {
            String::from_utf8_lossy(&v.0).into_owned()
        };
        println!("  {k}: {shown}");
    }
    if let Some(node) = plane.node() {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
        let pod = consumer::pod(
            "consumer",
            Delivery::VolumeNudged,
            "sample-token",
            node.busybox_image(),
        );
        pods.create(&PostParams::default(), &pod).await?;
        println!(
            "\nPod default/consumer-volume-nudged mounts sample-token and calls the API every 100 ms;\n\
             what it reads (fingerprints, never tokens), and each rotation:"
        );
        let shown = show_consumer(node, &stand_in, args.exit_when_ready);
        tokio::select! {
            r = shown => r?,
            () = eagle_eye_operator::cli::shutdown_signal() => {}
        }
    }
    if args.exit_when_ready {
        // Everything below is removed as this process exits: print nothing to connect to.
        println!(
            "\n--exit-when-ready: stopping the operator and removing the cluster and the stand-in."
        );
    } else if !args.node {
        println!("\nexport KUBECONFIG={}", plane.kubeconfig_path().display());
        if let Some(bins) = plane.bin_dir() {
            println!("export PATH={}:$PATH   # kubectl and helm", bins.display());
        }
        println!(
            "kubectl get eecred -o wide   # watch refreshes every ~{}s",
            args.access_ttl_secs * 2 / 3
        );
        println!("press Ctrl-C to stop and remove everything");
        eagle_eye_operator::cli::shutdown_signal().await;
    }
    let _ = stop.send(());
    operator.await??;
    let _ = std::fs::remove_file(ca);
    drop(plane);
    println!("sandbox removed.");
    Ok(())
}

async fn wait_ready(api: &Api<EagleEyeCredential>) -> anyhow::Result<EagleEyeCredential> {
    for _ in 0..300 {
        let cr = api.get("sample").await?;
        let ready = cr
            .status
            .as_ref()
            .and_then(|s| {
                eagle_eye_operator::status::condition(
                    &s.conditions,
                    eagle_eye_operator::status::READY,
                )
            })
            .is_some_and(|c| c.status == "True");
        if ready {
            return Ok(cr);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the sample credential did not become Ready within 30 s: {:?}",
        api.get("sample").await?.status
    )
}

/// Prints the consumer's log lines and the stand-in's refreshes as they happen; with `once`,
/// returns after the consumer's first accepted call.
async fn show_consumer(
    node: &eagle_eye_testbed::node::Node,
    stand_in: &StandIn,
    once: bool,
) -> anyhow::Result<()> {
    let (mut lines_shown, mut refreshes_shown) = (0, stand_in.token_requests().len());
    let started = std::time::Instant::now();
    loop {
        let requests = stand_in.token_requests();
        for r in requests.iter().skip(refreshes_shown) {
            if r.status == Some(200) {
                let at = jiff::Timestamp::try_from(r.arrived_at)?;
                println!(
                    "{} stand-in: refresh answered, the previous access token is dead",
                    at.strftime("%H:%M:%S")
                );
            }
        }
        refreshes_shown = requests.len();
        let log = node.container_log(NS, "consumer-volume-nudged", "consumer")?;
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines_shown.min(lines.len())..] {
            println!("{line}");
        }
        lines_shown = lines.len();
        if once && lines.iter().any(|l| l.ends_with("accepted")) {
            return Ok(());
        }
        if once && started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the consumer pod had no call accepted within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
