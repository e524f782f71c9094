//! `status`, run as a person or a pipeline runs it, on credentials whose status the test
//! sets directly (no operator): a deterministic mix of Ready, failing and nearly expired.

use std::path::Path;
use std::time::Duration;

use crate::support::operator::secret;
use crate::support::{TestEnv, env};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_operator::secrets::LOGIN_TIME;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};

pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    fn all(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

pub async fn run(binary: &str, kubeconfig: &Path, args: &[&str]) -> Output {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .output(),
    )
    .await
    .expect("status answers")
    .unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

async fn status(env: &TestEnv, args: &[&str]) -> Output {
    run(
        env!("CARGO_BIN_EXE_eagle-eye-operator"),
        env.plane.kubeconfig_path(),
        &[&["status"], args].concat(),
    )
    .await
}

fn at(from_now: SignedDuration) -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .unwrap()
        .checked_add(from_now)
        .unwrap()
        .to_string()
}

fn hours(h: i64) -> SignedDuration {
    SignedDuration::from_hours(h)
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": at(hours(-1))})
}

/// Creates credential `name` and sets its status as the operator would have.
async fn credential_with_status(
    env: &TestEnv,
    name: &str,
    status: serde_json::Value,
) -> EagleEyeCredential {
    let cr: EagleEyeCredential = serde_json::from_value(serde_json::json!({
        "apiVersion": "eagle-eye-operator.io/v1alpha1",
        "kind": "EagleEyeCredential",
        "metadata": {"name": name},
        "spec": {
            "clientSecretRef": {"name": format!("{name}-client")},
            "refreshTokenSecretRef": {"name": format!("{name}-refresh-token")},
        },
    }))
    .unwrap();
    let api = env.api::<EagleEyeCredential>();
    api.create(&PostParams::default(), &cr).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .unwrap()
}

async fn ready(env: &TestEnv, name: &str, deadline_in: SignedDuration) {
    let relogin_soon = deadline_in <= hours(7 * 24);
    credential_with_status(
        env,
        name,
        serde_json::json!({
            "conditions": [
                condition("Ready", "True", "TokenRefreshed", "the published access token is valid"),
                condition("ReloginSoon", if relogin_soon { "True" } else { "False" },
                    if relogin_soon { "DeadlineNear" } else { "DeadlineFar" }, "about the deadline"),
            ],
            "accessTokenExpiresAt": at(hours(11) + SignedDuration::from_mins(30)),
            "refreshTokenDeadline": at(deadline_in),
            "lastRefreshAt": at(SignedDuration::from_mins(-5)),
            "baseUrl": "https://api.c001.eagleeyenetworks.com",
            "rotation": "Rotating",
        }),
    )
    .await;
}

async fn failing(env: &TestEnv, name: &str) -> EagleEyeCredential {
    credential_with_status(
        env,
        name,
        serde_json::json!({
            "conditions": [
                condition("Ready", "False", "RefreshFailed", "token refresh: token endpoint answered HTTP 503; retrying"),
                condition("ReloginSoon", "False", "DeadlineFar", "the refresh token lives on"),
            ],
            "accessTokenExpiresAt": at(hours(-2)),
            "refreshTokenDeadline": at(hours(40 * 24 + 1)),
            "refreshTokenDeadlineIsEstimate": true,
            "lastRefreshAt": at(hours(-14)),
            "failedRefreshAttempts": 7,
            "lastFailureTime": at(SignedDuration::from_mins(-1)),
            "baseUrl": "https://api.c002.eagleeyenetworks.com",
        }),
    )
    .await
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in\n{out}"))
}

