//! `authorize`, run as a person runs it: its own process, the current kubeconfig context,
//! the test playing the browser against the auth stand-in's `/oauth2/authorize` and then
//! against the listener on the redirect URI. Observed as a person would: its output and
//! exit code, the Secrets and credential it writes, and the operator making them Ready.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::operator::{
    Operator, api_accepts, create_credential, create_secrets, login, secret, secret_data, stand_in,
    wait_for_reason,
};
use crate::support::{TestEnv, env, eventually};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_operator::secrets::LOGIN_TIME;
use eagle_eye_testbed::standin::{ClientRegistration, Fault, StandIn};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::PostParams;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use url::Url;

/// Upper bound for one CLI step; the steps take well under a second when all is well.
const LIMIT: Duration = Duration::from_secs(60);

/// A loopback port for the CLI's listener (see `plane::free_port`: never one an outgoing
/// connection of a test beside it may take first).
fn free_port() -> u16 {
    eagle_eye_testbed::plane::free_port().unwrap()
}

/// An application registered with the stand-in, its whitelist holding `redirect_uri`.
struct App {
    id: String,
    secret: String,
}

fn register(si: &StandIn, id: &str, redirect_uri: &str) -> App {
    // Characters that Basic auth must form-encode, as in real client secrets.
    let secret = format!("s3cr3t+/%: {:08x}", rand::random::<u32>());
    si.register_client(ClientRegistration {
        id: id.into(),
        secret: secret.clone(),
        redirect_uris: vec![redirect_uri.into()],
        rotating: true,
    });
    App {
        id: id.into(),
        secret,
    }
}

async fn create_client_secret(env: &TestEnv, name: &str, app: &App) {
    env.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret(
                name,
                &[("client_id", &app.id), ("client_secret", &app.secret)],
            ),
        )
        .await
        .unwrap();
}

fn work_dir(env: &TestEnv) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eagle-eye-authorize-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The control plane's kubeconfig with its context's namespace set to the test's, as a
/// person's own kubeconfig would be; acting as `user` (impersonation) when given.
fn kubeconfig(env: &TestEnv, user: Option<&str>) -> PathBuf {
    let text = std::fs::read_to_string(env.plane.kubeconfig_path()).unwrap();
    let mut doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    doc["contexts"][0]["context"]["namespace"] = env.namespace.clone().into();
    if let Some(user) = user {
        doc["users"][0]["user"]["as"] = user.into();
    }
    let path = work_dir(env).join(format!("kubeconfig-{}", user.unwrap_or("admin")));
    std::fs::write(&path, serde_saphyr::to_string(&doc).unwrap()).unwrap();
    path
}

