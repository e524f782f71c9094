//! status.history: the last refreshes of a credential, for auditors ("when did it rotate,
//! and who did it"). Bounded: at most [`MAX`] entries, failures in a row folded into one.
//! Holds fingerprint prefixes only, never a token.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::RefreshRecord;

/// Entries kept.
pub const MAX: usize = 10;
/// Characters of a refresh token's fingerprint kept (of 16): enough to tell tokens apart in
/// a history of ten, too few to stand for the fingerprint elsewhere.
pub const FINGERPRINT_PREFIX: usize = 8;
/// The outcome of a refresh that published a new access token.
pub const REFRESHED: &str = "Refreshed";

/// Appends what one refresh did; a failure right after a failure of the same kind counts
/// on that entry instead.
pub fn record(
    history: &mut Vec<RefreshRecord>,
    at: Timestamp,
    process: &str,
    outcome: &str,
    fingerprint: &str,
    revision: u64,
) {
    let fingerprint: String = fingerprint.chars().take(FINGERPRINT_PREFIX).collect();
    if outcome != REFRESHED
        && let Some(last) = history.last_mut()
        && last.outcome == outcome
        && last.refresh_token_fingerprint == fingerprint
    {
        last.time = Time(at);
        last.process = process.to_owned();
        last.attempts = last
            .attempts
            .saturating_add(1)
            .min(crate::crd::MAX_FAILED_ATTEMPTS);
        return;
    }
    history.push(RefreshRecord {
        time: Time(at),
        process: process.chars().take(253).collect(),
        outcome: outcome.to_owned(),
        refresh_token_fingerprint: fingerprint,
        revision,
        attempts: 1,
    });
    let excess = history.len().saturating_sub(MAX);
    history.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s as i64).unwrap()
    }

    #[test]
    fn the_history_keeps_the_last_ten_refreshes_newest_last_with_fingerprint_prefixes() {
        let mut h = Vec::new();
        for i in 0..25u64 {
            record(
                &mut h,
                at(i),
                "op-a",
                REFRESHED,
                &format!("{i:016x}"),
                i + 1,
            );
        }
        assert_eq!(h.len(), MAX);
        assert_eq!(h.first().unwrap().revision, 16);
        assert_eq!(h.last().unwrap().revision, 25);
        assert!(
            h.iter()
                .all(|r| r.refresh_token_fingerprint.len() == FINGERPRINT_PREFIX)
        );
        assert_eq!(h.last().unwrap().refresh_token_fingerprint, "00000000");
    }

    #[test]
    fn failures_in_a_row_are_one_entry_counting_attempts_and_a_success_starts_a_new_one() {
        let mut h = Vec::new();
        record(&mut h, at(0), "op-a", REFRESHED, "aaaaaaaaaaaaaaaa", 1);
        for i in 1..=50 {
            record(
                &mut h,
                at(i),
                "op-b",
                "RefreshFailed",
                "aaaaaaaaaaaaaaaa",
                1,
            );
        }
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].attempts, 50);
        assert_eq!(h[1].time, Time(at(50)));
        assert_eq!(h[1].process, "op-b");
        record(
            &mut h,
            at(51),
            "op-b",
            "ReauthorizationRequired",
            "aaaaaaaaaaaaaaaa",
            1,
        );
        record(&mut h, at(52), "op-b", REFRESHED, "bbbbbbbbbbbbbbbb", 2);
        assert_eq!(
            h.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
            [
                REFRESHED,
                "RefreshFailed",
                "ReauthorizationRequired",
                REFRESHED
            ]
        );
    }
}
