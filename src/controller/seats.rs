//! The controller's reconcile seats, shared fairly between namespaces (`crate::fair`). A
//! reconcile that finds no seat for it leaves kube-runtime at once: its credential keeps a
//! place in the fair queue, an entry with no task behind it, and when the queue grants it a
//! seat the seat is kept for the credential and its reconcile woken to use it (through the
//! same stream as a parked credential's call slot). So a cold start's thousand due
//! credentials wait as a thousand small entries, not as a thousand running reconciles (each
//! a future, a span and a place in kube-runtime's maps).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;
use tokio::time::Instant;

use super::StoredCredential;
use super::lock;
use super::parked::Parked;
use crate::fair::{Owner, Permit, Slots};

/// A seat granted to a waiting credential whose reconcile has not come to take it within
/// this long is handed on, and the credential woken to queue again: its wake was lost
/// with the credential (deleted, or gone from this shard), or it waits behind a reconcile
/// of the credential already running (one using a call slot granted while it was parked).
const UNCLAIMED: Duration = Duration::from_secs(10);

pub struct Seats {
    slots: Arc<Slots<()>>,
    state: Mutex<State>,
    /// Whose credentials still want a seat: the controller's store.
    store: Store<StoredCredential>,
    parked: Arc<Parked>,
    stopping: watch::Receiver<bool>,
    me: Weak<Seats>,
}

#[derive(Default)]
struct State {
    /// Credentials with a place in the queue.
    waiting: HashSet<Arc<str>>,
    /// Seats granted to waiting credentials, not yet taken by their reconcile.
    granted: HashMap<Arc<str>, (Permit<()>, Instant)>,
    /// Whether the task handing on unclaimed seats runs.
    expiring: bool,
}

/// A seat, or the word that one will be granted.
pub type Seat = Option<Permit<()>>;

impl Seats {
    /// `seats` reconciles at once for the credentials in `store`, woken through `parked`.
    pub fn new(
        seats: usize,
        store: Store<StoredCredential>,
        parked: Arc<Parked>,
        stopping: watch::Receiver<bool>,
    ) -> Arc<Seats> {
        let seats = seats.max(1);
        Arc::new_cyclic(|me| Seats {
            slots: Slots::new(seats, seats),
            state: Mutex::default(),
            store,
            parked,
            stopping,
            me: me.clone(),
        })
    }

    /// A seat for credential `key` (`namespace/name`): the one granted to it while it
    /// waited, or one the fair queue grants it now; else `None`, and its reconcile is woken
    /// once the queue grants it one (a credential already waiting keeps its one place).
    pub fn take(&self, key: &str, namespace: &str) -> Seat {
        let id: Arc<str> = {
            let mut state = lock(&self.state);
            if let Some((seat, _)) = state.granted.remove(key) {
                return Some(seat);
            }
            if state.waiting.contains(key) {
                return None;
            }
            let id: Arc<str> = Arc::from(key);
            state.waiting.insert(id.clone());
            id
        };
        let owner: Weak<dyn Owner<()>> = self.me.clone();
        let seat = self.slots.enter((), namespace, id, owner);
        if seat.is_some() {
            lock(&self.state).waiting.remove(key);
        }
        seat
    }

    /// Hands on every seat granted longer than `UNCLAIMED` ago, waking the credentials
    /// still here to wait again; when the next will be due.
    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut unclaimed = Vec::new();
        let expired_keys;
        let next = {
            let mut state = lock(&self.state);
            let expired: Vec<Arc<str>> = (state.granted.iter())
                .filter(|(_, (_, at))| now.duration_since(*at) >= UNCLAIMED)
                .map(|(key, _)| key.clone())
                .collect();
            for key in &expired {
                unclaimed.extend(state.granted.remove(key));
            }
            expired_keys = expired;
            let next = state.granted.values().map(|(_, at)| *at + UNCLAIMED).min();
            if next.is_none() {
                state.expiring = false;
            }
            next
        };
        // Dropped with no lock of ours held: each hands its seat on, maybe to us.
        drop(unclaimed);
        for key in expired_keys {
            if self.wanted(&key)
                && let Some((ns, name)) = key.split_once('/')
            {
                self.parked.wake(ObjectRef::new(name).within(ns));
            }
        }
        next
    }

    /// Runs while seats are kept: hands on those unclaimed, then ends (the next kept seat
    /// starts it again) or when the controller stops.
    async fn expiring(me: Weak<Seats>) {
        loop {
            let Some(seats) = me.upgrade() else { return };
            let Some(next) = seats.expire() else { return };
            let mut stopping = seats.stopping.clone();
            drop(seats);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.state).granted.len()
    }
}

