//! Two replicas and a kube-apiserver outage longer than the Lease, right after the token
//! endpoint rotated the token (issue 8, failure 4): the leader holds the new token in memory,
//! the stored one is dead, and when kube-apiserver returns the follower wins the expired Lease
//! (the old leader is frozen until it has) and reads the dead token from the Secret before
//! the old leader can store the live one. The dead token must never be spent.

use std::time::{Duration, Instant};

use crate::support::operator::{
    Operator, create_credential, create_secrets, login, ready, secret_data, stand_in,
    wait_for_reason,
};
use crate::support::{TestEnv, eventually, figure, own_env};
use eagle_eye_testbed::standin::{Fault, Gate};
use k8s_openapi::api::coordination::v1::Lease;

/// `check` every 100 ms until it holds, for at most `limit`; unlike `eventually` it does not
/// panic, for the part of a test that must not end while kube-apiserver is down.
async fn within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(limit, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok()
}

/// The Lease's holder, as `kubectl get lease` shows it.
async fn lease_holder(env: &TestEnv) -> Option<String> {
    let lease = env
        .api::<Lease>()
        .get_opt("eagle-eye-operator")
        .await
        .ok()??;
    lease.spec?.holder_identity
}

/// One outage: the leader's next scheduled refresh is answered only once kube-apiserver is
/// unreachable (the stored token is then dead, and the new one exists only in the leader's
/// memory), and kube-apiserver stays away longer than the Lease. Returns once it is back,
/// with what went wrong setting the scene, if anything.
async fn outage_right_after_a_token_answer(
    env: &TestEnv,
    si: &eagle_eye_testbed::standin::StandIn,
    replicas: [&Operator; 2],
) -> Result<(), String> {
    let leader = eventually("a leader", Duration::from_secs(30), || lease_holder(env)).await;
    let (leader_op, follower_op) = if leader.starts_with("replica-a_") {
        (replicas[0], replicas[1])
    } else {
        (replicas[1], replicas[0])
    };
    // The leader's log line for a failed write-back of a rotated token, and a replica's for
    // a refresh it leaves to another holder's spend intent.
    const WRITE_BACK_FAILED: &str = "storing the rotated refresh token in Secret";
    const DEFERRING: &str = "deferring a refresh to another holder's spend intent";
    let failed_before = leader_op.current_logs().matches(WRITE_BACK_FAILED).count();
    let stored = secret_data(env, "lo-refresh").await.unwrap()["refresh_token"].clone();
    let before = si.counters();
    let gate = Gate::new();
    si.inject(Fault::Hold(gate.clone()), 1);
    eventually(
        "the leader's next scheduled refresh to reach the stand-in",
        Duration::from_secs(30),
        || async { (si.counters().token_requests > before.token_requests).then_some(()) },
    )
    .await;
    let sent = Instant::now();
    // Killed, kube-apiserver is unreachable at once; the answer is let through then.
    let killed = env.plane.kill_apiserver().await;
    let stopped = Instant::now();
    gate.open();
    // Nothing from here to the restart may panic: kube-apiserver would stay down for the
    // tests after this one.
    let rotated = within(Duration::from_secs(10), || async {
        si.counters().refreshes > before.refreshes
    })
    .await;
    let write_back_failed = rotated
        && within(Duration::from_secs(30), || async {
            leader_op.current_logs().matches(WRITE_BACK_FAILED).count() > failed_before
        })
        .await;
    let stored_token_dead = !si.refresh_token_is_live(&stored);
    let stop = killed.map_err(|e| format!("{e:#}"));
    // The leader is frozen until the follower holds the Lease: the case that loses the login
    // when the operator gets it wrong, every time rather than whenever the follower happens to
    // win the race.
    leader_op.signal("STOP");
    // The outage itself, not a wait for anything: longer than the Lease (6 s), so that the
    // Lease has expired when kube-apiserver returns.
    let outage = Duration::from_secs(8);
    tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
    // (A follower reconciles nothing: whatever it logs from here on, it logs as the leader.)
    let deferred_before = follower_op.current_logs().matches(DEFERRING).count();
    let started = env.plane.start_apiserver().await;
    figure(format!(
        "kube-apiserver killed {:?} after the refresh was sent, back after {:?}; the leader \
         was {leader}",
        stopped - sent,
        stopped.elapsed()
    ));
    let follower_won = started.is_ok()
        && within(Duration::from_secs(30), || async {
            lease_holder(env)
                .await
                .is_some_and(|h| !h.is_empty() && h != leader)
        })
        .await;
    // And stays frozen until the new leader has looked at the credential: it either spends
    // the dead token (a reuse: the bug) or waits out the frozen leader's spend intent.
    let looked = follower_won
        && within(Duration::from_secs(30), || async {
            si.counters().reused_refresh_tokens > before.reused_refresh_tokens
                || follower_op.current_logs().matches(DEFERRING).count() > deferred_before
        })
        .await;
    leader_op.signal("CONT");
    started.map_err(|e| format!("kube-apiserver did not start again: {e:#}"))?;
    let problems = [
        (stop.is_ok(), "kube-apiserver was killed"),
        (
            rotated,
            "the stand-in answered the held refresh during the outage",
        ),
        (
            write_back_failed,
            "the leader received the rotated token during the outage and failed to store it",
        ),
        (
            stored_token_dead,
            "the token stored before the outage was rotated out by the held refresh",
        ),
        (
            follower_won,
            "the follower took the Lease within 30 s of kube-apiserver's return",
        ),
        (
            looked,
            "the new leader spent the token or deferred to the spend intent within 30 s",
        ),
    ];
    match problems.iter().find(|(ok, _)| !ok) {
        Some((_, expected)) => Err(format!("expected: {expected} ({stop:?})")),
        None => Ok(()),
    }
}

