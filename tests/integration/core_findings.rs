//! Findings 1–4 of issue 19, acted out on the test bed as a user would meet them: a token
//! copy that survives a restart, a revocation that kills a copy's login, an adopted target
//! that comes back unowned, and a publish that hammers the API server while something
//! keeps writing its target. Each test orders the race it needs (a Secret the operator may
//! not read yet, a token call held at the stand-in) instead of hoping for it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::operator::{
    Operator, create_credential, create_secrets, create_secrets_holding, events, login, ready,
    secret_data, stand_in, wait_for_reason,
};
use crate::support::{TestEnv, client_as, env, eventually, within};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::{Fault, Gate, StandIn};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;

const WORKING: [&str; 2] = ["TokenRefreshed", "TokenValid"];
const ADOPT: &str = "eagle-eye-operator.io/adopt";

async fn stored_refresh_token(env: &TestEnv, name: &str) -> Option<String> {
    secret_data(env, &format!("{name}-refresh"))
        .await?
        .remove("refresh_token")
}

/// `Ready=<status> <reason>` of a credential, without its message (which a failure
/// message would not need, and which must never carry a secret anyway).
async fn reason_of(env: &TestEnv, name: &str) -> String {
    match ready(env, name).await {
        Some((status, reason, _)) => format!("Ready={status} {reason}"),
        None => "no Ready condition".into(),
    }
}

/// Waits until the stand-in holds a token request (one dealt `Fault::Hold`).
async fn a_call_is_held(si: &StandIn) {
    eventually(
        "a token call held at the stand-in",
        Duration::from_secs(60),
        || async {
            si.token_requests()
                .iter()
                .any(|r| r.status.is_none())
                .then_some(())
        },
    )
    .await;
}

// The operator's rights, granted per Secret, so that a test can make one credential's
// Secret unreadable for a while: the deterministic way to have that credential
// reconciled after the others once a new process starts (RBAC is additive, so the
// operator runs as a user of its own with nothing but these grants).

/// A user for the operator, with everything it needs in `envs` except reading Secrets,
/// which `allow_reading` grants by name; and a kubeconfig that acts as that user.
async fn operator_user(envs: &[&TestEnv]) -> (String, std::path::PathBuf) {
    let user = format!("eagle-eye-op-{:08x}", rand::random::<u32>());
    for env in envs {
        let rules = serde_json::json!([
            {"apiGroups": [eagle_eye_operator::crd::GROUP],
             "resources": ["eagleeyecredentials", "eagleeyecredentials/status",
                           "eagleeyecredentials/finalizers"],
             "verbs": ["*"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": [""], "resources": ["secrets"],
             "verbs": ["list", "watch", "create", "update", "patch"]},
        ]);
        apply_role(env, &user, "operator-base", rules).await;
    }
    let kubeconfig = envs[0].plane.kubeconfig_path();
    let mut config: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    for entry in config["users"].as_array_mut().unwrap() {
        entry["user"]["as"] = user.clone().into();
    }
    let path = std::env::temp_dir().join(format!("kubeconfig-{user}"));
    std::fs::write(&path, serde_saphyr::to_string(&config).unwrap()).unwrap();
    (user, path)
}

/// A Role `name` with `rules` in the test's namespace, bound to `user` (created or
/// replaced).
async fn apply_role(env: &TestEnv, user: &str, name: &str, rules: serde_json::Value) {
    let params = PatchParams::apply("core-findings-test").force();
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name}, "rules": rules,
    });
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    });
    env.api::<k8s_openapi::api::rbac::v1::Role>()
        .patch(name, &params, &Patch::Apply(&role))
        .await
        .unwrap();
    env.api::<k8s_openapi::api::rbac::v1::RoleBinding>()
        .patch(name, &params, &Patch::Apply(&binding))
        .await
        .unwrap();
}

