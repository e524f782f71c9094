//! The spend intent: before a refresh token is sent to the auth server, the operator records
//! on the token's own Secret which token it is about to spend, who spends it, and until when
//! an answer may still come. The write carries the resourceVersion of the read that found
//! the token, so of two writers (two leaders, two credentials on one Secret, a follower
//! taking over mid-call) exactly one may spend; the others see the intent and wait until its
//! answer has been stored or can no longer come. Pure: parsing, rendering and the verdict.
//!
//! How long an intent binds is judged against [`MAX_HOLD`], one constant for every process,
//! and never against the reader's own flags: replicas and shards may run with different
//! `--token-timeout` and `--in-flight-grace` (a rolling update that changes them runs both
//! at once), and a reader with shorter ones once took another's live intent for a hand edit
//! and spent the token in flight. Every process refuses to start with flags that would make
//! it write an intent longer than [`MAX_HOLD`] (see [`hold_fits`]), so no honest intent is
//! ever dismissed, whoever reads it. The intent's format is unchanged (the writer's bound
//! need not travel with it), so intents written by earlier versions read as before. The
//! price: an intent no honest holder wrote (a hand edit, a clock far ahead) binds for up to
//! [`MAX_HOLD`] rather than for the reader's own bound, and then never again.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

/// On the refresh-token Secret; removed in the same write that stores the rotated token.
pub const ANNOTATION: &str = "eagle-eye-operator.io/refresh-in-flight";

/// How far ahead another replica's clock may be and its intents still count.
pub const CLOCK_SKEW: SignedDuration = SignedDuration::from_mins(2);

/// The longest a spend intent may honestly bind others, for every process whatever its
/// flags: the token call's limit (`--token-timeout`, plus connecting and the call slot's
/// `MAX_SLOT_HOLD`) plus `--in-flight-grace`, checked by [`hold_fits`] at start. About six
/// times what the defaults write (5 min + 5 min and a little), and 5 min is already a
/// generous limit for one token call.
pub const MAX_HOLD: SignedDuration = SignedDuration::from_hours(1);

/// Whether a process whose intents run for up to `hold` (its call limit plus its grace)
/// writes only intents that every reader honours; else why not, in the flags' words.
pub fn hold_fits(hold: SignedDuration) -> Result<(), String> {
    if hold <= MAX_HOLD {
        return Ok(());
    }
    Err(format!(
        "--token-timeout and --in-flight-grace add up (with connecting and the {}s a call slot may wait) to {:#}, more than the {:#} that other replicas and shards honour a spend intent for: shorten them",
        crate::token::MAX_SLOT_HOLD.as_secs(),
        hold.round(jiff::Unit::Second).unwrap_or(hold),
        MAX_HOLD
    ))
}

/// An intent's `until` is whole seconds, rounded up by up to this much (see [`until`]).
const ROUNDING: SignedDuration = SignedDuration::from_secs(1);

/// The `until` of an intent written at `now` for a spend whose answer may come for `hold`:
/// whole seconds (the annotation's precision), rounded up so that it never ends early.
pub fn until(now: Timestamp, hold: SignedDuration) -> Timestamp {
    let t = now
        .checked_add(hold.saturating_add(ROUNDING))
        .unwrap_or(Timestamp::MAX);
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// Fingerprint of the refresh token being spent.
    pub fingerprint: String,
    /// Who spends it: the operator process and the credential (see [`holder`]).
    pub holder: String,
    /// Until when the answer may still arrive and be stored.
    pub until: Timestamp,
}

/// The holder name of one credential in one operator process. Two credentials of one
/// process are two holders: a credential recreated under another name on the same Secret
/// waits for the old one's call like any other holder.
pub fn holder(process: &str, credential_uid: &str) -> String {
    format!("{process}/{credential_uid}")
}

/// The process part of a [`holder`] (a credential's uid holds no `/`).
pub fn process(holder: &str) -> &str {
    holder
        .rsplit_once('/')
        .map_or(holder, |(process, _)| process)
}