/// `authorize NAME` against the stand-in, trusting its CA, with no browser opened.
fn args(
    env: &TestEnv,
    si: &StandIn,
    name: &str,
    redirect_uri: &str,
    extra: &[&str],
) -> Vec<String> {
    let ca = work_dir(env).join("auth-ca.pem");
    std::fs::write(&ca, si.ca_pem().unwrap()).unwrap();
    let mut args: Vec<String> = [
        "authorize",
        name,
        "--redirect-uri",
        redirect_uri,
        "--auth-url",
        si.url().as_str(),
        "--auth-ca-file",
        &ca.to_string_lossy(),
        "--allowed-api-hosts",
        "127.0.0.1",
        "--no-browser",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The CLI as a running process: stdout read line by line (the authorize URL is on it),
/// stderr collected in the background.
struct Cli {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
    stderr: tokio::task::JoinHandle<String>,
}

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn all(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

impl Cli {
    fn start(binary: &str, kubeconfig: &Path, args: &[String], envs: &[(&str, &str)]) -> Cli {
        let mut child = Command::new(binary)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .env_remove("EAGLE_EYE_CLIENT_ID")
            .env_remove("EAGLE_EYE_CLIENT_SECRET")
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the CLI");
        let mut err = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            text
        });
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Cli {
            child,
            stdout,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The project's binary, `eagle-eye-operator`.
    fn main(kubeconfig: &Path, args: &[String], envs: &[(&str, &str)]) -> Cli {
        Cli::start(
            env!("CARGO_BIN_EXE_eagle-eye-operator"),
            kubeconfig,
            args,
            envs,
        )
    }

    /// Reads stdout up to the authorize URL the person is asked to open.
    async fn authorize_url(&mut self) -> Url {
        let read = async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                self.seen.push(line.clone());
                if line.contains("/oauth2/authorize?") {
                    return Some(Url::parse(line.trim()).unwrap());
                }
            }
            None
        };
        match tokio::time::timeout(LIMIT, read).await {
            Ok(Some(url)) => url,
            _ => {
                let done = self.finish_ref().await;
                panic!("no authorize URL was printed\n{}", done.all());
            }
        }
    }

    async fn paste(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    async fn finish_ref(&mut self) -> Finished {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("the CLI exits")
            .unwrap();
        while let Ok(Some(line)) = self.stdout.next_line().await {
            self.seen.push(line);
        }
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        Finished {
            code: status.code(),
            stdout: self.seen.join("\n"),
            stderr,
        }
    }

    async fn finish(mut self) -> Finished {
        self.finish_ref().await
    }
}

/// The browser: no cookies, no redirects followed, trusting the stand-in's CA.
fn browser(si: Option<&StandIn>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = si.and_then(StandIn::ca_pem) {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The person logs in and approves: where the auth server sends the browser next.
async fn approve(si: Option<&StandIn>, url: &Url) -> Url {
    let resp = browser(si).get(url.clone()).send().await.unwrap();
    assert_eq!(
        resp.status(),
        302,
        "the auth server redirects after the login"
    );
    let location = resp.headers()["location"].to_str().unwrap();
    Url::parse(location).unwrap()
}

/// The browser follows the redirect to the CLI's listener: the page it shows.
async fn deliver(location: &Url) -> (u16, String) {
    let resp = browser(None).get(location.clone()).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn param(url: &Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{url} has no {name}"))
}

fn with_param(url: &Url, name: &str, value: &str) -> Url {
    let mut out = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    out.query_pairs_mut().clear().extend_pairs(pairs);
    out
}

async fn login_time(env: &TestEnv, secret: &str) -> Timestamp {
    let s = env.api::<Secret>().get(secret).await.unwrap();
    s.metadata.annotations.unwrap()[LOGIN_TIME].parse().unwrap()
}

fn assert_absent(text: &str, what: &str, values: &[&str]) {
    for (i, v) in values.iter().enumerate() {
        assert!(!v.is_empty());
        assert!(!text.contains(v), "secret value #{i} appears in the {what}");
    }
}

#[tokio::test]
async fn first_login_stores_secrets_and_credential_and_the_running_operator_makes_it_ready() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let redirect = format!("http://127.0.0.1:{}", free_port());
    let app = register(&si, "first-login", &redirect);
    let op = Operator::start(&env, &si, &[]).await;

    // No -n: the namespace comes from the kubeconfig context, as with kubectl.
    let mut cli = Cli::main(
        &kubeconfig(&env, None),
        &args(&env, &si, "cam", &redirect, &["--write-client-secret"]),
        &[
            ("EAGLE_EYE_CLIENT_ID", &app.id),
            ("EAGLE_EYE_CLIENT_SECRET", &app.secret),
            ("RUST_LOG", "debug"),
        ],
    );
    let url = cli.authorize_url().await;
    assert_eq!(url.path(), "/oauth2/authorize");
    assert_eq!(
        param(&url, "redirect_uri"),
        redirect,
        "sent exactly as whitelisted"
    );
    assert_eq!(param(&url, "client_id"), app.id);
    assert_eq!(param(&url, "response_type"), "code");
    assert_eq!(param(&url, "scope"), "vms.all");
    let location = approve(Some(&si), &url).await;
    assert!(location.as_str().starts_with(&redirect));
    let code = param(&location, "code");
    let (status, page) = deliver(&location).await;
    assert_eq!(status, 200);
    assert!(page.contains("You can close this tab"), "{page}");
    let done = cli.finish().await;
    assert_eq!(done.code, Some(0), "{}", done.all());
    assert!(
        done.stdout
            .contains(&format!("EagleEyeCredential {}/cam created", env.namespace)),
        "{}",
        done.all()
    );
    assert_eq!(si.counters().code_exchanges, 1);

    let client = secret_data(&env, "cam-client")
        .await
        .expect("client Secret");
    assert_eq!(
        (
            client["client_id"].as_str(),
            client["client_secret"].as_str()
        ),
        (app.id.as_str(), app.secret.as_str())
    );
    let logged_in = login_time(&env, "cam-refresh-token").await;
    let age = Timestamp::now().duration_since(logged_in);
    assert!(
        age >= SignedDuration::ZERO && age < SignedDuration::from_mins(2),
        "{age:?}"
    );
    let cr = env.api::<EagleEyeCredential>().get("cam").await.unwrap();
    assert_eq!(cr.spec.client_secret_ref.name, "cam-client");
    assert_eq!(cr.spec.refresh_token_secret_ref.name, "cam-refresh-token");

    let cr = wait_for_reason(&env, "cam", "TokenRefreshed", Duration::from_secs(30)).await;
    let status = cr.status.unwrap();
    assert_eq!(
        status.chain_started_at.unwrap().0,
        logged_in,
        "the chain starts at the login"
    );
    assert!(!status.refresh_token_deadline_is_estimate);
    let target = secret_data(&env, "cam-token").await.expect("target Secret");
    assert!(api_accepts(&si, &target["base_url"], &target["access_token"]).await);

    let refresh = secret_data(&env, "cam-refresh-token").await.unwrap();
    let secrets = [
        app.secret.as_str(),
        code.as_str(),
        refresh["refresh_token"].as_str(),
        target["access_token"].as_str(),
    ];
    assert!(done.stderr.contains("DEBUG"), "debug logs were captured");
    assert_absent(&done.all(), "CLI output", &secrets);
    assert_absent(&op.logs(), "operator logs", &secrets);
}

#[tokio::test]
async fn relogin_after_the_chain_died_makes_it_ready_without_restarting_the_operator() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(6)).await;
    let redirect = format!("http://127.0.0.1:{}", free_port());
    let app = register(&si, "relogin", &redirect);
    create_client_secret(&env, "door-client", &app).await;
    // A long idle lifetime leaves the 90-day chain end as the deadline.
    let mut op = Operator::start(&env, &si, &["--refresh-token-idle-lifetime", "365d"]).await;
    let kc = kubeconfig(&env, None);
    let ns = env.namespace.as_str();
    let login = |extra: Vec<&str>| {
        let args = args(&env, &si, "door", &redirect, &extra);
        let (si, kc) = (&si, kc.clone());
        async move {
            let mut cli = Cli::main(&kc, &args, &[]);
            let url = cli.authorize_url().await;
            let (status, _) = deliver(&approve(Some(si), &url).await).await;
            assert_eq!(status, 200);
            let done = cli.finish().await;
            assert_eq!(done.code, Some(0), "{}", done.all());
            done
        }
    };
    login(vec![]).await;
    let first = login_time(&env, "door-refresh-token").await;
    wait_for_reason(&env, "door", "TokenRefreshed", Duration::from_secs(30)).await;

    // The chain dies (90 days, or a revocation): the operator says a person must log in.
    let stored = secret_data(&env, "door-refresh-token").await.unwrap();
    si.end_chain(&stored["refresh_token"]);
    wait_for_reason(
        &env,
        "door",
        "ReauthorizationRequired",
        Duration::from_secs(30),
    )
    .await;
    let status = status_cli(&kc, &["status", "door", "-n", ns]).await;
    assert_eq!(status.code, Some(3), "not Ready exits 3\n{}", status.all());
    assert!(
        status.stdout.contains("ReauthorizationRequired"),
        "{}",
        status.all()
    );

    // A later login (login times are whole seconds) on the same credential.
    eventually(
        "the clock to pass the first login's second",
        LIMIT,
        || async { (Timestamp::now().as_second() > first.as_second()).then_some(()) },
    )
    .await;
    let done = login(vec!["-n", ns]).await;
    assert!(done.stdout.contains("already uses it"), "{}", done.all());
    let second = login_time(&env, "door-refresh-token").await;
    assert!(second > first);
    let cr = wait_for_reason(&env, "door", "TokenRefreshed", Duration::from_secs(30)).await;
    assert!(op.is_running(), "the operator was not restarted");
    // Short-lived tokens rotate every few seconds: read and use the token together.
    eventually("the published token to work", LIMIT, || async {
        let target = secret_data(&env, "door-token").await?;
        api_accepts(&si, &target["base_url"], &target["access_token"])
            .await
            .then_some(())
    })
    .await;

    let new_deadline = second + SignedDuration::from_hours(90 * 24);
    assert_eq!(
        cr.status.unwrap().refresh_token_deadline.unwrap().0,
        new_deadline
    );
    let status = status_cli(&kc, &["status", "door", "-n", ns]).await;
    assert_eq!(status.code, Some(0), "{}", status.all());
    assert!(
        status
            .stdout
            .contains(&format!("Re-login by:          {new_deadline}")),
        "status shows the new deadline\n{}",
        status.all()
    );
    let json = status_cli(&kc, &["status", "-n", ns, "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        v["items"][0]["refreshTokenDeadline"],
        new_deadline.to_string()
    );
    assert_eq!(v["items"][0]["daysLeft"], 89);
    op.kill().await;
}

async fn status_cli(kubeconfig: &Path, args: &[&str]) -> Finished {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Cli::main(kubeconfig, &args, &[]).finish().await
}

#[tokio::test]
async fn a_redirect_uri_missing_from_the_whitelist_is_reported_with_what_to_whitelist() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let app = register(&si, "whitelist", "http://127.0.0.1:3333");
    create_client_secret(&env, "wl-client", &app).await;
    let sent = format!("http://127.0.0.1:{}", free_port());
    let done = Cli::main(
        &kubeconfig(&env, None),
        &args(&env, &si, "wl", &sent, &[]),
        &[],
    )
    .finish()
    .await;
    assert_eq!(done.code, Some(1), "{}", done.all());
    let err = &done.stderr;
    assert!(
        err.contains(&format!("the redirect URI sent, {sent:?}")),
        "{err}"
    );
    assert!(
        err.contains("\"whitelist\"") && err.contains("client ID"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "Ask Eagle Eye Networks support to whitelist exactly {sent:?}"
        )),
        "{err}"
    );
    assert!(
        !done.stdout.contains("oauth2/authorize"),
        "no URL to open is offered"
    );
    assert!(secret_data(&env, "wl-refresh-token").await.is_none());
}

#[tokio::test]
async fn a_port_in_use_is_reported_before_the_browser_step() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let busy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect = format!("http://{}", busy.local_addr().unwrap());
    let app = register(&si, "busy", &redirect);
    create_client_secret(&env, "busy-client", &app).await;
    let done = Cli::main(
        &kubeconfig(&env, None),
        &args(&env, &si, "busy", &redirect, &[]),
        &[],
    )
    .finish()
    .await;
    assert_eq!(done.code, Some(1), "{}", done.all());
    let addr = busy.local_addr().unwrap();
    assert!(
        done.stderr.contains(&format!("cannot listen on {addr}"))
            && done.stderr.contains("already in use"),
        "{}",
        done.all()
    );
    assert!(
        done.stderr.contains("--paste"),
        "suggests the headless mode"
    );
    assert!(!done.stdout.contains("oauth2/authorize"));
}