/// Lets `user` read exactly the Secrets `names` of the test's namespace, and waits until
/// the API server's authorizer agrees (its RBAC cache trails a write a little), for
/// `also_denied` as well: each is then unreadable.
async fn allow_reading(env: &TestEnv, user: &str, names: &[&str], also_denied: &[&str]) {
    let rules = serde_json::json!([
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": names, "verbs": ["get"]},
    ]);
    apply_role(env, user, "operator-reads", rules).await;
    let as_user: Api<Secret> = Api::namespaced(client_as(env, user).await, &env.namespace);
    let forbidden = |r: Result<Option<Secret>, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    eventually(
        "the operator's Secret reads as granted",
        Duration::from_secs(20),
        || async {
            for name in names {
                if forbidden(as_user.get_opt(name).await) {
                    return None;
                }
            }
            for name in also_denied {
                if !forbidden(as_user.get_opt(name).await) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// Whether the current operator process logged a finished reconcile of `namespace/name`
/// (the controller's own line, with or without an error).
fn reconciled_by_current_process(op: &Operator, namespace: &str, name: &str) -> bool {
    let me = format!("/{name}.{namespace}");
    let key = format!("credential={namespace}/{name}");
    op.current_logs().lines().any(|l| {
        (l.contains("reconciled") && l.contains(&me))
            || (l.contains("reconcile failed") && l.contains(&key))
    })
}

/// How many reconciles of `namespace/name` the current operator process finished.
fn reconciles(op: &Operator, namespace: &str, name: &str) -> usize {
    let me = format!("/{name}.{namespace}");
    op.current_logs()
        .lines()
        .filter(|l| l.contains("reconciled") && l.contains(&me))
        .count()
}

/// Touches a Secret credential `name` reads and waits until the operator reconciled it
/// again: whatever it remembers about the credential's stored token is then up to date.
/// (Right after a rotation the operator has not yet looked at the new token: a copy made
/// then races the original's next reconcile, which these tests do not mean to test.)
async fn reconciled_again(env: &TestEnv, op: &Operator, name: &str) {
    // The reconcile that reported the rotation logs its end a moment after the status
    // write: counted first, so that only a later reconcile (one that began after it: a
    // credential is never reconciled twice at once) ends the wait.
    let before = eventually(
        &format!("{name}'s reconcile logged"),
        Duration::from_secs(10),
        || async { Some(reconciles(op, &env.namespace, name)).filter(|n| *n > 0) },
    )
    .await;
    env.api::<Secret>()
        .patch(
            &format!("{name}-client"),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                "example.com/touched": rand::random::<u32>().to_string()}}})),
        )
        .await
        .unwrap();
    eventually(
        &format!("{name} reconciled again"),
        Duration::from_secs(30),
        || async { (reconciles(op, &env.namespace, name) > before).then_some(()) },
    )
    .await;
}

// Finding 1.

#[tokio::test]
async fn a_rotated_out_token_copied_to_another_namespace_is_never_spent_after_a_restart() {
    let (env_a, env_b) = (env().await, env().await);
    let si = stand_in(Duration::from_secs(3600)).await;
    let l = login(&si, "claims-restart", true).await;
    let t1 = l.grant.refresh_token.clone();
    create_secrets(&env_a, "a", &l).await;
    let (user, kubeconfig) = operator_user(&[&env_a, &env_b]).await;
    allow_reading(&env_a, &user, &["a-client", "a-refresh", "a-token"], &[]).await;
    allow_reading(&env_b, &user, &["b-client", "b-refresh", "b-token"], &[]).await;
    let watch_b = ["--namespaces", &env_b.namespace];
    let mut op = Operator::start_with_kubeconfig(&env_a, &si, &watch_b, &kubeconfig).await;
    create_credential(&env_a, "a", &si, serde_json::json!({})).await;
    wait_for_reason(&env_a, "a", "TokenRefreshed", Duration::from_secs(30)).await;
    let t2 = stored_refresh_token(&env_a, "a").await.unwrap();
    assert_ne!(t2, t1, "A rotated its token");

    // T1, rotated out by A, pasted into credential B of another namespace, same client.
    create_secrets_holding(&env_b, "b", &l, &t1).await;
    create_credential(&env_b, "b", &si, serde_json::json!({})).await;
    wait_for_reason(&env_b, "b", "RefreshTokenInUse", Duration::from_secs(30)).await;
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no reuse before the restart"
    );

    // A rolling update, during which A's refresh-token Secret cannot be read for a while
    // (an API server slow or failing for that read): B is reconciled first by the new
    // process, as it may be by chance on any restart.
    allow_reading(&env_a, &user, &["a-client", "a-token"], &["a-refresh"]).await;
    op.terminate().await;
    op.restart().await;
    let b_ns = env_b.namespace.clone();
    eventually(
        "B reconciled by the restarted operator",
        Duration::from_secs(60),
        || async {
            (si.counters().reused_refresh_tokens > 0
                || reconciled_by_current_process(&op, &b_ns, "b"))
            .then_some(())
        },
    )
    .await;
    // A is read again; once it is known, B is still refused.
    allow_reading(&env_a, &user, &["a-client", "a-refresh", "a-token"], &[]).await;
    let counters = si.counters();
    assert_eq!(
        counters.reused_refresh_tokens,
        0,
        "B spent the rotated-out token after the restart ({counters:?}); A: {}; B: {}",
        reason_of(&env_a, "a").await,
        reason_of(&env_b, "b").await
    );
    let a_token = stored_refresh_token(&env_a, "a").await.unwrap();
    assert!(si.refresh_token_is_live(&a_token), "A's login was lost");
    // B's own Secret lists T1 as spent since its first look (A had rotated it out), so the
    // new process knows it dead from B's Secret alone: in use by A, or rotated out.
    let refused = within(Duration::from_secs(60), || async {
        let (_, reason, _) = ready(&env_b, "b").await?;
        (["RefreshTokenInUse", "RefreshTokenReverted"].contains(&reason.as_str())
            && reconciled_by_current_process(&op, &env_a.namespace, "a"))
        .then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "B does not refuse its dead token once A is known: B: {}",
        reason_of(&env_b, "b").await
    );
    assert_eq!(si.counters().reused_refresh_tokens, 0);
}

