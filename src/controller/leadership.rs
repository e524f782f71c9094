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
//! the Lease, so that it need not wait for the end of a term that was given up, and when
//! each holder it saw lost the Lease (`Leadership::lapse_of`: a spend intent that holder left
//! is waited out from then, not from when this process took over).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
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
    /// When each holder seen lost the Lease.
    lapses: Arc<Mutex<Lapses>>,
    /// The wall clock the Lease's times are compared with.
    clock: fn() -> Timestamp,
}

/// Where the Lease as seen is sent: the watch (`follow`) in the operator, the simulated API
/// server in the simulator. Each change of holder it sends is recorded as a lapse.
pub struct LeaseFeed {
    tx: watch::Sender<Option<Lease>>,
    lapses: Arc<Mutex<Lapses>>,
    clock: fn() -> Timestamp,
}

impl LeaseFeed {
    /// The Lease as now seen (`None`: deleted, or not there), by a watch that missed no
    /// change since the last [`LeaseFeed::relisted`].
    pub fn send(&self, lease: Option<Lease>) {
        crate::lock(&self.lapses).saw(holder(lease.as_ref()), (self.clock)());
        self.tx.send_replace(lease);
    }

    /// The Lease as a fresh list shows it, after a watch that may have missed changes.
    pub fn relisted(&self, lease: Option<Lease>) {
        crate::lock(&self.lapses).relisted(holder(lease.as_ref()), (self.clock)());
        self.tx.send_replace(lease);
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Holders whose loss of the Lease is remembered, most recent last: a few are enough (a
/// chain of takeovers is as long as the replicas killed one after the other).
const REMEMBERED_HOLDERS: usize = 16;

/// When the holders this process saw lost the Lease.
#[derive(Default)]
struct Lapses {
    holder: Option<String>,
    lost: VecDeque<(String, Timestamp)>,
    /// Since when every change of holder has been seen: the first sight, or the last
    /// re-list (a watch broken long enough to re-list may have missed some).
    since: Option<Timestamp>,
    /// The latest loss no longer remembered (only [`REMEMBERED_HOLDERS`] are).
    forgotten: Option<Timestamp>,
}

impl Lapses {
    fn saw(&mut self, holder: Option<String>, now: Timestamp) {
        if self.since.is_none() {
            self.relisted(holder, now);
            return;
        }
        if holder == self.holder {
            return;
        }
        if let Some(previous) = std::mem::replace(&mut self.holder, holder) {
            self.lost.retain(|(h, _)| *h != previous);
            if self.lost.len() >= REMEMBERED_HOLDERS
                && let Some((_, at)) = self.lost.pop_front()
            {
                self.forgotten = self.forgotten.max(Some(at));
            }
            self.lost.push_back((previous, now));
        }
    }

    /// Starts over: a holder that took and lost the Lease while the watch was broken was
    /// not seen, and one seen before may have held it again meanwhile.
    fn relisted(&mut self, holder: Option<String>, now: Timestamp) {
        *self = Lapses {
            holder,
            since: Some(now),
            ..Lapses::default()
        };
    }

    /// When `process` was seen to lose the Lease; `now` while it holds it. For a process
    /// not seen holding it since every change has been seen, that moment: it lost the
    /// Lease no later (or no later than the latest loss forgotten, if it is one of those).
    fn lapse_of(&self, process: &str, now: Timestamp) -> Option<Timestamp> {
        if self.holder.as_deref() == Some(process) {
            return Some(now);
        }
        self.lost
            .iter()
            .rev()
            .find(|(h, _)| h == process)
            .map(|(_, at)| *at)
            .or(self.since.max(self.forgotten))
    }
}

impl Leadership {
    /// No leader election: a single replica may always spend.
    pub fn unchecked() -> Self {
        Leadership(None)
    }

    /// Starts watching the Lease `name` (until every clone is dropped).
    pub fn lease(leases: Api<Lease>, name: &str, identity: &str, margin: Duration) -> Self {
        let (leadership, feed) = Self::fed(leases.clone(), name, identity, margin, Timestamp::now);
        tokio::spawn(follow(leases, name.to_owned(), feed));
        leadership
    }

    /// As [`Leadership::lease`], but the Lease as seen is fed by the caller through the
    /// [`LeaseFeed`] (the simulator, which runs no watch) and compared with `clock`; the
    /// check still reads the Lease through `leases` when the copy seen does not show it
    /// fresh and ours.
    #[doc(hidden)]
    pub fn fed(
        leases: Api<Lease>,
        name: &str,
        identity: &str,
        margin: Duration,
        clock: fn() -> Timestamp,
    ) -> (Self, LeaseFeed) {
        let (tx, seen) = watch::channel(None);
        let lapses = Arc::new(Mutex::new(Lapses::default()));
        let feed = LeaseFeed {
            tx,
            lapses: lapses.clone(),
            clock,
        };
        let check = Check {
            leases,
            name: name.into(),
            identity: identity.into(),
            margin: SignedDuration::try_from(margin).unwrap_or(SignedDuration::MAX),
            seen,
            lapses,
            clock,
        };
        (Leadership(Some(check)), feed)
    }

    /// When the process `process` was seen to lose the Lease (see `Lapses::lapse_of`);
    /// `None` without leader election. The record is complete only up to the last change the
    /// watch delivered: while the copy it delivered shows this process holding the Lease,
    /// unexpired, no one else can have held it since, and every holder before came through
    /// first. Otherwise (the watch lagging, broken or refused) `now`, as if the holder had
    /// just lost it.
    pub fn lapse_of(&self, process: &str, now: Timestamp) -> Option<Timestamp> {
        let check = self.0.as_ref()?;
        let caught_up = check
            .seen
            .borrow()
            .as_ref()
            .is_some_and(|l| check.ours_for(l, SignedDuration::ZERO));
        if !caught_up {
            return Some(now);
        }
        crate::lock(&check.lapses).lapse_of(process, now)
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
        self.ours_for(lease, self.margin)
    }

    /// Whether `lease` is held by this process with more than `margin` of it left.
    fn ours_for(&self, lease: &Lease, margin: SignedDuration) -> bool {
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
                    .checked_sub(margin)
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
async fn follow(api: Api<Lease>, name: String, tx: LeaseFeed) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher::watcher(api, config).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut listed = None;
    let mut warned = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(l)) => tx.send(Some(l)),
            Ok(watcher::Event::Delete(_)) => tx.send(None),
            Ok(watcher::Event::Init) => listed = None,
            Ok(watcher::Event::InitApply(l)) => listed = Some(l),
            Ok(watcher::Event::InitDone) => tx.relisted(listed.take()),
            // The watcher retries with backoff; meanwhile the copy ages and the check asks
            // the API server.
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(error = %e, lease = %name, "cannot watch the Lease (needs list and watch on it): its holder is read before each refresh instead, a released Lease is taken only when it expires, and another holder's expired spend intent binds up to an hour past it");
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// Leaders killed one after the other: each one's intents are waited out from when it
    /// lost the Lease, not from when the last successor took over.
    #[test]
    fn each_holder_lapses_when_it_was_seen_to_lose_the_lease() {
        let mut lapses = Lapses::default();
        lapses.saw(Some("a".into()), at(0));
        assert_eq!(lapses.lapse_of("a", at(5)), Some(at(5)), "still holding");
        lapses.saw(Some("b".into()), at(40));
        lapses.saw(Some("b".into()), at(50));
        lapses.saw(None, at(70));
        lapses.saw(Some("c".into()), at(100));
        assert_eq!(lapses.lapse_of("a", at(120)), Some(at(40)));
        assert_eq!(lapses.lapse_of("b", at(120)), Some(at(70)));
        assert_eq!(lapses.lapse_of("c", at(120)), Some(at(120)));
        // Never seen holding it, and every change seen since the first sight: it lost the
        // Lease before that, however many holders came after.
        assert_eq!(lapses.lapse_of("z", at(120)), Some(at(0)));
        // Back to a holder seen before: its older loss no longer counts.
        lapses.saw(Some("a".into()), at(130));
        assert_eq!(lapses.lapse_of("a", at(140)), Some(at(140)));
    }

    #[test]
    fn the_first_sight_of_the_lease_is_the_earliest_lapse_of_an_unknown_holder() {
        let mut lapses = Lapses::default();
        assert_eq!(lapses.lapse_of("x", at(0)), None, "nothing seen yet");
        lapses.saw(None, at(3));
        assert_eq!(lapses.lapse_of("x", at(4)), Some(at(3)));
        lapses.saw(None, at(9));
        assert_eq!(lapses.lapse_of("x", at(10)), Some(at(3)), "no change");
    }

    #[test]
    fn only_the_last_holders_are_remembered() {
        let mut lapses = Lapses::default();
        for i in 0..40 {
            lapses.saw(Some(format!("p{i}")), at(i));
        }
        assert_eq!(lapses.lost.len(), REMEMBERED_HOLDERS);
        assert_eq!(lapses.lapse_of("p38", at(50)), Some(at(39)));
        // Forgotten: the latest loss forgotten stands in (later, so it waits longer).
        assert_eq!(lapses.lapse_of("p0", at(50)), Some(at(23)));
        assert_eq!(lapses.lapse_of("p22", at(50)), Some(at(23)));
    }

    static NOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    fn test_clock() -> Timestamp {
        at(NOW.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn lease(holder: &str, renewed: i64) -> Option<Lease> {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "l"},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "renewTime": at(renewed).to_string(),
            },
        }))
        .ok()
    }