#[tokio::test]
async fn the_table_shows_ready_failing_and_nearly_expired_credentials_and_exits_non_zero() {
    let env = env().await;
    ready(&env, "healthy", hours(80 * 24 + 1)).await;
    ready(&env, "expiring", hours(3 * 24 + 1)).await;
    failing(&env, "broken").await;

    let out = status(&env, &["-n", &env.namespace]).await;
    assert_eq!(
        out.code,
        Some(3),
        "a credential is not Ready\n{}",
        out.all()
    );
    let header = out.stdout.lines().next().unwrap();
    for column in [
        "NAME",
        "READY",
        "REASON",
        "TOKEN EXPIRES",
        "RE-LOGIN BY",
        "LAST REFRESH",
        "FAILURES",
        "BASE URL",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let healthy = line(&out.stdout, "healthy");
    assert!(
        healthy.contains("True") && healthy.contains("TokenRefreshed"),
        "{healthy}"
    );
    assert!(
        healthy.contains("in 11h") && healthy.contains("(80d)") && !healthy.contains('!'),
        "{healthy}"
    );
    assert!(
        healthy.contains("5m ago") && healthy.ends_with("https://api.c001.eagleeyenetworks.com")
    );
    let expiring = line(&out.stdout, "expiring");
    assert!(
        expiring.contains("True") && expiring.contains("(3d) !"),
        "{expiring}"
    );
    let broken = line(&out.stdout, "broken");
    assert!(
        broken.contains("False") && broken.contains("RefreshFailed"),
        "{broken}"
    );
    assert!(
        broken.contains("expired 2h ago") && broken.contains("(~40d)"),
        "{broken}"
    );
    assert!(broken.contains("   7   "), "failures: {broken}");
    assert!(out.stdout.contains("2 of 3 Ready."), "{}", out.all());
    assert!(out.stdout.contains(&format!(
        "kubectl eagleeye authorize expiring -n {}",
        env.namespace
    )));
    assert!(out.stdout.contains(&format!(
        "kubectl eagleeye status broken -n {}",
        env.namespace
    )));

    let json = status(&env, &["-n", &env.namespace, "-o", "json"]).await;
    assert_eq!(json.code, Some(3), "{}", json.all());
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["allReady"], false);
    let items = v["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["broken", "expiring", "healthy"]);
    let by = |name: &str| items.iter().find(|i| i["name"] == name).unwrap();
    assert_eq!(by("broken")["ready"], false);
    assert_eq!(by("broken")["reason"], "RefreshFailed");
    assert_eq!(by("broken")["accessTokenExpired"], true);
    assert_eq!(by("broken")["failedRefreshAttempts"], 7);
    assert_eq!(by("broken")["refreshTokenDeadlineIsEstimate"], true);
    assert_eq!(by("expiring")["ready"], true);
    assert_eq!(by("expiring")["reloginSoon"], true);
    assert_eq!(by("expiring")["daysLeft"], 3);
    assert_eq!(by("healthy")["reloginSoon"], false);
    assert_eq!(by("healthy")["daysLeft"], 80);
    assert_eq!(by("healthy")["namespace"], env.namespace.as_str());
}

#[tokio::test]
async fn status_exits_zero_when_every_credential_shown_is_ready_even_if_one_needs_a_relogin_soon() {
    let env = env().await;
    ready(&env, "fine", hours(60 * 24 + 1)).await;
    ready(&env, "soon", hours(2 * 24 + 1)).await;
    let out = status(&env, &["-n", &env.namespace]).await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(line(&out.stdout, "soon").contains("!"), "{}", out.all());
    assert!(out.stdout.contains("2 of 2 Ready."));
    assert!(!line(&out.stdout, "fine").contains('!'), "{}", out.all());
    // A wider warning window flags it too.
    let out = status(&env, &["-n", &env.namespace, "--relogin-warning", "90d"]).await;
    assert!(
        line(&out.stdout, "fine").contains("(60d) !"),
        "{}",
        out.all()
    );
    let one = status(&env, &["fine", "-n", &env.namespace, "-o", "json"]).await;
    assert_eq!(one.code, Some(0), "{}", one.all());
}

#[tokio::test]
async fn status_of_one_credential_shows_conditions_events_and_secret_keys_but_no_values() {
    let env = env().await;
    let cr = failing(&env, "cam").await;
    let api = env.api::<Secret>();
    let access_token = format!("access-token-value-{:08x}", rand::random::<u32>());
    let expired = at(hours(-2));
    api.create(
        &PostParams::default(),
        &secret(
            "cam-token",
            &[
                ("access_token", &access_token),
                ("base_url", "https://api.c002.eagleeyenetworks.com"),
                ("expires_at", &expired),
            ],
        ),
    )
    .await
    .unwrap();
    let refresh_token = format!("refresh-token-value-{:08x}", rand::random::<u32>());
    let mut refresh = secret("cam-refresh-token", &[("refresh_token", &refresh_token)]);
    refresh.metadata.annotations =
        Some([(LOGIN_TIME.to_string(), "2026-10-01T09:00:00Z".to_string())].into());
    api.create(&PostParams::default(), &refresh).await.unwrap();
    // The client Secret is missing; the operator's events say what went wrong.
    let event: Event = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "cam.refresh-failed"},
        "eventTime": Timestamp::now().to_string(),
        "reportingController": "eagle-eye-operator",
        "reportingInstance": "test",
        "action": "Refresh",
        "reason": "RefreshFailed",
        "type": "Warning",
        "note": "token endpoint answered HTTP 503",
        "regarding": {
            "apiVersion": "eagle-eye-operator.io/v1alpha1",
            "kind": "EagleEyeCredential",
            "namespace": env.namespace,
            "name": "cam",
            "uid": cr.uid().unwrap(),
        },
    }))
    .unwrap();
    env.api::<Event>()
        .create(&PostParams::default(), &event)
        .await
        .unwrap();

    let out = status(&env, &["cam", "-n", &env.namespace]).await;
    assert_eq!(out.code, Some(3), "not Ready\n{}", out.all());
    let text = &out.stdout;
    assert!(text.contains("Ready:                False  RefreshFailed: token refresh: token endpoint answered HTTP 503; retrying"), "{text}");
    // The last failure was a minute before the command ran: "(last 60s ago)", or more on
    // a slow machine.
    let ago: u64 = text
        .split("Failed refreshes:     7 (last ")
        .nth(1)
        .and_then(|rest| rest.split("s ago)\n").next()?.parse().ok())
        .unwrap_or_else(|| panic!("no failure count with its age:\n{text}"));
    assert!((60..300).contains(&ago), "{text}");
    assert!(
        text.contains("(estimated: no login-time annotation)"),
        "{text}"
    );
    assert!(
        text.contains("Target Secret:        cam-token (keys: access_token, base_url, expires_at)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  access token:       EXPIRED at {expired} (2h ago)"
        )),
        "{text}"
    );
    assert!(
        text.contains("Refresh-token Secret: cam-refresh-token (keys: refresh_token); login time 2026-10-01T09:00:00Z"),
        "{text}"
    );
    assert!(
        text.contains("Client Secret:        cam-client (NOT FOUND)"),
        "{text}"
    );
    assert!(text.contains("Conditions:\n  TYPE"), "{text}");
    assert!(
        text.contains("the refresh token lives on"),
        "condition messages are shown: {text}"
    );
    assert!(
        text.contains("Warning   RefreshFailed   1       token endpoint answered HTTP 503"),
        "{text}"
    );
    for value in [&access_token, &refresh_token] {
        assert!(
            !out.all().contains(value.as_str()),
            "a secret value is printed"
        );
    }

    let json = status(&env, &["cam", "-n", &env.namespace, "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["name"], "cam");
    assert_eq!(v["targetSecret"]["accessTokenExpired"], true);
    assert_eq!(
        v["targetSecret"]["keys"],
        serde_json::json!(["access_token", "base_url", "expires_at"])
    );
    assert_eq!(v["clientSecret"]["state"], "NotFound");
    assert_eq!(v["refreshTokenSecret"]["loginTime"], "2026-10-01T09:00:00Z");
    assert_eq!(v["events"][0]["reason"], "RefreshFailed");
    assert_eq!(v["conditions"].as_array().unwrap().len(), 2);
    assert!(!json.stdout.contains(&access_token) && !json.stdout.contains(&refresh_token));
}

#[tokio::test]
async fn all_namespaces_lists_credentials_with_their_namespace() {
    let env = env().await;
    ready(&env, "everywhere", hours(50 * 24)).await;
    let out = status(&env, &["-A"]).await;
    assert!(out.stdout.starts_with("NAMESPACE"), "{}", out.all());
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&env.namespace))
        .unwrap_or_else(|| panic!("no row for the test namespace\n{}", out.all()));
    assert!(row.contains("everywhere") && row.contains("True"), "{row}");
}