// Finding 2.

/// Deletes credential `name`, without waiting.
async fn delete_credential(env: &TestEnv, name: &str) {
    env.api::<EagleEyeCredential>()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

async fn credential_gone(env: &TestEnv, name: &str) -> bool {
    matches!(
        env.api::<EagleEyeCredential>().get_opt(name).await,
        Ok(None)
    )
}

/// After A (revokeOnDelete) is gone: the login B holds a copy of was not revoked, and B
/// takes it over: it has refreshed since A's deletion began (`refreshes` before it).
async fn assert_copy_keeps_its_login(
    si: &StandIn,
    env_a: &TestEnv,
    env_b: &TestEnv,
    refreshes: u64,
) {
    let revoked = events(env_a, "a", "RefreshTokenRevoked").await.len();
    let live = within(Duration::from_secs(20), || async {
        let stored = stored_refresh_token(env_b, "b").await?;
        si.refresh_token_is_live(&stored).then_some(())
    })
    .await;
    assert!(
        live.is_some(),
        "the login B holds was revoked when A was deleted ({revoked} RefreshTokenRevoked Events for A; {:?}); B: {}",
        si.counters(),
        reason_of(env_b, "b").await
    );
    let working = within(Duration::from_secs(60), || async {
        let (_, reason, _) = ready(env_b, "b").await?;
        (WORKING.contains(&reason.as_str()) && si.counters().refreshes > refreshes).then_some(())
    })
    .await;
    assert!(
        working.is_some(),
        "B does not refresh the login once A is gone: B: {}; {:?}",
        reason_of(env_b, "b").await,
        si.counters()
    );
    let stored = stored_refresh_token(env_b, "b").await.unwrap();
    assert!(si.refresh_token_is_live(&stored));
    assert_eq!(si.counters().reused_refresh_tokens, 0);
}

/// Credential A (revokeOnDelete) Ready, and its live token copied into credential B of
/// another namespace, which says the token is in use.
async fn live_token_copied(
    env_a: &TestEnv,
    env_b: &TestEnv,
    si: &StandIn,
    l: &crate::support::operator::Login,
    op: &Operator,
) {
    create_credential(env_a, "a", si, serde_json::json!({"revokeOnDelete": true})).await;
    wait_for_reason(env_a, "a", "TokenRefreshed", Duration::from_secs(30)).await;
    reconciled_again(env_a, op, "a").await;
    let live = stored_refresh_token(env_a, "a").await.unwrap();
    create_secrets_holding(env_b, "b", l, &live).await;
    create_credential(env_b, "b", si, serde_json::json!({})).await;
    wait_for_reason(env_b, "b", "RefreshTokenInUse", Duration::from_secs(30)).await;
}

#[tokio::test]
async fn deleting_a_credential_with_revoke_on_delete_never_revokes_a_login_another_namespace_holds()
{
    let (env_a, env_b) = (env().await, env().await);
    let si = stand_in(Duration::from_secs(3600)).await;
    let l = login(&si, "revoke-copied", true).await;
    create_secrets(&env_a, "a", &l).await;
    let op = Operator::start(&env_a, &si, &["--namespaces", &env_b.namespace]).await;
    live_token_copied(&env_a, &env_b, &si, &l, &op).await;

    let refreshes = si.counters().refreshes;
    delete_credential(&env_a, "a").await;
    eventually("A gone", Duration::from_secs(60), || async {
        credential_gone(&env_a, "a").await.then_some(())
    })
    .await;
    assert_copy_keeps_its_login(&si, &env_a, &env_b, refreshes).await;
}

#[tokio::test]
async fn deleting_a_credential_with_revoke_on_delete_during_a_restart_never_revokes_a_login_another_namespace_holds()
 {
    let (env_a, env_b) = (env().await, env().await);
    let si = stand_in(Duration::from_secs(3600)).await;
    let l = login(&si, "revoke-copied-restart", true).await;
    create_secrets(&env_a, "a", &l).await;
    let (user, kubeconfig) = operator_user(&[&env_a, &env_b]).await;
    allow_reading(&env_a, &user, &["a-client", "a-refresh", "a-token"], &[]).await;
    allow_reading(&env_b, &user, &["b-client", "b-refresh", "b-token"], &[]).await;
    let watch_b = ["--namespaces", &env_b.namespace];
    let mut op = Operator::start_with_kubeconfig(&env_a, &si, &watch_b, &kubeconfig).await;
    live_token_copied(&env_a, &env_b, &si, &l, &op).await;

    // A is deleted while the operator is down (its finalizer holds it), and the new
    // process cannot read B's refresh-token Secret at first: A's deletion is handled
    // before B is known, as it may be by chance on any restart.
    allow_reading(&env_b, &user, &["b-client", "b-token"], &["b-refresh"]).await;
    op.terminate().await;
    let refreshes = si.counters().refreshes;
    delete_credential(&env_a, "a").await;
    op.restart().await;
    let a_ns = env_a.namespace.clone();
    eventually(
        "A's deletion handled by the restarted operator",
        Duration::from_secs(60),
        || async {
            (credential_gone(&env_a, "a").await || reconciled_by_current_process(&op, &a_ns, "a"))
                .then_some(())
        },
    )
    .await;
    allow_reading(&env_b, &user, &["b-client", "b-refresh", "b-token"], &[]).await;
    eventually("A gone", Duration::from_secs(90), || async {
        credential_gone(&env_a, "a").await.then_some(())
    })
    .await;
    assert_copy_keeps_its_login(&si, &env_a, &env_b, refreshes).await;
}

// Finding 3.

/// Every version of Secret `name` written from now on, as a watch sees them (a version
/// that lived a moment is seen too). Returns once the watch is established.
async fn versions_of(env: &TestEnv, name: &str) -> Arc<Mutex<Vec<Secret>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(env.api::<Secret>(), config).boxed();
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                    sink.lock().unwrap().push(s)
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .expect("the watch starts")
        .unwrap();
    seen
}

