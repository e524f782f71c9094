//! A real Kubernetes control plane for tests and the local sandbox: etcd, kube-apiserver
//! (TLS, RBAC) and kube-controller-manager (garbage collection, namespaces), built from the
//! Go module proxy by `hack/control-plane.sh build`, and on request a node that runs pods
//! ([`crate::node`]). Test support only: the operator's production path never uses it.
//!
//! The processes outlive any tokio runtime (tests each have their own) and are reaped by a
//! small watchdog when the process that started them exits, even on SIGKILL.

mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::node::{Node, NodeOptions};
use pki::Pki;

/// Environment variable naming an existing cluster's kubeconfig to test against instead.
pub const EXTERNAL_KUBECONFIG_ENV: &str = "EAGLE_EYE_TEST_KUBECONFIG";
/// Environment variable naming a directory that already holds the built binaries.
pub const BIN_DIR_ENV: &str = "EAGLE_EYE_BIN_DIR";

pub struct ControlPlane {
    kubeconfig: PathBuf,
    local: Option<LocalPlane>,
}

struct LocalPlane {
    dir: PathBuf,
    bins: PathBuf,
    etcd_url: String,
    api_port: u16,
    ca_pem: String,
    apiserver: Mutex<Option<Child>>,
    others: Mutex<Vec<Child>>,
    /// Set for a plane started with a node: it then admits ServiceAccount tokens into pods.
    node: Option<Node>,
}

impl ControlPlane {
    /// The cluster named by `EAGLE_EYE_TEST_KUBECONFIG`, or a fresh local control plane.
    pub async fn from_env_or_start() -> Result<ControlPlane> {
        match std::env::var_os(EXTERNAL_KUBECONFIG_ENV) {
            Some(path) => Ok(ControlPlane {
                kubeconfig: PathBuf::from(path),
                local: None,
            }),
            None => ControlPlane::start().await,
        }
    }

    /// Builds (or reuses) the binaries and starts etcd, kube-apiserver and
    /// kube-controller-manager on free loopback ports with a fresh data directory.
    pub async fn start() -> Result<ControlPlane> {
        Self::start_plane(None).await
    }

    /// A control plane and a node that runs pods (kubelet, containerd, kube-scheduler; see
    /// `hack/node.sh`). Needs root. Pods get ServiceAccount tokens and Deployments run.
    pub async fn start_with_node(options: NodeOptions) -> Result<ControlPlane> {
        Self::start_plane(Some(options)).await
    }

    async fn start_plane(node: Option<NodeOptions>) -> Result<ControlPlane> {
        let with_node = node.is_some();
        let bins = binaries()?;
        let dir = std::env::temp_dir().join(format!("eagle-eye-plane-{}", random_suffix()));
        std::fs::create_dir_all(&dir)?;
        spawn_reaper(&dir)?;

        let pki = Pki::generate()?;
        for (name, pem) in [
            ("ca.crt", &pki.ca_pem),
            ("apiserver.crt", &pki.serving_cert_pem),
            ("apiserver.key", &pki.serving_key_pem),
            ("sa.key", &pki.service_account_key_pem),
            ("sa.pub", &pki.service_account_public_pem),
        ] {
            std::fs::write(dir.join(name), pem)?;
        }
        let api_port = free_port()?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(api_port, &pki))?;

