//! When to refresh: a pure function of what is published, what is stored, failures so far
//! and `now`. No clock, no client: the controller passes everything in.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Rotation behaviour in force for a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    Rotating,
    NonRotating,
    /// Not known yet (spec says Auto and no refresh has happened): treated as rotating,
    /// the safe assumption.
    Unknown,
}

/// The access token currently published in the target Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// Fingerprint of the refresh token that produced it (see `fingerprint`).
    pub refresh_fingerprint: String,
    /// Fingerprints of refresh tokens this operator rotated out (see `spent`).
    pub spent_fingerprints: Vec<String>,
}

/// Everything the schedule depends on.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub now: Timestamp,
    pub published: Option<Published>,
    /// Fingerprint of the refresh token stored in its Secret right now.
    pub stored_fingerprint: String,
    pub rotation: Rotation,
    pub refresh_before: SignedDuration,
    /// Failed attempts since the last success, and when the last one failed.
    pub failures: u32,
    pub last_failure: Option<Timestamp>,
    /// Earliest retry the server asked for (`Retry-After`).
    pub retry_not_before: Option<Timestamp>,
    /// A number in [0, 1) that spreads refreshes of many credentials apart.
    pub jitter: f64,
    /// When an unused rotating refresh token dies (its idle end); `None` for non-rotating.
    pub refresh_token_idle_end: Option<Timestamp>,
    /// A renew request waits to be served (see `crate::renew`).
    pub renew: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Nothing is published yet.
    NothingPublished,
    /// The stored refresh token is not the one behind the published access token: a person
    /// logged in again, or a write-back happened without the publish that follows it.
    RefreshTokenChanged,
    /// The access token is within its refresh window (or has expired).
    Due,
    /// Retrying after a failure.
    Retry,
    /// A person asked for a refresh now (spec.renewRequest).
    Renew,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    RefreshNow(Why),
    RefreshAt(Timestamp, Why),
}

/// First retry delay after a failure; doubles per failure up to `MAX_BACKOFF`.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Longest `Retry-After` honoured; a server asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// A failed retry aims at least this long before the access token dies.
pub const EXPIRY_MARGIN: SignedDuration = SignedDuration::from_secs(1);
/// Non-rotating tokens are renewed this long after their published expiry: the server hands
/// back the active token until it expires, and the published expiry (whole seconds from the
/// answer, with the server's rounded-down `expires_in`) can be up to two seconds early.
pub const NON_ROTATING_RENEW_AFTER: SignedDuration = SignedDuration::from_secs(2);
/// The most that jitter moves a planned refresh earlier.
const MAX_JITTER: SignedDuration = SignedDuration::from_secs(30);

pub fn plan(i: &Inputs) -> Plan {
    let Some(published) = &i.published else {
        return retry_or_now(i, Why::NothingPublished);
    };
    if published.refresh_fingerprint != i.stored_fingerprint {
        return retry_or_now(i, Why::RefreshTokenChanged);
    }
    // The published token came from the stored refresh token (checked above), and a
    // rotating answer's refresh token is issued with its access token.
    let due = before_idle_end(
        due_at(published, i.rotation, i.refresh_before, i.jitter),
        published.issued_at,
        i.refresh_token_idle_end,
    );
    // A renew request is served at once, but never ahead of the backoff after failures:
    // the next retry serves it.
    if i.failures > 0 {
        return at_or_now(i.now, retry_at(i, Some(published.expires_at)), Why::Retry);
    }
    if i.renew {
        return Plan::RefreshNow(Why::Renew);
    }
    at_or_now(i.now, due, Why::Due)
}

/// When a published token should be replaced.
pub fn due_at(
    p: &Published,
    rotation: Rotation,
    refresh_before: SignedDuration,
    jitter: f64,
) -> Timestamp {
    if rotation == Rotation::NonRotating {
        return p.expires_at + NON_ROTATING_RENEW_AFTER;
    }
    let lifetime = p
        .expires_at
        .duration_since(p.issued_at)
        .max(SignedDuration::ZERO);
    let lead = refresh_before.min(lifetime / 3).max(SignedDuration::ZERO);
    let spread = (lead / 10).min(MAX_JITTER).mul_f64(jitter.clamp(0.0, 1.0));
    p.expires_at - lead - spread
}

/// A refresh is due at the latest this long before the refresh token's idle end, however
/// long the access token lives (some accounts get days-long access tokens); less for idle
/// lifetimes under four hours (see [`idle_end_margin`]).
pub const IDLE_END_MARGIN: SignedDuration = SignedDuration::from_hours(1);

/// How long before its idle end a refresh token issued `lifetime` earlier is refreshed: an
/// hour, or a quarter of its lifetime when that is less. A fixed hour put the refresh before
/// the token's own issue whenever the lifetime was an hour or less: every refresh due at
/// once, each killing the access token just published (727 refreshes in 40 s at 30 min).
/// A quarter leaves three quarters of the lifetime between refreshes, and a quarter for
/// retries before the token dies.
pub fn idle_end_margin(lifetime: SignedDuration) -> SignedDuration {
    IDLE_END_MARGIN.min(lifetime.max(SignedDuration::ZERO) / 4)
}

