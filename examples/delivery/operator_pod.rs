//! The operator as a pod on the node: its image built from the release binary (as the
//! Dockerfile describes it, without a Docker engine), the chart installed with Helm, and the
//! chart's own securityContext read back from the running pods.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

use eagle_eye_operator::secrets::opaque;
use eagle_eye_testbed::ControlPlane;
use eagle_eye_testbed::standin::StandIn;

pub const NAMESPACE: &str = "eagle-eye";
pub const RELEASE: &str = "eagle-eye";
/// The chart's Lease name when no credentialSelector is set.
pub const LEASE: &str = "eagle-eye-operator";
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/eagle-eye-operator");

/// `cargo build --release --bin eagle-eye-operator` in the target directory this example runs
/// from (a no-op when it is fresh), and the binary's path.
pub fn release_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/release/examples/delivery -> target/release
    let release_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the example's target directory")?;
    if release_dir.file_name().is_none_or(|n| n != "release") {
        bail!("run the benchmark with --release: the operator image holds the release binary");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "eagle-eye-operator",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    if !status.success() {
        bail!("cargo build --release --bin eagle-eye-operator failed ({status})");
    }
    Ok(release_dir.join("eagle-eye-operator"))
}

/// Installs the chart in `eagle-eye` with the pod nudge on, trusting the stand-in's CA and
/// allowing its host, and waits until both replicas are Ready.
pub async fn install(
    plane: &ControlPlane,
    client: &Client,
    image: &str,
    stand_in: &StandIn,
) -> Result<()> {
    let bins = plane.bin_dir().context("local plane")?;
    let kubeconfig = plane.kubeconfig_path().to_string_lossy().into_owned();
    let kubectl = bins.join("kubectl");
    let ns = std::process::Command::new(&kubectl)
        .args([
            "--kubeconfig",
            &kubeconfig,
            "create",
            "namespace",
            NAMESPACE,
        ])
        .output()?;
    if !ns.status.success() {
        bail!(
            "creating namespace {NAMESPACE}: {}",
            String::from_utf8_lossy(&ns.stderr)
        );
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let ca = stand_in.ca_pem().context("the stand-in speaks TLS")?;
    secrets
        .create(
            &PostParams::default(),
            &opaque("auth-ca", [("ca.crt", ca.as_str())], Default::default()),
        )
        .await?;
    let url = stand_in.url();
    let host = url.host_str().context("stand-in host")?.to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let (repository, tag) = image.rsplit_once(':').context("image tag")?;
    let values = serde_json::json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "podNudge": {"enabled": true},
        "authCaSecret": {"name": "auth-ca", "key": "ca.crt"},
        "allowedAuthHosts": [format!("{host}:{port}")],
        "allowedApiHosts": [host],
        "logFormat": "text",
    });
    let values_file =
        std::env::temp_dir().join(format!("delivery-values-{}.json", std::process::id()));
    std::fs::write(&values_file, serde_json::to_vec(&values)?)?;
    let out = std::process::Command::new(bins.join("helm"))
        .args([
            "--kubeconfig",
            &kubeconfig,
            "install",
            RELEASE,
            CHART,
            "-n",
            NAMESPACE,
            "-f",
        ])
        .arg(&values_file)
        .output()?;
    let _ = std::fs::remove_file(&values_file);
    if !out.status.success() {
        bail!("helm install: {}", String::from_utf8_lossy(&out.stderr));
    }
    wait_deployment_ready(client, Duration::from_secs(180)).await
}

/// Waits until the Deployment's rollout is complete: every replica updated and Ready.
pub async fn wait_deployment_ready(client: &Client, limit: Duration) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let list = deployments.list(&ListParams::default()).await?;
        let done = list.items.iter().all(|d| {
            let want = d.spec.replicas.unwrap_or(1);
            let s = d.status.clone().unwrap_or_default();
            s.observed_generation >= d.metadata.generation
                && s.updated_replicas == Some(want)
                && s.ready_replicas == Some(want)
                && s.replicas == Some(want)
        });
        if done && !list.items.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
            let states: Vec<String> = pods
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|p| {
                    format!(
                        "{}: {:?}",
                        p.metadata.name.clone().unwrap_or_default(),
                        p.status.as_ref().and_then(|s| s.container_statuses.clone())
                    )
                })
                .collect();
            bail!("the operator's Deployment was not ready within {limit:?}: {states:#?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the running operator pods show of the chart's securityContext, one line each.
pub async fn security_summary(client: &Client) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut lines = Vec::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let pod_sc = spec.security_context.clone().unwrap_or_default();
        let c = spec.containers.first().cloned().unwrap_or_default();
        let sc = c.security_context.unwrap_or_default();
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|s| s.first())
            .is_some_and(|s| s.ready);
        lines.push(format!(
            "{name}: ready={ready} image={} user={:?} nonRoot={:?} readOnlyRootFilesystem={:?} \
             allowPrivilegeEscalation={:?} capabilities.drop={:?} seccomp={:?}",
            c.image.unwrap_or_default(),
            pod_sc.run_as_user,
            sc.run_as_non_root.or(pod_sc.run_as_non_root),
            sc.read_only_root_filesystem,
            sc.allow_privilege_escalation,
            sc.capabilities.and_then(|c| c.drop),
            sc.seccomp_profile.map(|p| p.type_),
        ));
    }
    Ok(lines)
}
