//! Credentials waiting for a token-call slot without holding a controller seat. A reconcile
//! that finds every slot it may take busy for a moment (`Parked::claim_within`: a slot
//! that frees sooner is taken there) hands the wait, and its place in the fair queue, to a
//! task of its own and ends; the slot, once the fair queue grants it (`crate::token`), is
//! kept for that credential and its reconcile woken to use it. So however many credentials
//! wait, and however long calls to a silent destination hold their slots, the controller's
//! seats stay free for every other credential's reconcile but for that moment.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::watch;

use super::StoredCredential;
use super::lock;
use crate::token::{CallSlot, Destination};

/// A credential's reconcile, woken by a granted slot.
pub type Wake = ObjectRef<StoredCredential>;

/// A granted slot is handed over only with this much of its start window left: the woken
/// reconcile still reads, checks its Lease and records its spend intent before the call.
const HANDOVER_MARGIN: Duration = Duration::from_secs(10);

pub struct Parked {
    state: Mutex<State>,
    /// When each credential's pending look-again (`wake_after`) fires.
    wakes: Mutex<HashMap<String, tokio::time::Instant>>,
    wake: mpsc::UnboundedSender<Wake>,
    /// True once the controller stops: every wait ends, its place in the queue given up.
    stopping: watch::Receiver<bool>,
}

/// A credential and where its call goes: a credential whose authUrl changed while it
/// waited waits afresh for the new destination.
type Key = (String, Destination);

#[derive(Default)]
struct State {
    /// Credentials whose wait for a slot is in progress.
    waiting: HashSet<Key>,
    /// Slots granted to parked credentials, not yet taken by their reconcile; each with the
    /// number of its grant, so that a late clean-up never drops a newer one.
    granted: HashMap<Key, (u64, CallSlot)>,
    grants: u64,
}

/// What [`Parked::claim`] found for a credential.
pub enum Claim {
    /// A slot: granted while parked, or free now.
    Slot(CallSlot),
    /// None free: the credential waits for one (it was parked now, or already waited).
    Parked,
}

impl Parked {
    /// The parking lot of a controller that stops when `stopping` turns true, and the
    /// stream of reconciles it wakes (for `Controller::reconcile_on`).
    pub fn new(stopping: watch::Receiver<bool>) -> (Arc<Parked>, mpsc::UnboundedReceiver<Wake>) {
        let (wake, woken) = mpsc::unbounded();
        let parked = Parked {
            state: Mutex::default(),
            wakes: Mutex::default(),
            wake,
            stopping,
        };
        (Arc::new(parked), woken)
    }

    /// Reconciles `credential` (through the same stream as granted slots).
    pub fn wake(&self, credential: Wake) {
        // Closed only when the controller is gone.
        let _ = self.wake.unbounded_send(credential);
    }

