//! `hack/control-plane.sh`, as a person with a laptop uses it: `up` prints a KUBECONFIG for a
//! real v1.37 cluster that both kubectl and the operator binary can use (the binary speaks
//! rustls, which refuses X.509 v1 certificates that kubectl accepts), and `down` leaves no
//! process or file behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The plane `up` starts; dropping it runs `down`, so a failed assertion leaves no process.
struct Plane {
    root: PathBuf,
    state: PathBuf,
    down: bool,
}

impl Plane {
    fn new() -> Plane {
        Plane {
            root: Path::new(env!("CARGO_MANIFEST_DIR")).to_owned(),
            state: std::env::temp_dir()
                .join(format!("eagle-eye-script-test-{}", std::process::id())),
            down: false,
        }
    }

    fn run(&self, arg: &str) -> Output {
        Command::new("bash")
            .arg(self.root.join("hack/control-plane.sh"))
            .arg(arg)
            .env("EAGLE_EYE_PLANE_DIR", &self.state)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `arg`, failing the test unless it succeeds; its standard output.
    fn script(&self, arg: &str) -> String {
        let out = self.run(arg);
        assert!(
            out.status.success(),
            "{arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn down(&mut self) {
        self.script("down");
        self.down = true;
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        if !self.down {
            let out = self.run("down");
            if !out.status.success() {
                eprintln!("down: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

#[tokio::test]
async fn up_gives_a_real_v1_37_cluster_the_operator_can_use_and_down_leaves_nothing_behind() {
    let mut plane = Plane::new();
    let up = plane.script("up");
    let last = up.lines().last().unwrap();
    let kubeconfig = last
        .strip_prefix("export KUBECONFIG=")
        .expect("last line exports KUBECONFIG")
        .to_owned();
    let pids = std::fs::read_to_string(plane.state.join("pids")).unwrap();
    let bins = std::fs::read_to_string(plane.state.join("bin_dir")).unwrap();
    let kubectl = |args: &[&str]| {
        let out = Command::new(Path::new(bins.trim()).join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };

    let version: serde_json::Value =
        serde_json::from_slice(&kubectl(&["version", "-o", "json"])).unwrap();
    println!(
        "client {} / server {}",
        version["clientVersion"]["gitVersion"], version["serverVersion"]["gitVersion"]
    );
    for side in ["clientVersion", "serverVersion"] {
        let v = version[side]["gitVersion"].as_str().unwrap();
        assert!(v.starts_with("v1.37."), "{side} is {v}");
    }

    // The operator's own binary, with the printed kubeconfig: `status` lists (no) credentials.
    let crd = plane.root.join("crds/eagleeyecredentials.yaml");
    kubectl(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/eagleeyecredentials.eagle-eye-operator.io",
    ]);
    let status = Command::new(env!("CARGO_BIN_EXE_eagle-eye-operator"))
        .args(["status", "-A"])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        status.status.success(),
        "status -A: {}: {said}",
        status.status
    );
    assert!(
        !said.contains("certificate") && !said.contains("UnsupportedCertVersion"),
        "status -A reports a TLS error: {said}"
    );
    assert!(
        said.contains("No EagleEyeCredentials found in any namespace"),
        "status -A on an empty cluster: {said}"
    );

    // `run` reaches the API server: /readyz answers 200.
    run_operator_until_ready(&kubeconfig).await;

    plane.down();
    for pid in pids.lines() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let state: Vec<&str> = state
            .lines()
            .filter(|l| l.starts_with("Name:") || l.starts_with("State:"))
            .collect();
        assert!(!running(pid), "process {pid} survived `down`: {state:?}");
    }
    assert!(!plane.state.exists(), "`down` removes its files");
}

/// Starts `eagle-eye-operator run` against `kubeconfig`, waits for `/readyz` to answer 200
/// and kills it. (`support::operator::Operator` needs the binary's shared plane and a
/// stand-in; this one runs against the script's plane.)
async fn run_operator_until_ready(kubeconfig: &str) {
    let dir = std::env::temp_dir().join(format!(
        "eagle-eye-script-test-op-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_eagle-eye-operator"));
    // A test binary stopped by a signal runs no destructors: the kernel then stops the
    // operator with it.
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command
        .args([
            "--log-format",
            "json",
            "run",
            // Without leader election, readiness means the credential cache has synced: the
            // operator listed and watched through this kubeconfig. (It once stayed 503 here
            // for good: kube-runtime woke only one of two waiters on the store.)
            "--no-leader-election",
            "--admin-address",
            "127.0.0.1",
            "--admin-port",
            "0",
            "--metrics-insecure",
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting the operator binary");

    // Fails the test, with the operator's log, once the process has exited.
    let mut check_alive = || {
        if let Some(code) = child.try_wait().unwrap() {
            panic!(
                "the operator exited ({code}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    };
    let addr: std::net::SocketAddr = crate::support::eventually(
        "the operator's admin server to listen",
        Duration::from_secs(30),
        || {
            check_alive();
            let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
            let addr = logs
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| {
                    l["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("admin server listening"))
                })
                .and_then(|l| l["addr"].as_str()?.parse().ok());
            async move { addr }
        },
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    crate::support::eventually(
        "the operator's /readyz to answer 200",
        Duration::from_secs(60),
        || {
            check_alive();
            let get = http.get(format!("http://{addr}/readyz")).send();
            async move { (get.await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;
    crate::support::figure(format!(
        "operator ready against the script's plane after {:?}",
        started.elapsed()
    ));
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Alive, not merely an exited process that an init which does not reap orphans still lists.
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains("zombie"))
        })
        .unwrap_or(false)
}
