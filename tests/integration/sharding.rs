//! Sharding: two operator processes started with `--credential-selector` and otherwise
//! default flags split the credentials, each leading in a Lease of its own; a credential
//! relabelled from one shard to the other while a refresh of it is in flight is handed over
//! without a refresh token spent twice.

use std::time::Duration;

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::{Fault, Gate};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::operator::{
    Operator, create_secrets, credential, events, login, ready, secret_data, stand_in,
    wait_for_reason,
};
use crate::support::{TestEnv, env, eventually, get, series};

const SHARD_LABEL: &str = "eagle-eye-operator.io/shard";

fn selector(shard: &str) -> String {
    format!("{SHARD_LABEL}={shard}")
}

async fn shard(env: &TestEnv, si: &eagle_eye_testbed::standin::StandIn, name: &str) -> Operator {
    let sel = selector(name);
    Operator::start(
        env,
        si,
        &[
            "--instance",
            &format!("shard-{name}"),
            "--credential-selector",
            &sel,
        ],
    )
    .await
}

async fn create_in_shard(
    env: &TestEnv,
    si: &eagle_eye_testbed::standin::StandIn,
    name: &str,
    shard: Option<&str>,
) {
    let mut cr = credential(name, si, json!({}));
    if let Some(shard) = shard {
        cr.metadata.labels = Some([(SHARD_LABEL.to_owned(), shard.to_owned())].into());
    }
    env.api::<EagleEyeCredential>()
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
}

/// Moves credential `name` to `shard`, as `kubectl label --overwrite` would.
async fn relabel(env: &TestEnv, name: &str, shard: &str) {
    env.api::<EagleEyeCredential>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {SHARD_LABEL: shard}}})),
        )
        .await
        .unwrap();
}

/// `eagle_eye_refresh_attempts_total` of one credential in one process's /metrics.
async fn attempts(op: &Operator, env: &TestEnv, credential: &str) -> Option<f64> {
    let text = get(op.admin_addr().await, "/metrics").await.1;
    series(
        &text,
        &format!(
            r#"eagle_eye_refresh_attempts_total{{namespace="{}",credential="{credential}"}}"#,
            env.namespace
        ),
    )
}

/// Who reported the newest Event about `credential` with `reason`.
async fn reported_by(env: &TestEnv, credential: &str, reason: &str) -> Vec<String> {
    events(env, credential, reason)
        .await
        .into_iter()
        .filter_map(|e| e.reporting_instance)
        .collect()
}

#[tokio::test]
async fn two_shards_each_refresh_only_their_own_credentials_under_leases_of_their_own() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(6)).await;
    for (name, shard) in [("one", Some("a")), ("two", Some("b")), ("stray", None)] {
        let login = login(&si, &format!("shard-{name}"), true).await;
        create_secrets(&env, name, &login).await;
        create_in_shard(&env, &si, name, shard).await;
    }
    let a = shard(&env, &si, "a").await;
    let b = shard(&env, &si, "b").await;

    // Each shard rotates its own credential a few times.
    for (op, name) in [(&a, "one"), (&b, "two")] {
        eventually(
            &format!("{name} refreshed 3 times by its shard"),
            Duration::from_secs(60),
            || async { (attempts(op, &env, name).await? >= 3.0).then_some(()) },
        )
        .await;
    }
    // Each credential's refreshes were all made by one shard, and every refresh the auth
    // server saw was made by one of them.
    assert_eq!(attempts(&a, &env, "two").await, None);
    assert_eq!(attempts(&b, &env, "one").await, None);
    for (name, instance) in [("one", "shard-a_"), ("two", "shard-b_")] {
        let by = reported_by(&env, name, "TokenRefreshed").await;
        assert!(!by.is_empty());
        assert!(
            by.iter().all(|i| i.starts_with(instance)),
            "{name} refreshed by {by:?}"
        );
    }
    assert_eq!(si.counters().reused_refresh_tokens, 0);
    // A credential no shard selects is left alone, not refreshed by both.
    let stray = env.api::<EagleEyeCredential>().get("stray").await.unwrap();
    assert!(stray.status.is_none(), "{:?}", stray.status);
    assert!(secret_data(&env, "stray-token").await.is_none());

    // Started with default flags apart from the selector, each shard leads in its own Lease.
    for (shard, instance) in [("a", "shard-a_"), ("b", "shard-b_")] {
        let name = eagle_eye_operator::shard::lease_name(Some(&selector(shard)));
        let lease = env.api::<Lease>().get(&name).await.unwrap();
        let holder = lease.spec.unwrap().holder_identity.unwrap_or_default();
        assert!(
            holder.starts_with(instance),
            "Lease {name} held by {holder}"
        );
    }
}