impl Owner<()> for Seats {
    fn wanted(&self, id: &str) -> bool {
        // Looked at under `Seats`' own lock, which `take` holds while it finds the place
        // kept: a credential back under the same name between the look and the forgetting
        // would otherwise keep a name among the waiting with no place behind it. (The
        // queue's lock is held here; `Seats` never holds its own while taking the queue's.)
        let mut state = lock(&self.state);
        let wanted = id.split_once('/').is_some_and(|(ns, name)| {
            !*self.stopping.borrow() && self.store.get(&ObjectRef::new(name).within(ns)).is_some()
        });
        if !wanted {
            // Its place is gone: were it back (deleted and created again, or back in this
            // shard), its next reconcile queues it anew.
            state.waiting.remove(id);
        }
        wanted
    }

    fn granted(&self, id: Arc<str>, seat: Permit<()>) {
        let Some((ns, name)) = id.split_once('/') else {
            return;
        };
        let wake = ObjectRef::new(name).within(ns);
        let (start, replaced) = {
            let mut state = lock(&self.state);
            state.waiting.remove(&id);
            let replaced = state.granted.insert(id, (seat, Instant::now()));
            (!std::mem::replace(&mut state.expiring, true), replaced)
        };
        // (Never two places for one credential; were there, the older seat goes back here,
        // with no lock of ours held.)
        drop(replaced);
        if start {
            tokio::spawn(Seats::expiring(self.me.clone()));
        }
        self.parked.wake(wake);
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    use super::*;
    use crate::crd::EagleEyeCredential;

    fn credential(ns: &str, name: &str) -> StoredCredential {
        let mut cr = EagleEyeCredential::test();
        cr.metadata.namespace = Some(ns.into());
        cr.metadata.name = Some(name.into());
        cr.into()
    }

    /// Two seats over a store holding `keys` (`namespace/name`), and the stream of woken
    /// reconciles.
    fn seats(
        keys: &[&str],
    ) -> (
        Arc<Seats>,
        Writer<StoredCredential>,
        futures::channel::mpsc::UnboundedReceiver<ObjectRef<StoredCredential>>,
        watch::Sender<bool>,
    ) {
        let mut writer = Writer::default();
        for key in keys {
            let (ns, name) = key.split_once('/').unwrap();
            writer.apply_watcher_event(&watcher::Event::Apply(credential(ns, name)));
        }
        let (stop, stopping) = watch::channel(false);
        let (parked, woken) = Parked::new(stopping.clone());
        let seats = Seats::new(2, writer.as_reader(), parked, stopping);
        (seats, writer, woken, stop)
    }

    fn woken_now(
        woken: &mut futures::channel::mpsc::UnboundedReceiver<ObjectRef<StoredCredential>>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(r)) = woken.next().now_or_never() {
            out.push(format!("{}/{}", r.namespace.unwrap_or_default(), r.name));
        }
        out
    }

