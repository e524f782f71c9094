//! What a user sees of flags and Events over time (issue 19, findings 5 to 7): an auth
//! outage reported as one Event series per reason, a spend intent honoured by a shard
//! started with shorter limits than its writer, and a short refresh-token idle lifetime
//! refreshed on a schedule rather than in a loop.

use std::collections::BTreeMap;
use std::time::Duration;

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::{Fault, Gate, StandIn, StandInConfig};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::operator::{
    Operator, all_events, create_credential, create_secrets, credential, login, secret_data,
    stand_in, wait_for_reason,
};
use crate::support::{TestEnv, env, eventually, get, series};

/// `name`'s Events as `kubectl get events` lists them: per reason, each object's name and
/// its count (1 for an Event that never repeated).
async fn events_by_reason(env: &TestEnv, name: &str) -> BTreeMap<String, Vec<(String, i32)>> {
    let mut by_reason: BTreeMap<String, Vec<(String, i32)>> = BTreeMap::new();
    for e in all_events(env).await {
        if e.regarding.as_ref().and_then(|r| r.name.as_deref()) != Some(name) {
            continue;
        }
        by_reason
            .entry(e.reason.clone().unwrap_or_default())
            .or_default()
            .push((name_of(&e), e.series.as_ref().map_or(1, |s| s.count)));
    }
    by_reason
}

fn name_of(e: &Event) -> String {
    e.metadata.name.clone().unwrap_or_default()
}

async fn failed_attempts(env: &TestEnv, name: &str) -> u32 {
    env.api::<EagleEyeCredential>()
        .get(name)
        .await
        .ok()
        .and_then(|cr| cr.status)
        .map_or(0, |s| s.failed_refresh_attempts)
}

/// Finding 5: a recorder per reconcile made one Event object per publish.
#[tokio::test]
async fn an_auth_outage_shows_as_one_event_per_reason_whose_count_grows() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "outage", true).await;
    create_secrets(&env, "outage", &login).await;
    // Attempts 1 to 5 fail (Events at 1, 2 and 4); the sixth, about 31 s in, succeeds.
    si.inject(Fault::Status(503), 5);
    create_credential(&env, "outage", &si, json!({})).await;
    let _op = Operator::start(&env, &si, &[]).await;

    let first = eventually(
        "the second failed attempt to count 2 on the first RefreshFailed Event",
        Duration::from_secs(30),
        || async {
            let by_reason = events_by_reason(&env, "outage").await;
            match by_reason.get("RefreshFailed")?.as_slice() {
                [(name, 2)] => Some(name.clone()),
                _ => None,
            }
        },
    )
    .await;
    eventually(
        "the fifth failed attempt",
        Duration::from_secs(60),
        || async { (failed_attempts(&env, "outage").await >= 5).then_some(()) },
    )
    .await;
    assert_eq!(
        events_by_reason(&env, "outage").await["RefreshFailed"],
        [(first.clone(), 3)],
        "attempts 1, 2 and 4 published one Event that counts 3"
    );

    wait_for_reason(&env, "outage", "TokenRefreshed", Duration::from_secs(60)).await;
    let by_reason = eventually("the recovery's Event", Duration::from_secs(10), || async {
        let by_reason = events_by_reason(&env, "outage").await;
        by_reason
            .contains_key("TokenRefreshed")
            .then_some(by_reason)
    })
    .await;
    assert_eq!(
        by_reason.keys().collect::<Vec<_>>(),
        ["RefreshFailed", "TokenRefreshed"]
    );
    assert_eq!(by_reason["RefreshFailed"], [(first, 3)]);
    assert!(
        matches!(by_reason["TokenRefreshed"].as_slice(), [(_, 1)]),
        "{by_reason:?}"
    );
    assert_eq!(si.counters().refreshes, 1);
}

/// `eagle_eye_refresh_attempts_total` of one credential in one process's /metrics.
async fn refresh_attempts(op: &Operator, env: &TestEnv, credential: &str) -> Option<f64> {
    let text = get(op.admin_addr().await, "/metrics").await.1;
    series(
        &text,
        &format!(
            r#"eagle_eye_refresh_attempts_total{{namespace="{}",credential="{credential}"}}"#,
            env.namespace
        ),
    )
}

const SHARD_LABEL: &str = "eagle-eye-operator.io/shard";