#[tokio::test]
async fn a_credential_moved_between_shards_mid_refresh_is_handed_over_without_reuse() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(8)).await;
    let login = login(&si, "shard-moved", true).await;
    create_secrets(&env, "moved", &login).await;
    create_in_shard(&env, &si, "moved", Some("a")).await;
    let a = shard(&env, &si, "a").await;
    let b = shard(&env, &si, "b").await;
    wait_for_reason(&env, "moved", "TokenRefreshed", Duration::from_secs(30)).await;

    // Shard a's next refresh of it is held at the auth server; meanwhile it moves to b.
    let gate = Gate::new();
    si.inject(Fault::Hold(gate.clone()), 1);
    eventually(
        "shard a's next refresh in flight",
        Duration::from_secs(30),
        || async {
            let requests = si.token_requests();
            let last = requests.last()?;
            (matches!(last.fault, Some(Fault::Hold(_))) && last.status.is_none()).then_some(())
        },
    )
    .await;
    let requests_while_held = si.counters().token_requests;
    let stored_then = secret_data(&env, "moved-refresh").await.unwrap();
    relabel(&env, "moved", "b").await;
    // Once the published token has expired, shard b says why it does not refresh: the
    // answer to shard a's call may still come, and spending the stored token now would
    // lose the login.
    wait_for_reason(&env, "moved", "RefreshDeferred", Duration::from_secs(30)).await;
    assert_eq!(
        si.counters().token_requests,
        requests_while_held,
        "shard b sent nothing while shard a's answer was outstanding"
    );
    assert_eq!(
        secret_data(&env, "moved-refresh").await.unwrap()["refresh_token"],
        stored_then["refresh_token"],
        "nothing spent or stored while the answer is outstanding"
    );

    gate.open();
    // Shard a stores the answer it was waiting for; from then on shard b refreshes.
    eventually(
        "shard b to refresh the moved credential twice",
        Duration::from_secs(60),
        || async { (attempts(&b, &env, "moved").await? >= 2.0).then_some(()) },
    )
    .await;
    assert!(si.counters().token_requests > requests_while_held);
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no refresh token was spent twice across the move"
    );
    assert_eq!(si.counters().rejected, 0);
    // Shard a no longer reports on a credential that left it.
    eventually(
        "shard a to forget the moved credential",
        Duration::from_secs(30),
        || async { attempts(&a, &env, "moved").await.is_none().then_some(()) },
    )
    .await;
    eventually(
        "a live login stored and a live token published",
        Duration::from_secs(20),
        || async {
            let stored = secret_data(&env, "moved-refresh").await?;
            let target = secret_data(&env, "moved-token").await?;
            (si.refresh_token_is_live(&stored["refresh_token"])
                && si.access_token_is_live(&target["access_token"]))
            .then_some(())
        },
    )
    .await;
    assert_eq!(ready(&env, "moved").await.unwrap().0, "True");

    // Relabelled into no shard: the shard it left says so instead of keeping Ready=True.
    relabel(&env, "moved", "nowhere").await;
    let cr = wait_for_reason(&env, "moved", "NotSelected", Duration::from_secs(30)).await;
    let status = cr.status.unwrap();
    assert!(status.next_refresh_at.is_none());
    let (_, _, message) = ready(&env, "moved").await.unwrap();
    assert!(
        message.contains("eagle-eye-operator.io/shard=b"),
        "{message}"
    );
}

#[tokio::test]
async fn a_bad_selector_or_a_shard_in_the_default_lease_stops_the_operator_at_start() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(60)).await;
    let cases: [(&[&str], &str); 3] = [
        (
            &["--credential-selector", "shard in (a"],
            r#"--credential-selector "shard in (a" is not a label selector"#,
        ),
        (
            &["--credential-selector", " "],
            "--credential-selector is blank",
        ),
        (
            &[
                "--credential-selector",
                "shard=a",
                "--lease-name",
                "eagle-eye-operator",
            ],
            "a shard (--credential-selector) elects its leader in a Lease of its own",
        ),
    ];
    for (flags, says) in cases {
        let mut op = Operator::start(&env, &si, flags).await;
        let mut exited = false;
        for _ in 0..300 {
            if !op.is_running() {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs = op.logs();
        assert!(exited, "{flags:?}: still running after 30 s:\n{logs}");
        assert!(logs.contains(says), "{flags:?}:\n{logs}");
    }
    assert!(
        env.api::<Lease>()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no Lease taken"
    );
}
