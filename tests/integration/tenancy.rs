//! A credential touches only what it owns (issue 9): the target Secret is written only when
//! the credential created it or someone who may write that Secret opted in, and deleting a
//! credential never deletes a Secret it did not create. Observed as a user would: status,
//! Events, the Secrets themselves and what the auth stand-in saw.

use std::time::Duration;

use crate::support::operator::{
    Operator, create_credential, create_secrets, credential, events, login, ready, secret,
    secret_data, set_flag, stand_in, wait_for_reason,
};
use crate::support::{TestEnv, env, eventually, figure, get, series};
use eagle_eye_operator::crd::EagleEyeCredential;
use k8s_openapi::api::core::v1::Secret;
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

/// Opts Secret `name` in as the target of `credential`, as that Secret's writer would.
async fn opt_in(env: &TestEnv, name: &str, credential: &str) {
    env.api::<Secret>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {ADOPT: credential}}})),
        )
        .await
        .unwrap();
}

/// Merges `spec` into credential `name` and returns its Ready condition once a reconcile of
/// the new generation reported: whatever it says was decided after the change.
async fn change_spec(env: &TestEnv, name: &str, spec: serde_json::Value) -> (String, String) {
    let api = env.api::<EagleEyeCredential>();
    let cr = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": spec })),
        )
        .await
        .unwrap();
    let generation = cr.metadata.generation;
    eventually(
        "a reconcile of the changed spec",
        Duration::from_secs(30),
        || async {
            let status = api.get(name).await.ok()?.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (status.observed_generation == generation)
                .then(|| (ready.reason.clone(), ready.message.clone()))
        },
    )
    .await
}

async fn warnings(env: &TestEnv, credential: &str, reason: &str) -> usize {
    events(env, credential, reason)
        .await
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
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
    opt_in(&env, "app-password", "adopter").await;
    wait_for_reason(&env, "adopter", "TokenRefreshed", Duration::from_secs(330)).await;
    let data = secret_data(&env, "app-password").await.unwrap();
    assert_eq!(data["password"], "hunter2");
    assert!(data.contains_key("access_token"));
    assert!(owners(&env, "app-password").await.is_empty());

    // Whoever may edit the credential cannot turn the opt-in against the application: a
    // key of its choosing that the application wrote is never written over.
    let (reason, message) = change_spec(
        &env,
        "adopter",
        serde_json::json!({"target": {"keys": {"accessToken": "password"}}}),
    )
    .await;
    assert_eq!(reason, "TargetConflict", "{message}");
    assert!(message.contains("\"password\""), "{message}");
    assert_eq!(
        secret_data(&env, "app-password").await.unwrap()["password"],
        "hunter2"
    );

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
    opt_in(&env, "first-token", "second").await;
    let (reason, _) =
        change_spec(&env, "second", serde_json::json!({"refreshBefore": "20m"})).await;
    assert_eq!(reason, "TargetConflict");
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

#[tokio::test]
async fn a_deleted_credentials_metric_series_are_gone_within_ten_seconds() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let op = Operator::start(&env, &si, &[]).await;
    login_for(&env, &si, "gone").await;
    login_for(&env, &si, "stays").await;
    for name in ["gone", "stays"] {
        wait_for_reason(&env, name, "TokenRefreshed", Duration::from_secs(30)).await;
    }
    let addr = op.admin_addr().await;
    let ready_of = |name: &str| {
        format!(
            r#"eagle_eye_credential_ready{{namespace="{}",credential="{name}"}}"#,
            env.namespace
        )
    };
    let text = get(addr, "/metrics").await.1;
    assert_eq!(series(&text, &ready_of("gone")), Some(1.0), "{text}");

    env.api::<EagleEyeCredential>()
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    let deleted = std::time::Instant::now();
    let gone = format!(r#"namespace="{}",credential="gone""#, env.namespace);
    let text = eventually(
        "no series of the deleted credential",
        Duration::from_secs(10),
        || async {
            let text = get(addr, "/metrics").await.1;
            (!text.is_empty() && !text.contains(&gone)).then_some(text)
        },
    )
    .await;
    figure(format!(
        "a deleted credential's series were gone {:?} after the delete",
        deleted.elapsed()
    ));
    assert_eq!(
        series(&text, &ready_of("stays")),
        Some(1.0),
        "the other credential's series stay"
    );
}

#[tokio::test]
async fn an_immutable_refresh_token_secret_is_refused_before_anything_is_spent() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "frozen-client", true).await;
    let api = env.api::<Secret>();
    let client = secret(
        "frozen-client",
        &[
            ("client_id", &login.client_id),
            ("client_secret", &login.client_secret),
        ],
    );
    api.create(&PostParams::default(), &client).await.unwrap();
    let mut refresh = secret(
        "frozen-refresh",
        &[("refresh_token", &login.grant.refresh_token)],
    );
    refresh.immutable = Some(true);
    api.create(&PostParams::default(), &refresh).await.unwrap();
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "frozen", &si, serde_json::json!({})).await;

    wait_for_reason(&env, "frozen", "SecretImmutable", Duration::from_secs(30)).await;
    let (_, _, message) = ready(&env, "frozen").await.unwrap();
    assert!(
        message.contains("\"frozen-refresh\"") && message.contains("immutable"),
        "{message}"
    );
    assert!(!message.contains(&login.grant.refresh_token));
    assert_eq!(warnings(&env, "frozen", "SecretImmutable").await, 1);
    assert_eq!(si.counters().token_requests, 0, "nothing spent");
}