        // A port found free a moment ago may be taken by the time etcd binds it (many planes
        // start at once in the tests), and an etcd that cannot start says little: it is
        // started again on new ports, three times at most.
        let mut attempt = 1;
        let (etcd, etcd_url) = loop {
            match start_etcd(&dir, &bins, attempt).await {
                Ok(started) => break started,
                Err(e) if attempt < 3 => {
                    tracing::warn!(error = %format!("{e:#}"), attempt, "etcd did not start; trying again on new ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let plane = ControlPlane {
            kubeconfig,
            local: Some(LocalPlane {
                dir,
                bins,
                etcd_url,
                api_port,
                ca_pem: pki.ca_pem.clone(),
                apiserver: Mutex::new(None),
                others: Mutex::new(vec![etcd]),
                node: None,
            }),
        };
        let local = plane.local()?;
        plane.start_apiserver_admitting(with_node).await?;

        let mut controllers = String::from("garbage-collector-controller,namespace-controller");
        if with_node {
            // The default ServiceAccount and kube-root-ca.crt that pods' tokens need,
            // Deployments, and the not-ready taint lifted once the node is Ready.
            controllers.push_str(
                ",serviceaccount-controller,root-ca-certificate-publisher-controller,\
                 deployment-controller,replicaset-controller,node-lifecycle-controller",
            );
        }
        let root_ca = local.dir.join("ca.crt").to_string_lossy().into_owned();
        let sa_key = local.dir.join("sa.key").to_string_lossy().into_owned();
        let kcm = spawn(
            &local.dir,
            &local.bins.join("kube-controller-manager"),
            "kube-controller-manager",
            &[
                "--kubeconfig",
                &plane.kubeconfig.to_string_lossy(),
                "--controllers",
                &controllers,
                "--leader-elect=false",
                "--secure-port=0",
                "--concurrent-gc-syncs=5",
                "--root-ca-file",
                &root_ca,
                "--service-account-private-key-file",
                &sa_key,
            ],
        )?;
        lock(&local.others).push(kcm);
        if let Some(options) = node {
            let node = match Node::start(&local.dir, &plane.kubeconfig, &local.bins, options).await
            {
                Ok(node) => node,
                Err(e) => {
                    // A node that failed half-way may have left containerd and a bridge.
                    crate::node::stop(&local.dir);
                    return Err(e);
                }
            };
            let mut plane = plane;
            if let Some(local) = plane.local.as_mut() {
                local.node = Some(node);
            }
            return Ok(plane);
        }
        Ok(plane)
    }

    /// The node, for a plane started with [`ControlPlane::start_with_node`].
    pub fn node(&self) -> Option<&Node> {
        self.local.as_ref().and_then(|l| l.node.as_ref())
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Directory holding kubectl, helm and the control-plane binaries (local plane only).
    pub fn bin_dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.bins.as_path())
    }

    /// A new admin client. Make one per tokio runtime: clients hold runtime-bound connections.
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL) and waits until it is gone.
    pub async fn stop_apiserver(&self) -> Result<()> {
        let local = self.local()?;
        let child = lock(&local.apiserver).take();
        if let Some(child) = child {
            terminate(child).await?;
        }
        Ok(())
    }