/// Starts a login for `name` and plays the browser up to the auth server's redirect.
async fn started_login(env: &TestEnv, si: &StandIn, name: &str) -> (Cli, Url) {
    let redirect = format!("http://127.0.0.1:{}", free_port());
    let app = register(si, &format!("{name}-app"), &redirect);
    create_client_secret(env, &format!("{name}-client"), &app).await;
    let mut cli = Cli::main(
        &kubeconfig(env, None),
        &args(env, si, name, &redirect, &[]),
        &[],
    );
    let url = cli.authorize_url().await;
    let location = approve(Some(si), &url).await;
    (cli, location)
}

#[tokio::test]
async fn an_answer_with_another_state_is_refused_without_ending_the_wait_and_the_login_completes() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let (cli, location) = started_login(&env, &si, "forged").await;
    // Any local page could send these: none may end the wait or spend anything.
    for forged in [
        with_param(&location, "state", "forged-state"),
        with_param(&location, "state", ""),
        Url::parse(&format!("{}&state=again", location)).unwrap(),
    ] {
        let (status, page) = deliver(&forged).await;
        assert_eq!(status, 400, "{forged}");
        assert!(page.contains("state value"), "{page}");
    }
    assert_eq!(si.counters().code_exchanges, 0, "no code was spent");
    assert!(secret_data(&env, "forged-refresh-token").await.is_none());
    // The person's own answer still completes the login.
    let (status, page) = deliver(&location).await;
    assert_eq!(status, 200, "{page}");
    let done = cli.finish().await;
    assert_eq!(done.code, Some(0), "{}", done.all());
    assert!(
        done.stderr
            .contains("does not carry this run's state value; still waiting"),
        "{}",
        done.all()
    );
    assert_eq!(si.counters().code_exchanges, 1);
    assert!(secret_data(&env, "forged-refresh-token").await.is_some());
}

