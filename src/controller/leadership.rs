//! The last check before a refresh token is spent: does this replica still hold a fresh
//! Lease? kube-lease-manager reports a lost Lease only once it can read who took it, so
//! a leader cut off from the API server would otherwise keep going after its Lease ran out
//! while a follower takes over.
//!
//! The Lease is watched by name for the life of the process, and the check reads the copy
//! last seen, asking the API server only when that copy does not show a fresh Lease of ours.
//! A copy can only be older than the truth, never newer: its renewal time is one this replica
//! wrote, so a stale copy runs out no later than the Lease it shows (another replica takes a
//! Lease only once it has expired). The same watch tells a follower when the leader released
//! the Lease, so that it need not wait for the end of a term that was given up.

use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// Refreshes only start while this much of the Lease is left: the token call's time limit
/// must fit in it, or a follower could take over mid-call.
#[derive(Clone)]
pub struct Leadership(Option<Check>);

#[derive(Clone)]
struct Check {
    leases: Api<Lease>,
    name: String,
    identity: String,
    margin: SignedDuration,
    /// The Lease as last seen by the watch (`None` before the first sight, or deleted).
    seen: watch::Receiver<Option<Lease>>,
    /// The wall clock the Lease's times are compared with.
    clock: fn() -> Timestamp,
}

impl Leadership {
    /// No leader election: a single replica may always spend.
    pub fn unchecked() -> Self {
        Leadership(None)
    }

    /// Starts watching the Lease `name` (until every clone is dropped).
    pub fn lease(leases: Api<Lease>, name: &str, identity: &str, margin: Duration) -> Self {
        let (tx, seen) = watch::channel(None);
        tokio::spawn(follow(leases.clone(), name.to_owned(), tx));
        Leadership(Some(Check {
            leases,
            name: name.into(),
            identity: identity.into(),
            margin: SignedDuration::try_from(margin).unwrap_or(SignedDuration::MAX),
            seen,
            clock: Timestamp::now,
        }))
    }

    /// As [`Leadership::lease`], but the Lease as seen is fed by the caller (the simulator,
    /// which runs no watch) and compared with `clock`; the check still reads the Lease
    /// through `leases` when the copy seen does not show it fresh and ours.
    #[doc(hidden)]
    pub fn fed(
        leases: Api<Lease>,
        name: &str,
        identity: &str,
        margin: Duration,
        seen: watch::Receiver<Option<Lease>>,
        clock: fn() -> Timestamp,
    ) -> Self {
        Leadership(Some(Check {
            leases,
            name: name.into(),
            identity: identity.into(),
            margin: SignedDuration::try_from(margin).unwrap_or(SignedDuration::MAX),
            seen,
            clock,
        }))
    }

    /// `None` when spending is safe now; otherwise how long to wait before asking again.
    pub async fn not_safe_to_spend(&self) -> Option<Duration> {
        let check = self.0.as_ref()?;
        let cached = check.seen.borrow().clone();
        if cached.is_some_and(|l| check.ours_and_fresh(&l)) {
            return None;
        }
        let lease = check.leases.get_opt(&check.name).await.ok().flatten();
        let safe = lease.is_some_and(|l| check.ours_and_fresh(&l));
        (!safe).then_some(Duration::from_secs(1))
    }

    /// Resolves when the Lease, seen held by another process, is seen with no holder: its
    /// leader released it (a SIGTERM, a rolling update). Never resolves without leader
    /// election, or while the watch is refused.
    pub async fn released(&self) {
        let Some(check) = &self.0 else {
            return std::future::pending().await;
        };
        let mut seen = check.seen.clone();
        let mut held_by_another = false;
        loop {
            let holder = holder(seen.borrow_and_update().as_ref());
            match holder {
                Some(h) => held_by_another = h != check.identity,
                None if held_by_another => return,
                None => {}
            }
            if seen.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

impl Check {
    fn ours_and_fresh(&self, lease: &Lease) -> bool {
        let Some(spec) = &lease.spec else {
            return false;
        };
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        // Checked: whoever may write the Lease may write any time and duration into it.
        let left_until = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .zip(spec.lease_duration_seconds)
            .and_then(|(renewed, secs)| {
                renewed
                    .checked_add(SignedDuration::from_secs(i64::from(secs)))
                    .ok()?
                    .checked_sub(self.margin)
                    .ok()
            });
        ours && left_until.is_some_and(|until| until > (self.clock)())
    }
}

fn holder(lease: Option<&Lease>) -> Option<String> {
    lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

/// Keeps `tx` at the Lease as the API server last showed it, re-listing after a broken
/// watch (a Lease deleted meanwhile is then shown as gone).
async fn follow(api: Api<Lease>, name: String, tx: watch::Sender<Option<Lease>>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher::watcher(api, config).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut listed = None;
    let mut warned = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(l)) => {
                tx.send_replace(Some(l));
            }
            Ok(watcher::Event::Delete(_)) => {
                tx.send_replace(None);
            }
            Ok(watcher::Event::Init) => listed = None,
            Ok(watcher::Event::InitApply(l)) => listed = Some(l),
            Ok(watcher::Event::InitDone) => {
                tx.send_replace(listed.take());
            }
            // The watcher retries with backoff; meanwhile the copy ages and the check asks
            // the API server.
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(error = %e, lease = %name, "cannot watch the Lease (needs list and watch on it): its holder is read before each refresh instead, and a released Lease is taken only when it expires");
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}