    /// Kills kube-apiserver (SIGKILL): an outage that starts at once, as a crash or a lost
    /// node does, where SIGTERM's graceful shutdown may take seconds.
    pub async fn kill_apiserver(&self) -> Result<()> {
        let local = self.local()?;
        let child = lock(&local.apiserver).take();
        if let Some(mut child) = child {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts kube-apiserver on the same port and waits until `/readyz` answers.
    pub async fn start_apiserver(&self) -> Result<()> {
        let with_node = self.node().is_some();
        self.start_apiserver_admitting(with_node).await
    }

    /// Without a node no pod runs and nothing makes ServiceAccounts, so the ServiceAccount
    /// admission plugin is off; with one, pods get their tokens as in any cluster.
    async fn start_apiserver_admitting(&self, service_accounts: bool) -> Result<()> {
        let local = self.local()?;
        let admission = if service_accounts {
            "--enable-admission-plugins=ServiceAccount"
        } else {
            "--disable-admission-plugins=ServiceAccount"
        };
        if lock(&local.apiserver).is_some() {
            bail!("kube-apiserver is already running");
        }
        let d = |name: &str| local.dir.join(name).to_string_lossy().into_owned();
        let child = spawn(
            &local.dir,
            &local.bins.join("kube-apiserver"),
            "kube-apiserver",
            &[
                "--etcd-servers",
                &local.etcd_url,
                "--secure-port",
                &local.api_port.to_string(),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                // A loopback advertise address is refused by the endpoint reconciler.
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
                admission,
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-account-key-file",
                &d("sa.pub"),
                "--service-account-signing-key-file",
                &d("sa.key"),
                "--tls-cert-file",
                &d("apiserver.crt"),
                "--tls-private-key-file",
                &d("apiserver.key"),
                "--client-ca-file",
                &d("ca.crt"),
                "--cert-dir",
                &d("certs"),
            ],
        )?;
        *lock(&local.apiserver) = Some(child);
        // /readyz is open to anonymous users; a plain client keeps the 500s it answers
        // while starting out of kube's error log.
        let ca = reqwest::Certificate::from_pem(local.ca_pem.as_bytes())?;
        let http = reqwest::Client::builder().tls_certs_only([ca]).build()?;
        let url = format!("https://127.0.0.1:{}/readyz", local.api_port);
        wait_for(
            "kube-apiserver",
            &local.dir.join("kube-apiserver.log"),
            Duration::from_secs(120),
            || async { Ok(http.get(&url).send().await?.status().is_success()) },
        )
        .await
    }

    /// Applies every CustomResourceDefinition in `dir` and waits until each is Established.
    pub async fn install_crds(&self, client: &Client, dir: &Path) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut names = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            let docs: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            for crd in docs {
                let name = crd.metadata.name.clone().context("CRD without a name")?;
                api.patch(
                    &name,
                    &PatchParams::apply("eagle-eye-testbed").force(),
                    &Patch::Apply(&crd),
                )
                .await?;
                names.push(name);
            }
        }
        for name in names {
            let cond = kube::runtime::conditions::is_crd_established();
            let established = kube::runtime::wait::await_condition(api.clone(), &name, cond);
            tokio::time::timeout(Duration::from_secs(30), established)
                .await
                .with_context(|| format!("CRD {name} not established in 30 s"))??;
        }
        Ok(())
    }

    fn local(&self) -> Result<&LocalPlane> {
        self.local.as_ref().ok_or_else(|| {
            anyhow!("this needs the local control plane, not {EXTERNAL_KUBECONFIG_ENV}")
        })
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(local) = &mut self.local {
            // The node first: its containers outlive the kubelet and containerd otherwise.
            drop(local.node.take());
            let mut children: Vec<Child> = lock(&local.others).drain(..).collect();
            children.extend(lock(&local.apiserver).take());
            for mut child in children.into_iter().rev() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&local.dir);
        }
    }
}

/// The directory holding the built binaries: `EAGLE_EYE_BIN_DIR`, or the last line printed
/// by `hack/control-plane.sh build` (which reuses its cache when it can).
pub fn binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/control-plane.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("build")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(dir) if out.status.success() => Ok(PathBuf::from(dir.trim())),
        _ => bail!(
            "could not build the control-plane binaries with `{} build` ({}).\n\
             It needs Go >= 1.26 on PATH and access to the Go module proxy. Fix that and run \
             the script by hand to see its output, or point {BIN_DIR_ENV} at a directory with \
             etcd, kube-apiserver, kube-controller-manager, kubectl and helm, or \
             {EXTERNAL_KUBECONFIG_ENV} at an existing cluster.",
            script.display(),
            out.status
        ),
    }
}

fn spawn(dir: &Path, bin: &Path, name: &str, args: &[&str]) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("pids"))
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, format!("{}\n", child.id()).as_bytes())
        })?;
    Ok(child)
}