#[tokio::test]
async fn an_expired_code_is_refused_with_advice_to_log_in_within_five_minutes() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let (cli, location) = started_login(&env, &si, "slow").await;
    si.advance_clock(Duration::from_secs(6 * 60));
    let (status, _) = deliver(&location).await;
    assert_eq!(status, 200, "the listener got a well-formed answer");
    let done = cli.finish().await;
    assert_eq!(done.code, Some(1), "{}", done.all());
    assert!(
        done.stderr.contains(
            "authorization code exchange: token endpoint answered HTTP 401 (invalid_grant)"
        ),
        "{}",
        done.all()
    );
    assert!(
        done.stderr.contains("expired (codes live 5 minutes)"),
        "{}",
        done.all()
    );
    assert!(done.stderr.contains("Nothing was stored"));
    assert!(secret_data(&env, "slow-refresh-token").await.is_none());
}

#[tokio::test]
async fn a_code_the_auth_server_does_not_know_is_refused() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let (cli, location) = started_login(&env, &si, "bogus").await;
    deliver(&with_param(&location, "code", "not-a-real-code")).await;
    let done = cli.finish().await;
    assert_eq!(done.code, Some(1), "{}", done.all());
    assert!(
        done.stderr.contains("the authorization code was refused"),
        "{}",
        done.all()
    );
    assert_eq!(si.counters().code_exchanges, 0);
}

