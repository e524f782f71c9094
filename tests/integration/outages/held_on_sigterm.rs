//! What SIGTERM does with a rotated refresh token that exists only in memory: the operator
//! promises (docs/how-it-works.md, "The one window it cannot close"; `--shutdown-flush-limit`
//! in `src/operator.rs`, 20 s in production and here) to keep trying to store it for 20 s
//! after its controllers stop, and only then exit.

use std::time::{Duration, Instant};

use crate::support::operator::{
    Operator, create_credential, create_secrets, login, ready, secret_data, stand_in,
};
use crate::support::{eventually, figure, own_env};

#[tokio::test]
async fn sigterm_during_an_api_server_outage_stores_the_held_rotated_token_before_exiting() {
    let env = own_env().await;
    let si = stand_in(Duration::from_secs(8)).await;
    let login = login(&si, "sigterm-client", true).await;
    create_secrets(&env, "term", &login).await;
    // Without leader election, as in `write_back.rs`: what is under test is the shutdown.
    let mut op = Operator::start(
        &env,
        &si,
        &["--no-leader-election", "--token-timeout", "10s"],
    )
    .await;
    create_credential(&env, "term", &si, serde_json::json!({})).await;
    // The next scheduled refresh is answered only once kube-apiserver is down: the old
    // token is then dead and the new one can only be held in memory.
    let spending = super::refresh_during_outage(&env, &si, &op, "term").await;

    // SIGTERM while kube-apiserver is still down. (Sent by hand, not with
    // `Operator::terminate`, so the logs can be watched while the process shuts down.)
    let pid = op.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = Instant::now();
    eventually(
        "the shutdown to try storing the held token, and fail",
        Duration::from_secs(30),
        || async {
            op.current_logs()
                .contains("could not store a held refresh token yet")
                .then_some(())
        },
    )
    .await;
    assert!(op.is_running(), "still trying, not gone");

    env.plane.start_apiserver().await.unwrap();
    let back = signalled.elapsed();
    eventually(
        "the operator to exit by itself",
        Duration::from_secs(40),
        || {
            let exited = !op.is_running();
            async move { exited.then_some(()) }
        },
    )
    .await;
    figure(format!(
        "kube-apiserver back {back:?} after SIGTERM; operator exit seen {:?} after SIGTERM (it retries for 20 s)",
        signalled.elapsed()
    ));
    let stored = secret_data(&env, "term-refresh")
        .await
        .expect("refresh Secret");
    assert_ne!(stored["refresh_token"], spending);
    assert!(
        si.refresh_token_is_live(&stored["refresh_token"]),
        "the Secret holds the live, rotated token"
    );
    // It was the shutdown that stored it, not a reconcile.
    let logs = op.current_logs();
    assert!(logs.contains("stored a held refresh token"), "{logs}");
    assert!(!logs.contains("the login is lost"), "{logs}");

    // So the login survives the restart: the next operator refreshes with it.
    let refreshes = si.counters().refreshes;
    // (`kill` only forgets the exited process here, so that `restart` may start another.)
    op.kill().await;
    op.restart().await;
    // (The status still says TokenRefreshed from before the outage, when the operator
    // could not write it: what counts is a new refresh and its token published.)
    eventually(
        "the restarted operator to refresh with the stored token and publish",
        Duration::from_secs(60),
        || async {
            if si.counters().refreshes == refreshes {
                return None;
            }
            let published = secret_data(&env, "term-token").await?;
            let (ready, _, _) = ready(&env, "term").await?;
            (si.access_token_is_live(&published["access_token"]) && ready == "True").then_some(())
        },
    )
    .await;
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "the dead token was never spent again"
    );
}
