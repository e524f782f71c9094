//! A rolling update while the leader waits for a token answer: the kubelet's SIGTERM reaches
//! the leader with a rotated refresh token on its way, and the operator must store it before
//! it exits, or the login is lost (the old refresh token died when the server answered).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use eagle_eye_testbed::standin::{Fault, Gate, StandIn};

use crate::operator_pod::{LEASE, NAMESPACE, RELEASE};

/// What the check saw; `passed` is its verdict.
pub struct RollingOutcome {
    pub leader: String,
    pub held_for: Duration,
    pub exited_after_sigterm: Duration,
    pub stored_token_live: bool,
    pub reused: u64,
    pub next_refresh_ok: bool,
}

impl RollingOutcome {
    pub fn passed(&self) -> bool {
        self.stored_token_live && self.reused == 0 && self.next_refresh_ok
    }
}

/// Holds the next token answer, restarts the Deployment as `kubectl rollout restart` does,
/// releases the answer once the leader has been told to stop, then checks what was stored.
pub async fn check(
    client: &Client,
    stand_in: &StandIn,
    refresh_secret: (&str, &str),
    ttl: Duration,
) -> Result<RollingOutcome> {
    let gate = Gate::new();
    let before = stand_in.token_requests().len();
    stand_in.inject(Fault::Hold(gate.clone()), 1);
    let held_at = poll(
        2 * ttl + Duration::from_secs(30),
        "a token request to hold",
        || {
            let requests = stand_in.token_requests();
            Ok(requests.len() > before && requests[before].status.is_none())
        },
    )
    .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let holder = leases
        .get(LEASE)
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .context("the Lease has a holder")?;
    // The holder identity is `<pod name>_<instance suffix>`.
    let leader = holder
        .rsplit_once('_')
        .map_or(holder.as_str(), |(pod, _)| pod)
        .to_owned();
    println!("  the leader {leader} sent a refresh; its answer is held");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let name = format!("{RELEASE}-eagle-eye-operator");
    let restart = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": jiff::Timestamp::now().to_string()
    }}}}});
    deployments
        .patch(&name, &PatchParams::default(), &Patch::Merge(&restart))
        .await
        .with_context(|| format!("restarting Deployment {name}"))?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    // The rollout replaces one replica at a time; the kubelet sends SIGTERM as soon as the pod
    // is marked for deletion.
    let deadline = Instant::now() + Duration::from_secs(300);
    let sigterm_at = loop {
        match pods.get_opt(&leader).await? {
            Some(p) if p.metadata.deletion_timestamp.is_some() => break Instant::now(),
            Some(_) => {}
            None => bail!("the leader {leader} vanished without a deletion mark"),
        }
        if Instant::now() > deadline {
            bail!("the rolling update never stopped the leader {leader}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("  the rolling update stops {leader} (SIGTERM); the answer is still held");
    // Long enough that the kubelet has delivered the signal, short of any timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    gate.open();
    let held_for = held_at.elapsed();
    println!(
        "  answer released {:.1}s after SIGTERM",
        sigterm_at.elapsed().as_secs_f64()
    );

    let deadline = Instant::now() + Duration::from_secs(420);
    while pods.get_opt(&leader).await?.is_some() {
        if Instant::now() > deadline {
            bail!("the old leader {leader} did not exit within its grace period");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exited_after_sigterm = sigterm_at.elapsed();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), refresh_secret.0);
    let stored = secrets.get(refresh_secret.1).await?;
    let token = stored
        .data
        .and_then(|d| d.get("refresh_token").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    let stored_token_live = stand_in.refresh_token_is_live(&token);

    // The new leader refreshes with what was stored, at its next due time.
    let after = stand_in.token_requests().len();
    let next = poll(
        2 * ttl + Duration::from_secs(60),
        "the next refresh",
        || {
            Ok(stand_in.token_requests()[after..]
                .iter()
                .any(|r| r.status.is_some()))
        },
    )
    .await;
    let next_refresh_ok = next.is_ok()
        && stand_in.token_requests()[after..]
            .iter()
            .filter_map(|r| r.status)
            .all(|s| s == 200);
    Ok(RollingOutcome {
        leader,
        held_for,
        exited_after_sigterm,
        stored_token_live,
        reused: stand_in.counters().reused_refresh_tokens,
        next_refresh_ok,
    })
}

/// Polls `done` every 100 ms until it holds or `limit` passes; returns when it held.
async fn poll(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if done()? {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