/// The leader holds a token the auth server rotated while kube-apiserver was away; when it
/// returns after the Lease has expired, the follower wins the Lease and reads the dead
/// token from the Secret before the old leader has stored the live one. Two rounds, one led
/// by each replica: a correct operator loses no login in either.
#[tokio::test]
async fn a_token_rotated_just_before_an_outage_longer_than_the_lease_is_kept_and_the_dead_one_never_spent()
 {
    let env = own_env().await;
    // 10 s tokens: a refresh about every 7 s.
    let si = stand_in(Duration::from_secs(10)).await;
    let login = login(&si, "lease-outage-client", true).await;
    create_secrets(&env, "lo", &login).await;
    let a = Operator::start(&env, &si, &["--instance", "replica-a"]).await;
    let b = Operator::start(&env, &si, &["--instance", "replica-b"]).await;
    create_credential(&env, "lo", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "lo", "TokenRefreshed", Duration::from_secs(30)).await;

    // Before the fix every such round lost the login.
    const ROUNDS: usize = 2;
    for round in 1..=ROUNDS {
        let reused_before = si.counters().reused_refresh_tokens;
        if let Err(scene) = outage_right_after_a_token_answer(&env, &si, [&a, &b]).await {
            panic!("round {round}: {scene}");
        }
        let back = Instant::now();
        // Either a reuse shows, or the credential recovers with the live token stored.
        let reused = eventually(
            "the credential Ready with a live token stored, or a reuse",
            Duration::from_secs(120),
            || async {
                if si.counters().reused_refresh_tokens > reused_before {
                    return Some(true);
                }
                let stored = secret_data(&env, "lo-refresh").await?;
                let target = secret_data(&env, "lo-token").await?;
                let (status, _, _) = ready(&env, "lo").await?;
                let recovered = status == "True"
                    && si.refresh_token_is_live(&stored["refresh_token"])
                    && si.access_token_is_live(&target["access_token"]);
                recovered.then_some(false)
            },
        )
        .await;
        let holder = lease_holder(&env).await.unwrap_or_default();
        let condition = ready(&env, "lo").await.map(|(s, r, _)| (s, r));
        println!(
            "round {round}: {:?} after kube-apiserver returned: Lease held by {holder}; Ready {condition:?}",
            back.elapsed()
        );
        assert!(
            !reused,
            "round {round}: a rotated-out refresh token was spent {:?} after kube-apiserver \
             returned (the Lease was then held by {holder}); Ready is now {condition:?}",
            back.elapsed()
        );
        figure(format!(
            "round {round}: Ready with the live token stored {:?} after kube-apiserver returned",
            back.elapsed()
        ));
    }

    // And it stays so over the next rotations, whichever replica leads them.
    let refreshes = si.counters().refreshes;
    eventually("two more refreshes", Duration::from_secs(60), || async {
        (si.counters().refreshes >= refreshes + 2).then_some(())
    })
    .await;
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no token was spent twice"
    );
    eventually(
        "the stored refresh token to be the live one",
        Duration::from_secs(20),
        || async {
            let stored = secret_data(&env, "lo-refresh").await?;
            si.refresh_token_is_live(&stored["refresh_token"])
                .then_some(())
        },
    )
    .await;
    assert_eq!(ready(&env, "lo").await.unwrap().0, "True");
}