pub fn read(annotations: Option<&BTreeMap<String, String>>) -> Option<Intent> {
    parse(annotations?.get(ANNOTATION)?)
}

/// `fingerprint holder until`, space-separated: none of the three contains a space.
pub fn render(i: &Intent) -> String {
    format!("{} {} {}", i.fingerprint, i.holder, i.until)
}

fn parse(value: &str) -> Option<Intent> {
    let mut parts = value.split_ascii_whitespace();
    let (fp, holder, until) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(Intent {
        fingerprint: fp.to_owned(),
        holder: holder.to_owned(),
        until: until.parse().ok()?,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody else may be waiting for an answer for this token: spend it.
    Free,
    /// `holder` may still receive (and store) an answer for the token until `until`.
    HeldElsewhere { holder: String, until: Timestamp },
}

/// May `me` spend the stored token with fingerprint `stored` now? An intent for another
/// token is stale (its answer was stored, or a person replaced the token); one's own intent
/// is an attempt that has ended; an expired one is an answer that can no longer come.
/// An `until` further away than [`MAX_HOLD`] (and the skew) was not written by a holder
/// spending now (a hand edit, a clock far ahead) and binds nobody, so it can never stop
/// refreshing for good. The reader's own limits play no part: see the module doc.
pub fn verdict(intent: Option<&Intent>, stored: &str, me: &str, now: Timestamp) -> Verdict {
    let credible = now
        .checked_add(MAX_HOLD.saturating_add(ROUNDING).saturating_add(CLOCK_SKEW))
        .unwrap_or(Timestamp::MAX);
    match intent {
        Some(i) if i.fingerprint == stored && i.holder != me && i.until > now => {
            if i.until <= credible {
                Verdict::HeldElsewhere {
                    holder: i.holder.clone(),
                    until: i.until,
                }
            } else {
                Verdict::Free
            }
        }
        _ => Verdict::Free,
    }
}

/// How long after this process last found the API server unreachable, started, or saw the
/// intent's holder lose the Lease, another holder's expired intent still binds it (see
/// [`verdict_after_outage`]): three times the longest a holder waits between two attempts to
/// store an answer it holds (30 s), or one and a half times that wait plus a request stalled
/// to its limit (`api_requests::ANSWER_LIMIT`, 30 s).
pub const AFTER_OUTAGE: SignedDuration = SignedDuration::from_secs(90);

/// [`verdict`], except that another holder's intent for the stored token that has expired
/// still binds until [`AFTER_OUTAGE`] after `reachable_since` (when a request of this process
/// last found the API server unreachable, started, or saw the holder lose the Lease: see
/// `api_requests::Reachability` and `Leadership::lapse_of`), and at most [`MAX_HOLD`] past its
/// `until`. Its holder may have received the answer and kept it in memory through an outage
/// that outlasted the intent: it could store it no more than anyone could spend, and it
/// tries again at least every 30 s, so once the API server answers, it stores first. A
/// holder that crashed lost its answer anyway; waiting costs one refresh 90 s, and only
/// after an outage, a start or a takeover.
pub fn verdict_after_outage(
    intent: Option<&Intent>,
    stored: &str,
    me: &str,
    now: Timestamp,
    reachable_since: Timestamp,
) -> Verdict {
    let free = verdict(intent, stored, me, now);
    let Some(i) = intent.filter(|i| {
        free == Verdict::Free && i.fingerprint == stored && i.holder != me && i.until <= now
    }) else {
        return free;
    };
    let patience = reachable_since
        .checked_add(AFTER_OUTAGE)
        .unwrap_or(Timestamp::MAX)
        .min(i.until.checked_add(MAX_HOLD).unwrap_or(Timestamp::MAX));
    if now < patience {
        Verdict::HeldElsewhere {
            holder: i.holder.clone(),
            until: patience,
        }
    } else {
        Verdict::Free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const HOLD: SignedDuration = SignedDuration::from_mins(10);

    fn intent(fp: &str, holder: &str, until: &str) -> Intent {
        Intent {
            fingerprint: fp.into(),
            holder: holder.into(),
            until: t(until),
        }
    }

    #[test]
    fn an_intent_reads_back_as_written() {
        let i = intent("0123abcd", "pod-a-1f2e/uid-1", "2026-11-30T10:00:00Z");
        let a = BTreeMap::from([(ANNOTATION.to_owned(), render(&i))]);
        assert_eq!(read(Some(&a)), Some(i));
    }

    #[test]
    fn a_malformed_intent_is_no_intent() {
        for v in [
            "",
            "fp",
            "fp holder",
            "fp holder notatime",
            "a b 2026-11-30T10:00:00Z c",
        ] {
            let a = BTreeMap::from([(ANNOTATION.to_owned(), v.to_owned())]);
            assert_eq!(read(Some(&a)), None, "{v:?}");
        }
    }

    #[test]
    fn another_holders_live_intent_on_the_stored_token_must_be_waited_out() {
        let now = t("2026-11-30T10:00:00Z");
        let i = intent("fp1", "other/uid", "2026-11-30T10:05:00Z");
        assert_eq!(
            verdict(Some(&i), "fp1", "me/uid", now),
            Verdict::HeldElsewhere {
                holder: "other/uid".into(),
                until: t("2026-11-30T10:05:00Z")
            }
        );
    }

    #[test]
    fn own_stale_and_expired_intents_do_not_block() {
        let now = t("2026-11-30T10:00:00Z");
        let live = intent("fp1", "me/uid", "2026-11-30T10:05:00Z");
        assert_eq!(verdict(Some(&live), "fp1", "me/uid", now), Verdict::Free);
        let other_token = intent("fp0", "other/uid", "2026-11-30T10:05:00Z");
        assert_eq!(
            verdict(Some(&other_token), "fp1", "me/uid", now),
            Verdict::Free
        );
        let expired = intent("fp1", "other/uid", "2026-11-30T10:00:00Z");
        assert_eq!(verdict(Some(&expired), "fp1", "me/uid", now), Verdict::Free);
        assert_eq!(verdict(None, "fp1", "me/uid", now), Verdict::Free);
    }

    #[test]
    fn an_intent_beyond_what_any_holder_could_write_binds_nobody() {
        let now = t("2026-11-30T10:00:00Z");
        for until in ["2026-11-30T11:03:02Z", "9999-12-30T00:00:00Z"] {
            let i = intent("fp1", "other/uid", until);
            // Re-evaluated at every requeue, it never starts to bind either.
            for later in [now, t("2026-12-30T10:00:00Z")] {
                assert_eq!(
                    verdict(Some(&i), "fp1", "me/uid", later),
                    Verdict::Free,
                    "{until} at {later}"
                );
            }
        }
        // At the end of time, no arithmetic overflows.
        let i = intent("fp1", "other/uid", "9999-12-30T00:00:00Z");
        assert_eq!(
            verdict(Some(&i), "fp1", "me/uid", Timestamp::MAX),
            Verdict::Free
        );
    }

    /// Regression (found by the model tests): `until` is rounded up, which once ate a
    /// second of the skew allowed, so a reader exactly `CLOCK_SKEW` behind dismissed it.
    #[test]
    fn an_intent_written_on_a_clock_up_to_clock_skew_ahead_binds_the_reader() {
        for writer in ["2026-11-30T10:02:00Z", "2026-11-30T10:02:00.999Z"] {
            let writer = t(writer);
            let i = Intent {
                fingerprint: "fp1".into(),
                holder: "other/uid".into(),
                until: until(writer, HOLD),
            };
            assert!(i.until >= writer + HOLD, "rounded up, never down");
            let reader = writer - CLOCK_SKEW;
            assert!(
                matches!(
                    verdict(Some(&i), "fp1", "me/uid", reader),
                    Verdict::HeldElsewhere { .. }
                ),
                "a reader {CLOCK_SKEW:#} behind a writer at {writer}"
            );
        }
    }

    /// Regression (issue 19, finding 6): a reader started with a shorter `--token-timeout`
    /// and `--in-flight-grace` than the writer took the writer's live intent for a hand
    /// edit and spent the token in flight. The verdict has no say for the reader's flags.
    #[test]
    fn the_longest_intent_any_process_may_write_binds_every_reader() {
        assert_eq!(hold_fits(MAX_HOLD), Ok(()));
        let writer = t("2026-11-30T10:00:00.500Z");
        let i = Intent {
            fingerprint: "fp1".into(),
            holder: "slow-flags/uid".into(),
            until: until(writer, MAX_HOLD),
        };
        for reader in [writer - CLOCK_SKEW, writer, writer + MAX_HOLD - ROUNDING] {
            assert!(
                matches!(
                    verdict(Some(&i), "fp1", "quick-flags/uid", reader),
                    Verdict::HeldElsewhere { .. }
                ),
                "read at {reader}"
            );
        }
        assert_eq!(
            verdict(Some(&i), "fp1", "quick-flags/uid", i.until),
            Verdict::Free,
            "an answer that can no longer come binds nobody"
        );
    }

    #[test]
    fn flags_that_would_write_longer_intents_than_every_reader_honours_are_refused() {
        let e = hold_fits(MAX_HOLD + SignedDuration::from_secs(1)).unwrap_err();
        assert!(e.contains("--token-timeout and --in-flight-grace"), "{e}");
        assert!(e.contains("1h 1s") && e.contains("than the 1h"), "{e}");
        assert_eq!(hold_fits(SignedDuration::from_mins(11)), Ok(()));
    }

    /// Intents already in clusters, written by earlier versions, read and bind as before.
    #[test]
    fn an_intent_written_by_an_earlier_version_still_binds() {
        let a = BTreeMap::from([(
            ANNOTATION.to_owned(),
            "9f86d081884c7d65 eagle-eye-operator-7d9f_1a2b/0c1d-uid 2026-11-30T10:10:41Z"
                .to_owned(),
        )]);
        let i = read(Some(&a)).expect("the format of earlier versions");
        assert_eq!(
            verdict(
                Some(&i),
                "9f86d081884c7d65",
                "me/uid",
                t("2026-11-30T10:00:00Z")
            ),
            Verdict::HeldElsewhere {
                holder: "eagle-eye-operator-7d9f_1a2b/0c1d-uid".into(),
                until: t("2026-11-30T10:10:41Z")
            }
        );
    }

    /// Seed 5 of the simulator: a holder received its answer, could not store it through a
    /// long outage, and kept it; the new leader must not spend the old token the moment
    /// the API server answers again.
    #[test]
    fn an_intent_that_expired_during_an_outage_binds_until_its_holder_could_store() {
        let i = intent("fp1", "other/uid", "2026-11-30T10:00:00Z");
        let back = t("2026-11-30T10:50:00Z");
        let v = |now: Timestamp, since: Timestamp| {
            verdict_after_outage(Some(&i), "fp1", "me/uid", now, since)
        };
        assert_eq!(
            v(back, back - SignedDuration::from_secs(5)),
            Verdict::HeldElsewhere {
                holder: "other/uid".into(),
                until: back + SignedDuration::from_secs(85),
            }
        );
        let quiet = back - AFTER_OUTAGE;
        assert_eq!(v(back, quiet), Verdict::Free, "reachable long enough");
        // Never past MAX_HOLD after the intent's end, however flaky the API server.
        let late = i.until + MAX_HOLD;
        assert_eq!(v(late, late), Verdict::Free);
        // Nothing changes for a live intent, one's own, or another token's.
        let live = t("2026-11-30T09:59:00Z");
        assert_eq!(v(live, live), verdict(Some(&i), "fp1", "me/uid", live));
        assert_eq!(
            verdict_after_outage(Some(&i), "fp1", "other/uid", back, back),
            Verdict::Free
        );
        assert_eq!(
            verdict_after_outage(Some(&i), "fp2", "me/uid", back, back),
            Verdict::Free
        );
    }
}
