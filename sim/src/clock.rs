//! The wall clock the simulated processes and servers read: a fixed start plus tokio's
//! paused time, so that `tokio::time::advance` (and the runtime's auto-advance) moves
//! every clock together, plus a skew per process that the driver may set.
//!
//! `Settings.clock` is a plain `fn() -> Timestamp`: one function per process slot reads
//! that slot's skew. Thread-local: each simulation thread has its own clocks.

use std::cell::Cell;

use jiff::{SignedDuration, Timestamp};

/// Most processes a simulation runs (one clock function each).
pub const SLOTS: usize = 3;

thread_local! {
    static START: Cell<Option<(tokio::time::Instant, Timestamp)>> = const { Cell::new(None) };
    static SKEW: [Cell<i64>; SLOTS] = const { [Cell::new(0), Cell::new(0), Cell::new(0)] };
}

/// Starts the clocks at `at` (call inside the paused runtime).
pub fn start(at: Timestamp) {
    START.with(|s| s.set(Some((tokio::time::Instant::now(), at))));
    SKEW.with(|k| k.iter().for_each(|c| c.set(0)));
}

/// The true time: what the servers read.
pub fn now() -> Timestamp {
    let (base, at) = START.with(|s| s.get()).expect("clock::start first");
    let elapsed = tokio::time::Instant::now().saturating_duration_since(base);
    at + SignedDuration::try_from(elapsed).unwrap_or(SignedDuration::ZERO)
}

/// What process `slot` takes the time to be.
pub fn of(slot: usize) -> Timestamp {
    let skew = SKEW.with(|k| k[slot].get());
    now() + SignedDuration::from_millis(skew)
}

pub fn set_skew(slot: usize, millis: i64) {
    SKEW.with(|k| k[slot].set(millis));
}

fn p0() -> Timestamp {
    of(0)
}
fn p1() -> Timestamp {
    of(1)
}
fn p2() -> Timestamp {
    of(2)
}

/// The `Settings.clock` of process slot `slot`.
pub fn for_slot(slot: usize) -> fn() -> Timestamp {
    [p0, p1, p2][slot]
}
