//! A credential touches only what it owns (issue 9): the target Secret is written only when
//! the credential created it or someone who may write that Secret opted in, and deleting a
//! credential never deletes a Secret it did not create. Observed as a user would: status,
//! Events, the Secrets themselves and what the auth stand-in saw.

use std::time::Duration;

use crate::support::operator::{
    Operator, create_credential, create_secrets, login, ready, secret_data, stand_in,
    wait_for_reason,
};
use crate::support::{TestEnv, env, eventually};
use eagle_eye_operator::crd::EagleEyeCredential;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

const ADOPT: &str = "eagle-eye-operator.io/adopt";

/// Another application's Secret, as its owner created it.
async fn create_app_secret(env: &TestEnv, name: &str) {
    let s: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {"password": "hunter2"},
    }))
    .unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

async fn owners(env: &TestEnv, name: &str) -> Vec<OwnerReference> {
    env.api::<Secret>()
        .get(name)
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap_or_default()
}

async fn warnings(env: &TestEnv, credential: &str, reason: &str) -> usize {
    env.api::<Event>()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(credential))
        .count()
}

#[tokio::test]
async fn an_existing_secret_is_written_only_once_its_writer_opts_in_and_outlives_the_credential() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "adopt-client", true).await;
    create_secrets(&env, "adopter", &login).await;
    create_app_secret(&env, "app-password").await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(
        &env,
        "adopter",
        &si,
        serde_json::json!({"target": {"name": "app-password"}}),
    )
    .await;

    wait_for_reason(&env, "adopter", "TargetConflict", Duration::from_secs(30)).await;
    let (_, _, message) = ready(&env, "adopter").await.unwrap();
    assert!(
        message.contains(&format!("{ADOPT}=adopter")),
        "the message says how to opt in: {message}"
    );
    assert_eq!(warnings(&env, "adopter", "TargetConflict").await, 1);
    let data = secret_data(&env, "app-password").await.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["password"],
        "nothing written"
    );
    assert!(owners(&env, "app-password").await.is_empty());
    assert_eq!(
        si.counters().token_requests,
        0,
        "no token spent for an answer it could not publish"
    );

    // The Secret's writer opts in: published beside what was there, and never owned.
    env.api::<Secret>()
        .patch(
            "app-password",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {ADOPT: "adopter"}}})),
        )
        .await
        .unwrap();
    wait_for_reason(&env, "adopter", "TokenRefreshed", Duration::from_secs(330)).await;
    let data = secret_data(&env, "app-password").await.unwrap();
    assert_eq!(data["password"], "hunter2");
    assert!(data.contains_key("access_token"));
    assert!(owners(&env, "app-password").await.is_empty());

    // Deleting both credentials: the garbage collector removes the target the other one
    // created, and leaves the adopted Secret alone.
    login_for(&env, &si, "creator").await;
    wait_for_reason(&env, "creator", "TokenRefreshed", Duration::from_secs(30)).await;
    assert_eq!(owners(&env, "creator-token").await.len(), 1);
    for name in ["adopter", "creator"] {
        env.api::<EagleEyeCredential>()
            .delete(name, &DeleteParams::background())
            .await
            .unwrap();
    }
    eventually(
        "the garbage collector deletes the target the credential created",
        Duration::from_secs(60),
        || async {
            secret_data(&env, "creator-token")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    let data = secret_data(&env, "app-password").await;
    assert_eq!(
        data.as_ref().map(|d| d["password"].as_str()),
        Some("hunter2"),
        "the adopted Secret outlives the credential"
    );
}

/// Creates a credential `name` with a login of its own and the default target.
async fn login_for(env: &TestEnv, si: &eagle_eye_testbed::standin::StandIn, name: &str) {
    let login = login(si, &format!("{name}-client-id"), true).await;
    create_secrets(env, name, &login).await;
    create_credential(env, name, si, serde_json::json!({})).await;
}

#[tokio::test]
async fn of_two_credentials_naming_one_target_the_first_keeps_it() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let _op = Operator::start(&env, &si, &[]).await;
    login_for(&env, &si, "first").await;
    wait_for_reason(&env, "first", "TokenRefreshed", Duration::from_secs(30)).await;
    let published = secret_data(&env, "first-token").await.unwrap()["access_token"].clone();

    let login = login(&si, "second-client-id", true).await;
    create_secrets(&env, "second", &login).await;
    let requests = si.counters().token_requests;
    create_credential(
        &env,
        "second",
        &si,
        serde_json::json!({"target": {"name": "first-token"}}),
    )
    .await;
    wait_for_reason(&env, "second", "TargetConflict", Duration::from_secs(30)).await;
    let (_, _, message) = ready(&env, "second").await.unwrap();
    assert!(
        message.contains("EagleEyeCredential \"first\""),
        "{message}"
    );
    // Even an opt-in on it cannot hand another credential's target over: after the
    // annotation, a spec change makes sure a reconcile looked again.
    env.api::<Secret>()
        .patch(
            "first-token",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {ADOPT: "second"}}})),
        )
        .await
        .unwrap();
    let cr = env
        .api::<EagleEyeCredential>()
        .patch(
            "second",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"refreshBefore": "20m"}})),
        )
        .await
        .unwrap();
    let generation = cr.metadata.generation;
    let looked = eventually(
        "a reconcile of the changed spec",
        Duration::from_secs(30),
        || async {
            let cr = env.api::<EagleEyeCredential>().get("second").await.ok()?;
            let status = cr.status?;
            (status.observed_generation == generation).then_some(status)
        },
    )
    .await;
    let ready = looked
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "TargetConflict");
    assert_eq!(
        secret_data(&env, "first-token").await.unwrap()["access_token"],
        published
    );
    assert_eq!(
        si.counters().token_requests,
        requests,
        "the second credential spent nothing"
    );
    let owner = owners(&env, "first-token").await;
    assert_eq!(owner.len(), 1);
    assert_eq!(owner[0].name, "first");
}
