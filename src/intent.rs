//! The spend intent: before a refresh token is sent to the auth server, the operator records
//! on the token's own Secret which token it is about to spend, who spends it, and until when
//! an answer may still come. The write carries the resourceVersion of the read that found
//! the token, so of two writers (two leaders, two credentials on one Secret, a follower
//! taking over mid-call) exactly one may spend; the others see the intent and wait until its
//! answer has been stored or can no longer come. Pure: parsing, rendering and the verdict.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

/// On the refresh-token Secret; removed in the same write that stores the rotated token.
pub const ANNOTATION: &str = "eagle-eye-operator.io/refresh-in-flight";

/// How far ahead another replica's clock may be and its intents still count.
pub const CLOCK_SKEW: SignedDuration = SignedDuration::from_mins(2);

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
/// `max_hold` is the longest any holder's intent can honestly run (the call's limit plus the
/// grace): an `until` further away than that was not written by a holder spending now (a
/// hand edit, a clock far ahead) and binds nobody, so it can never stop refreshing for good.
pub fn verdict(
    intent: Option<&Intent>,
    stored: &str,
    me: &str,
    now: Timestamp,
    max_hold: SignedDuration,
) -> Verdict {
    let credible = now
        .checked_add(max_hold.saturating_add(ROUNDING).saturating_add(CLOCK_SKEW))
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
            verdict(Some(&i), "fp1", "me/uid", now, HOLD),
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
        assert_eq!(
            verdict(Some(&live), "fp1", "me/uid", now, HOLD),
            Verdict::Free
        );
        let other_token = intent("fp0", "other/uid", "2026-11-30T10:05:00Z");
        assert_eq!(
            verdict(Some(&other_token), "fp1", "me/uid", now, HOLD),
            Verdict::Free
        );
        let expired = intent("fp1", "other/uid", "2026-11-30T10:00:00Z");
        assert_eq!(
            verdict(Some(&expired), "fp1", "me/uid", now, HOLD),
            Verdict::Free
        );
        assert_eq!(verdict(None, "fp1", "me/uid", now, HOLD), Verdict::Free);
    }

    #[test]
    fn an_intent_beyond_what_any_holder_could_write_binds_nobody() {
        let now = t("2026-11-30T10:00:00Z");
        for until in ["2026-11-30T10:12:02Z", "9999-12-30T00:00:00Z"] {
            let i = intent("fp1", "other/uid", until);
            // Re-evaluated at every requeue, it never starts to bind either.
            for later in [now, t("2026-12-30T10:00:00Z")] {
                assert_eq!(
                    verdict(Some(&i), "fp1", "me/uid", later, HOLD),
                    Verdict::Free,
                    "{until} at {later}"
                );
            }
        }
        // At the end of time, no arithmetic overflows.
        let i = intent("fp1", "other/uid", "9999-12-30T00:00:00Z");
        assert_eq!(
            verdict(Some(&i), "fp1", "me/uid", Timestamp::MAX, HOLD),
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
                    verdict(Some(&i), "fp1", "me/uid", reader, HOLD),
                    Verdict::HeldElsewhere { .. }
                ),
                "a reader {CLOCK_SKEW:#} behind a writer at {writer}"
            );
        }
    }
}