#[tokio::test]
async fn a_credential_that_does_not_exist_is_an_error_naming_it() {
    let env = env().await;
    let out = status(&env, &["nope", "-n", &env.namespace]).await;
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "EagleEyeCredential \"nope\" not found in namespace \"{}\"",
            env.namespace
        )),
        "{}",
        out.all()
    );
}

#[tokio::test]
async fn the_kubectl_plugin_answers_as_kubectl_eagleeye() {
    let env = env().await;
    ready(&env, "plugged", hours(30 * 24)).await;
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-eagleeye"));
    let direct = run(
        plugin.to_str().unwrap(),
        env.plane.kubeconfig_path(),
        &["status", "-n", &env.namespace],
    )
    .await;
    assert_eq!(direct.code, Some(0), "{}", direct.all());
    assert!(line(&direct.stdout, "plugged").contains("True"));
    let help = run(
        plugin.to_str().unwrap(),
        env.plane.kubeconfig_path(),
        &["--help"],
    )
    .await;
    assert!(help.stdout.contains("kubectl eagleeye"), "{}", help.all());
    assert!(help.stdout.contains("authorize") && help.stdout.contains("status"));
    assert!(!help.stdout.contains("sandbox"), "only the day-2 commands");

    // Through kubectl itself, which finds plugins on the PATH by their name.
    // The test bed's own kubectl, or the user's for an existing cluster: never skipped.
    let kubectl = env
        .plane
        .bin_dir()
        .map(|d| d.join("kubectl"))
        .filter(|k| k.exists())
        .unwrap_or_else(|| "kubectl".into());
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(kubectl)
        .args(["eagleeye", "status", "-n", &env.namespace])
        .env("KUBECONFIG", env.plane.kubeconfig_path())
        .env("PATH", path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(line(&stdout, "plugged").contains("True"), "{stdout}");
}