#[tokio::test]
async fn a_login_whose_answer_is_unusable_but_carries_a_refresh_token_is_stored_not_lost() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    // Each answer is a 200 from a server that has issued the login, its refresh token
    // readable, but the answer as a whole unusable. The code is spent either way.
    let cases = [
        (
            "padded",
            Fault::Padded { bytes: 100_000 },
            "token response exceeds 65536 bytes",
        ),
        ("utf", Fault::InvalidUtf8, "malformed token response"),
        ("foreign", Fault::ForeignApiHost, "\"api.foreign.example\""),
    ];
    for (i, (name, fault, problem)) in (1..).zip(cases) {
        let (cli, location) = started_login(&env, &si, name).await;
        si.inject(fault.clone(), 1);
        let (status, _) = deliver(&location).await;
        assert_eq!(status, 200, "{fault:?}");
        let done = cli.finish().await;
        assert_eq!(si.counters().code_exchanges, i, "the code was spent");

        let stored = secret_data(&env, &format!("{name}-refresh-token"))
            .await
            .unwrap_or_else(|| panic!("{fault:?}: no refresh token stored\n{}", done.all()));
        assert!(
            si.refresh_token_is_live(&stored["refresh_token"]),
            "{fault:?}: the stored token is the login's"
        );
        let age = Timestamp::now()
            .duration_since(login_time(&env, &format!("{name}-refresh-token")).await);
        assert!(
            age >= SignedDuration::ZERO && age < SignedDuration::from_mins(2),
            "{age:?}"
        );
        let cr = env.api::<EagleEyeCredential>().get(name).await.unwrap();
        assert_eq!(
            cr.spec.refresh_token_secret_ref.name,
            format!("{name}-refresh-token")
        );

        assert_eq!(
            done.code,
            Some(3),
            "{fault:?}: stored, but not a clean login\n{}",
            done.all()
        );
        assert!(
            done.stdout.contains("Stored the new refresh token"),
            "{}",
            done.all()
        );
        for said in [
            "the login was stored",
            "answer was unusable",
            problem,
            "Do not log in again",
        ] {
            assert!(
                done.stderr.contains(said),
                "{fault:?}: says {said:?}\n{}",
                done.all()
            );
        }
        assert!(
            !done.stderr.contains("Nothing was stored"),
            "{}",
            done.all()
        );
        if fault == Fault::ForeignApiHost {
            assert!(
                done.stderr.contains("--allowed-api-hosts"),
                "{}",
                done.all()
            );
        }
        let client = secret_data(&env, &format!("{name}-client")).await.unwrap();
        assert_absent(
            &done.all(),
            "CLI output",
            &[
                &stored["refresh_token"],
                &param(&location, "code"),
                &client["client_secret"],
            ],
        );
    }
}