    /// Wakes `credential`'s reconcile after `delay` (unless the controller stops first): a
    /// look-again that must not delay the requeue a reconcile asked for. One wake per
    /// credential at a time: a later one already pending is moved earlier, an earlier one
    /// makes this one unneeded (its reconcile asks again), so wakes never multiply.
    pub fn wake_after(self: &Arc<Self>, key: &str, credential: Wake, delay: Duration) {
        let at = tokio::time::Instant::now() + delay;
        {
            let mut wakes = lock(&self.wakes);
            if wakes.get(key).is_some_and(|pending| *pending <= at) {
                return;
            }
            wakes.insert(key.to_owned(), at);
        }
        let (parked, key) = (self.clone(), key.to_owned());
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            {
                let mut wakes = lock(&parked.wakes);
                // Superseded by an earlier wake, which has fired or will.
                if wakes.get(&key) != Some(&at) {
                    return;
                }
                wakes.remove(&key);
            }
            let _ = parked.wake.unbounded_send(credential);
        });
    }

    /// A slot to `destination` for credential `key`: one granted while it was parked (with
    /// time enough left to use it), else a free one now, else it is parked: `wait` (a
    /// place in the fair queue) is awaited in a task of its own, and when it is granted the
    /// slot is kept for the credential and `credential`'s reconcile woken, as long as
    /// `watched` says it is still this process's to refresh. One lock for all of it, so a
    /// grant landing meanwhile is never missed nor doubled.
    pub fn claim<W>(
        self: &Arc<Self>,
        key: &str,
        destination: Destination,
        credential: Wake,
        free_now: impl FnOnce() -> Option<CallSlot>,
        wait: impl FnOnce() -> W,
        watched: impl Fn() -> bool + Send + 'static,
    ) -> Claim
    where
        W: Future<Output = CallSlot> + Send + 'static,
    {
        let k: Key = (key.to_owned(), destination);
        let mut state = lock(&self.state);
        if let Some((_, slot)) = state.granted.remove(&k)
            && slot.usable_for(HANDOVER_MARGIN)
        {
            return Claim::Slot(slot);
        }
        if state.waiting.contains(&k) {
            return Claim::Parked;
        }
        if let Some(slot) = free_now() {
            return Claim::Slot(slot);
        }
        state.waiting.insert(k.clone());
        drop(state);
        let parked = Arc::clone(self);
        let wait = wait();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let stopped = stopping.wait_for(|stop| *stop).map(|_| ());
            let slot = tokio::select! {
                slot = wait => slot,
                () = stopped => {
                    lock(&parked.state).waiting.remove(&k);
                    return;
                }
            };
            let watched = watched();
            let grant = {
                let mut state = lock(&parked.state);
                state.waiting.remove(&k);
                if !watched {
                    return;
                }
                state.grants += 1;
                let grant = state.grants;
                state.granted.insert(k.clone(), (grant, slot));
                grant
            };
            tracing::debug!(credential = %k.0, destination = %k.1, "call slot granted to a parked credential; waking its reconcile");
            if parked.wake.unbounded_send(credential).is_err() {
                lock(&parked.state).granted.remove(&k);
                return;
            }
            tokio::time::sleep(crate::token::MAX_SLOT_HOLD + Duration::from_secs(1)).await;
            let mut state = lock(&parked.state);
            if state.granted.get(&k).is_some_and(|(g, _)| *g == grant) {
                state.granted.remove(&k);
            }
        });
        Claim::Parked
    }

    /// As [`Parked::claim`], but a caller neither parked nor granted first waits up to
    /// `patience` for a slot itself (holding its controller seat); past that it parks, and
    /// its wait goes on from the same place in the fair queue.
    pub async fn claim_within(
        self: &Arc<Self>,
        patience: Duration,
        key: &str,
        destination: Destination,
        credential: Wake,
        reserve: impl Fn() -> BoxFuture<'static, CallSlot>,
        watched: impl Fn() -> bool + Send + 'static,
    ) -> Claim {
        let mut waited = None;
        if !self.is_pending(key, &destination) {
            let mut wait = reserve();
            // A controller that stops ends the moment at once (the parked wait then ends too).
            let mut stopping = self.stopping.clone();
            let stopped = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            tokio::select! {
                got = tokio::time::timeout(patience, &mut wait) => {
                    if let Ok(slot) = got {
                        return Claim::Slot(slot);
                    }
                }
                () = stopped => {}
            }
            waited = Some(wait);
        }
        let in_seat = waited.is_some();
        self.claim(
            key,
            destination,
            credential,
            || match in_seat {
                true => None,
                false => reserve().now_or_never(),
            },
            || waited.unwrap_or_else(&reserve),
            watched,
        )
    }

    /// Whether `key` waits for a slot to `destination`, or was granted one not yet taken.
    fn is_pending(&self, key: &str, destination: &Destination) -> bool {
        let k: Key = (key.to_owned(), destination.clone());
        let state = lock(&self.state);
        state.waiting.contains(&k) || state.granted.contains_key(&k)
    }

    /// Whether a slot was granted to `key` and waits for its reconcile.
    pub fn has_grant(&self, key: &str) -> bool {
        lock(&self.state).granted.keys().any(|(k, _)| k == key)
    }

    /// Gives back any slot granted to `key` and not used: its reconcile ended without a
    /// call (not due after all, deleted, an API error).
    pub fn release(&self, key: &str) {
        lock(&self.state).granted.retain(|(k, _), _| k != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{TokenClient, TokenClientOptions};
    use futures::StreamExt;

    fn client() -> TokenClient {
        TokenClient::new(TokenClientOptions {
            max_concurrent_calls: 1,
            ..TokenClientOptions::default()
        })
        .unwrap()
    }

    fn credential(name: &str) -> Wake {
        ObjectRef::new(name).within("ns")
    }

    fn url() -> url::Url {
        "https://auth.example.com".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn look_agains_never_multiply_and_the_earliest_wins() {
        let (_stop, stopping) = watch::channel(false);
        let (parked, mut woken) = Parked::new(stopping);
        let a = credential("a");
        // Asked again and again (every reconcile of a waiting credential asks): one wake.
        for _ in 0..5 {
            parked.wake_after("ns/a", a.clone(), Duration::from_secs(30));
        }
        // A sooner one replaces it.
        parked.wake_after("ns/a", a.clone(), Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(woken.next().await, Some(a.clone()));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(woken.next().now_or_never().is_none(), "one wake, not six");
    }

    fn claim(parked: &Arc<Parked>, tokens: &TokenClient, key: &str, url: &url::Url) -> Claim {
        let (t1, t2, u1, u2) = (tokens.clone(), tokens.clone(), url.clone(), url.clone());
        let name = key.rsplit('/').next().unwrap().to_owned();
        parked.claim(
            key,
            Destination::of(url),
            credential(&name),
            move || t1.reserve(&u1, "ns").now_or_never(),
            move || t2.reserve(&u2, "ns"),
            || true,
        )
    }

    async fn within(
        parked: &Arc<Parked>,
        tokens: &TokenClient,
        key: &str,
        url: &url::Url,
    ) -> Claim {
        let name = key.rsplit('/').next().unwrap().to_owned();
        let (t, u) = (tokens.clone(), url.clone());
        parked
            .claim_within(
                Duration::from_millis(500),
                key,
                Destination::of(url),
                credential(&name),
                move || t.reserve(&u, "ns").boxed(),
                || true,
            )
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_frees_within_the_patience_is_taken_in_the_seat_and_a_longer_wait_parks_in_its_place()
     {
        let (tokens, url) = (client(), url());
        let held = tokens.reserve(&url, "other").await;
        let (_stop, stopping) = watch::channel(false);
        let (parked, mut woken) = Parked::new(stopping);
        // Freed 100 ms into the half second: taken here; nothing parked, nothing woken.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(held);
        });
        let Claim::Slot(a) = within(&parked, &tokens, "ns/a", &url).await else {
            panic!("a slot freed within the patience");
        };
        release.await.unwrap();
        assert!(!parked.has_grant("ns/a"));
        assert!(woken.next().now_or_never().is_none(), "nothing parked");

        // Held past it: parked, in the place it took in the queue when it began to wait
        // (ahead of a caller that came 100 ms later).
        let asked = tokio::time::Instant::now();
        let b = tokio::spawn({
            let (parked, tokens, url) = (parked.clone(), tokens.clone(), url.clone());
            async move { within(&parked, &tokens, "ns/b", &url).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let behind = tokio::spawn(tokens.reserve(&url, "ns"));
        assert!(matches!(b.await.unwrap(), Claim::Parked));
        assert_eq!(asked.elapsed(), Duration::from_millis(500));
        drop(a);
        let first = tokio::time::timeout(Duration::from_secs(5), woken.next()).await;
        assert_eq!(
            first.ok().flatten(),
            Some(credential("b")),
            "b is served first"
        );
        assert!(parked.has_grant("ns/b"));
        assert!(!behind.is_finished(), "the later waiter waits behind it");
        // Asked again, it takes its granted slot at once.
        assert!(matches!(
            within(&parked, &tokens, "ns/b", &url).await,
            Claim::Slot(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_moment_in_the_seat_ends_when_the_controller_stops_and_a_dropped_one_leaves_no_place()
    {
        let (tokens, url) = (client(), url());
        let held = tokens.reserve(&url, "other").await;
        let (stop, stopping) = watch::channel(false);
        let (parked, _woken) = Parked::new(stopping);
        let waiting = |key: &'static str| {
            let (parked, tokens, url) = (parked.clone(), tokens.clone(), url.clone());
            tokio::spawn(async move { within(&parked, &tokens, key, &url).await })
        };
        // A reconcile dropped 100 ms into its moment (its controller's task aborted).
        let a = waiting("ns/a");
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.abort();
        assert!(a.await.is_err());
        // The controller stops 50 ms into another's moment: it ends then, not at 500 ms.
        let asked = tokio::time::Instant::now();
        let b = waiting("ns/b");
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send_replace(true);
        assert!(matches!(b.await.unwrap(), Claim::Parked));
        assert_eq!(asked.elapsed(), Duration::from_millis(50));
        // Neither left a place in the queue: the slot freed goes to the next caller at once.
        tokio::task::yield_now().await;
        drop(held);
        assert!(tokens.reserve(&url, "x").now_or_never().is_some());
    }

    #[tokio::test]
    async fn a_parked_credential_is_woken_with_its_slot_once_one_frees() {
        let (tokens, url) = (client(), url());
        let held = tokens.reserve(&url, "other").await;
        let (_stop, stopping) = watch::channel(false);
        let (parked, mut woken) = Parked::new(stopping);
        assert!(matches!(
            claim(&parked, &tokens, "ns/a", &url),
            Claim::Parked
        ));
        // Claimed again while it waits: no second wait.
        assert!(matches!(
            claim(&parked, &tokens, "ns/a", &url),
            Claim::Parked
        ));
        drop(held);
        assert_eq!(woken.next().await, Some(credential("a")));
        assert!(parked.has_grant("ns/a"));
        let Claim::Slot(slot) = claim(&parked, &tokens, "ns/a", &url) else {
            panic!("the granted slot");
        };
        assert!(!parked.has_grant("ns/a"));
        drop(slot);
        // The slot went back: another caller gets it at once.
        assert!(tokens.reserve(&url, "ns").now_or_never().is_some());
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_credential_no_longer_watched_goes_back_at_once() {
        let (tokens, url) = (client(), url());
        let held = tokens.reserve(&url, "other").await;
        let (_stop, stopping) = watch::channel(false);
        let (parked, _woken) = Parked::new(stopping);
        let t = tokens.clone();
        let u = url.clone();
        parked.claim(
            "ns/gone",
            Destination::of(&url),
            credential("gone"),
            || None,
            move || t.reserve(&u, "ns"),
            || false,
        );
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(5), tokens.reserve(&url, "ns"))
            .await
            .expect("the slot is not kept for a credential that is gone");
        drop(next);
        assert!(!parked.has_grant("ns/gone"));
    }

    #[tokio::test]
    async fn an_unused_grant_is_released_when_its_reconcile_ends() {
        let (tokens, url) = (client(), url());
        let held = tokens.reserve(&url, "other").await;
        let (_stop, stopping) = watch::channel(false);
        let (parked, mut woken) = Parked::new(stopping);
        claim(&parked, &tokens, "ns/a", &url);
        drop(held);
        woken.next().await.unwrap();
        assert!(tokens.reserve(&url, "x").now_or_never().is_none());
        parked.release("ns/a");
        assert!(tokens.reserve(&url, "x").now_or_never().is_some());
    }

    #[tokio::test]
    async fn a_credential_whose_auth_url_changed_waits_for_the_new_destination() {
        let (tokens, url) = (client(), url());
        let other: url::Url = "https://auth.example.com:8443".parse().unwrap();
        let held = tokens.reserve(&url, "other").await;
        let (_stop, stopping) = watch::channel(false);
        let (parked, _woken) = Parked::new(stopping);
        assert!(matches!(
            claim(&parked, &tokens, "ns/a", &url),
            Claim::Parked
        ));
        // The new destination is free: its slot is not held up by the old wait.
        assert!(matches!(
            claim(&parked, &tokens, "ns/a", &other),
            Claim::Slot(_)
        ));
        drop(held);
    }

    #[tokio::test]
    async fn a_stopping_controller_gives_up_every_wait() {
        let (tokens, url) = (client(), url());
        let held = tokens.reserve(&url, "other").await;
        let (stop, stopping) = watch::channel(false);
        let (parked, mut woken) = Parked::new(stopping);
        claim(&parked, &tokens, "ns/a", &url);
        stop.send_replace(true);
        // The wait ends without a grant: the freed slot goes to the next caller, and no
        // reconcile is woken.
        tokio::task::yield_now().await;
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(5), tokens.reserve(&url, "x")).await;
        assert!(next.is_ok());
        assert!(woken.next().now_or_never().flatten().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unclaimed_slot_goes_back_after_the_longest_hold() {
        let (tokens, url) = (client(), url());
        let (_stop, stopping) = watch::channel(false);
        let (parked, mut woken) = Parked::new(stopping);
        let held = tokens.reserve(&url, "other").await;
        claim(&parked, &tokens, "ns/a", &url);
        drop(held);
        woken.next().await.unwrap();
        assert!(tokens.reserve(&url, "x").now_or_never().is_none());
        tokio::time::sleep(crate::token::MAX_SLOT_HOLD + Duration::from_secs(2)).await;
        let next = tokio::time::timeout(Duration::from_secs(1), tokens.reserve(&url, "x")).await;
        assert!(next.is_ok(), "the unclaimed slot went back");
        assert!(!parked.has_grant("ns/a"));
    }
}
