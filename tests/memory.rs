//! The operator's memory does not grow with unrelated Secrets in the cluster: it caches only
//! its credentials and watches Secret metadata page by page. Own test binary: it watches
//! all namespaces and creates a thousand Secrets. Prints both figures.

mod support;

use std::time::Duration;

use eagle_eye_testbed::standin::{StandIn, StandInConfig};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use support::operator::{
    Operator, create_credential, create_secrets, login, secret, wait_for_reason,
};
use support::{env, eventually, figure};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Starts an operator for all namespaces, waits until it has reconciled the credential,
/// and returns its peak RSS over the following two seconds of steady state.
async fn settled_rss(env: &support::TestEnv, si: &StandIn) -> u64 {
    let mut op = Operator::start(env, si, &["--no-leader-election"]).await;
    // Started for all namespaces: drop the test's namespace restriction.
    op.set_args(|args| {
        let i = args.iter().position(|a| a == "--namespaces").unwrap();
        args.drain(i..i + 2);
    })
    .await;
    eventually(
        "the operator to reconcile the credential",
        Duration::from_secs(60),
        || async { op.current_logs().contains("reconciled").then_some(()) },
    )
    .await;
    let pid = op.pid().unwrap();
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    op.kill().await;
    peak
}

#[tokio::test]
async fn memory_does_not_grow_with_a_thousand_unrelated_secrets() {
    let env = env().await;
    let si = StandIn::start(StandInConfig::default()).await.unwrap();
    let login = login(&si, "memory-client", true).await;
    create_secrets(&env, "mem", &login).await;
    create_credential(&env, "mem", &si, serde_json::json!({})).await;
    let mut first = Operator::start(&env, &si, &[]).await;
    wait_for_reason(&env, "mem", "TokenRefreshed", Duration::from_secs(30)).await;
    first.kill().await;

    let before = settled_rss(&env, &si).await;

    let other = format!("{}-bulk", env.namespace);
    Api::<Namespace>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(other.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let bulk: Api<Secret> = Api::namespaced(env.client.clone(), &other);
    let payload = "x".repeat(10 * 1024);
    for i in 0..1000 {
        bulk.create(
            &PostParams::default(),
            &secret(&format!("unrelated-{i}"), &[("data", &payload)]),
        )
        .await
        .unwrap();
    }

    let after = settled_rss(&env, &si).await;
    let growth = (after as f64 - before as f64) / before as f64 * 100.0;
    figure(format!(
        "operator RSS: {before} KiB with no unrelated Secrets, {after} KiB with 1000 unrelated 10 KiB Secrets ({growth:+.1}%)"
    ));
    assert!(
        growth.abs() <= 10.0,
        "RSS changed by {growth:.1}% ({before} KiB -> {after} KiB)"
    );
}
