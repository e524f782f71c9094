//! Which Event object a publish writes: a repeat of what a credential already reported adds
//! to that Event's `series.count` (one object, "x5 over 40m" in `kubectl get events`)
//! instead of making another object. kube's `Recorder` does this only within one recorder,
//! for 6 minutes, and walks its whole cache on every publish; a recorder per reconcile made
//! one object per publish, and one shared recorder would still start a new object for every
//! repeat more than 6 minutes apart (all but the first few of a long outage's). Pure: the
//! controller performs the create or patch and says how it went.
//!
//! Memory: one entry per series published within [`KEEP`], 49 bytes in the map (no string:
//! the key is a hash, the Event's name is rebuilt), whose table doubles in size as it fills
//! to 7/8; pruned when the map has doubled since the last pruning, and never more than
//! [`MAX_SERIES`] entries (32,768 slots: 1.6 MB). At 10,000 credentials with one series each
//! (a cold start's first refreshes, an outage): 16,384 slots, 0.8 MB, gone an hour later.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;

/// How long after its last publish a series is continued: the API server deletes an Event
/// this long after its last write (kube-apiserver's `--event-ttl`, 1 hour by default), so a
/// later repeat starts a new object. On a cluster with a shorter TTL, the patch of a deleted
/// Event fails with 404 and the repeat starts a new object then (see [`Series::forget`]).
pub const KEEP: SignedDuration = SignedDuration::from_hours(1);

/// The most series remembered at once: 7/8 of 32,768, the most a table of 32,768 slots
/// holds before it doubles. Past it every series is forgotten and starts over with a new
/// object at its next repeat: more Events, never more memory.
pub const MAX_SERIES: usize = 28_672;

/// Below this many entries the map is never pruned.
const MIN_PRUNE: usize = 1024;

/// What makes two Events one series: the object (by uid, so a credential recreated under
/// the same name starts afresh), type, reason, action and note. The note is part of it
/// because an Event's note cannot change (`events.k8s.io/v1` refuses the update): a repeat
/// that reads differently is a new Event, not a count on one that says otherwise. Kept as a
/// 64-bit hash, not the strings: two series of one process collide with odds of about one
/// in 10^10 at [`MAX_SERIES`], and a collision only counts a repeat on the wrong Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(u64);

impl Key {
    pub fn new(
        uid: &str,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: &str,
    ) -> Key {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (uid, type_ == EventType::Warning, reason, action, note).hash(&mut h);
        Key(h.finish())
    }
}

/// What to write for one publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publish {
    /// A new Event object.
    Create,
    /// Set the `series` of the Event created at `created` (its name says when, see
    /// [`name`]) to `count` occurrences, last seen now.
    Repeat { created: Timestamp, count: i32 },
}

/// The name of the Event about object `name` created at `created`: unique per object and
/// instant, as kube's recorder names them, and rebuilt from the two rather than stored.
pub fn name(object: &str, created: Timestamp) -> String {
    format!("{object}.{:x}", created.as_nanosecond())
}

#[derive(Debug)]
struct Entry {
    created: Timestamp,
    count: i32,
    last: Timestamp,
}

/// The series this process has published, by [`Key`].
#[derive(Debug, Default)]
pub struct Series {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Prune when the map reaches this size (twice its size after the last pruning), so
    /// that pruning costs a constant per publish on average, not a walk of every entry.
    prune_at: usize,
}

impl Series {
    /// What a publish of `key` at `now` writes.
    pub fn next(&self, key: &Key, now: Timestamp) -> Publish {
        let inner = self.lock();
        match inner.entries.get(key) {
            Some(e) if now < e.last + KEEP => Publish::Repeat {
                created: e.created,
                count: e.count.saturating_add(1),
            },
            _ => Publish::Create,
        }
    }

