//! Renew now (issue 22): `kubectl eagleeye renew` asks for one refresh, served once through
//! every guard, its outcome in status.renew, an Event and the plugin's own answer; the
//! history records each refresh with its process and a fingerprint prefix, never a token.

use std::time::Duration;

use crate::status_cli::{Output, run};
use crate::support::operator::{
    Operator, create_credential, create_secrets, events, login, secret_data, stand_in,
    wait_for_reason,
};
use crate::support::{TestEnv, env, eventually, get, series};
use eagle_eye_operator::crd::EagleEyeCredential;
use kube::api::{Patch, PatchParams};

/// `kubectl eagleeye renew NAME` in the test's namespace, as a person runs it.
pub async fn renew(env: &TestEnv, name: &str, wait: &str) -> Output {
    plugin(env, &["renew", name, "-n", &env.namespace, "--wait", wait]).await
}

/// `kubectl eagleeye ARGS` against the test's control plane.
async fn plugin(env: &TestEnv, args: &[&str]) -> Output {
    let binary = env!("CARGO_BIN_EXE_kubectl-eagleeye");
    run(binary, env.plane.kubeconfig_path(), args).await
}

/// Sets spec.renewRequest as a GitOps tool would.
pub async fn request_renew(env: &TestEnv, name: &str, request: &str) {
    let patch = serde_json::json!({"spec": {"renewRequest": request}});
    env.api::<EagleEyeCredential>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// status.renew's (outcome, message) once it reports `request`.
pub async fn renew_outcome(env: &TestEnv, name: &str, request: &str) -> (String, String) {
    eventually(
        &format!("{name} to report renew request {request}"),
        Duration::from_secs(60),
        || async {
            let cr = env.api::<EagleEyeCredential>().get(name).await.ok()?;
            let r = cr.status?.renew?;
            (r.request == request).then_some((r.outcome, r.message))
        },
    )
    .await
}

/// Reconciles the operator has run since it started.
async fn reconciles(op: &Operator) -> f64 {
    let text = get(op.admin_addr().await, "/metrics").await.1;
    series(&text, "eagle_eye_reconciles_total").unwrap_or(0.0)
}

#[tokio::test]
async fn renew_refreshes_once_ends_the_old_token_records_history_and_is_never_served_again() {
    let env = env().await;
    // Hour-long tokens: no refresh but the renew is due during the test.
    let si = stand_in(Duration::from_secs(3600)).await;
    let l = login(&si, "renew-a", true).await;
    create_secrets(&env, "cam", &l).await;
    create_credential(&env, "cam", &si, serde_json::json!({})).await;
    let mut op = Operator::start(&env, &si, &[]).await;
    wait_for_reason(&env, "cam", "TokenRefreshed", Duration::from_secs(60)).await;
    let before = secret_data(&env, "cam-token").await.unwrap();
    assert_eq!(si.counters().refreshes, 1);

    let ran = renew(&env, "cam", "60s").await;
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains("ENDS the access token"),
        "{}",
        ran.stderr
    );
    assert!(ran.stdout.contains("Renewed"), "{}", ran.stdout);

    // What the auth server saw: exactly one more refresh; the old access token is dead.
    assert_eq!(si.counters().refreshes, 2);
    assert_eq!(si.counters().reused_refresh_tokens, 0);
    let after = secret_data(&env, "cam-token").await.unwrap();
    assert_ne!(after["access_token"], before["access_token"]);
    assert!(!si.access_token_is_live(&before["access_token"]));
    assert!(si.access_token_is_live(&after["access_token"]));
    assert_eq!(events(&env, "cam", "Renewed").await.len(), 1);

    let cr = env.api::<EagleEyeCredential>().get("cam").await.unwrap();
    let status = cr.status.clone().unwrap();
    assert_eq!(status.revision, 2);
    assert_eq!(status.history.len(), 2);
    for (i, h) in status.history.iter().enumerate() {
        assert_eq!(h.outcome, "Refreshed");
        assert_eq!(h.revision, i as u64 + 1);
        assert_eq!(h.refresh_token_fingerprint.len(), 8);
        assert!(!h.process.is_empty());
    }
    assert_ne!(
        status.history[0].refresh_token_fingerprint,
        status.history[1].refresh_token_fingerprint
    );
    let shown = serde_json::to_string(&status).unwrap();
    for secret in [
        &after["access_token"],
        &l.grant.refresh_token,
        &l.client_secret,
    ] {
        assert!(!shown.contains(secret.as_str()));
    }

    // `status` shows the history.
    let out = plugin(&env, &["status", "cam", "-n", &env.namespace]).await;
    let text = out.stdout;
    assert!(text.contains("Revision:             2"), "{text}");
    assert!(
        text.contains(&status.history[1].refresh_token_fingerprint),
        "{text}"
    );
    assert!(text.contains("Last renew:           Renewed"), "{text}");

    // A restarted operator reads the handled request and leaves it alone.
    op.kill().await;
    op.restart().await;
    eventually(
        "the new process to reconcile",
        Duration::from_secs(30),
        || async { (reconciles(&op).await >= 1.0).then_some(()) },
    )
    .await;
    assert_eq!(
        si.counters().refreshes,
        2,
        "a handled request is never served again"
    );
}

#[tokio::test]
async fn renew_on_a_suspended_or_dead_credential_is_refused_and_says_why() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    for (name, client) in [("paused", "renew-s"), ("dead", "renew-d")] {
        let l = login(&si, client, true).await;
        create_secrets(&env, name, &l).await;
    }
    create_credential(&env, "paused", &si, serde_json::json!({"suspend": true})).await;
    create_credential(&env, "dead", &si, serde_json::json!({})).await;
    let _op = Operator::start(&env, &si, &[]).await;
    wait_for_reason(&env, "paused", "Suspended", Duration::from_secs(60)).await;
    wait_for_reason(&env, "dead", "TokenRefreshed", Duration::from_secs(60)).await;

    // The plugin refuses a suspended credential before changing anything.
    let ran = renew(&env, "paused", "10s").await;
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert!(ran.stderr.contains("suspended"), "{}", ran.stderr);
    // A request set by other means (GitOps) is refused by the operator, and said so.
    request_renew(&env, "paused", "2030-01-01T00:00:00Z").await;
    let (outcome, message) = renew_outcome(&env, "paused", "2030-01-01T00:00:00Z").await;
    assert_eq!(outcome, "Refused");
    assert!(message.contains("suspended"), "{message}");
    assert_eq!(events(&env, "paused", "RenewRefused").await.len(), 1);

    // A login the server ended: the renew is tried once, refused, and never sent again.
    let stored = secret_data(&env, "dead-refresh").await.unwrap()["refresh_token"].clone();
    si.end_chain(&stored);
    let sent = si.counters().token_requests;
    let ran = renew(&env, "dead", "60s").await;
    assert_eq!(ran.code, Some(3), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("Refused") && ran.stdout.contains("log in again"),
        "{}",
        ran.stdout
    );
    assert_eq!(si.counters().token_requests, sent + 1);
    let ran = renew(&env, "dead", "60s").await;
    assert_eq!(ran.code, Some(3));
    assert!(ran.stdout.contains("log in again"), "{}", ran.stdout);
    assert_eq!(
        si.counters().token_requests,
        sent + 1,
        "a dead login is not sent again"
    );
    let cr = env.api::<EagleEyeCredential>().get("dead").await.unwrap();
    let history = cr.status.unwrap().history;
    assert_eq!(history.last().unwrap().outcome, "ReauthorizationRequired");
}
