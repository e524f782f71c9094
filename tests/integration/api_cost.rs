//! What a steady refresh costs kube-apiserver, as the operator's own request counter
//! (`eagle_eye_kube_api_requests_total`) shows it to whoever scrapes `/metrics` (issue 20):
//! the four writes of the design (the spend intent, the write-back, the target, the status)
//! and the one read of the refresh token before spending; the echoes of its own writes
//! neither wake a reconcile nor make it read again.

use std::collections::BTreeMap;
use std::time::Duration;

use eagle_eye_operator::crd::EagleEyeCredential;
use serde_json::json;

use crate::support::operator::{Operator, create_credential, create_secrets, login, stand_in};
use crate::support::{TestEnv, env, eventually, get};

/// The operator's own requests by `verb resource`, from its `/metrics`.
async fn own_requests(op: &Operator) -> BTreeMap<String, f64> {
    let text = get(op.admin_addr().await, "/metrics").await.1;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("eagle_eye_kube_api_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").unwrap();
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|p| p.strip_prefix(&format!("{name}=\"")))
                .unwrap()
                .trim_end_matches('"')
                .to_owned()
        };
        out.insert(
            format!("{} {}", label("verb"), label("resource")),
            value.parse::<f64>().unwrap(),
        );
    }
    out
}

/// When the credential's last refresh was reported (the status is a refresh's last write).
async fn last_refresh(env: &TestEnv, name: &str) -> Option<jiff::Timestamp> {
    let cr = env.api::<EagleEyeCredential>().get(name).await.ok()?;
    Some(cr.status?.last_refresh_at?.0)
}

/// Waits for the refresh after the one reported at `after` to be reported, and returns
/// its time with the operator's counts at that moment (between two refreshes: the next one
/// is seconds away).
async fn next_refresh(
    env: &TestEnv,
    op: &Operator,
    after: Option<jiff::Timestamp>,
) -> (jiff::Timestamp, BTreeMap<String, f64>) {
    let at = eventually(
        "the next refresh reported",
        Duration::from_secs(30),
        || async {
            last_refresh(env, "cost")
                .await
                .filter(|t| Some(*t) != after)
        },
    )
    .await;
    (at, own_requests(op).await)
}

#[tokio::test]
async fn a_steady_refresh_costs_four_writes_and_one_read_and_its_own_echoes_wake_nothing() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(6)).await;
    let login = login(&si, "cost", true).await;
    create_secrets(&env, "cost", &login).await;
    create_credential(&env, "cost", &si, json!({})).await;
    let op = Operator::start(&env, &si, &[]).await;

    // The first refresh creates the target and announces itself; count from the second.
    let (mut at, _) = next_refresh(&env, &op, None).await;
    (at, _) = next_refresh(&env, &op, Some(at)).await;
    let (mut at_start, before) = next_refresh(&env, &op, Some(at)).await;
    let refreshes_before = si.counters().refreshes;
    for _ in 0..4 {
        (at_start, _) = next_refresh(&env, &op, Some(at_start)).await;
    }
    let after = own_requests(&op).await;
    let refreshes = si.counters().refreshes - refreshes_before;
    assert_eq!(refreshes, 4, "four refreshes between the two counts");
    let spent: BTreeMap<&str, f64> = after
        .iter()
        .map(|(k, v)| (k.as_str(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(k, v)| *v > 0.0 && !k.ends_with(" leases") && !k.starts_with("watch "))
        .collect();
    crate::support::figure(format!(
        "the operator's own requests over {refreshes} steady refreshes of one credential: {spent:?}"
    ));
    // Per refresh: the spend intent and the write-back (update secrets), the target and the
    // status (apply), and the quorum read of the refresh token. Nothing else: no read of
    // the credential (the cache holds the status written last), no second read of a Secret
    // after the operator's own write, no Event for a routine refresh.
    let per = |k: &str| spent.get(k).copied().unwrap_or(0.0) / refreshes as f64;
    assert_eq!(
        spent.keys().copied().collect::<Vec<_>>(),
        [
            "apply eagleeyecredentials/status",
            "apply secrets",
            "get secrets",
            "update secrets"
        ],
        "{spent:?}"
    );
    assert_eq!(per("update secrets"), 2.0, "{spent:?}");
    assert_eq!(per("apply secrets"), 1.0, "{spent:?}");
    assert_eq!(per("apply eagleeyecredentials/status"), 1.0, "{spent:?}");
    assert_eq!(per("get secrets"), 1.0, "{spent:?}");
}