/// An auth server for a public client: it approves every login at once and its token
/// endpoint answers without a refresh token. Plain HTTP, one request per connection.
async fn public_client_auth_server() -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let request = Url::parse(&format!("http://x{target}")).unwrap();
                let response = match (head.split_whitespace().next(), request.path()) {
                    (Some("GET"), "/oauth2/authorize") => format!(
                        "HTTP/1.1 302 Found\r\nLocation: {}?code=public-code&state={}\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n",
                        param(&request, "redirect_uri"),
                        param(&request, "state")
                    ),
                    (Some("POST"), "/oauth2/token") => {
                        let body = r#"{"access_token":"public-access-token","expires_in":3600,"httpsBaseUrl":{"hostname":"127.0.0.1","port":443},"scope":"vms.all","token_type":"Bearer"}"#;
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .into(),
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_token_response_without_refresh_token_says_the_client_is_public() {
    let env = env().await;
    let auth = public_client_auth_server().await;
    let redirect = format!("http://127.0.0.1:{}", free_port());
    let app = App {
        id: "public-app".into(),
        secret: "unused-secret-value".into(),
    };
    create_client_secret(&env, "pub-client", &app).await;
    let args: Vec<String> = [
        "authorize",
        "pub",
        "--redirect-uri",
        &redirect,
        "--auth-url",
        auth.as_str(),
        "--allow-insecure-http",
        "--allowed-api-hosts",
        "127.0.0.1",
        "--no-browser",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cli = Cli::main(&kubeconfig(&env, None), &args, &[]);
    let url = cli.authorize_url().await;
    let (status, _) = deliver(&approve(None, &url).await).await;
    assert_eq!(status, 200);
    let done = cli.finish().await;
    assert_eq!(done.code, Some(1), "{}", done.all());
    assert!(
        done.stderr.contains("holds no refresh token"),
        "{}",
        done.all()
    );
    assert!(done.stderr.contains("public client"), "{}", done.all());
    assert!(
        done.stderr.contains("confidential application"),
        "{}",
        done.all()
    );
    assert!(secret_data(&env, "pub-refresh-token").await.is_none());
    assert_absent(
        &done.all(),
        "CLI output",
        &["public-access-token", "public-code", &app.secret],
    );
}

#[tokio::test]
async fn a_user_who_may_not_write_secrets_is_stopped_before_anyone_logs_in() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let redirect = format!("http://127.0.0.1:{}", free_port());
    let app = register(&si, "reader", &redirect);
    create_client_secret(&env, "ro-client", &app).await;
    // A user who may read Secrets and credentials here, but not write them.
    let user = format!("reader-{}", env.namespace);
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "reader"},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
            {"apiGroups": ["eagle-eye-operator.io"], "resources": ["eagleeyecredentials"], "verbs": ["get", "list"]},
        ],
    }))
    .unwrap();
    env.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    env.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // kube-apiserver's RBAC caches trail the writes a little: wait until the grant holds.
    let reviews: kube::Api<SubjectAccessReview> = kube::Api::all(env.client.clone());
    eventually("the reader's Role in force", LIMIT, || async {
        let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
            "spec": {
                "user": user,
                "resourceAttributes": {"namespace": env.namespace, "verb": "get", "resource": "secrets"},
            },
        }))
        .ok()?;
        let answer = reviews.create(&PostParams::default(), &review).await.ok()?;
        answer.status?.allowed.then_some(())
    })
    .await;

    let done = Cli::main(
        &kubeconfig(&env, Some(&user)),
        &args(&env, &si, "ro", &redirect, &[]),
        &[],
    )
    .finish()
    .await;
    assert_eq!(done.code, Some(1), "{}", done.all());
    assert!(
        done.stderr.contains(&format!(
            "you (user {user:?}) may not create secrets, create eagleeyecredentials, patch eagleeyecredentials in namespace {:?}",
            env.namespace
        )),
        "{}",
        done.all()
    );
    assert!(done.stderr.contains("before anyone logs in"));
    assert!(
        !done.stdout.contains("oauth2/authorize"),
        "no login is offered"
    );
    assert_eq!(si.counters().code_exchanges, 0);
}

