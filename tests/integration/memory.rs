//! The operator's memory does not grow with unrelated Secrets in the cluster: it caches only
//! its credentials and watches Secret metadata page by page. On a control plane of its own:
//! it watches all namespaces (those of the tests beside it would be reconciled too) and
//! creates a thousand Secrets.

use std::time::Duration;

use crate::support::operator::{
    Operator, create_credential, create_secrets, login, secret, wait_for_reason,
};
use crate::support::{eventually, figure, own_env};
use eagle_eye_testbed::standin::{StandIn, StandInConfig};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};

/// The RSS of an operator that has seen every Secret in the cluster.
struct Settled {
    /// Peak RSS over two seconds of steady state, in KiB.
    peak_kib: u64,
    /// Requests it made to list Secrets across the cluster (one per page).
    list_pages: usize,
}

/// Starts an operator for all namespaces, waits until it has reconciled the credential and
/// listed every Secret in the cluster, and measures its RSS over the following two seconds.
async fn settled_rss(env: &crate::support::TestEnv, si: &StandIn) -> Settled {
    // Its HTTP requests are logged (kube_client at debug): they show when the Secret watcher
    // has listed the Secrets.
    let log_level = "info,eagle_eye_operator=debug,kube_client=debug";
    let mut op =
        Operator::start(env, si, &["--no-leader-election", "--log-level", log_level]).await;
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
    // The Secret watcher lists every Secret, page by page, and only then starts to watch: the
    // watch request is the sign that the whole list has been read.
    let list_pages = eventually(
        "the operator to list every Secret and start watching them",
        Duration::from_secs(120),
        || async {
            let logs = op.current_logs();
            let requests: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("requesting") && l.contains("/api/v1/secrets?"))
                .collect();
            let (watches, lists): (Vec<&str>, Vec<&str>) =
                requests.iter().partition(|l| l.contains("watch=true"));
            (!watches.is_empty()).then_some(lists.len())
        },
    )
    .await;
    let pid = op.pid().unwrap();
    let mut peak_kib = 0;
    for _ in 0..20 {
        peak_kib = peak_kib.max(crate::support::proc_kib(pid, "VmRSS"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    op.kill().await;
    Settled {
        peak_kib,
        list_pages,
    }
}

/// How many unrelated Secrets, and how much data each holds.
const BULK: usize = 1000;
const BULK_KIB: u64 = 10;

#[tokio::test]
async fn memory_does_not_grow_with_a_thousand_unrelated_secrets() {
    let env = own_env().await;
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
    let payload = "x".repeat(BULK_KIB as usize * 1024);
    for i in 0..BULK {
        bulk.create(
            &PostParams::default(),
            &secret(&format!("unrelated-{i}"), &[("data", &payload)]),
        )
        .await
        .unwrap();
    }

    let after = settled_rss(&env, &si).await;
    let (b, a) = (before.peak_kib, after.peak_kib);
    let growth = (a as f64 - b as f64) / b as f64 * 100.0;
    figure(format!(
        "operator RSS: {b} KiB with no unrelated Secrets ({} list requests), {a} KiB with {BULK} unrelated {BULK_KIB} KiB Secrets ({} list requests): {growth:+.1}%",
        before.list_pages, after.list_pages
    ));
    // The goal docs/scale.md states: within 10 % (the unrelated Secrets' data alone, were it
    // held, would be 10 MB, more than half the operator's whole RSS).
    assert!(
        growth <= 10.0,
        "RSS grew from {b} KiB to {a} KiB ({growth:+.1}%) with {BULK} unrelated Secrets of {BULK_KIB} KiB: more than the 10 % goal"
    );
}

/// Maximally padded credentials (`hostile::padded_credential`).
const PADDED: usize = 60;

#[tokio::test]
async fn memory_does_not_grow_with_sixty_credentials_padded_to_every_bound() {
    let env = own_env().await;
    let si = StandIn::start(StandInConfig::default()).await.unwrap();
    let login = login(&si, "padded-memory-client", true).await;
    create_secrets(&env, "mem", &login).await;
    create_credential(&env, "mem", &si, serde_json::json!({})).await;
    let before = settled_rss(&env, &si).await;

    let api = env.api::<eagle_eye_operator::crd::EagleEyeCredential>();
    for i in 0..PADDED {
        let cr = crate::hostile::padded_credential(&si, &format!("pad-{i}"));
        api.create(&PostParams::default(), &cr).await.unwrap();
    }
    let after = settled_rss(&env, &si).await;
    let (b, a) = (before.peak_kib, after.peak_kib);
    let growth = a as i64 - b as i64;
    figure(format!(
        "operator RSS: {b} KiB with one credential, {a} KiB with {PADDED} more padded to every bound (each about 300 KiB as the API server stores it): {growth:+} KiB"
    ));
    // The ceiling docs/security.md states (issue 18 asked for 2 MiB, not reached): with
    // jemalloc returning freed pages at once, +4.2 to +5.3 MiB with 60 padded credentials; with
    // glibc, +6.7 MiB with 20, +8.3 to +9.7 MiB with 60 and +11.1 MiB with 240; before the
    // lean store, +40 MiB with 60.
    assert!(
        growth <= 12 * 1024,
        "RSS grew from {b} KiB to {a} KiB ({growth:+} KiB) with {PADDED} padded credentials: more than the 12 MiB ceiling"
    );
}

/// The allocator options of `src/main.rs` reach jemalloc: under a misspelt symbol they would
/// be ignored without a word, and freed memory would stay in the RSS for seconds.
#[test]
fn the_binary_runs_jemalloc_with_its_own_options() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eagle-eye-operator"))
        .arg("crd")
        .env("_RJEM_MALLOC_CONF", "confirm_conf:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("global variable malloc_conf): \""),
        "{stderr}"
    );
    for option in [
        "narenas:2",
        "dirty_decay_ms:0",
        "muzzy_decay_ms:0",
        "tcache_nslots_small_max:8",
        "tcache_nslots_large:2",
    ] {
        assert!(
            stderr.contains(&format!("-- Set conf value: {option}\n")),
            "{option} not set: {stderr}"
        );
    }
    // jemalloc echoes a misspelt option and then ignores it.
    assert!(!stderr.contains("Invalid conf"), "{stderr}");
}