    /// `key` was published at `now` on the Event created at `created`, which now counts
    /// `count` occurrences.
    pub fn published(&self, key: Key, created: Timestamp, count: i32, now: Timestamp) {
        let mut inner = self.lock();
        if !inner.entries.contains_key(&key) && inner.entries.len() >= inner.prune_at {
            inner.entries.retain(|_, e| now < e.last + KEEP);
            if inner.entries.len() >= MAX_SERIES {
                inner.entries.clear();
            }
            inner.prune_at = (inner.entries.len() * 2).clamp(MIN_PRUNE, MAX_SERIES);
        }
        inner.entries.insert(
            key,
            Entry {
                created,
                count,
                last: now,
            },
        );
    }

    /// The Event of `key` is gone (deleted by a person, or by the API server's TTL): the
    /// next publish creates a new one.
    pub fn forget(&self, key: &Key) {
        self.lock().entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere leaves at worst a series that starts over: still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn key(uid: &str, note: &str) -> Key {
        Key::new(
            uid,
            EventType::Warning,
            "RefreshFailed",
            "ServerError",
            note,
        )
    }

    /// Publishes `key` at `now` as the controller does when every write succeeds.
    fn publish(s: &Series, key: &Key, now: Timestamp) -> Publish {
        let p = s.next(key, now);
        let (created, count) = match &p {
            Publish::Create => (now, 1),
            Publish::Repeat { created, count } => (*created, *count),
        };
        s.published(*key, created, count, now);
        p
    }

    #[test]
    fn repeats_of_one_event_count_on_the_first_object() {
        let s = Series::default();
        let k = key("uid-1", "refresh failed (ServerError: 503)");
        assert_eq!(publish(&s, &k, t(0)), Publish::Create);
        assert_eq!(
            publish(&s, &k, t(1)),
            Publish::Repeat {
                created: t(0),
                count: 2
            }
        );
        // An outage's publishes at attempts 1, 2, 4, 8, 16 are minutes apart, then more.
        assert_eq!(
            publish(&s, &k, t(40 * 60)),
            Publish::Repeat {
                created: t(0),
                count: 3
            }
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn another_credential_reason_action_or_note_is_another_event() {
        let s = Series::default();
        let k = key("uid-1", "n");
        publish(&s, &k, t(0));
        for other in [
            key("uid-2", "n"),
            key("uid-1", "another note"),
            Key::new("uid-1", EventType::Warning, "RefreshFailed", "Timeout", "n"),
            Key::new(
                "uid-1",
                EventType::Warning,
                "PublishFailed",
                "ServerError",
                "n",
            ),
            Key::new(
                "uid-1",
                EventType::Normal,
                "RefreshFailed",
                "ServerError",
                "n",
            ),
        ] {
            assert_eq!(s.next(&other, t(1)), Publish::Create, "{other:?}");
        }
    }

    #[test]
    fn a_repeat_after_the_api_servers_event_ttl_or_a_deleted_event_starts_a_new_one() {
        let s = Series::default();
        let k = key("uid-1", "n");
        publish(&s, &k, t(0));
        assert_eq!(s.next(&k, t(0) + KEEP), Publish::Create);
        publish(&s, &k, t(10));
        s.forget(&k);
        assert_eq!(s.next(&k, t(11)), Publish::Create);
    }

    #[test]
    fn ten_thousand_credentials_in_an_outage_keep_one_entry_each_and_old_ones_go() {
        let s = Series::default();
        for round in 0..5 {
            for c in 0..10_000 {
                publish(&s, &key(&format!("uid-{c}"), "n"), t(round * 60));
            }
        }
        assert_eq!(s.len(), 10_000);
        // An hour later, other credentials fail: the first ones' series are pruned.
        for c in 10_000..20_000 {
            publish(&s, &key(&format!("uid-{c}"), "n"), t(2 * 3600));
        }
        assert_eq!(s.len(), 10_000);
    }

    #[test]
    fn memory_is_bounded_however_many_series_are_live() {
        let s = Series::default();
        for c in 0..(3 * MAX_SERIES) {
            publish(&s, &key(&format!("uid-{c}"), "n"), t(0));
            assert!(s.len() <= MAX_SERIES, "{} series after {c}", s.len());
        }
    }
}
