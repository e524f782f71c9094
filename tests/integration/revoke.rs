//! Revoke on delete (issue 12): a credential with spec.revokeOnDelete revokes its refresh
//! token at the auth server before it goes, so no copy of it works afterwards; when the auth
//! server cannot be reached, deletion still completes after the bounded retry, with Events.

use std::time::{Duration, Instant};

use crate::support::operator::{
    Login, Operator, create_credential, create_secrets, events, login, secret_data, stand_in,
    wait_for_reason,
};
use crate::support::{TestEnv, env, eventually, figure};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_operator::token::{ClientCredentials, TokenClient, TokenClientOptions};
use eagle_eye_testbed::standin::StandIn;
use kube::api::{DeleteParams, Patch, PatchParams};
use secrecy::SecretString;

const FINALIZER: &str = "eagle-eye-operator.io/revoke-refresh-token";

async fn finalizers(env: &TestEnv, name: &str) -> Vec<String> {
    env.api::<EagleEyeCredential>()
        .get(name)
        .await
        .unwrap()
        .metadata
        .finalizers
        .unwrap_or_default()
}

/// Credential "cam" with spec.revokeOnDelete, for a login of client `client` at a stand-in
/// of its own, Ready under an operator started with `flags`.
async fn ready_to_revoke(client: &str, flags: &[&str]) -> (TestEnv, StandIn, Login, Operator) {
    let env = env().await;
    let stand_in = stand_in(Duration::from_secs(3600)).await;
    let l = login(&stand_in, client, true).await;
    create_secrets(&env, "cam", &l).await;
    let opt_in = serde_json::json!({"revokeOnDelete": true});
    create_credential(&env, "cam", &stand_in, opt_in).await;
    let op = Operator::start(&env, &stand_in, flags).await;
    wait_for_reason(&env, "cam", "TokenRefreshed", Duration::from_secs(30)).await;
    (env, stand_in, l, op)
}

/// Deletes credential `name` and waits until the API server no longer has it.
async fn delete_and_wait(env: &TestEnv, name: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    env.api::<EagleEyeCredential>()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    eventually(&format!("{name} to be gone"), limit, || async {
        let gone = env
            .api::<EagleEyeCredential>()
            .get_opt(name)
            .await
            .ok()?
            .is_none();
        gone.then_some(())
    })
    .await;
    started.elapsed()
}

/// The token stored in refresh-token Secret `name`, once it is live at the stand-in: a
/// refresh that was under way when its credential was deleted has written back by then.
async fn settled(env: &TestEnv, stand_in: &StandIn, name: &str) -> String {
    eventually(
        "the stored refresh token live",
        Duration::from_secs(10),
        || async {
            let token = secret_data(env, name).await?.get("refresh_token")?.clone();
            stand_in.refresh_token_is_live(&token).then_some(token)
        },
    )
    .await
}

/// The stored refresh token sent to the stand-in's token endpoint, as anyone holding a copy
/// (a backup, an etcd snapshot) would: whether the server refreshes it.
async fn refresh_works(
    stand_in: &StandIn,
    client_id: &str,
    client_secret: &str,
    token: &str,
) -> bool {
    let client = TokenClient::new(TokenClientOptions {
        extra_ca_pem: stand_in.ca_pem().map(String::into_bytes),
        allowed_api_hosts: vec!["127.0.0.1".into()],
        ..TokenClientOptions::default()
    })
    .unwrap();
    let creds = ClientCredentials {
        id: client_id.into(),
        secret: SecretString::from(client_secret.to_owned()),
    };
    client
        .refresh(
            &stand_in.url(),
            &creds,
            &SecretString::from(token.to_owned()),
            "vms.all",
        )
        .await
        .inspect_err(|e| {
            println!(
                "refresh with the stored token: {e}; {:?}",
                stand_in.counters()
            )
        })
        .is_ok()
}

#[tokio::test]
async fn a_deleted_credential_with_revoke_on_delete_leaves_its_refresh_token_refused_by_the_server()
{
    let env = env().await;
    let stand_in = stand_in(Duration::from_secs(3600)).await;
    let revoking = login(&stand_in, "revoke-on", true).await;
    let keeping = login(&stand_in, "revoke-off", true).await;
    create_secrets(&env, "gone", &revoking).await;
    create_secrets(&env, "kept", &keeping).await;
    create_credential(
        &env,
        "gone",
        &stand_in,
        serde_json::json!({"revokeOnDelete": true}),
    )
    .await;
    create_credential(&env, "kept", &stand_in, serde_json::json!({})).await;
    let _op = Operator::start(&env, &stand_in, &[]).await;
    for name in ["gone", "kept"] {
        wait_for_reason(&env, name, "TokenRefreshed", Duration::from_secs(30)).await;
    }
    assert_eq!(finalizers(&env, "gone").await, [FINALIZER]);
    assert!(
        finalizers(&env, "kept").await.is_empty(),
        "no finalizer without the opt-in"
    );

    let stored = |name: &'static str| {
        let env = &env;
        async move {
            secret_data(env, &format!("{name}-refresh")).await.unwrap()["refresh_token"].clone()
        }
    };
    let access = secret_data(&env, "gone-token").await.unwrap()["access_token"].clone();
    let took = delete_and_wait(&env, "gone", Duration::from_secs(30)).await;
    figure(format!(
        "revoke on delete: credential gone {} ms after the delete",
        took.as_millis()
    ));
    // The Secrets stay (they are the user's); the token in them is the one revoked.
    let gone_token = stored("gone").await;

    // A copy of the revoked login is refused; the access token from it is dead too.
    assert!(!refresh_works(&stand_in, "revoke-on", &revoking.client_secret, &gone_token).await);
    assert!(!stand_in.access_token_is_live(&access));
    let revoked = events(&env, "gone", "RefreshTokenRevoked").await;
    assert_eq!(revoked.len(), 1);
    let note = revoked[0].note.clone().unwrap_or_default();
    assert!(
        !note.contains(&gone_token) && !note.contains(&revoking.client_secret),
        "{note}"
    );
}