/// Finding 6: a shard with a shorter `--token-timeout` and `--in-flight-grace` took the
/// other's live intent for one no holder could have written, and spent the token in flight.
#[tokio::test]
async fn a_shard_with_shorter_limits_honours_the_intent_of_a_shard_with_longer_ones() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(8)).await;
    let login = login(&si, "flags-moved", true).await;
    create_secrets(&env, "moved", &login).await;
    let mut cr = credential("moved", &si, json!({}));
    cr.metadata.labels = Some([(SHARD_LABEL.to_owned(), "a".to_owned())].into());
    env.api::<EagleEyeCredential>()
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    // Shard a runs with the default limits (5 min each), shard b with the shortest.
    let _a = Operator::start(
        &env,
        &si,
        &[
            "--instance",
            "long-limits",
            "--credential-selector",
            &format!("{SHARD_LABEL}=a"),
        ],
    )
    .await;
    let b = Operator::start(
        &env,
        &si,
        &[
            "--instance",
            "short-limits",
            "--credential-selector",
            &format!("{SHARD_LABEL}=b"),
            "--token-timeout",
            "5s",
            "--in-flight-grace",
            "0s",
        ],
    )
    .await;
    wait_for_reason(&env, "moved", "TokenRefreshed", Duration::from_secs(30)).await;

    // Shard a's next call is held at the auth server; meanwhile the credential moves to b.
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
    env.api::<EagleEyeCredential>()
        .patch(
            "moved",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {SHARD_LABEL: "b"}}})),
        )
        .await
        .unwrap();
    // The published token expires (8 s) and shard b, due, waits for shard a's answer.
    let deferred = wait_for_reason(&env, "moved", "RefreshDeferred", Duration::from_secs(30)).await;
    let ready = deferred.status.unwrap().conditions;
    let ready = ready.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("long-limits"), "{}", ready.message);
    assert_eq!(
        si.counters().token_requests,
        requests_while_held,
        "shard b sent nothing while shard a's answer was outstanding"
    );

    gate.open();
    // Shard a stores the answer it waited for; from then on shard b refreshes.
    eventually(
        "shard b to refresh the moved credential",
        Duration::from_secs(60),
        || async { (refresh_attempts(&b, &env, "moved").await? >= 1.0).then_some(()) },
    )
    .await;
    wait_for_reason(&env, "moved", "TokenRefreshed", Duration::from_secs(30)).await;
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no refresh token was spent twice"
    );
    let stored = secret_data(&env, "moved-refresh").await.unwrap();
    assert!(si.refresh_token_is_live(&stored["refresh_token"]));
}

/// Finding 7: a fixed one-hour margin before the idle end put every refresh due at once
/// when the idle lifetime was under an hour (727 refreshes in 40 s).
#[tokio::test]
async fn a_half_hour_idle_lifetime_is_refreshed_on_a_schedule_not_in_a_loop() {
    let env = env().await;
    let si = StandIn::start(StandInConfig {
        access_ttl: Duration::from_secs(3600),
        idle_ttl: Duration::from_secs(30 * 60),
        ..Default::default()
    })
    .await
    .unwrap();
    let login = login(&si, "short-idle", true).await;
    create_secrets(&env, "short", &login).await;
    create_credential(&env, "short", &si, json!({})).await;
    let _op = Operator::start(&env, &si, &["--refresh-token-idle-lifetime", "30m"]).await;

    let refreshed = wait_for_reason(&env, "short", "TokenRefreshed", Duration::from_secs(30)).await;
    let status = refreshed.status.unwrap();
    let last = status.last_refresh_at.unwrap().0;
    let next = status.next_refresh_at.expect("a next refresh").0;
    // A quarter of the idle lifetime before its end: 22.5 min after the refresh, less jitter.
    assert!(
        next >= last + jiff::SignedDuration::from_mins(20)
            && next <= last + jiff::SignedDuration::from_mins(23),
        "refreshed at {last}, next at {next}"
    );

    // A minute of watching: the auth server sees a handful of refreshes at most.
    let before = si.counters().refreshes;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = si.counters().refreshes - before;
    crate::support::figure(format!(
        "{during} refreshes in 60 s with --refresh-token-idle-lifetime 30m and 1 h access tokens"
    ));
    assert!(during <= 2, "{during} refreshes in a minute");
    let stored = secret_data(&env, "short-refresh").await.unwrap();
    assert!(si.refresh_token_is_live(&stored["refresh_token"]));
    let target = secret_data(&env, "short-token").await.unwrap();
    assert!(
        si.access_token_is_live(&target["access_token"]),
        "the published access token stays valid"
    );
}

/// What findings 6 and 7 cannot make work is refused at start, in the flags' own words.
#[tokio::test]
async fn flags_that_cannot_work_stop_the_operator_at_start_with_a_message() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(60)).await;
    let cases: [(&[&str], &str); 2] = [
        (
            &["--refresh-token-idle-lifetime", "30s"],
            "--refresh-token-idle-lifetime 30s is shorter than 1m",
        ),
        (
            &["--token-timeout", "40m", "--in-flight-grace", "20m"],
            "--token-timeout and --in-flight-grace add up",
        ),
    ];
    for (flags, says) in cases {
        let op = std::sync::Mutex::new(Operator::start(&env, &si, flags).await);
        eventually(
            &format!("the operator started with {flags:?} to exit"),
            Duration::from_secs(30),
            || async { (!op.lock().unwrap().is_running()).then_some(()) },
        )
        .await;
        let logs = op.lock().unwrap().logs();
        assert!(logs.contains(says), "{flags:?}:\n{logs}");
    }
    assert_eq!(si.counters().token_requests, 0);
}
