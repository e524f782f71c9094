//! Tests that stop kube-apiserver. Each runs on a control plane of its own
//! (`support::own_env`), so that an outage disturbs no other test and they run side by side
//! with the rest.

mod apiserver_restart;
mod held_on_sigterm;
mod lease_outage;
mod write_back;

use std::time::Duration;

use crate::support::eventually;
use crate::support::operator::{Operator, secret_data, wait_for_reason};
use eagle_eye_testbed::standin::{Fault, Gate, StandIn};

/// Brings a credential to Ready, then makes its next scheduled refresh land while
/// kube-apiserver is down: the stand-in rotates the token (the old one is now dead) and
/// the operator cannot store the new one. Returns, once the operator has logged a failed
/// write-back, the refresh token it spent (now dead: the held one is the only live copy).
pub async fn refresh_during_outage(
    env: &crate::support::TestEnv,
    si: &StandIn,
    op: &Operator,
    name: &str,
) -> String {
    wait_for_reason(env, name, "TokenRefreshed", Duration::from_secs(30)).await;
    let before = si.counters();
    // Hold the next answer until kube-apiserver is down (killed: unreachable at once). The
    // operators here wait 10 s for an answer.
    let gate = Gate::new();
    si.inject(Fault::Hold(gate.clone()), 1);
    eventually(
        "the next scheduled refresh to start",
        Duration::from_secs(30),
        || async { (si.counters().token_requests > before.token_requests).then_some(()) },
    )
    .await;
    // The operator read the token it is spending just before sending it; nothing else
    // writes the Secret.
    let spending = secret_data(env, &format!("{name}-refresh"))
        .await
        .expect("refresh Secret")["refresh_token"]
        .clone();
    env.plane.kill_apiserver().await.unwrap();
    gate.open();
    eventually(
        "the stand-in to rotate the token",
        Duration::from_secs(10),
        || async { (si.counters().refreshes > before.refreshes).then_some(()) },
    )
    .await;
    eventually(
        "the operator to fail storing the rotated token",
        Duration::from_secs(30),
        || async {
            // The write-back's own error, not the info line of a later attempt.
            op.current_logs()
                .contains("storing the rotated refresh token in Secret")
                .then_some(())
        },
    )
    .await;
    assert!(
        !si.refresh_token_is_live(&spending),
        "the stored token is spent: the held one is the only live copy"
    );
    spending
}