#[tokio::test]
async fn turning_revoke_on_delete_off_removes_the_finalizer_and_deletion_revokes_nothing() {
    let (env, stand_in, l, op) = ready_to_revoke("revoke-toggle", &[]).await;
    // Another controller's finalizer beside ours is kept as it is.
    env.api::<EagleEyeCredential>()
        .patch(
            "cam",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"finalizers": [FINALIZER, "example.com/keep"]}}),
            ),
        )
        .await
        .unwrap();
    env.api::<EagleEyeCredential>()
        .patch(
            "cam",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"revokeOnDelete": false}})),
        )
        .await
        .unwrap();
    eventually("the finalizer removed", Duration::from_secs(30), || async {
        (finalizers(&env, "cam").await == ["example.com/keep"]).then_some(())
    })
    .await;
    // Deleted while the other controller's finalizer holds it: the operator refreshes
    // nothing and revokes nothing for a credential being deleted without its finalizer.
    let api = env.api::<EagleEyeCredential>();
    api.delete("cam", &DeleteParams::default()).await.unwrap();
    eventually("cam terminating", Duration::from_secs(10), || async {
        let cr = api.get("cam").await.ok()?;
        cr.metadata.deletion_timestamp.map(|_| ())
    })
    .await;
    let token = settled(&env, &stand_in, "cam-refresh").await;
    assert!(
        refresh_works(&stand_in, "revoke-toggle", &l.client_secret, &token).await,
        "{}",
        op.logs()
    );
    api.patch(
        "cam",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn deletion_completes_after_the_bounded_retry_when_the_auth_server_is_down() {
    let (env, stand_in, _l, _op) =
        ready_to_revoke("revoke-down", &["--revoke-retry-for", "8s"]).await;
    // The auth server goes away: every revocation attempt fails to connect.
    stand_in.shutdown().await;
    let took = delete_and_wait(&env, "cam", Duration::from_secs(60)).await;
    figure(format!(
        "revoke with the auth server down, --revoke-retry-for 8s: credential gone after {} ms",
        took.as_millis()
    ));
    // Retried for the bound, not given up at the first failure, and not held much longer.
    assert!(took >= Duration::from_secs(7), "gone after {took:?}");
    assert!(took <= Duration::from_secs(40), "gone after {took:?}");
    assert_eq!(events(&env, "cam", "RevokeRetrying").await.len(), 1);
    let failed = events(&env, "cam", "RevokeFailed").await;
    assert_eq!(failed.len(), 1);
    let note = failed[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("gave up") && note.contains("stays valid"),
        "{note}"
    );
}

#[tokio::test]
async fn deleting_a_duplicate_credential_never_revokes_the_login_another_credential_refreshes() {
    let env = env().await;
    let stand_in = stand_in(Duration::from_secs(3600)).await;
    let l = login(&stand_in, "revoke-dup", true).await;
    create_secrets(&env, "cam", &l).await;
    create_credential(&env, "cam", &stand_in, serde_json::json!({})).await;
    let _op = Operator::start(&env, &stand_in, &[]).await;
    wait_for_reason(&env, "cam", "TokenRefreshed", Duration::from_secs(30)).await;
    // A careless copy of the manifest, with the opt-in, naming the same Secrets.
    let same = serde_json::json!({
        "clientSecretRef": {"name": "cam-client"},
        "refreshTokenSecretRef": {"name": "cam-refresh"},
        "revokeOnDelete": true,
    });
    create_credential(&env, "dup", &stand_in, same).await;
    wait_for_reason(&env, "dup", "RefreshTokenInUse", Duration::from_secs(30)).await;
    delete_and_wait(&env, "dup", Duration::from_secs(30)).await;
    let token = settled(&env, &stand_in, "cam-refresh").await;
    assert!(
        stand_in.refresh_token_is_live(&token),
        "cam's login was revoked"
    );
    let failed = events(&env, "dup", "RevokeFailed").await;
    assert_eq!(failed.len(), 1);
    let note = failed[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("shared") && note.contains("\"cam\""),
        "{note}"
    );
}

#[tokio::test]
async fn a_hanging_auth_server_holds_a_deletion_no_longer_than_the_retry_window() {
    let flags = ["--revoke-retry-for", "4s", "--allow-insecure-http"];
    let (env, _stand_in, _l, _op) = ready_to_revoke("revoke-hang", &flags).await;
    // An auth server that accepts connections and never answers (the default
    // --token-timeout would wait 5 minutes for it).
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", hanging.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    env.api::<EagleEyeCredential>()
        .patch(
            "cam",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"authUrl": url}})),
        )
        .await
        .unwrap();
    let took = delete_and_wait(&env, "cam", Duration::from_secs(60)).await;
    figure(format!(
        "revoke against a hanging auth server, --revoke-retry-for 4s: gone after {} ms",
        took.as_millis()
    ));
    assert!(took <= Duration::from_secs(15), "gone after {took:?}");
    let failed = events(&env, "cam", "RevokeFailed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
}