/// What a failure message may say about a Secret: its keys, owners and annotation names.
fn describe_secret(s: &Secret) -> String {
    let keys: Vec<_> = s.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
    let owners: Vec<_> = s
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|o| format!("{}/{}", o.kind, o.name))
        .collect();
    let annotations: Vec<_> = s
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    format!("data keys {keys:?}, owners {owners:?}, annotations {annotations:?}")
}

#[tokio::test]
async fn an_adopted_target_deleted_during_a_refresh_never_comes_back_unowned_with_a_token() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let l = login(&si, "adopted-deleted", true).await;
    create_secrets(&env, "cam", &l).await;
    // The application's own Secret, opted in by its writer.
    let app: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app-config", "annotations": {ADOPT: "cam"}},
        "stringData": {"password": "hunter2"},
    }))
    .unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &app)
        .await
        .unwrap();
    // The first refresh's token call waits for the test.
    let gate = Gate::new();
    si.inject(Fault::Hold(gate.clone()), 1);
    let _op = Operator::start(&env, &si, &[]).await;
    let target = serde_json::json!({"target": {"name": "app-config"}});
    create_credential(&env, "cam", &si, target).await;
    a_call_is_held(&si).await;

    // Its owner removes the Secret while the call is out (a call may take minutes).
    env.api::<Secret>()
        .delete("app-config", &DeleteParams::default())
        .await
        .unwrap();
    eventually("app-config gone", Duration::from_secs(10), || async {
        secret_data(&env, "app-config")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let versions = versions_of(&env, "app-config").await;
    gate.open();

    // The answer is stored, and the credential reports what it made of it.
    eventually("the answer stored", Duration::from_secs(30), || async {
        let stored = stored_refresh_token(&env, "cam").await?;
        (stored != l.grant.refresh_token && si.refresh_token_is_live(&stored)).then_some(())
    })
    .await;
    eventually("cam reports", Duration::from_secs(30), || async {
        ready(&env, "cam").await.map(|_| ())
    })
    .await;
    let uid = env
        .api::<EagleEyeCredential>()
        .get("cam")
        .await
        .unwrap()
        .metadata
        .uid;
    // Recreated or not, a Secret of that name holding the token must say whose it is: the
    // credential's own (owned, deleted with it) or opted in again by its owner. An
    // unowned copy of a bearer token nobody manages is what the owner just deleted.
    let unowned: Vec<String> = versions
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            s.data
                .as_ref()
                .is_some_and(|d| d.contains_key("access_token"))
        })
        .filter(|s| {
            let owned = s
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
            let adopted = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ADOPT))
                .is_some_and(|v| v == "cam");
            !owned && !adopted
        })
        .map(describe_secret)
        .collect();
    assert!(
        unowned.is_empty(),
        "the deleted target came back holding an access token, neither owned by nor opted in to the credential: {unowned:#?}; cam: {}",
        reason_of(&env, "cam").await
    );
}

