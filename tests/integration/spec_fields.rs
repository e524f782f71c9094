//! Spec fields and status a user relies on beyond the defaults: `suspend`, the
//! `ReloginSoon` warning ahead of the 90-day chain end, and a target Secret with a name and
//! keys of the user's choosing. Observed as a user would: status, Events, the target Secret
//! and what the auth stand-in saw.

use std::time::Duration;

use crate::support::operator::{
    Operator, api_accepts, create_credential, create_secrets, events, login, ready, secret_data,
    stand_in, wait_for_reason,
};
use crate::support::{TestEnv, env, eventually};
use eagle_eye_operator::crd::EagleEyeCredential;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};

fn hours(h: i64) -> SignedDuration {
    SignedDuration::from_hours(h)
}

async fn patch_spec(env: &TestEnv, name: &str, spec: serde_json::Value) {
    env.api::<EagleEyeCredential>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

/// Records the Phase 1 login as having happened `ago` (in whole seconds, as `authorize`
/// writes it).
async fn set_login_time(env: &TestEnv, secret: &str, ago: SignedDuration) -> Timestamp {
    let login_time = Timestamp::from_second((Timestamp::now() - ago).as_second()).unwrap();
    env.api::<Secret>()
        .patch(
            secret,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                "eagle-eye-operator.io/login-time": login_time.to_string(),
            }}})),
        )
        .await
        .unwrap();
    login_time
}

fn condition(cr: &EagleEyeCredential, type_: &str) -> Condition {
    cr.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", cr.status))
        .clone()
}

#[tokio::test]
async fn a_suspended_credential_is_not_refreshed_when_due_and_resumes_once_unsuspended() {
    let env = env().await;
    // 12-second tokens: a refresh is due 4 s (a third of their life) before expiry.
    let si = stand_in(Duration::from_secs(12)).await;
    let login = login(&si, "suspend-client", true).await;
    create_secrets(&env, "sus", &login).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "sus", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "sus", "TokenRefreshed", Duration::from_secs(30)).await;

    patch_spec(&env, "sus", serde_json::json!({"suspend": true})).await;
    wait_for_reason(&env, "sus", "Suspended", Duration::from_secs(30)).await;
    let (status, _, message) = ready(&env, "sus").await.unwrap();
    assert_eq!(status, "False");
    assert!(message.contains("suspended"), "{message}");
    let before = si.counters();
    let published = secret_data(&env, "sus-token").await.expect("target Secret");
    let expires_at: Timestamp = published["expires_at"].parse().unwrap();

    // Nothing may happen now, so there is no state to wait on: wait until the published
    // token has been expired for 3 s. Its refresh was due at least 4 s before expiry, so
    // an operator that ignored `suspend` has had over 7 s to call the token endpoint; the
    // refreshes in these tests take well under a second.
    eventually(
        "the published token to be expired for 3 s",
        Duration::from_secs(30),
        || async { (Timestamp::now() > expires_at + SignedDuration::from_secs(3)).then_some(()) },
    )
    .await;
    assert_eq!(
        si.counters().token_requests,
        before.token_requests,
        "no token-endpoint call while suspended"
    );
    assert_eq!(ready(&env, "sus").await.unwrap().1, "Suspended");
    let left = secret_data(&env, "sus-token").await.expect("target Secret");
    assert_eq!(
        left["access_token"], published["access_token"],
        "the target Secret is left as it is"
    );
    assert!(
        !api_accepts(&si, &left["base_url"], &left["access_token"]).await,
        "and its token expires"
    );

    patch_spec(&env, "sus", serde_json::json!({"suspend": false})).await;
    let cr = wait_for_reason(&env, "sus", "TokenRefreshed", Duration::from_secs(30)).await;
    assert_eq!(condition(&cr, "Ready").status, "True");
    assert!(si.counters().refreshes > before.refreshes);
    let data = secret_data(&env, "sus-token").await.expect("target Secret");
    assert!(api_accepts(&si, &data["base_url"], &data["access_token"]).await);
    assert_eq!(si.counters().reused_refresh_tokens, 0);
}