    #[tokio::test]
    async fn a_credential_with_no_seat_waits_as_one_entry_and_is_woken_to_a_seat_kept_for_it() {
        let (seats, _w, mut woken, _stop) = seats(&["a/one", "a/two", "a/three", "b/four"]);
        let one = seats.take("a/one", "a").expect("a free seat at once");
        let two = seats.take("a/two", "a").expect("a free seat at once");
        assert!(seats.take("a/three", "a").is_none(), "no seat: it waits");
        assert!(seats.take("a/three", "a").is_none(), "still waiting");
        assert!(seats.take("b/four", "b").is_none());
        assert_eq!(seats.slots.held(), 2);
        assert!(woken_now(&mut woken).is_empty(), "nothing granted yet");

        // A freed seat goes to the namespace holding fewest (b holds none, a two), kept for
        // that credential, whose reconcile is woken to take it.
        drop(one);
        assert_eq!(woken_now(&mut woken), ["b/four"]);
        assert_eq!(seats.kept(), 1);
        let four = seats.take("b/four", "b").expect("the kept seat");
        assert_eq!(seats.kept(), 0);
        // Then a's one place (asked twice, queued once).
        drop(two);
        assert_eq!(woken_now(&mut woken), ["a/three"]);
        drop(four);
        assert!(woken_now(&mut woken).is_empty(), "nobody else waits");
        let three = seats.take("a/three", "a").expect("the kept seat");
        drop(three);
        assert_eq!((seats.slots.held(), seats.kept()), (0, 0));
    }

    #[tokio::test]
    async fn a_waiting_credential_deleted_meanwhile_is_passed_over_and_holds_no_seat() {
        let (seats, mut writer, mut woken, _stop) = seats(&["a/one", "a/two", "a/gone", "a/next"]);
        let (one, _two) = (seats.take("a/one", "a"), seats.take("a/two", "a"));
        assert!(seats.take("a/gone", "a").is_none());
        assert!(seats.take("a/next", "a").is_none());
        writer.apply_watcher_event(&watcher::Event::Delete(credential("a", "gone")));
        drop(one);
        assert_eq!(woken_now(&mut woken), ["a/next"]);
        assert_eq!(seats.slots.held(), 2, "one seat each for two and next");
    }

    #[tokio::test]
    async fn a_credential_passed_over_while_gone_queues_anew_when_it_is_back() {
        let (seats, mut writer, mut woken, _stop) = seats(&["a/one", "a/two", "a/x"]);
        let (one, _two) = (seats.take("a/one", "a"), seats.take("a/two", "a"));
        assert!(seats.take("a/x", "a").is_none(), "queued");
        writer.apply_watcher_event(&watcher::Event::Delete(credential("a", "x")));
        drop(one);
        assert!(woken_now(&mut woken).is_empty(), "passed over: gone");
        // Created again under the same name: its reconcile finds no place and takes one.
        writer.apply_watcher_event(&watcher::Event::Apply(credential("a", "x")));
        let seat = seats.take("a/x", "a");
        assert!(seat.is_some(), "the freed seat, at once");
        assert_eq!(lock(&seats.state).waiting.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_seat_nobody_takes_is_handed_on_and_its_credential_woken_to_wait_again() {
        let (seats, _w, mut woken, _stop) = seats(&["a/one", "a/two", "a/late", "b/next"]);
        let (one, _two) = (seats.take("a/one", "a"), seats.take("a/two", "a"));
        assert!(seats.take("a/late", "a").is_none());
        drop(one);
        assert_eq!(woken_now(&mut woken), ["a/late"]);
        // Its wake is lost: nobody takes the seat. Another waits behind.
        assert!(seats.take("b/next", "b").is_none());
        tokio::time::sleep(UNCLAIMED - Duration::from_millis(10)).await;
        assert_eq!(seats.kept(), 1, "kept until the limit");
        assert!(woken_now(&mut woken).is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(seats.kept(), 1, "handed on to b/next, kept for it");
        assert_eq!(woken_now(&mut woken), ["b/next", "a/late"]);
        let next = seats.take("b/next", "b");
        assert!(next.is_some());
        assert!(seats.take("a/late", "a").is_none(), "waits again");
    }

    #[tokio::test]
    async fn once_the_controller_stops_no_waiting_credential_is_granted_a_seat() {
        let (seats, _w, mut woken, stop) = seats(&["a/one", "a/two", "a/three"]);
        let (one, _two) = (seats.take("a/one", "a"), seats.take("a/two", "a"));
        assert!(seats.take("a/three", "a").is_none());
        stop.send_replace(true);
        drop(one);
        assert!(woken_now(&mut woken).is_empty());
        assert_eq!((seats.slots.held(), seats.kept()), (1, 0));
    }
}