/// A watchdog that kills every process listed in `pids` and removes `dir` once the
/// process that started the plane is gone. Statics are never dropped in Rust, so a
/// control plane shared by a test binary is cleaned up this way.
fn spawn_reaper(dir: &Path) -> Result<()> {
    // A node (hack/node.sh) has containers, mounts and a bridge to remove too.
    let script = r#"
        while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 0.5; done
        [ -d "$2/node" ] && bash "$3" down "$2"
        [ -f "$2/pids" ] && for p in $(cat "$2/pids"); do kill -9 "$p" 2>/dev/null; done
        rm -rf "$2""#;
    Command::new("bash")
        .args(["-c", script, "reaper"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .arg(crate::node::script())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the control-plane reaper")?;
    Ok(())
}

async fn terminate(mut child: Child) -> Result<()> {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..100 {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

async fn wait_for<F, Fut>(what: &str, log: &Path, limit: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::from("not ready");
    while tokio::time::Instant::now() < deadline {
        match probe().await {
            Ok(true) => return Ok(()),
            Ok(false) => last = "not ready".into(),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(30).collect();
    bail!(
        "{what} was not ready within {limit:?} ({last}); last log lines ({}):\n{}",
        log.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

fn kubeconfig_yaml(port: u16, pki: &Pki) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: testbed\n\
         clusters:\n- name: testbed\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {}\n\
         users:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
         contexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: admin\n    namespace: default\n",
        b64(&pki.ca_pem),
        b64(&pki.admin_cert_pem),
        b64(&pki.admin_key_pem)
    )
}

/// Starts etcd on free loopback ports with its data in `dir/etcd-<attempt>` and waits until
/// it is healthy; on failure it is killed and its log tail returned in the error.
async fn start_etcd(dir: &Path, bins: &Path, attempt: u32) -> Result<(Child, String)> {
    let (etcd_port, peer_port) = (free_port()?, free_port()?);
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let data = dir.join(format!("etcd-{attempt}"));
    let mut etcd = spawn(
        dir,
        &bins.join("etcd"),
        "etcd",
        &[
            "--data-dir",
            &data.to_string_lossy(),
            "--listen-client-urls",
            &etcd_url,
            "--advertise-client-urls",
            &etcd_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("default={peer_url}"),
            "--unsafe-no-fsync=true",
        ],
    )?;
    let ready = wait_for(
        "etcd",
        &dir.join("etcd.log"),
        Duration::from_secs(30),
        || {
            let exited = etcd.try_wait().ok().flatten();
            let url = format!("{etcd_url}/health");
            async move {
                if let Some(status) = exited {
                    bail!("etcd exited ({status})");
                }
                Ok(reqwest::get(url).await?.status().is_success())
            }
        },
    )
    .await;
    match ready {
        Ok(()) => Ok((etcd, etcd_url)),
        Err(e) => {
            let _ = etcd.kill();
            let _ = etcd.wait();
            Err(e)
        }
    }
}

/// A loopback port that was free a moment ago, for a server started later (and maybe
/// restarted on it), and never handed out twice by this process.
pub fn free_port() -> std::io::Result<u16> {
    // A port the kernel handed out for port 0 and took back may go next to an outgoing
    // connection of any test beside this one (or to the next bind to port 0) before the
    // server binds it, or while it is down between restarts on it. Below the kernel's
    // ephemeral range only a listener asking for that very number lands; and below
    // Kubernetes' NodePort range (30000-32767), which a host's kube-proxy may redirect.
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let top = ephemeral_low.min(30_000);
    let below = top > 11_024;
    if !below {
        tracing::warn!(
            ephemeral_low,
            "the kernel's ephemeral ports start too low to pick ports below them: ports are picked by binding port 0, which another connection may take first"
        );
    }
    let mut handed_out = lock(&HANDED_OUT);
    for _ in 0..1000 {
        let port = match below {
            true => rand::random_range(top - 10_000..top),
            false => std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        };
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free loopback port found"))
}

fn random_suffix() -> String {
    format!("{}-{:08x}", std::process::id(), rand::random::<u32>())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another test panicked; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