#[tokio::test]
async fn headless_mode_takes_the_pasted_address_and_needs_no_port() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    // The redirect URI's port is busy: with --paste nothing listens on it.
    let busy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect = format!("http://{}", busy.local_addr().unwrap());
    let app = register(&si, "headless", &redirect);
    create_client_secret(&env, "hl-client", &app).await;
    let ns = env.namespace.clone();
    let mut cli = Cli::main(
        env.plane.kubeconfig_path(),
        &args(
            &env,
            &si,
            "hl",
            &redirect,
            &["--paste", "-n", &ns, "--context", "testbed"],
        ),
        &[("RUST_LOG", "trace")],
    );
    let url = cli.authorize_url().await;
    // The browser ran elsewhere; the person copies the address it ended up on.
    let location = approve(Some(&si), &url).await;
    cli.paste(&format!("{location}\n")).await;
    let done = cli.finish().await;
    assert_eq!(done.code, Some(0), "{}", done.all());
    assert!(done.stderr.contains("paste it here"), "{}", done.all());
    let stored = secret_data(&env, "hl-refresh-token")
        .await
        .expect("refresh token stored");
    assert!(si.refresh_token_is_live(&stored["refresh_token"]));
    let cr = env.api::<EagleEyeCredential>().get("hl").await.unwrap();
    assert_eq!(cr.spec.client_secret_ref.name, "hl-client");
    // Even with every log line on, no secret value is printed.
    assert!(done.stderr.contains("TRACE"), "trace logs were captured");
    let code = param(&location, "code");
    assert_absent(
        &done.all(),
        "CLI output",
        &[&app.secret, &code, &stored["refresh_token"]],
    );
}

#[tokio::test]
async fn relogin_replaces_only_the_token_and_keeps_the_secrets_other_contents() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let redirect = format!("http://127.0.0.1:{}", free_port());
    let app = register(&si, "keep", &redirect);
    create_client_secret(&env, "keep-client", &app).await;
    let mut existing = secret(
        "keep-refresh-token",
        &[("refresh_token", "old-token"), ("note", "mine")],
    );
    existing.metadata.labels = Some([("team".to_string(), "video".to_string())].into());
    existing.metadata.annotations = Some(
        [
            ("example.com/owner".to_string(), "ops".to_string()),
            (
                eagle_eye_operator::secrets::TOKEN_FINGERPRINT.to_string(),
                "0123456789abcdef".to_string(),
            ),
        ]
        .into(),
    );
    env.api::<Secret>()
        .create(&PostParams::default(), &existing)
        .await
        .unwrap();
    let mut cli = Cli::main(
        &kubeconfig(&env, None),
        &args(&env, &si, "keep", &redirect, &[]),
        &[],
    );
    let url = cli.authorize_url().await;
    deliver(&approve(Some(&si), &url).await).await;
    let done = cli.finish().await;
    assert_eq!(done.code, Some(0), "{}", done.all());
    let s = env.api::<Secret>().get("keep-refresh-token").await.unwrap();
    let data = secret_data(&env, "keep-refresh-token").await.unwrap();
    assert_ne!(data["refresh_token"], "old-token");
    assert_eq!(data["note"], "mine");
    assert_eq!(s.metadata.labels.unwrap()["team"], "video");
    let a = s.metadata.annotations.unwrap();
    assert_eq!(a["example.com/owner"], "ops");
    assert!(a.contains_key(LOGIN_TIME));
    assert!(
        !a.contains_key(eagle_eye_operator::secrets::TOKEN_FINGERPRINT),
        "bookkeeping about the old token is dropped"
    );
}

#[tokio::test]
async fn a_login_is_never_stored_in_another_credentials_target_secret() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let _op = Operator::start(&env, &si, &[]).await;
    let owner = login(&si, "owner-client", true).await;
    create_secrets(&env, "owner", &owner).await;
    create_credential(&env, "owner", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "owner", "TokenRefreshed", Duration::from_secs(30)).await;
    let before = secret_data(&env, "owner-token").await.unwrap();

    let redirect = format!("http://127.0.0.1:{}", free_port());
    let app = register(&si, "victim", &redirect);
    create_client_secret(&env, "victim-client", &app).await;
    let done = Cli::main(
        &kubeconfig(&env, None),
        &args(
            &env,
            &si,
            "victim",
            &redirect,
            &["--refresh-token-secret-name", "owner-token"],
        ),
        &[],
    )
    .finish()
    .await;
    assert_eq!(done.code, Some(1), "{}", done.all());
    assert!(
        done.stderr
            .contains("is the target Secret of EagleEyeCredential \"owner\""),
        "{}",
        done.all()
    );
    assert!(
        !done.stdout.contains("oauth2/authorize"),
        "stopped before anyone logs in"
    );
    assert_eq!(si.counters().code_exchanges, 0);
    assert_eq!(secret_data(&env, "owner-token").await.unwrap(), before);
}
