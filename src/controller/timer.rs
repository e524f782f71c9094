//! When each credential's reconcile runs again if nothing else wakes it: the next refresh
//! its last reconcile scheduled, a retry, a look-again. One entry per credential in a heap
//! that one task serves, where kube-runtime's scheduler kept two copies of the object's
//! reference and a delay-queue node per credential (about 1 KiB each: docs/scale.md, sixth
//! round), and a task per wake cost more still. As in kube-runtime's scheduler, the earliest
//! wake asked for wins: a later one is covered by it (the woken reconcile asks again), an
//! earlier one moves it.

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

#[derive(Default)]
struct State {
    /// When each key's wake fires.
    due: HashMap<Arc<str>, Instant>,
    /// The same, soonest first. A key's wake moved earlier leaves its older entry here, to
    /// be skipped when it comes up (or dropped when these outnumber `due` twice over).
    queue: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
}

impl State {
    /// The keys due at `now`, out of both maps, and when the next one is.
    fn take_due(&mut self, now: Instant) -> (Vec<Arc<str>>, Option<Instant>) {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.queue.peek() {
            if *at > now {
                return (due, Some(*at));
            }
            let Some(Reverse((at, key))) = self.queue.pop() else {
                break;
            };
            if self.due.get(&key) == Some(&at) {
                self.due.remove(&key);
                due.push(key);
            }
        }
        (due, None)
    }
}

impl Timer {
    /// Wakes `key` at `at`, unless a wake at or before it is pending.
    pub fn wake_at(&self, key: &str, at: Instant) {
        let mut state = lock(&self.state);
        let key: Arc<str> = match state.due.get_key_value(key) {
            Some((_, pending)) if *pending <= at => return,
            Some((shared, _)) => shared.clone(),
            None => key.into(),
        };
        let sooner = state
            .queue
            .peek()
            .is_none_or(|Reverse((next, _))| at < *next);
        state.due.insert(key.clone(), at);
        state.queue.push(Reverse((at, key)));
        if state.queue.len() > 2 * state.due.len() + 64 {
            let State { due, queue } = &mut *state;
            queue.retain(|Reverse((at, key))| due.get(key) == Some(at));
        }
        drop(state);
        if sooner {
            self.sooner.notify_one();
        }
    }

    /// Calls `wake` with each key when its time comes, until `stopping` turns true or its
    /// sender is gone.
    pub async fn run(&self, wake: impl Fn(&str), mut stopping: watch::Receiver<bool>) {
        loop {
            let (due, next) = lock(&self.state).take_due(Instant::now());
            for key in due {
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
    async fn each_key_wakes_once_at_the_earliest_time_asked_in_time_order() {
        let timer = Arc::new(Timer::default());
        let (_stop, woken) = running(&timer);
        let now = Instant::now();
        let s = |secs| now + Duration::from_secs(secs);
        timer.wake_at("ns/late", s(30));
        timer.wake_at("ns/a", s(20));
        // Later asks are covered by the pending wake, an earlier one moves it.
        timer.wake_at("ns/a", s(25));
        timer.wake_at("ns/a", s(10));
        timer.wake_at("ns/a", s(25));
        timer.wake_at("ns/b", s(15));
        after(9).await;
        assert!(lock(&woken).is_empty(), "{:?}", lock(&woken));
        after(6).await;
        assert_eq!(*lock(&woken), ["ns/a", "ns/b"]);
        after(60).await;
        assert_eq!(*lock(&woken), ["ns/a", "ns/b", "ns/late"], "a woken once");
        assert!(lock(&timer.state).due.is_empty());
        // Woken, a key may be asked for again.
        timer.wake_at("ns/a", Instant::now() + Duration::from_secs(1));
        after(2).await;
        assert_eq!(lock(&woken).last().map(String::as_str), Some("ns/a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_sooner_than_the_one_slept_for_is_not_late() {
        let timer = Arc::new(Timer::default());
        let (_stop, woken) = running(&timer);
        timer.wake_at("ns/hour", Instant::now() + Duration::from_secs(3600));
        tokio::task::yield_now().await;
        // The task sleeps for the hour; this must cut it short.
        timer.wake_at("ns/soon", Instant::now() + Duration::from_secs(5));
        after(5).await;
        assert_eq!(*lock(&woken), ["ns/soon"]);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_wakes_once_the_controller_stops() {
        let timer = Arc::new(Timer::default());
        let (stop, woken) = running(&timer);
        timer.wake_at("ns/a", Instant::now() + Duration::from_secs(5));
        stop.send_replace(true);
        after(10).await;
        assert!(lock(&woken).is_empty());
    }

    #[test]
    fn entries_moved_earlier_again_and_again_do_not_pile_up() {
        let timer = Timer::default();
        let now = Instant::now();
        for i in 0..10_000u64 {
            timer.wake_at("ns/a", now + Duration::from_secs(100_000 - i));
        }
        let state = lock(&timer.state);
        assert_eq!(state.due.len(), 1);
        assert!(state.queue.len() <= 2 + 64, "{}", state.queue.len());
    }
}