    /// Until the watch has delivered this process's own hold of the Lease, a change of
    /// holder may still be on its way: every holder counts as having just lost it.
    #[tokio::test]
    async fn the_record_counts_only_once_the_watch_shows_this_process_holding_the_lease() {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = kube::Client::new(service, "default");
        let (leadership, feed) = Leadership::fed(
            Api::namespaced(client, "default"),
            "l",
            "me",
            Duration::from_secs(2),
            test_clock,
        );
        NOW.store(0, std::sync::atomic::Ordering::SeqCst);
        feed.send(lease("a", 0));
        NOW.store(10, std::sync::atomic::Ordering::SeqCst);
        feed.send(lease("b", 10));
        // The watch shows another holder: this process's own takeover has not come yet.
        assert_eq!(leadership.lapse_of("a", at(20)), Some(at(20)));
        assert_eq!(leadership.lapse_of("z", at(20)), Some(at(20)));
        NOW.store(30, std::sync::atomic::Ordering::SeqCst);
        feed.send(lease("me", 30));
        assert_eq!(leadership.lapse_of("a", at(35)), Some(at(10)));
        assert_eq!(leadership.lapse_of("b", at(35)), Some(at(30)));
        assert_eq!(leadership.lapse_of("z", at(35)), Some(at(0)));
        // Its hold as last delivered has run out: someone else may hold it by now.
        NOW.store(50, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(leadership.lapse_of("b", at(50)), Some(at(50)));
        assert_eq!(Leadership::unchecked().lapse_of("b", at(50)), None);
    }

    /// A watch broken long enough to re-list may have missed a holder taking and losing the
    /// Lease, or one seen before holding it again: every loss before is forgotten.
    #[test]
    fn a_relist_starts_the_record_over() {
        let mut lapses = Lapses::default();
        lapses.saw(Some("a".into()), at(0));
        lapses.saw(Some("b".into()), at(10));
        assert_eq!(lapses.lapse_of("a", at(20)), Some(at(10)));
        lapses.relisted(Some("c".into()), at(50));
        assert_eq!(lapses.lapse_of("a", at(60)), Some(at(50)));
        assert_eq!(lapses.lapse_of("b", at(60)), Some(at(50)));
        assert_eq!(lapses.lapse_of("c", at(60)), Some(at(60)));
        assert_eq!(lapses.lapse_of("z", at(60)), Some(at(50)));
    }
}
