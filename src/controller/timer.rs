//! When each credential's reconcile runs again if nothing else wakes it: the next reconcile
//! its last reconcile asked for (a refresh, a retry), and look-agains. One entry per
//! credential in a heap that one task serves, where kube-runtime's scheduler kept two copies
//! of the object's reference and a delay-queue node per credential (about 1 KiB each:
//! docs/scale.md, sixth round), and a task per look-again cost more still.
//!
//! As with kube-runtime's scheduler, after any reconcile only the requeue it asked for is
//! pending (whatever woke it took the one before), so a requeue replaces the last one;
//! look-agains keep the earliest asked for until it fires (the woken reconcile asks again if
//! it must).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::lock;

#[derive(Default)]
pub struct Timer {
    state: Mutex<State>,
    /// A wake was asked for sooner than every pending one: the task sleeps less.
    sooner: Notify,
}

/// A key's pending wakes.
#[derive(Clone, Copy, Default, PartialEq)]
struct Due {
    /// What its last reconcile asked for.
    requeue: Option<Instant>,
    /// The earliest look-again asked for since one last fired.
    again: Option<Instant>,
}

impl Due {
    fn next(&self) -> Option<Instant> {
        match (self.requeue, self.again) {
            (Some(r), Some(a)) => Some(r.min(a)),
            (r, a) => r.or(a),
        }
    }
}

#[derive(Default)]
struct State {
    due: HashMap<Arc<str>, Due>,
    /// Each key's next wake, soonest first. A key whose next wake changed leaves its older
    /// entry here, to be skipped when it comes up (or dropped when these outnumber `due`
    /// twice over).
    queue: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
}

impl State {
    /// Changes `key`'s wakes with `f`; whether its next wake is now sooner than every
    /// pending one.
    fn change(&mut self, key: &str, f: impl FnOnce(&mut Due)) -> bool {
        let (key, before) = match self.due.get_key_value(key) {
            Some((shared, due)) => (shared.clone(), *due),
            None => (Arc::from(key), Due::default()),
        };
        let mut after = before;
        f(&mut after);
        if after == before {
            return false;
        }
        let Some(next) = after.next() else {
            self.due.remove(&key);
            return false;
        };
        self.due.insert(key.clone(), after);
        if before.next() == Some(next) {
            return false;
        }
        let sooner = self
            .queue
            .peek()
            .is_none_or(|Reverse((first, _))| next < *first);
        self.queue.push(Reverse((next, key)));
        if self.queue.len() > 2 * self.due.len() + 64 {
            let State { due, queue } = self;
            queue.retain(|Reverse((at, key))| due.get(key).and_then(Due::next) == Some(*at));
        }
        sooner
    }

    /// The keys due at `now`, and when the next one is.
    fn take_due(&mut self, now: Instant) -> (Vec<Arc<str>>, Option<Instant>) {
        let mut woken = Vec::new();
        while let Some(Reverse((at, _))) = self.queue.peek() {
            if *at > now {
                return (woken, Some(*at));
            }
            let Some(Reverse((at, key))) = self.queue.pop() else {
                break;
            };
            let Some(due) = self.due.get_mut(&key).filter(|d| d.next() == Some(at)) else {
                continue;
            };
            due.requeue = due.requeue.filter(|t| *t > now);
            due.again = due.again.filter(|t| *t > now);
            match due.next() {
                Some(later) => self.queue.push(Reverse((later, key.clone()))),
                None => {
                    self.due.remove(&key);
                }
            }
            woken.push(key);
        }
        (woken, None)
    }
}

impl Timer {
    /// Wakes `key` at `at` (`None`: not at all), in place of the requeue asked for before:
    /// what a finished reconcile asks for.
    pub fn requeue(&self, key: &str, at: Option<Instant>) {
        let sooner = lock(&self.state).change(key, |due| due.requeue = at);
        if sooner {
            self.sooner.notify_one();
        }
    }

    /// Wakes `key` at `at` as well, unless a look-again at or before it is pending.
    pub fn look_again(&self, key: &str, at: Instant) {
        let sooner = lock(&self.state).change(key, |due| {
            due.again = Some(due.again.map_or(at, |pending| pending.min(at)));
        });
        if sooner {
            self.sooner.notify_one();
        }
    }