// Finding 4.

/// When the operator sent each write request (PATCH, PUT, POST) to
/// Secret `name`, from the Kubernetes client's own request log (`kube_client=debug`):
/// the API server's audit log, as far as this operator's requests go.
fn target_writes(op: &Operator, name: &str) -> Vec<jiff::Timestamp> {
    let path = format!("/secrets/{name}");
    op.current_logs()
        .lines()
        .filter(|l| l.contains("requesting") && l.contains(&path))
        .filter(|l| {
            ["PATCH", "PUT", "POST"]
                .iter()
                .any(|m| l.contains(&format!("http.method={m}")))
        })
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_publish_that_meets_conflicts_backs_off_while_another_writer_keeps_writing_the_target() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let l = login(&si, "publish-conflicts", true).await;
    create_secrets(&env, "cam", &l).await;
    let log_level = [
        "--log-level",
        "info,eagle_eye_operator=debug,kube_client=debug",
    ];
    let op = Operator::start(&env, &si, &log_level).await;
    create_credential(&env, "cam", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "cam", "TokenRefreshed", Duration::from_secs(30)).await;
    let first = secret_data(&env, "cam-token").await.unwrap()["access_token"].clone();

    // A new login stored by a person: refreshed at once, its token call held.
    let gate = Gate::new();
    si.inject(Fault::Hold(gate.clone()), 1);
    let relogin = si.login("publish-conflicts");
    env.api::<Secret>()
        .patch(
            "cam-refresh",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"stringData": {"refresh_token": relogin.refresh_token}}),
            ),
        )
        .await
        .unwrap();
    a_call_is_held(&si).await;

    // Another writer keeps writing the target (a controller stamping an annotation).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (api, stop, written) = (env.api::<Secret>(), stop.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let stamp = serde_json::json!({"metadata": {"annotations": {
                    format!("example.com/stamp-{w}"): n.to_string()}}});
                if api
                    .patch("cam-token", &PatchParams::default(), &Patch::Merge(&stamp))
                    .await
                    .is_ok()
                {
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    eventually(
        "the other writer writing",
        Duration::from_secs(10),
        || async { (written.load(std::sync::atomic::Ordering::Relaxed) > 0).then_some(()) },
    )
    .await;
    let before = target_writes(&op, "cam-token").len();
    let opened = Instant::now();
    gate.open();
    let window = Duration::from_secs(10);
    tokio::time::sleep_until((opened + window).into()).await;
    let attempts = target_writes(&op, "cam-token");
    let during = &attempts[before..];
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let gaps: Vec<i64> = during
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_millis() as i64)
        .collect();
    crate::support::figure(format!(
        "publish against a writer that keeps writing ({} writes in {window:?}): {} target writes by the operator, gaps {:?} ms",
        written.load(std::sync::atomic::Ordering::Relaxed),
        during.len(),
        &gaps[..gaps.len().min(20)]
    ));
    // A retry at once meets the next write again, and again: that is the storm. Backing
    // off (doubling from a fraction of a second or more, as for other API failures) makes
    // at most a few attempts in any one second; at once, dozens.
    let busiest = during
        .iter()
        .enumerate()
        .map(|(i, t)| {
            during[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < jiff::SignedDuration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        busiest <= 5,
        "the operator wrote the target {busiest} times within one second ({} in {window:?}) while another writer kept writing it: gaps in ms {:?}",
        during.len(),
        &gaps[..gaps.len().min(20)]
    );
    assert!(
        during.len() <= 20,
        "the operator wrote the target {} times in {window:?} while another writer kept writing it",
        during.len()
    );
    // Once the other writer stops, the answer is published.
    eventually(
        "the new access token published",
        Duration::from_secs(120),
        || async {
            let now = secret_data(&env, "cam-token").await?["access_token"].clone();
            (now != first && si.access_token_is_live(&now)).then_some(())
        },
    )
    .await;
}
