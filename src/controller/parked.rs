//! Credentials waiting for a token-call slot without holding a controller seat. A reconcile
//! that finds every slot it may take busy hands the wait to a task of its own and ends; the
//! slot, once the fair queue grants it (`crate::token`), is kept for that credential and its
//! reconcile woken to use it. So however many credentials wait, and however long calls to a
//! silent destination hold their slots, the controller's seats stay free for every other
//! credential's reconcile.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use super::lock;
use crate::crd::EagleEyeCredential;
use crate::token::{CallSlot, MAX_SLOT_HOLD};

/// A credential's reconcile, woken by a granted slot.
pub type Wake = ObjectRef<EagleEyeCredential>;

pub struct Parked {
    state: Mutex<State>,
    wake: mpsc::UnboundedSender<Wake>,
}

#[derive(Default)]
struct State {
    /// Credentials whose wait for a slot is in progress.
    waiting: HashSet<String>,
    /// Slots granted to parked credentials, not yet taken by their reconcile; each with the
    /// number of its grant, so that a late clean-up never drops a newer one.
    granted: HashMap<String, (u64, CallSlot)>,
    grants: u64,
}

impl Parked {
    /// The parking lot, and the stream of reconciles it wakes (for `Controller::reconcile_on`).
    pub fn new() -> (Arc<Parked>, mpsc::UnboundedReceiver<Wake>) {
        let (wake, woken) = mpsc::unbounded();
        let parked = Parked {
            state: Mutex::default(),
            wake,
        };
        (Arc::new(parked), woken)
    }

    /// The slot granted to `key` while it was parked, if it can still carry a call.
    pub fn take(&self, key: &str) -> Option<CallSlot> {
        let (_, slot) = lock(&self.state).granted.remove(key)?;
        slot.usable().then_some(slot)
    }

    /// Whether a slot was granted to `key` and waits for its reconcile.
    pub fn has_grant(&self, key: &str) -> bool {
        lock(&self.state).granted.contains_key(key)
    }

    /// Whether `key` waits for a slot (a reconcile woken for another reason then ends).
    pub fn is_waiting(&self, key: &str) -> bool {
        lock(&self.state).waiting.contains(key)
    }

    /// Waits for `slot` for `key` in a task of its own, unless it waits already; when it is
    /// granted, keeps it for the credential (for `MAX_SLOT_HOLD` at most: unclaimed, it goes
    /// back) and wakes `credential`'s reconcile, as long as `watched` says the credential is
    /// still this process's to refresh.
    pub fn park(
        self: &Arc<Self>,
        key: String,
        credential: Wake,
        slot: impl Future<Output = CallSlot> + Send + 'static,
        watched: impl Fn() -> bool + Send + 'static,
    ) {
        if !lock(&self.state).waiting.insert(key.clone()) {
            return;
        }
        let parked = Arc::clone(self);
        tokio::spawn(async move {
            let slot = slot.await;
            let grant = {
                let mut state = lock(&parked.state);
                state.waiting.remove(&key);
                if !watched() {
                    return;
                }
                state.grants += 1;
                let grant = state.grants;
                state.granted.insert(key.clone(), (grant, slot));
                grant
            };
            tracing::debug!(credential = %key, "call slot granted to a parked credential; waking its reconcile");
            if parked.wake.unbounded_send(credential).is_err() {
                lock(&parked.state).granted.remove(&key);
                return;
            }
            tokio::time::sleep(MAX_SLOT_HOLD + Duration::from_secs(1)).await;
            let mut state = lock(&parked.state);
            if state.granted.get(&key).is_some_and(|(g, _)| *g == grant) {
                state.granted.remove(&key);
            }
        });
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

    #[tokio::test]
    async fn a_parked_credential_is_woken_with_its_slot_once_one_frees() {
        let tokens = client();
        let url: url::Url = "https://auth.example.com".parse().unwrap();
        let held = tokens.reserve(&url, "other").await;
        let (parked, mut woken) = Parked::new();
        parked.park(
            "ns/a".into(),
            credential("a"),
            tokens.reserve(&url, "ns"),
            || true,
        );
        // A second park of the same credential while it waits starts no second wait.
        parked.park(
            "ns/a".into(),
            credential("a"),
            tokens.reserve(&url, "ns"),
            || true,
        );
        assert!(parked.is_waiting("ns/a"));
        assert!(parked.take("ns/a").is_none());
        drop(held);
        assert_eq!(woken.next().await, Some(credential("a")));
        assert!(!parked.is_waiting("ns/a"));
        assert!(parked.has_grant("ns/a"));
        let slot = parked.take("ns/a").expect("the granted slot");
        assert!(!parked.has_grant("ns/a"));
        assert!(parked.take("ns/a").is_none(), "taken once");
        drop(slot);
        // The slot went back: another caller gets it at once.
        let again = futures::FutureExt::now_or_never(tokens.reserve(&url, "ns"));
        assert!(again.is_some());
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_credential_no_longer_watched_goes_back_at_once() {
        let tokens = client();
        let url: url::Url = "https://auth.example.com".parse().unwrap();
        let held = tokens.reserve(&url, "other").await;
        let (parked, _woken) = Parked::new();
        parked.park(
            "ns/gone".into(),
            credential("gone"),
            tokens.reserve(&url, "ns"),
            || false,
        );
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(5), tokens.reserve(&url, "ns"))
            .await
            .expect("the slot is not kept for a credential that is gone");
        drop(next);
        assert!(parked.take("ns/gone").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unclaimed_slot_goes_back_after_the_longest_hold() {
        let tokens = client();
        let url: url::Url = "https://auth.example.com".parse().unwrap();
        let (parked, mut woken) = Parked::new();
        parked.park(
            "ns/a".into(),
            credential("a"),
            tokens.reserve(&url, "ns"),
            || true,
        );
        woken.next().await.unwrap();
        assert!(futures::FutureExt::now_or_never(tokens.reserve(&url, "x")).is_none());
        tokio::time::sleep(MAX_SLOT_HOLD + Duration::from_secs(2)).await;
        let next = tokio::time::timeout(Duration::from_secs(1), tokens.reserve(&url, "x")).await;
        assert!(next.is_ok(), "the unclaimed slot went back");
        assert!(parked.take("ns/a").is_none());
    }
}