    /// Calls `wake` with each key when its time comes, until `stopping` turns true or its
    /// sender is gone.
    pub async fn run(&self, wake: impl Fn(&str), mut stopping: watch::Receiver<bool>) {
        loop {
            let (woken, next) = lock(&self.state).take_due(Instant::now());
            for key in woken {
                wake(&key);
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                // A permit stored before this wait (a wake asked for meanwhile) ends it at once.
                _ = self.sooner.notified() => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The timer run in a task, and what it woke so far.
    fn running(timer: &Arc<Timer>) -> (watch::Sender<bool>, Arc<Mutex<Vec<String>>>) {
        let (stop, stopping) = watch::channel(false);
        let woken = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn({
            let (timer, woken) = (timer.clone(), woken.clone());
            async move {
                let wake = |key: &str| lock(&woken).push(key.to_owned());
                timer.run(wake, stopping).await;
            }
        });
        (stop, woken)
    }

    async fn after(secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        // The timer's task runs once more after the clock moved.
        tokio::task::yield_now().await;
    }

    #[tokio::test(start_paused = true)]
    async fn look_agains_fire_once_at_the_earliest_asked_in_time_order() {
        let timer = Arc::new(Timer::default());
        let (_stop, woken) = running(&timer);
        let now = Instant::now();
        let s = |secs| now + Duration::from_secs(secs);
        timer.look_again("ns/late", s(30));
        timer.look_again("ns/a", s(20));
        // Later asks are covered by the pending one, an earlier one moves it.
        timer.look_again("ns/a", s(25));
        timer.look_again("ns/a", s(10));
        timer.look_again("ns/a", s(25));
        timer.look_again("ns/b", s(15));
        after(9).await;
        assert!(lock(&woken).is_empty(), "{:?}", lock(&woken));
        after(6).await;
        assert_eq!(*lock(&woken), ["ns/a", "ns/b"]);
        after(60).await;
        assert_eq!(*lock(&woken), ["ns/a", "ns/b", "ns/late"], "a woken once");
        assert!(lock(&timer.state).due.is_empty());
        // Woken, a key may be asked for again.
        timer.look_again("ns/a", Instant::now() + Duration::from_secs(1));
        after(2).await;
        assert_eq!(lock(&woken).last().map(String::as_str), Some("ns/a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeue_replaces_the_one_before_and_leaves_look_agains_alone() {
        let timer = Arc::new(Timer::default());
        let (_stop, woken) = running(&timer);
        let now = Instant::now();
        let s = |secs| now + Duration::from_secs(secs);
        // A reconcile woken by something else (a grant, a Secret's change) asks again: its
        // requeue stands, later or sooner than the one before.
        timer.requeue("ns/a", Some(s(10)));
        timer.requeue("ns/a", Some(s(60)));
        timer.requeue("ns/b", Some(s(10)));
        timer.requeue("ns/b", None);
        // A look-again asked during a reconcile survives that reconcile's requeue.
        timer.look_again("ns/c", s(20));
        timer.requeue("ns/c", Some(s(40)));
        after(30).await;
        assert_eq!(*lock(&woken), ["ns/c"], "not a's old requeue, none for b");
        after(35).await;
        assert_eq!(*lock(&woken), ["ns/c", "ns/c", "ns/a"]);
        assert!(lock(&timer.state).due.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_sooner_than_the_one_slept_for_is_not_late() {
        let timer = Arc::new(Timer::default());
        let (_stop, woken) = running(&timer);
        timer.requeue("ns/hour", Some(Instant::now() + Duration::from_secs(3600)));
        tokio::task::yield_now().await;
        // The task sleeps for the hour; this must cut it short.
        timer.requeue("ns/soon", Some(Instant::now() + Duration::from_secs(5)));
        after(5).await;
        assert_eq!(*lock(&woken), ["ns/soon"]);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_wakes_once_the_controller_stops() {
        let timer = Arc::new(Timer::default());
        let (stop, woken) = running(&timer);
        timer.requeue("ns/a", Some(Instant::now() + Duration::from_secs(5)));
        stop.send_replace(true);
        after(10).await;
        assert!(lock(&woken).is_empty());
    }

    #[test]
    fn wakes_moved_again_and_again_do_not_pile_up() {
        let timer = Timer::default();
        let now = Instant::now();
        for i in 0..10_000u64 {
            timer.look_again("ns/a", now + Duration::from_secs(100_000 - i));
            timer.requeue("ns/a", Some(now + Duration::from_secs(i)));
        }
        let state = lock(&timer.state);
        assert_eq!(state.due.len(), 1);
        assert!(state.queue.len() <= 2 + 64, "{}", state.queue.len());
    }
}
