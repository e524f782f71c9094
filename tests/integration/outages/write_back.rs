//! The window between receiving a rotated refresh token and storing it: these tests stop
//! kube-apiserver while a rotated token is held.

use std::time::Duration;

use crate::support::operator::{
    Operator, create_credential, create_secrets, login, ready, secret_data, stand_in,
    wait_for_reason,
};
use crate::support::{eventually, own_env};
use eagle_eye_operator::crd::EagleEyeCredential;
use kube::api::{Patch, PatchParams};

#[tokio::test]
async fn a_rotated_token_is_held_in_memory_through_an_api_server_outage() {
    let env = own_env().await;
    let si = stand_in(Duration::from_secs(8)).await;
    let login = login(&si, "outage-client", true).await;
    create_secrets(&env, "outage", &login).await;
    let op = Operator::start(
        &env,
        &si,
        &["--no-leader-election", "--token-timeout", "10s"],
    )
    .await;
    create_credential(&env, "outage", &si, serde_json::json!({})).await;
    super::refresh_during_outage(&env, &si, &op, "outage").await;

    env.plane.start_apiserver().await.unwrap();
    let stored = eventually(
        "the held token to be stored",
        Duration::from_secs(60),
        || async {
            let d = secret_data(&env, "outage-refresh").await?;
            si.refresh_token_is_live(&d["refresh_token"]).then_some(d)
        },
    )
    .await;
    assert_ne!(stored["refresh_token"], login.grant.refresh_token);
    // The access token received with it may have expired during the outage; either way a
    // live one is published next.
    eventually(
        "a live access token in the target Secret",
        Duration::from_secs(30),
        || async {
            let d = secret_data(&env, "outage-token").await?;
            si.access_token_is_live(&d["access_token"]).then_some(())
        },
    )
    .await;
    assert_eq!(ready(&env, "outage").await.unwrap().0, "True");
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "the dead token was never spent again"
    );
}

/// The one window no operator can close: the process dies after the auth server rotated
/// the token and before kube-apiserver stored it. The new token existed only in memory, so
/// the login is lost; the operator says so plainly instead of retrying forever.
#[tokio::test]
async fn killing_the_operator_before_the_write_back_loses_the_login_and_says_so() {
    let env = own_env().await;
    let si = stand_in(Duration::from_secs(8)).await;
    let login = login(&si, "crash-client", true).await;
    create_secrets(&env, "crash", &login).await;
    // The killed process's spend intent binds its successor for the call's limit (the 30 s a
    // slot may be held, then --token-timeout) plus --in-flight-grace: about 41 s here.
    let mut op = Operator::start(
        &env,
        &si,
        &[
            "--no-leader-election",
            "--token-timeout",
            "10s",
            "--in-flight-grace",
            "1s",
        ],
    )
    .await;
    create_credential(&env, "crash", &si, serde_json::json!({})).await;
    super::refresh_during_outage(&env, &si, &op, "crash").await;

    op.kill().await;
    env.plane.start_apiserver().await.unwrap();
    op.restart().await;
    // The new process cannot know whether the killed one's answer came: it waits out the
    // spend intent rather than spend the token at once, and says so.
    eventually(
        "a RefreshDeferred Event",
        Duration::from_secs(30),
        || async {
            env.api::<k8s_openapi::api::events::v1::Event>()
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .any(|e| e.reason.as_deref() == Some("RefreshDeferred"))
                .then_some(())
        },
    )
    .await;
    // Past the intent, a process that has just started waits 90 s more
    // (`intent::AFTER_OUTAGE`: a live holder may still store an answer it kept).
    wait_for_reason(
        &env,
        "crash",
        "ReauthorizationRequired",
        Duration::from_secs(180),
    )
    .await;
    let (_, _, message) = ready(&env, "crash").await.unwrap();
    println!("after the crash: {message}");
    assert!(message.contains("Phase 1"), "{message}");

    // The refused token is never sent again: not on any retry schedule (whose first retry
    // would be due a second after the failure), nor when the spec changes.
    let api = env.api::<EagleEyeCredential>();
    let failed_at = api
        .get("crash")
        .await
        .unwrap()
        .status
        .unwrap()
        .last_failure_time;
    let failed_at = failed_at.expect("failure time recorded").0;
    eventually(
        "three seconds past the failure",
        Duration::from_secs(10),
        || async {
            (jiff::Timestamp::now() > failed_at + jiff::SignedDuration::from_secs(3)).then_some(())
        },
    )
    .await;
    let changed = api
        .patch(
            "crash",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"refreshBefore": "20m"}})),
        )
        .await
        .unwrap();
    let generation = changed.metadata.generation;
    let seen = eventually(
        "the spec change reconciled",
        Duration::from_secs(30),
        || async {
            let cr = api.get("crash").await.ok()?;
            let status = cr.status?;
            (status.observed_generation == generation).then_some(status)
        },
    )
    .await;
    assert!(seen.refused_login_fingerprint.is_some());
    assert_eq!(
        ready(&env, "crash").await.unwrap().1,
        "ReauthorizationRequired"
    );
    assert_eq!(
        si.counters().reused_refresh_tokens,
        1,
        "the restarted operator spent the stored, already rotated token once, and only once"
    );

    // The README's way to make the operator try a refused login again anyway (after an
    // auth-server incident, say): clear the mark in the status.
    api.patch_status(
        "crash",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"refusedLoginFingerprint": null}})),
    )
    .await
    .unwrap();
    eventually(
        "the login tried again, and refused again",
        Duration::from_secs(30),
        || async {
            let status = api.get("crash").await.ok()?.status?;
            (si.counters().reused_refresh_tokens == 2 && status.refused_login_fingerprint.is_some())
                .then_some(())
        },
    )
    .await;
}
