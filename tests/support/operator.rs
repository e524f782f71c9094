//! The operator as users run it: its own process, against the test's control plane, watching
//! only the test's namespace, with every log line kept for inspection.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::{ClientRegistration, Grant, StandIn, StandInConfig};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use tokio::process::{Child, Command};

use super::TestEnv;

/// The Lease timing the tests run with unless a test passes its own: a 6 s Lease renewed
/// every 2 s (production: 15 s and 3 s), so that a healthy leader still has the 2 s margin
/// a refresh needs with two renewals to spare.
pub const TEST_TIMING: [(&str, &str); 2] =
    [("--lease-duration", "6s"), ("--lease-renew-every", "2s")];

/// The production Lease timing, for the test that checks the defaults.
pub const PRODUCTION_TIMING: [&str; 4] = ["--lease-duration", "15s", "--lease-renew-every", "3s"];

/// `--allowed-auth-hosts` for these stand-ins: `127.0.0.1:PORT,localhost:PORT` for each,
/// their ports only (an entry without a port allows 443 alone, 80 for plain http).
pub fn allowed_auth_hosts(stand_ins: &[&StandIn]) -> String {
    stand_ins
        .iter()
        .flat_map(|si| {
            let port = si.url().port_or_known_default().unwrap_or_default();
            [format!("127.0.0.1:{port}"), format!("localhost:{port}")]
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub struct Operator {
    child: Option<Child>,
    args: Vec<String>,
    kubeconfig: PathBuf,
    dir: PathBuf,
    starts: usize,
}

impl Operator {
    /// Starts `eagle-eye-operator run` for the test's namespace, trusting the stand-in's CA.
    pub async fn start(env: &TestEnv, stand_in: &StandIn, extra: &[&str]) -> Operator {
        let mut op = Operator::start_stopped(env, stand_in, extra);
        op.restart().await;
        op
    }

    fn start_stopped(env: &TestEnv, stand_in: &StandIn, extra: &[&str]) -> Operator {
        let dir = std::env::temp_dir().join(format!(
            "eagle-eye-op-{}-{:08x}",
            env.namespace,
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("auth-ca.pem");
        std::fs::write(&ca, stand_in.ca_pem().unwrap_or_default()).unwrap();
        let auth_hosts = allowed_auth_hosts(&[stand_in]);
        let mut args: Vec<String> = [
            "run",
            "--namespaces",
            &env.namespace,
            "--allowed-api-hosts",
            "127.0.0.1,localhost",
            // The stand-in listens on a loopback port; the default allows only the vendor's
            // host, and an entry without a port only 443.
            "--allowed-auth-hosts",
            &auth_hosts,
            // Each test's operators elect their leader in the test's own namespace and
            // serve /metrics on a port of their own (logged at start).
            "--lease-namespace",
            &env.namespace,
            "--admin-port",
            "0",
            "--admin-address",
            "127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Plain /metrics on the loopback admin port, read with `get`; a test of the
        // authenticated metrics server passes its own --metrics-port.
        if !extra.contains(&"--metrics-port") {
            args.push("--metrics-insecure".to_string());
        }
        if stand_in.ca_pem().is_some() {
            args.extend([
                "--auth-ca-file".to_string(),
                ca.to_string_lossy().into_owned(),
            ]);
        }
        // Short Leases: a failover takes seconds, not a production Lease term. The one test
        // that runs with the production values passes them.
        for (flag, value) in TEST_TIMING {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Operator {
            child: None,
            args,
            kubeconfig: env.plane.kubeconfig_path().to_owned(),
            dir,
            starts: 0,
        }
    }

    /// Like `start`, with another kubeconfig (an impersonating or a broken one).
    pub async fn start_with_kubeconfig(
        env: &TestEnv,
        stand_in: &StandIn,
        extra: &[&str],
        kubeconfig: &std::path::Path,
    ) -> Operator {
        let mut op = Operator::start_stopped(env, stand_in, extra);
        op.kubeconfig = kubeconfig.to_owned();
        op.restart().await;
        op
    }

    /// Starts a new process (after `kill` or `terminate`), logging to a new file.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the operator is still running");
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("operator-{}.log", self.starts))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_eagle-eye-operator"));
        // A test binary stopped by a signal runs no destructors: the kernel then stops the
        // operator with it, as the test bed's reaper does the control plane.
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,eagle_eye_operator=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("starting the operator binary");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), c.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap()
    }

    /// The admin server's address, from the current process's start-up log line.
    pub async fn admin_addr(&self) -> std::net::SocketAddr {
        self.listening("admin server").await
    }

    /// The HTTPS metrics server's address, from the current process's start-up log line.
    pub async fn metrics_addr(&self) -> std::net::SocketAddr {
        self.listening("metrics server").await
    }

    /// The address `server` logged it listens on, in the current process's log.
    async fn listening(&self, server: &str) -> std::net::SocketAddr {
        let needle = format!("{server} listening");
        super::eventually(
            &format!("the {server} to listen"),
            Duration::from_secs(30),
            || async {
                let logs = self.current_logs();
                let line = logs.lines().find(|l| l.contains(&needle))?;
                let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
                addr.parse().ok()
            },
        )
        .await
    }

    /// Changes the arguments and restarts the process with them.
    pub async fn set_args(&mut self, change: impl FnOnce(&mut Vec<String>)) {
        self.kill().await;
        change(&mut self.args);
        self.restart().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Sends `signal` (`STOP`, `CONT`) to the operator process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("a running operator").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Everything every process of this operator logged so far.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("operator-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines logged by the current process only.
    pub fn current_logs(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("operator-{}.log", self.starts)))
            .unwrap_or_default()
    }
}

/// A client registered with the stand-in and logged in (Phase 1), with its client Secret,
/// refresh-token Secret and an `EagleEyeCredential` named `name` in the test namespace.
pub struct Login {
    pub client_id: String,
    pub client_secret: String,
    pub grant: Grant,
}

pub async fn login(stand_in: &StandIn, client_id: &str, rotating: bool) -> Login {
    // A secret with characters that Basic auth must form-encode.
    let client_secret = format!("s3cr3t+/%: {}", rand::random::<u32>());
    stand_in.register_client(ClientRegistration {
        id: client_id.into(),
        secret: client_secret.clone(),
        redirect_uris: vec!["http://127.0.0.1:3333".into()],
        rotating,
    });
    let grant = stand_in.login(client_id);
    Login {
        client_id: client_id.into(),
        client_secret,
        grant,
    }
}

pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    eagle_eye_operator::secrets::opaque(name, data.iter().copied(), Default::default())
}

pub async fn create_secrets(env: &TestEnv, name: &str, login: &Login) {
    create_secrets_holding(env, name, login, &login.grant.refresh_token).await;
}

/// The client Secret and a refresh-token Secret holding `stored` exactly as given (a
/// person's paste with a trailing newline, a copy from another Secret).
pub async fn create_secrets_holding(env: &TestEnv, name: &str, login: &Login, stored: &str) {
    let api = env.api::<Secret>();
    api.create(
        &PostParams::default(),
        &secret(
            &format!("{name}-client"),
            &[
                ("client_id", &login.client_id),
                ("client_secret", &login.client_secret),
            ],
        ),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &secret(&format!("{name}-refresh"), &[("refresh_token", stored)]),
    )
    .await
    .unwrap();
}

pub fn credential(
    name: &str,
    stand_in: &StandIn,
    extra_spec: serde_json::Value,
) -> EagleEyeCredential {
    let mut spec = serde_json::json!({
        "clientSecretRef": {"name": format!("{name}-client")},
        "refreshTokenSecretRef": {"name": format!("{name}-refresh")},
        "authUrl": stand_in.url().to_string(),
    });
    if let (Some(base), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "eagle-eye-operator.io/v1alpha1",
        "kind": "EagleEyeCredential",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// Creates `credential(name, stand_in, extra_spec)` in the test's namespace.
pub async fn create_credential(
    env: &TestEnv,
    name: &str,
    stand_in: &StandIn,
    extra_spec: serde_json::Value,
) {
    env.api::<EagleEyeCredential>()
        .create(
            &PostParams::default(),
            &credential(name, stand_in, extra_spec),
        )
        .await
        .unwrap();
}

/// A stand-in whose access tokens live `access_ttl`.
pub async fn stand_in(access_ttl: Duration) -> StandIn {
    StandIn::start(StandInConfig {
        access_ttl,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The `Ready` condition's (status, reason, message).
pub async fn ready(env: &TestEnv, name: &str) -> Option<(String, String, String)> {
    let cr = env.api::<EagleEyeCredential>().get_opt(name).await.ok()??;
    let c = cr
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

/// Condition `type_`'s (status, reason, message) in `cr`'s status.
pub fn condition(cr: &EagleEyeCredential, type_: &str) -> Option<(String, String, String)> {
    let c = cr
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until `Ready` has `reason`, and returns the credential then.
pub async fn wait_for_reason(
    env: &TestEnv,
    name: &str,
    reason: &str,
    limit: Duration,
) -> EagleEyeCredential {
    super::eventually(
        &format!("{name} to report Ready reason {reason}"),
        limit,
        || async {
            // One read: the object returned is the one whose condition matched.
            let cr = env.api::<EagleEyeCredential>().get_opt(name).await.ok()??;
            let matched = cr
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == reason);
            matched.then_some(cr)
        },
    )
    .await
}

/// Data of a Secret as text.
pub async fn secret_data(
    env: &TestEnv,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let s = env.api::<Secret>().get_opt(name).await.ok()??;
    Some(
        s.data?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect(),
    )
}

/// `GET {base_url}/api/v3.0/users/self` with the token, as a workload would call the API.
pub async fn api_accepts(stand_in: &StandIn, base_url: &str, access_token: &str) -> bool {
    // A limit, so that a call that is never answered fails the test instead of hanging it.
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(pem) = stand_in.ca_pem() {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    let resp = b
        .build()
        .unwrap()
        .get(format!("{base_url}/api/v3.0/users/self"))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    resp.status() == 200
}

/// Replaces the value of `flag` among the operator's arguments (`Operator::set_args`).
pub fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("Operator::start passes {flag}"));
    args[at + 1] = value.to_owned();
}

/// Every Event in the test's namespace.
pub async fn all_events(env: &TestEnv) -> Vec<k8s_openapi::api::events::v1::Event> {
    env.api::<k8s_openapi::api::events::v1::Event>()
        .list(&Default::default())
        .await
        .unwrap()
        .items
}

/// Events about `credential` with `reason`.
pub async fn events(
    env: &TestEnv,
    credential: &str,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    all_events(env)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(credential))
        .collect()
}

/// The longest a rotation may leave a dead token published: the stand-in kills the old
/// access token when it answers, and the operator publishes the new one a write later.
pub const ROTATION_GAP: Duration = Duration::from_secs(2);

/// One sample of what a workload reading `target` holds: `Ok` when its access token is
/// live at the stand-in, or when a dead one is replaced by a live one within
/// [`ROTATION_GAP`] (a rotation in progress, not a starved refresh); else what it saw.
pub async fn working_token(env: &TestEnv, si: &StandIn, target: &str) -> Result<(), String> {
    let Some(data) = secret_data(env, target).await else {
        return Err("no target Secret".into());
    };
    if si.access_token_is_live(&data["access_token"]) {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + ROTATION_GAP;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(now) = secret_data(env, target).await
            && now["access_token"] != data["access_token"]
            && si.access_token_is_live(&now["access_token"])
        {
            return Ok(());
        }
    }
    Err(format!(
        "a dead token (expiring at {}) still published {ROTATION_GAP:?} later, at {}",
        data["expires_at"],
        jiff::Timestamp::now()
    ))
}
