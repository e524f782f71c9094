//! Fair token calls (issue 18): one namespace's credentials aimed at an allowed auth
//! destination that accepts connections and never answers hold only that destination's
//! call slots, and never keep another namespace's credential from refreshing on time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eagle_eye_operator::crd::EagleEyeCredential;
use kube::api::PostParams;

use crate::support::operator::{
    Operator, create_credential, create_secrets, credential, login, stand_in, wait_for_reason,
    working_token,
};
use crate::support::{env, eventually, figure};

/// A loopback port that accepts every connection and never reads or answers: a request
/// sent there (plain http) is an unknown outcome the operator waits for, `--token-timeout`.
pub async fn black_hole() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (port, accepted, task)
}

/// Issue 18's test bed case: eight credentials in namespace A whose authUrl names the
/// allowed auth host on an allowed port that accepts and never answers; the victim in
/// namespace B, with 10-second tokens, keeps a working token in its target Secret.
#[tokio::test]
async fn a_namespaces_credentials_stuck_on_a_silent_destination_never_starve_another_namespace() {
    let victim_ns = env().await;
    let hostile_ns = env().await;
    let si = stand_in(Duration::from_secs(10)).await;
    let (hole, accepted, hole_task) = black_hole().await;
    let hole_entry = format!("127.0.0.1:{hole}");
    let _op = Operator::start(
        &victim_ns,
        &si,
        &[
            "--allow-insecure-http",
            "--namespaces",
            &hostile_ns.namespace,
            "--allowed-auth-hosts",
            &hole_entry,
        ],
    )
    .await;

    // The hostile credentials first: every slot they may take is held before the victim
    // comes.
    let hostile = hostile_ns.api::<EagleEyeCredential>();
    for i in 0..8 {
        let name = format!("hostile{i}");
        let l = login(&si, &format!("hostile-client-{i}"), true).await;
        create_secrets(&hostile_ns, &name, &l).await;
        let cr = credential(
            &name,
            &si,
            serde_json::json!({"authUrl": format!("http://127.0.0.1:{hole}")}),
        );
        hostile.create(&PostParams::default(), &cr).await.unwrap();
    }
    eventually(
        "the hostile refreshes to hold the silent destination's slots",
        Duration::from_secs(60),
        || async { (accepted.load(Ordering::SeqCst) >= 4).then_some(()) },
    )
    .await;

    let victim = login(&si, "victim-client", true).await;
    create_secrets(&victim_ns, "victim", &victim).await;
    let created = Instant::now();
    create_credential(&victim_ns, "victim", &si, serde_json::json!({})).await;
    wait_for_reason(
        &victim_ns,
        "victim",
        "TokenRefreshed",
        Duration::from_secs(30),
    )
    .await;
    let first_token = created.elapsed();

    // One sample a second for 40 s: does the target Secret hold a token the API accepts?
    let (mut samples, mut working) = (0u32, 0u32);
    let mut next = tokio::time::Instant::now();
    for _ in 0..40 {
        next += Duration::from_secs(1);
        tokio::time::sleep_until(next).await;
        samples += 1;
        if working_token(&victim_ns, &si, "victim-token").await.is_ok() {
            working += 1;
        }
    }
    let stuck = accepted.load(Ordering::SeqCst);
    figure(format!(
        "fair calls: victim's first token {first_token:?} after creation; working token in \
         {working}/{samples} one-second samples while {stuck} hostile calls hung"
    ));
    assert!(
        working * 100 >= samples * 99,
        "the victim's target held a working token in only {working} of {samples} samples"
    );
    assert!(
        stuck <= 4,
        "{stuck} connections to the silent destination: more than its slots"
    );
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no refresh token reused"
    );
    hole_task.abort();
}