/// A client acting as `user`, who may create, change and delete credentials in the test's
/// namespace and do nothing else (in particular, neither read nor write Secrets).
async fn tenant(env: &TestEnv, user: &str) -> kube::Client {
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "credential-editor"},
        "rules": [{
            "apiGroups": ["eagle-eye-operator.io"],
            "resources": ["eagleeyecredentials"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }],
    }))
    .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "credential-editor"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "credential-editor"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .unwrap();
    env.api()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    env.api()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    crate::support::client_as(env, user).await
}

/// Issue 9's tenant: may create credentials, not Secrets. Each attack ends in a condition
/// and an Event (or the API server's refusal), no Secret it did not create is changed or
/// deleted, and nothing reaches an auth host outside the allow-list.
#[tokio::test]
async fn a_tenant_who_may_create_credentials_but_not_secrets_cannot_reach_beyond_them() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let outside =
        eagle_eye_testbed::standin::StandIn::start(eagle_eye_testbed::standin::StandInConfig {
            tls: false,
            ..Default::default()
        })
        .await
        .unwrap();
    // Another application's Secret, and the Secrets the platform team made for the tenant.
    create_app_secret(&env, "app-password").await;
    let own = login(&si, "tenant-client", true).await;
    create_secrets(&env, "mine", &own).await;
    let mut op = Operator::start(&env, &si, &["--allow-insecure-http"]).await;
    // The stand-in's port of 127.0.0.1 only: `localhost` stays outside.
    let allowed = format!("127.0.0.1:{}", si.url().port().unwrap());
    op.set_args(|args| set_flag(args, "--allowed-auth-hosts", &allowed))
        .await;
    let as_tenant = tenant(&env, "tenant").await;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(as_tenant.clone(), &env.namespace);
    let creds: kube::Api<EagleEyeCredential> = kube::Api::namespaced(as_tenant, &env.namespace);
    let forbidden = secrets
        .create(&PostParams::default(), &secret("sneaky", &[("k", "v")]))
        .await
        .expect_err("the tenant may not write Secrets");
    assert!(forbidden.to_string().contains("forbidden"), "{forbidden}");

    // The tenant's credentials, on the Secrets made for it, with `extra` in the spec.
    let cr = |name: &str, extra: serde_json::Value| {
        let mut spec = serde_json::json!({
            "clientSecretRef": {"name": "mine-client"},
            "refreshTokenSecretRef": {"name": "mine-refresh"},
        });
        if let (Some(base), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        credential(name, &si, spec)
    };

    // 1. Publish into another application's Secret (and have it deleted with the credential).
    creds
        .create(
            &PostParams::default(),
            &cr(
                "grab",
                serde_json::json!({"target": {"name": "app-password"}}),
            ),
        )
        .await
        .unwrap();
    wait_for_reason(&env, "grab", "TargetConflict", Duration::from_secs(30)).await;
    assert_eq!(warnings(&env, "grab", "TargetConflict").await, 1);

    // 2. Publish over the very Secret holding the login: the API server refuses it.
    let refused = creds
        .create(
            &PostParams::default(),
            &cr(
                "self",
                serde_json::json!({"target": {"name": "mine-refresh"}}),
            ),
        )
        .await
        .expect_err("a target that is an input Secret");
    assert!(
        refused
            .to_string()
            .contains("must not be the client or refresh-token Secret"),
        "{refused}"
    );

    // 3. Name another application's Secret as the login: its value is refused by the
    // allowed auth server, and the Secret keeps its data and annotations (the spend intent
    // recorded on it is withdrawn once the call has ended).
    let app_before = env.api::<Secret>().get("app-password").await.unwrap();
    creds
        .create(
            &PostParams::default(),
            &cr(
                "borrow",
                serde_json::json!({"refreshTokenSecretRef": {"name": "app-password", "key": "password"}}),
            ),
        )
        .await
        .unwrap();
    wait_for_reason(
        &env,
        "borrow",
        "ReauthorizationRequired",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(warnings(&env, "borrow", "ReauthorizationRequired").await, 1);
    let app_after = env.api::<Secret>().get("app-password").await.unwrap();
    assert_eq!(app_after.data, app_before.data);
    assert_eq!(
        app_after.metadata.annotations,
        app_before.metadata.annotations
    );
    creds
        .delete("borrow", &DeleteParams::default())
        .await
        .unwrap();

    // 4. Send the client secret and refresh token to a server of the tenant's choosing.
    let port = outside.url().port().unwrap();
    creds
        .create(
            &PostParams::default(),
            &cr(
                "exfil",
                serde_json::json!({"authUrl": format!("http://localhost:{port}")}),
            ),
        )
        .await
        .unwrap();
    wait_for_reason(&env, "exfil", "InvalidSpec", Duration::from_secs(30)).await;
    assert!(warnings(&env, "exfil", "InvalidSpec").await >= 1);

    assert_eq!(
        outside.counters().token_requests,
        0,
        "nothing reached the host outside the allow-list"
    );

    // The attempts deleted, a legitimate credential on the same Secrets works (so the
    // operator did reconcile the tenant's objects all along) and creates its own target.
    for name in ["grab", "exfil"] {
        creds.delete(name, &DeleteParams::default()).await.unwrap();
    }
    creds
        .create(&PostParams::default(), &cr("legit", serde_json::json!({})))
        .await
        .unwrap();
    wait_for_reason(&env, "legit", "TokenRefreshed", Duration::from_secs(30)).await;
    assert_eq!(outside.counters().token_requests, 0);

    // Deleting what it made removes its own target and nothing else.
    creds
        .delete("legit", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the garbage collector deletes the tenant's own target",
        Duration::from_secs(60),
        || async {
            secret_data(&env, "legit-token")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    let app = secret_data(&env, "app-password").await.unwrap();
    assert_eq!(app.keys().collect::<Vec<_>>(), ["password"]);
    assert_eq!(app["password"], "hunter2");
    assert!(owners(&env, "app-password").await.is_empty());
    for name in ["mine-client", "mine-refresh"] {
        assert!(
            secret_data(&env, name).await.is_some(),
            "{name} is still there"
        );
    }
}

/// A name taken as a target is never a login's home, and a login's Secret never becomes a
/// target: deleting the credential that owns a target would delete the login with it.
#[tokio::test]
async fn a_target_and_a_login_never_share_a_secret_whichever_came_first() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let _op = Operator::start(&env, &si, &[]).await;
    // A credential takes "later-refresh" as its target first.
    let first = login(&si, "squatter-client", true).await;
    create_secrets(&env, "squatter", &first).await;
    create_credential(
        &env,
        "squatter",
        &si,
        serde_json::json!({"target": {"name": "later-refresh"}}),
    )
    .await;
    wait_for_reason(&env, "squatter", "TokenRefreshed", Duration::from_secs(30)).await;
    // A person then stores a login in that Secret (as `authorize` merges into an existing
    // one) and creates a credential reading it.
    let second = login(&si, "later-client-id", true).await;
    env.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret(
                "later-client",
                &[
                    ("client_id", &second.client_id),
                    ("client_secret", &second.client_secret),
                ],
            ),
        )
        .await
        .unwrap();
    env.api::<Secret>()
        .patch(
            "later-refresh",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "stringData": {"refresh_token": second.grant.refresh_token},
            })),
        )
        .await
        .unwrap();
    let requests = si.counters().token_requests;
    create_credential(&env, "later", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "later", "TargetConflict", Duration::from_secs(30)).await;
    let (_, _, message) = ready(&env, "later").await.unwrap();
    assert!(
        message.contains("\"squatter\"") && !message.contains(&second.grant.refresh_token),
        "{message}"
    );
    assert_eq!(
        si.counters().token_requests,
        requests,
        "the login was not spent"
    );

    // The other way round: a Secret a credential reads is never taken as a target.
    let third = login(&si, "grabber-client-id", true).await;
    create_secrets(&env, "grabber", &third).await;
    create_credential(
        &env,
        "grabber",
        &si,
        serde_json::json!({"target": {"name": "later-client"}}),
    )
    .await;
    wait_for_reason(&env, "grabber", "TargetConflict", Duration::from_secs(30)).await;
    let (_, _, message) = ready(&env, "grabber").await.unwrap();
    assert!(message.contains("\"later\" reads"), "{message}");
    assert!(owners(&env, "later-client").await.is_empty());
}
