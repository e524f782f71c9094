//! `cargo run --release --example delivery`: how long workloads hold a dead access token at
//! each rotation, measured inside running pods on a real node (kubelet, containerd, runc).
//!
//! The operator runs as a pod from the chart, its image built here from the release binary.
//! Three consuming pods read the target Secret every 100 ms and call the stand-in's API with
//! what they read: a Secret volume on a pod the operator nudges, a Secret volume without the
//! nudge, and environment variables. The stand-in kills the old access token at each refresh,
//! as Eagle Eye does; per rotation, each consumer's dead time runs from that moment to its
//! first accepted call. Then a rolling update stops the leader while a token answer is held,
//! and the rotated refresh token must be stored. Exits non-zero when a goal is missed.
//! Nothing random steers the run (only the client secret is random): there is no seed. Needs root (see docs/delivery.md).

mod operator_pod;
mod rolling;
#[path = "../common/sample.rs"]
mod sample;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, PostParams};

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::ControlPlane;
use eagle_eye_testbed::consumer::{self, Delivery, NUDGE_LABEL};
use eagle_eye_testbed::delivery::{DeadTime, dead_times, summary};
use eagle_eye_testbed::node::NodeOptions;
use eagle_eye_testbed::standin::{ApiCall, StandIn, StandInConfig};

#[derive(Parser, Debug)]
#[command(name = "delivery")]
struct Args {
    /// Rotations to measure (each judged up to the next one).
    #[arg(long, default_value_t = 20)]
    rotations: usize,
    /// Access-token lifetime the stand-in hands out; the operator refreshes at two thirds, so
    /// the default rotates every ~80 s: longer than the kubelet's default sync, so that an
    /// un-nudged volume's dead time is measured, not cut short by the next rotation.
    #[arg(long, default_value_t = 120)]
    access_ttl_secs: u64,
    /// The kubelet's syncFrequency (Kubernetes' default is 60 s).
    #[arg(long, default_value_t = 60)]
    sync_frequency_secs: u64,
    /// Goal: p99 of the nudged volume's dead time per rotation, in seconds.
    #[arg(long, default_value_t = 5.0)]
    nudged_p99_goal_secs: f64,
    /// Skip the rolling update with a held token answer at the end.
    #[arg(long)]
    skip_rolling_update: bool,
    /// The operator binary to put in the image, instead of building the release binary.
    #[arg(long)]
    operator_binary: Option<std::path::PathBuf>,
}

const NS: &str = "default";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    eagle_eye_operator::logging::init(eagle_eye_operator::logging::Format::Text, Some("warn"));
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    let ttl = Duration::from_secs(args.access_ttl_secs);
    let binary = match &args.operator_binary {
        Some(path) => path.clone(),
        None => operator_pod::release_binary()?,
    };
    println!(
        "delivery: nothing random steers the run (no seed); {} rotations, access tokens of {}s, kubelet syncFrequency {}s",
        args.rotations, args.access_ttl_secs, args.sync_frequency_secs
    );

    let started = Instant::now();
    let plane = ControlPlane::start_with_node(NodeOptions {
        sync_frequency: Duration::from_secs(args.sync_frequency_secs),
    })
    .await
    .context("starting the control plane and the node")?;
    let node = plane.node().context("the plane has a node")?;
    let image = node.import_operator_image(&binary).await?;
    println!(
        "control plane, node {} and operator image {image} ready in {:.1}s",
        node.name(),
        started.elapsed().as_secs_f64()
    );
    let client = plane.client().await?;

    let stand_in = StandIn::start_on(
        StandInConfig {
            access_ttl: ttl,
            ..Default::default()
        },
        node.host_ip(),
    )
    .await
    .context("starting the auth stand-in on the node's host address")?;
    let started = Instant::now();
    operator_pod::install(&plane, &client, &image, &stand_in).await?;
    println!(
        "chart installed, both operator replicas Ready in {:.1}s:",
        started.elapsed().as_secs_f64()
    );
    for line in operator_pod::security_summary(&client).await? {
        println!("  {line}");
    }

    create_credential(&client, &stand_in).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for delivery in Delivery::ALL {
        let pod = consumer::pod("consumer", delivery, "sample-token", node.busybox_image());
        pods.create(&PostParams::default(), &pod).await?;
    }
    let window_start = wait_consumers_accepted(&stand_in, Duration::from_secs(180)).await?;
    println!(
        "consumers running and accepted; measuring {} rotations",
        args.rotations
    );

    let rotations = wait_rotations(&stand_in, window_start, args.rotations + 1, ttl).await?;
    let mut met = report_dead_times(&args, &rotations, &stand_in.api_calls())?;

    if !args.skip_rolling_update {
        println!("\nrolling update with a token answer held:");
        let outcome = rolling::check(&client, &stand_in, (NS, "sample-refresh-token"), ttl).await?;
        println!(
            "  leader {} exited {:.1}s after SIGTERM; answer held {:.1}s; stored refresh token live: {}; \
             refresh tokens reused: {}; the new leader's next refresh succeeded: {} -> {}",
            outcome.leader,
            outcome.exited_after_sigterm.as_secs_f64(),
            outcome.held_for.as_secs_f64(),
            outcome.stored_token_live,
            outcome.reused,
            outcome.next_refresh_ok,
            if outcome.passed() { "met" } else { "MISSED" }
        );
        met &= outcome.passed();
    }
    println!(
        "\n{}",
        if met {
            "all goals met"
        } else {
            "a goal was MISSED"
        }
    );
    drop(stand_in);
    drop(plane);
    Ok(met)
}