/// `due`, or earlier if the refresh token issued at `issued_at` would otherwise die unused
/// first (at `idle_end`).
pub fn before_idle_end(
    due: Timestamp,
    issued_at: Timestamp,
    idle_end: Option<Timestamp>,
) -> Timestamp {
    idle_end.map_or(due, |end| {
        due.min(end - idle_end_margin(end.duration_since(issued_at)))
    })
}

/// Exponential backoff for the n-th consecutive failure (n >= 1), jitter in [0, 1) adding
/// up to a fifth.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = MIN_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
    base.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 5.0)
        .min(MAX_BACKOFF)
}

fn retry_or_now(i: &Inputs, why: Why) -> Plan {
    if i.failures == 0 {
        return Plan::RefreshNow(why);
    }
    at_or_now(i.now, retry_at(i, None), why)
}

/// Next attempt after a failure: backoff from the last failure, no earlier than the server
/// asked, and (when a live access token would otherwise expire first) moved up to just
/// before its expiry, since a retry then could still save it.
fn retry_at(i: &Inputs, expires_at: Option<Timestamp>) -> Timestamp {
    let since = i.last_failure.unwrap_or(i.now);
    let mut at = since + to_signed(backoff(i.failures, i.jitter));
    if let Some(exp) = expires_at {
        let last_chance = exp - EXPIRY_MARGIN;
        if at > last_chance && last_chance > since + to_signed(MIN_BACKOFF) {
            at = last_chance;
        }
    }
    if let Some(not_before) = i.retry_not_before {
        let cap = since + to_signed(MAX_RETRY_AFTER);
        at = at.max(not_before.min(cap));
    }
    at
}

fn at_or_now(now: Timestamp, at: Timestamp, why: Why) -> Plan {
    if at <= now {
        Plan::RefreshNow(why)
    } else {
        Plan::RefreshAt(at, why)
    }
}

