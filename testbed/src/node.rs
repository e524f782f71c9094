//! A node that runs pods, for the plane that [`crate::ControlPlane::start_with_node`] starts:
//! a kubelet and kube-scheduler built from the Go module proxy, Debian's containerd and runc,
//! and images built here as OCI layouts. `hack/node.sh` does the work, so that
//! `hack/control-plane.sh up --node` and the tests run one and the same node.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How the node's kubelet is configured where the benchmarks care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// The kubelet's `syncFrequency`: how often it syncs every pod, and so rewrites Secret
    /// volumes when nothing else makes it (Kubernetes' default: one minute).
    pub sync_frequency: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            sync_frequency: Duration::from_secs(60),
        }
    }
}

/// A running node. Stopped (containers, mounts and its bridge removed) on drop.
pub struct Node {
    plane_dir: PathBuf,
    name: String,
    host_ip: Ipv4Addr,
    pod_logs: PathBuf,
    busybox_image: String,
    options: NodeOptions,
}

/// `hack/node.sh` in this checkout.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/node.sh")
}

impl Node {
    /// Starts a node for the plane in `plane_dir` (its state goes to `plane_dir/node`) and
    /// waits until it is Ready.
    pub(crate) async fn start(
        plane_dir: &Path,
        kubeconfig: &Path,
        plane_bins: &Path,
        options: NodeOptions,
    ) -> Result<Node> {
        let mut command = Command::new("bash");
        command
            .arg(script())
            .arg("up")
            .arg(plane_dir)
            .arg(kubeconfig)
            .env("KUBECTL", plane_bins.join("kubectl"))
            .env(
                "EAGLE_EYE_NODE_SYNC_FREQUENCY",
                format!("{}s", options.sync_frequency.as_secs()),
            );
        let out = run(command).await.context("starting the node")?;
        let env_file = out.lines().last().unwrap_or_default().trim().to_owned();
        let env = std::fs::read_to_string(&env_file)
            .with_context(|| format!("reading the node's environment {env_file}"))?;
        let get = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .with_context(|| format!("{key} missing from {env_file}"))
        };
        Ok(Node {
            plane_dir: plane_dir.to_owned(),
            name: get("NODE_NAME")?,
            host_ip: get("HOST_IP")?.parse().context("HOST_IP")?,
            pod_logs: PathBuf::from(get("POD_LOGS")?),
            busybox_image: get("BUSYBOX_IMAGE")?,
            options,
        })
    }

    /// The Node object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on the pod network: pods (and host-network pods) reach a server
    /// that listens on it.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The image of `busybox-static` (sh, cat, wget, sleep, ...), already on the node.
    pub fn busybox_image(&self) -> &str {
        &self.busybox_image
    }

    pub fn options(&self) -> NodeOptions {
        self.options
    }

    /// Builds the operator's image from `binary` as the Dockerfile describes it (distroless
    /// files, user 65532, no shell), imports it, and returns its name.
    pub async fn import_operator_image(&self, binary: &Path) -> Result<String> {
        let tar = self.plane_dir.join("node/images/eagle-eye-operator.tar");
        let mut build = Command::new("bash");
        build
            .arg(script())
            .arg("operator-image")
            .arg(&tar)
            .arg(binary);
        let name = run(build).await.context("building the operator image")?;
        let mut import = Command::new("bash");
        import
            .arg(script())
            .arg("import")
            .arg(&self.plane_dir)
            .arg(&tar);
        run(import).await.context("importing the operator image")?;
        Ok(name.lines().last().unwrap_or_default().trim().to_owned())
    }

    /// What a container wrote to stdout and stderr so far, read from the kubelet's log files
    /// (every restart, oldest first), one message per line.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Result<String> {
        let prefix = format!("{namespace}_{pod}_");
        let mut text = String::new();
        let Ok(entries) = std::fs::read_dir(&self.pod_logs) else {
            return Ok(text);
        };
        for entry in entries.filter_map(|e| e.ok()) {
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let dir = entry.path().join(container);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.sort_by_key(|p| log_attempt(p));
            for file in files {
                for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
                    // CRI log format: "<time> <stream> <P|F> <message>".
                    if let Some(message) = line.splitn(4, ' ').nth(3) {
                        text.push_str(message);
                        text.push('\n');
                    }
                }
            }
        }
        Ok(text)
    }
}

fn log_attempt(path: &Path) -> u32 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Drop for Node {
    fn drop(&mut self) {
        stop(&self.plane_dir);
    }
}

/// Stops the node of the plane in `plane_dir`, whatever of it was started.
pub(crate) fn stop(plane_dir: &Path) {
    let status = Command::new("bash")
        .arg(script())
        .arg("down")
        .arg(plane_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        tracing::warn!(dir = %plane_dir.display(), "hack/node.sh down failed");
    }
}

/// Runs a `hack/node.sh` step off the async runtime; its stderr goes to ours, its stdout is
/// returned.
async fn run(mut command: Command) -> Result<String> {
    command.stdin(Stdio::null()).stderr(Stdio::inherit());
    let out = tokio::task::spawn_blocking(move || command.output()).await??;
    if !out.status.success() {
        bail!("hack/node.sh failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