/// Prints p50/p99/max of each consumer's dead time over the first `args.rotations` rotations
/// (the last element of `rotations` closes the last interval); whether the nudge's goal was met.
fn report_dead_times(args: &Args, rotations: &[SystemTime], calls: &[ApiCall]) -> Result<bool> {
    let end = *rotations.last().context("rotations")?;
    let judged = &rotations[..args.rotations.min(rotations.len())];
    let mut met = true;
    println!(
        "\ndead-token seconds per rotation ({} rotations, every ~{:.0}s):",
        judged.len(),
        mean_interval(rotations)
    );
    println!(
        "  {:<28} {:>7} {:>7} {:>7}  not recovered by the next rotation",
        "consumer", "p50", "p99", "max"
    );
    for delivery in Delivery::ALL {
        let times: Vec<DeadTime> = dead_times(judged, end, calls, delivery.name())
            .into_iter()
            .collect::<Option<_>>()
            .with_context(|| format!("{} made no call during some rotation", delivery.name()))?;
        let secs: Vec<f64> = times.iter().map(|d| d.secs).collect();
        let (p50, p99, max) = summary(&secs).context("no rotations")?;
        let stuck = times.iter().filter(|d| !d.recovered).count();
        let mut verdict = String::new();
        if delivery == Delivery::VolumeNudged {
            let ok = p99 <= args.nudged_p99_goal_secs;
            met &= ok;
            verdict = format!(
                "  goal p99 <= {}s: {}",
                args.nudged_p99_goal_secs,
                if ok { "met" } else { "MISSED" }
            );
        }
        println!(
            "  {:<28} {p50:>7.2} {p99:>7.2} {max:>7.2}  {stuck}/{}{verdict}",
            delivery.describe(),
            times.len()
        );
    }
    println!(
        "  (kubelet: syncFrequency {}s, configMapAndSecretChangeDetectionStrategy Watch, cgroupfs, containerd {})",
        args.sync_frequency_secs,
        containerd_version()
    );

    Ok(met)
}

async fn create_credential(client: &Client, stand_in: &StandIn) -> Result<()> {
    let consumers =
        serde_json::json!({"podSelector": {"matchLabels": {NUDGE_LABEL.0: NUDGE_LABEL.1}}});
    sample::create(client, NS, stand_in, "delivery-client", Some(consumers)).await?;
    let api: Api<EagleEyeCredential> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    // The consumers need the target Secret to start.
    let deadline = Instant::now() + Duration::from_secs(120);
    while secrets.get_opt("sample-token").await?.is_none() {
        if Instant::now() > deadline {
            bail!(
                "the target Secret sample-token did not appear within 120 s: {:?}",
                api.get("sample").await?.status
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// When every consumer has had a call accepted: the measurement starts there.
async fn wait_consumers_accepted(stand_in: &StandIn, limit: Duration) -> Result<SystemTime> {
    let deadline = Instant::now() + limit;
    loop {
        let calls = stand_in.api_calls();
        let all = Delivery::ALL.iter().all(|d| {
            calls
                .iter()
                .any(|c| c.accepted && c.consumer.as_deref() == Some(d.name()))
        });
        if all {
            return Ok(SystemTime::now());
        }
        if Instant::now() > deadline {
            let seen: Vec<_> = Delivery::ALL
                .iter()
                .map(|d| {
                    (
                        d.name(),
                        calls
                            .iter()
                            .filter(|c| c.consumer.as_deref() == Some(d.name()))
                            .count(),
                    )
                })
                .collect();
            bail!("not every consumer had a call accepted within {limit:?} (calls seen: {seen:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The moments of the first `count` successful refreshes after `from`, printing progress.
async fn wait_rotations(
    stand_in: &StandIn,
    from: SystemTime,
    count: usize,
    ttl: Duration,
) -> Result<Vec<SystemTime>> {
    let limit = ttl * (count as u32 + 2);
    let deadline = Instant::now() + limit;
    let mut shown = 0;
    loop {
        let rotations: Vec<SystemTime> = stand_in
            .token_requests()
            .into_iter()
            .filter(|r| r.status == Some(200) && r.arrived_at > from)
            .map(|r| r.arrived_at)
            .collect();
        if rotations.len() > shown {
            shown = rotations.len();
            eprint!("\r  rotation {shown}/{count}");
        }
        if rotations.len() >= count {
            eprintln!();
            return Ok(rotations.into_iter().take(count).collect());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} rotations within {limit:?}",
                rotations.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn mean_interval(rotations: &[SystemTime]) -> f64 {
    match (rotations.first(), rotations.last()) {
        (Some(a), Some(b)) if rotations.len() > 1 => {
            b.duration_since(*a).unwrap_or_default().as_secs_f64() / (rotations.len() - 1) as f64
        }
        _ => 0.0,
    }
}

fn containerd_version() -> String {
    std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