fn to_signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// How long to wait until `at`, never negative.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }
    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }
    fn published(issued: i64, expires: i64) -> Published {
        Published {
            issued_at: t(issued),
            expires_at: t(expires),
            refresh_fingerprint: "fp1".into(),
            spent_fingerprints: vec!["fp0".into()],
        }
    }
    fn inputs(now: i64, published: Option<Published>) -> Inputs {
        Inputs {
            now: t(now),
            published,
            stored_fingerprint: "fp1".into(),
            rotation: Rotation::Rotating,
            refresh_before: secs(1800),
            failures: 0,
            last_failure: None,
            retry_not_before: None,
            jitter: 0.0,
            refresh_token_idle_end: None,
            renew: false,
        }
    }

    #[test]
    fn schedule_table() {
        let twelve_h = 12 * 3600;
        let cases: Vec<(&str, Inputs, Plan)> = vec![
            (
                "nothing published refreshes now",
                inputs(0, None),
                Plan::RefreshNow(Why::NothingPublished),
            ),
            (
                "a fresh 12 h token is refreshed 30 min before expiry",
                inputs(60, Some(published(0, twelve_h))),
                Plan::RefreshAt(t(twelve_h - 1800), Why::Due),
            ),
            (
                "one second before the due time waits",
                inputs(twelve_h - 1801, Some(published(0, twelve_h))),
                Plan::RefreshAt(t(twelve_h - 1800), Why::Due),
            ),
            (
                "exactly at the due time refreshes",
                inputs(twelve_h - 1800, Some(published(0, twelve_h))),
                Plan::RefreshNow(Why::Due),
            ),
            (
                "an expired token refreshes now",
                inputs(twelve_h + 5, Some(published(0, twelve_h))),
                Plan::RefreshNow(Why::Due),
            ),
            (
                "a 10 s token is refreshed a third of its life early",
                inputs(1, Some(published(0, 9))),
                Plan::RefreshAt(t(6), Why::Due),
            ),
            (
                "a changed refresh token refreshes now",
                Inputs {
                    stored_fingerprint: "fp2".into(),
                    ..inputs(60, Some(published(0, twelve_h)))
                },
                Plan::RefreshNow(Why::RefreshTokenChanged),
            ),
            (
                "non-rotating tokens are renewed just after expiry",
                Inputs {
                    rotation: Rotation::NonRotating,
                    ..inputs(60, Some(published(0, 3600)))
                },
                Plan::RefreshAt(t(3602), Why::Due),
            ),
            (
                "a refresh Before of zero refreshes at expiry",
                Inputs {
                    refresh_before: secs(0),
                    ..inputs(60, Some(published(0, 3600)))
                },
                Plan::RefreshAt(t(3600), Why::Due),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(plan(&input), want, "{name}");
        }
    }

    #[test]
    fn a_long_lived_access_token_is_refreshed_before_the_refresh_token_dies_unused() {
        let day = 86_400;
        let mut i = inputs(60, Some(published(0, 20 * day)));
        i.refresh_token_idle_end = Some(t(14 * day));
        assert_eq!(plan(&i), Plan::RefreshAt(t(14 * day - 3600), Why::Due));
        // A short token is unaffected.
        i.published = Some(published(0, 3600));
        assert_eq!(plan(&i), Plan::RefreshAt(t(2400), Why::Due));
    }

    /// Regression (issue 19, finding 7): with `--refresh-token-idle-lifetime 30m` the fixed
    /// hour before the idle end made every refresh due at once, in a loop.
    #[test]
    fn an_idle_lifetime_under_an_hour_is_refreshed_a_quarter_of_it_before_its_end() {
        let mut i = inputs(60, Some(published(0, 3600)));
        i.refresh_token_idle_end = Some(t(1800));
        assert_eq!(plan(&i), Plan::RefreshAt(t(1350), Why::Due));
        // Just refreshed again: the next one is as far away, not due at once.
        let mut again = inputs(1351, Some(published(1350, 1350 + 3600)));
        again.refresh_token_idle_end = Some(t(1350 + 1800));
        assert_eq!(plan(&again), Plan::RefreshAt(t(1350 + 1350), Why::Due));
        assert_eq!(
            before_idle_end(t(3000), t(0), Some(t(1800))),
            t(1350),
            "the time the controller reports as status.nextRefreshAt agrees"
        );
    }

    #[test]
    fn the_idle_end_margin_is_an_hour_or_a_quarter_of_a_shorter_lifetime() {
        let mins = SignedDuration::from_mins;
        for (lifetime, margin) in [
            (mins(14 * 24 * 60), mins(60)),
            (mins(4 * 60), mins(60)),
            (mins(2 * 60), mins(30)),
            (mins(30), secs(450)),
            (mins(1), secs(15)),
            (secs(-5), secs(0)),
        ] {
            assert_eq!(idle_end_margin(lifetime), margin, "{lifetime:#}");
        }
    }

    #[test]
    fn a_renew_request_makes_a_fresh_token_due_now_but_never_jumps_a_backoff() {
        let fresh = Inputs {
            renew: true,
            ..inputs(100, Some(published(0, 43_200)))
        };
        assert_eq!(plan(&fresh), Plan::RefreshNow(Why::Renew));
        let failing = Inputs {
            failures: 3,
            last_failure: Some(t(99)),
            ..fresh
        };
        assert!(matches!(plan(&failing), Plan::RefreshAt(_, Why::Retry)));
    }

    #[test]
    fn failures_back_off_exponentially_from_the_last_failure() {
        let mut i = inputs(100, None);
        i.last_failure = Some(t(100));
        for (failures, wait) in [
            (1, 1),
            (2, 2),
            (3, 4),
            (6, 32),
            (9, 256),
            (10, 300),
            (40, 300),
        ] {
            i.failures = failures;
            assert_eq!(
                plan(&i),
                Plan::RefreshAt(t(100 + wait), Why::NothingPublished),
                "{failures}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let mut i = inputs(100, None);
        i.failures = 1;
        i.last_failure = Some(t(100));
        i.retry_not_before = Some(t(130));
        assert_eq!(plan(&i), Plan::RefreshAt(t(130), Why::NothingPublished));
        i.retry_not_before = Some(t(100_000));
        assert_eq!(plan(&i), Plan::RefreshAt(t(700), Why::NothingPublished));
    }

    #[test]
    fn backoff_never_outlasts_a_live_access_token() {
        // Token expires at 1000; the 9th failure would wait 256 s from 900.
        let mut i = inputs(900, Some(published(0, 1000)));
        i.failures = 9;
        i.last_failure = Some(t(900));
        assert_eq!(plan(&i), Plan::RefreshAt(t(999), Why::Retry));
        // Once it has expired, plain backoff applies.
        i.now = t(1001);
        i.last_failure = Some(t(1001));
        assert_eq!(plan(&i), Plan::RefreshAt(t(1001 + 256), Why::Retry));
    }

    #[test]
    fn jitter_only_moves_refreshes_earlier_and_by_little() {
        let p = published(0, 43200);
        let plain = due_at(&p, Rotation::Rotating, secs(1800), 0.0);
        let jittered = due_at(&p, Rotation::Rotating, secs(1800), 0.999);
        assert!(jittered < plain);
        assert!(plain.duration_since(jittered) <= MAX_JITTER);
    }

    #[test]
    fn backoff_jitter_adds_at_most_a_fifth() {
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert!(backoff(3, 0.99) <= Duration::from_secs_f64(4.0 * 1.2));
        assert_eq!(backoff(100, 0.99), MAX_BACKOFF);
    }
}