#[tokio::test]
async fn a_login_near_its_90_day_end_reports_relogin_soon_with_a_warning_event_and_still_works() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "soon-client", true).await;
    create_secrets(&env, "soon", &login).await;
    // 85 days and 12 hours after the login, the chain has 4.5 days left: inside the
    // operator's default --relogin-warning of 7 days, and half a day from a day boundary.
    let login_time = set_login_time(&env, "soon-refresh", hours(85 * 24 + 12)).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "soon", &si, serde_json::json!({})).await;

    let cr = wait_for_reason(&env, "soon", "TokenRefreshed", Duration::from_secs(30)).await;
    assert_eq!(condition(&cr, "Ready").status, "True");
    let relogin = condition(&cr, "ReloginSoon");
    assert_eq!(
        (relogin.status.as_str(), relogin.reason.as_str()),
        ("True", "DeadlineNear"),
        "{}",
        relogin.message
    );
    assert!(
        relogin.message.contains("in 4 days") && relogin.message.contains("Phase 1 login"),
        "{}",
        relogin.message
    );
    let status = cr.status.unwrap();
    assert_eq!(
        status.refresh_token_deadline.unwrap().0,
        login_time + hours(90 * 24),
        "the deadline is the chain's end, counted from the login-time annotation"
    );
    assert!(!status.refresh_token_deadline_is_estimate);
    // The Event is published before the status that reports the condition.
    let warnings = events(&env, "soon", "ReloginSoon").await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    let note = warnings[0].note.as_deref().unwrap_or_default();
    assert!(note.contains("Phase 1 login"), "{note}");

    let data = secret_data(&env, "soon-token")
        .await
        .expect("target Secret");
    assert!(api_accepts(&si, &data["base_url"], &data["access_token"]).await);
}

#[tokio::test]
async fn a_login_far_from_its_deadline_reports_no_relogin_soon() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "far-client", true).await;
    create_secrets(&env, "far", &login).await;
    set_login_time(&env, "far-refresh", hours(24)).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "far", &si, serde_json::json!({})).await;

    let cr = wait_for_reason(&env, "far", "TokenRefreshed", Duration::from_secs(30)).await;
    let relogin = condition(&cr, "ReloginSoon");
    assert_eq!(
        (relogin.status.as_str(), relogin.reason.as_str()),
        ("False", "DeadlineFar"),
        "{}",
        relogin.message
    );
    let deadline = cr.status.unwrap().refresh_token_deadline.unwrap().0;
    assert!(deadline > Timestamp::now() + hours(7 * 24));
    // An Event would have been published before the status above.
    assert_eq!(events(&env, "far", "ReloginSoon").await, []);
}

#[tokio::test]
async fn a_custom_target_name_and_keys_are_published_instead_of_the_defaults() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "target-client", true).await;
    create_secrets(&env, "ct", &login).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(
        &env,
        "ct",
        &si,
        serde_json::json!({"target": {
            "name": "cameras-api",
            "labels": {"team": "video"},
            "annotations": {"example.com/owner": "video-team"},
            // An empty name leaves a key out.
            "keys": {
                "accessToken": "EEN_TOKEN",
                "baseUrl": "EEN_BASE_URL",
                "expiresAt": "EEN_EXPIRES_AT",
                "hostname": "",
                "port": "",
                "tokenType": "",
            },
        }}),
    )
    .await;

    let cr = wait_for_reason(&env, "ct", "TokenRefreshed", Duration::from_secs(30)).await;
    let data = secret_data(&env, "cameras-api")
        .await
        .expect("the named target Secret");
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["EEN_BASE_URL", "EEN_EXPIRES_AT", "EEN_TOKEN"]);
    assert!(
        api_accepts(&si, &data["EEN_BASE_URL"], &data["EEN_TOKEN"]).await,
        "the published token works"
    );
    let expires: Timestamp = data["EEN_EXPIRES_AT"].parse().unwrap();
    let status = cr.status.unwrap();
    assert_eq!(status.access_token_expires_at.unwrap().0, expires);
    assert_eq!(status.target_secret_name.as_deref(), Some("cameras-api"));
    assert!(
        secret_data(&env, "ct-token").await.is_none(),
        "no Secret under the default name"
    );

    let secret = env.api::<Secret>().get("cameras-api").await.unwrap();
    let meta = &secret.metadata;
    assert_eq!(meta.labels.as_ref().unwrap()["team"], "video");
    assert_eq!(
        meta.annotations.as_ref().unwrap()["example.com/owner"],
        "video-team"
    );
    let owner = &meta.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("EagleEyeCredential", "ct")
    );
}
