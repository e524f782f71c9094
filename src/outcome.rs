//! What a reconcile ended with, and what that makes it report: the `Ready` verdict, the
//! next refresh time and the Events, as one pure function of an [`Outcome`]. The
//! controller acts, names the outcome and applies the [`Report`]; it words nothing itself,
//! so every reason, message and Event can be pinned by a table test, and no token can
//! reach them: an outcome carries only safe words (fingerprints never, tokens never).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::EventType;

use crate::secrets::SecretError;
use crate::status::{READY_REASONS, reason};
use crate::token::TokenError;

/// Reasons of Events that no `Ready` reason names.
pub mod event {
    /// A person stored a new login while a rotated token waited to be stored.
    pub const REFRESH_TOKEN_REPLACED: &str = "RefreshTokenReplaced";
    /// A rotated-out token was put back, and the live one written over it.
    pub const REFRESH_TOKEN_RESTORED: &str = "RefreshTokenRestored";
    /// The `ReloginSoon` condition turned true.
    pub const RELOGIN_SOON: &str = "ReloginSoon";
}

/// The action of every Event but a failed refresh's (see [`Outcome::RefreshFailed`]).
const REFRESH: &str = "Refresh";

/// What the published token is when a round changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub expires_at: Option<Timestamp>,
    /// The last refresh attempt failed (`failedRefreshAttempts` > 0).
    pub failing: bool,
}

/// Why the token endpoint's call failed, in the token error's own words (which never
/// carry a token: see `token::error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `TokenError::reason`, CamelCase.
    pub cause: &'static str,
    pub detail: String,
}

impl From<&TokenError> for Failure {
    fn from(e: &TokenError) -> Self {
        Failure {
            cause: e.reason(),
            detail: e.to_string(),
        }
    }
}

/// How one reconcile ended. A round that only looks again (a conflict, a Secret changed
/// meanwhile) ends with no outcome: it reports nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer's access token was published; the next refresh is due at `next_refresh`.
    Refreshed {
        expires_at: Timestamp,
        next_refresh: Timestamp,
    },
    /// Not due: nothing was done until `until`.
    Waiting {
        until: Timestamp,
        standing: Standing,
    },
    /// Due, but `holder` may still receive the answer to a refresh it sent with this
    /// token until `until`.
    Deferred {
        holder: String,
        until: Timestamp,
        standing: Standing,
    },
    /// Due, and every token-call slot to `destination` this credential may take is busy;
    /// it is woken when the fair queue grants it one.
    AwaitingCallSlot {
        destination: String,
        standing: Standing,
    },
    /// The server refused this very login before: nothing is sent until it changes.
    AwaitingLogin,
    /// The configuration refused the answer to this very login before.
    AwaitingConfig,
    Suspended,
    InvalidSpec(String),
    /// Another credential spends this refresh token; says which, as far as it may.
    InUse(String),
    /// The target Secret is not this credential's to write (the message says whose).
    TargetConflict(String),
    /// Relabelled out of this shard (`--credential-selector`, given here).
    NotSelected(String),
    /// A Secret is missing (the message names it).
    SecretNotFound(String),
    /// A Secret lacks a key, or its value is unusable.
    SecretKeyMissing(String),
    /// The refresh-token Secret is immutable (the message names it).
    SecretImmutable(String),
    /// A refresh failed in a way a retry may fix.
    RefreshFailed {
        failure: Failure,
        attempt: u32,
        next_try: Timestamp,
        /// When the access token still published expires, if one is.
        published_until: Option<Timestamp>,
    },
    /// The server refused the refresh token of Secret `secret`: the login is dead.
    ReauthorizationRequired {
        failure: Failure,
        secret: String,
    },
    /// The server answered (and rotated), but the configuration refuses the answer.
    AnswerRefused {
        failure: Failure,
    },
    /// A rotated refresh token is held in memory until Secret `secret` can be written.
    WriteBackPending {
        secret: String,
        why: String,
    },
    /// A stored answer's access token could not be published.
    PublishFailed {
        why: String,
    },
    /// Secret `secret` holds a rotated-out token under `key`, and no live copy is left.
    Reverted {
        secret: String,
        key: String,
    },
    /// Secret `secret` held a rotated-out token under `key`; the live one was written back.
    Restored {
        secret: String,
        key: String,
    },
    /// A person stored a new login while a rotated token waited to be stored.
    ReplacedByPerson,
}

impl Outcome {
    /// A refresh-token or client Secret that cannot be used; `None` for a Kubernetes API
    /// failure, which is an error to retry rather than an outcome.
    pub fn secret_problem(e: &SecretError) -> Option<Outcome> {
        match e {
            SecretError::NotFound(_) => Some(Outcome::SecretNotFound(e.to_string())),
            SecretError::KeyMissing { .. }
            | SecretError::BadValue { .. }
            | SecretError::TooLong { .. } => Some(Outcome::SecretKeyMissing(e.to_string())),
            SecretError::Immutable(_) => Some(Outcome::SecretImmutable(e.to_string())),
            SecretError::Api { .. } => None,
        }
    }
}

/// The `Ready` condition's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What happens to `status.nextRefreshAt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Keep,
    At(Timestamp),
    /// Nothing is scheduled: only a person's change starts refreshing again.
    Unscheduled,
}

/// A Kubernetes Event to emit. A repeat with the same reason, action and note counts on the
/// Event published before (`crate::event_series`), and a note that changes makes a new
/// Event: what varies at every repeat (an attempt number, a time) belongs in the status,
/// or the repeats are no series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// What an outcome reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The `Ready` condition to write; `None` leaves the status as it is.
    pub ready: Option<Verdict>,
    pub next_refresh: Next,
    /// Emitted before the status is written, so that a failed write loses none.
    pub events: Vec<Note>,
}

/// The report of `outcome`, given the `Ready` condition as last written.
pub fn report(outcome: &Outcome, previous: Option<&Condition>, now: Timestamp) -> Report {
    use Outcome as O;
    let status = |verdict, next, events| Report {
        ready: Some(verdict),
        next_refresh: next,
        events,
    };
    let event_only = |note| Report {
        ready: None,
        next_refresh: Next::Keep,
        events: vec![note],
    };
    match outcome {
        O::Refreshed {
            expires_at,
            next_refresh,
        } => status(
            verdict(
                true,
                reason::TOKEN_REFRESHED,
                valid_until(*expires_at),
            ),
            Next::At(*next_refresh),
            // An Event when tokens flow (again); a routine refresh of a working credential
            // is no news, and one Event per refresh would be a write per refresh.
            if previous.is_some_and(|c| c.status == "True") {
                vec![]
            } else {
                vec![normal(
                    reason::TOKEN_REFRESHED,
                    "access token refreshed and published; further routine refreshes show in status.lastRefreshAt and eagle_eye_refresh_attempts_total, not as Events".into(),
                )]
            },
        ),
        O::Waiting { until, standing } => status(
            current(standing, previous, now),
            Next::At(*until),
            vec![],
        ),
        O::AwaitingCallSlot {
            destination,
            standing,
        } => {
            // With a valid token published nothing is wrong yet; without one, this is why.
            // No Event: waits come and go with other credentials' calls.
            let verdict = match current(standing, previous, now) {
                v if v.ready => v,
                _ => verdict(
                    false,
                    reason::AWAITING_CALL_SLOT,
                    format!(
                        "due, and waiting for a call slot to {destination}: every slot this credential may take is busy with other calls (at most --max-concurrent-refreshes at once per auth destination and per namespace); it refreshes as soon as one is granted"
                    ),
                ),
            };
            status(verdict, Next::Keep, vec![])
        }
        O::Deferred {
            holder,
            until,
            standing,
        } => {
            let message = format!(
                "not refreshing until {until}: {holder} may still receive the answer to a refresh it sent with this token, and spending it meanwhile could lose the login"
            );
            // With a valid token published nothing is wrong yet; without one, this is why.
            let verdict = match current(standing, previous, now) {
                v if v.ready => v,
                _ => verdict(false, reason::REFRESH_DEFERRED, message.clone()),
            };
            status(
                verdict,
                Next::Keep,
                vec![normal(reason::REFRESH_DEFERRED, message)],
            )
        }
        O::AwaitingLogin | O::AwaitingConfig => status(
            current(&NOTHING_VALID, previous, now),
            Next::Unscheduled,
            vec![],
        ),
        O::Suspended => status(
            verdict(false, reason::SUSPENDED, "refreshing is suspended".into()),
            Next::Keep,
            vec![],
        ),
        O::InvalidSpec(m) => waiting(previous, reason::INVALID_SPEC, m.clone()),
        O::InUse(m) => waiting(previous, reason::REFRESH_TOKEN_IN_USE, m.clone()),
        O::TargetConflict(m) => waiting(previous, reason::TARGET_CONFLICT, m.clone()),
        O::NotSelected(selector) => Report {
            next_refresh: Next::Unscheduled,
            ..waiting(
                previous,
                reason::NOT_SELECTED,
                format!(
                    "no longer selected by the operator that refreshed it (--credential-selector {selector:?}); nothing refreshes it until an operator's selector matches its labels"
                ),
            )
        },
        O::SecretNotFound(m) => waiting(previous, reason::SECRET_NOT_FOUND, m.clone()),
        O::SecretKeyMissing(m) => waiting(previous, reason::SECRET_KEY_MISSING, m.clone()),
        O::SecretImmutable(m) => waiting(previous, reason::SECRET_IMMUTABLE, m.clone()),
        O::Reverted { secret, key } => waiting(
            previous,
            reason::REFRESH_TOKEN_REVERTED,
            format!(
                "Secret {secret:?} holds a refresh token this operator already rotated out (put back by a GitOps or secret-sync tool, or copied from a credential that refreshed the same login?) and no live copy is left, so it was not spent; repeat the Phase 1 login, give each credential its own, and keep key {key:?} out of such tools"
            ),
        ),
        O::RefreshFailed {
            failure: Failure { cause, detail },
            attempt,
            next_try,
            published_until,
        } => {
            let valid = published_until
                .filter(|e| *e > now)
                .map(|e| format!("; the published access token stays valid until {e}"))
                .unwrap_or_else(|| "; no valid access token is published".into());
            status(
                verdict(
                    false,
                    reason::REFRESH_FAILED,
                    format!(
                        "refresh failed ({cause}: {detail}); attempt {attempt}, next try at {next_try}{valid}"
                    ),
                ),
                Next::At(*next_try),
                // Events at attempts 1, 2, 4, 8, ...: a long outage writes a handful per
                // credential, not one per retry (the status counts every attempt), and
                // each repeat counts on one Event. The note names no attempt and no time:
                // repeats read alike, so that they stay one series.
                match attempt.is_power_of_two() {
                    true => vec![Note {
                        type_: EventType::Warning,
                        reason: reason::REFRESH_FAILED,
                        action: cause,
                        note: format!(
                            "refresh failed ({cause}: {detail}); this Event counts attempts 1, 2, 4, 8 and so on of one run of failures, status.failedRefreshAttempts every attempt"
                        ),
                    }],
                    false => vec![],
                },
            )
        }
        O::ReauthorizationRequired { failure, secret } => failed(
            reason::REAUTHORIZATION_REQUIRED,
            format!(
                "the auth server refused the refresh token ({}); a person must repeat the Phase 1 login and store the new refresh token in Secret {secret:?}",
                failure.detail
            ),
            Next::Unscheduled,
        ),
        O::AnswerRefused { failure } => failed(
            reason::ANSWER_REFUSED,
            format!(
                "the auth server's answer was refused by the operator's configuration ({}); the rotated refresh token was stored, and no refresh is tried again until the operator's flags (--allowed-api-hosts) or the login change",
                failure.detail
            ),
            Next::Unscheduled,
        ),
        O::WriteBackPending { secret, why } => failed(
            reason::WRITE_BACK_PENDING,
            format!(
                "the rotated refresh token is held in memory until Secret {secret:?} can be written: {why}"
            ),
            Next::Keep,
        ),
        O::PublishFailed { why } => failed(
            reason::PUBLISH_FAILED,
            format!("the refreshed access token could not be published: {why}"),
            Next::Keep,
        ),
        O::Restored { secret, key } => event_only(warning(
            event::REFRESH_TOKEN_RESTORED,
            format!(
                "Secret {secret:?} was set back to a refresh token this operator already rotated out (by a GitOps or secret-sync tool?); the live token was written back. Keep key {key:?} out of such tools"
            ),
        )),
        O::ReplacedByPerson => event_only(normal(
            event::REFRESH_TOKEN_REPLACED,
            "a person stored a new refresh token while a rotated one waited to be stored; using theirs".into(),
        )),
    }
}

/// The Warning due when `ReloginSoon` turns true; none while it stays so.
pub fn relogin_warning(was_soon: bool, soon: bool, message: &str) -> Option<Note> {
    (soon && !was_soon).then(|| warning(event::RELOGIN_SOON, message.to_owned()))
}

const NOTHING_VALID: Standing = Standing {
    expires_at: None,
    failing: false,
};

/// The message of a `Ready` condition with a valid token published, in the same words
/// whether this reconcile refreshed it or found it: a later reconcile that only looks (not
/// due yet, parked for a call slot) then finds the condition as it is, and writes nothing.
fn valid_until(expires_at: Timestamp) -> String {
    format!("the published access token is valid until {expires_at}")
}

/// `Ready` when nothing was done this round: true while the published token is valid and
/// the last attempt did not fail; otherwise whatever failure was reported last stands.
fn current(standing: &Standing, previous: Option<&Condition>, now: Timestamp) -> Verdict {
    match standing.expires_at {
        Some(e) if e > now && !standing.failing => verdict(
            true,
            previous
                .filter(|c| c.status == "True")
                .map(|_| reason::TOKEN_REFRESHED)
                .unwrap_or(reason::TOKEN_VALID),
            valid_until(e),
        ),
        _ => match previous {
            // Another shard's last word on a credential that left it is no reason of ours.
            Some(c) if c.status == "False" && c.reason != reason::NOT_SELECTED => {
                verdict(false, ready_reason(&c.reason), c.message.clone())
            }
            _ => verdict(
                false,
                reason::REFRESH_FAILED,
                "no valid access token is published".into(),
            ),
        },
    }
}

/// A problem only a person can fix: its Warning is emitted once per change of reason or
/// message, not on every look.
fn waiting(previous: Option<&Condition>, reason: &'static str, message: String) -> Report {
    let unchanged = previous.is_some_and(|c| c.reason == reason && c.message == message);
    Report {
        events: if unchanged {
            vec![]
        } else {
            vec![warning(reason, message.clone())]
        },
        ready: Some(verdict(false, reason, message)),
        next_refresh: Next::Keep,
    }
}

/// A failure reported each time it happens, with the same words in Event and status.
fn failed(reason: &'static str, message: String, next: Next) -> Report {
    Report {
        events: vec![warning(reason, message.clone())],
        ready: Some(verdict(false, reason, message)),
        next_refresh: next,
    }
}

/// A reason read back from the status, as the `Ready` reason it must be; anything else
/// (a hand-edited status) reads as a failed refresh.
fn ready_reason(r: &str) -> &'static str {
    READY_REASONS
        .into_iter()
        .find(|k| *k == r)
        .unwrap_or(reason::REFRESH_FAILED)
}

fn verdict(ready: bool, reason: &'static str, message: String) -> Verdict {
    Verdict {
        ready,
        reason,
        message,
    }
}

fn normal(reason: &'static str, note: String) -> Note {
    Note {
        type_: EventType::Normal,
        reason,
        action: REFRESH,
        note,
    }
}

fn warning(reason: &'static str, note: String) -> Note {
    Note {
        type_: EventType::Warning,
        ..normal(reason, note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Operation;
    use EventType::{Normal, Warning};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use secrecy::SecretString;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    const NOW: i64 = 1_000;

    fn condition(ready: bool, reason: &str, message: &str) -> Condition {
        Condition {
            type_: crate::status::READY.into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(t(0)),
        }
    }

    fn valid() -> Standing {
        Standing {
            expires_at: Some(t(NOW + 600)),
            failing: false,
        }
    }

    fn expired() -> Standing {
        Standing {
            expires_at: Some(t(NOW - 1)),
            failing: false,
        }
    }

    fn failure() -> Failure {
        Failure::from(&TokenError::Status {
            operation: Operation::Refresh,
            status: 400,
            error_code: crate::token::OAuthErrorCode::parse("invalid_grant"),
            retry_after: None,
        })
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    /// One row: outcome and the `Ready` condition before → `Ready` (status, reason), or
    /// no status write, and the Events (type, reason).
    type Row = (
        Outcome,
        Option<Condition>,
        Option<(bool, &'static str)>,
        Vec<(EventType, &'static str)>,
    );

    fn table() -> Vec<Row> {
        use Outcome as O;
        let was_ok = Some(condition(true, reason::TOKEN_VALID, "m"));
        let was_refused = Some(condition(false, reason::REAUTHORIZATION_REQUIRED, "m"));
        vec![
            (
                O::Refreshed {
                    expires_at: t(NOW + 3600),
                    next_refresh: t(NOW + 3000),
                },
                None,
                Some((true, reason::TOKEN_REFRESHED)),
                vec![(Normal, reason::TOKEN_REFRESHED)],
            ),
            (
                O::Refreshed {
                    expires_at: t(NOW + 3600),
                    next_refresh: t(NOW + 3000),
                },
                was_ok.clone(),
                Some((true, reason::TOKEN_REFRESHED)),
                vec![],
            ),
            (
                O::Refreshed {
                    expires_at: t(NOW + 3600),
                    next_refresh: t(NOW + 3000),
                },
                was_refused.clone(),
                Some((true, reason::TOKEN_REFRESHED)),
                vec![(Normal, reason::TOKEN_REFRESHED)],
            ),
            (
                O::Waiting {
                    until: t(NOW + 60),
                    standing: valid(),
                },
                None,
                Some((true, reason::TOKEN_VALID)),
                vec![],
            ),
            // Still ready since the last refresh: the refresh is what `Ready` credits.
            (
                O::Waiting {
                    until: t(NOW + 60),
                    standing: valid(),
                },
                was_ok.clone(),
                Some((true, reason::TOKEN_REFRESHED)),
                vec![],
            ),
            // A valid token after a failed attempt is not ready: the failure stands.
            (
                O::Waiting {
                    until: t(NOW + 60),
                    standing: Standing {
                        failing: true,
                        ..valid()
                    },
                },
                Some(condition(false, reason::PUBLISH_FAILED, "m")),
                Some((false, reason::PUBLISH_FAILED)),
                vec![],
            ),
            (
                O::Waiting {
                    until: t(NOW + 60),
                    standing: expired(),
                },
                was_ok.clone(),
                Some((false, reason::REFRESH_FAILED)),
                vec![],
            ),
            (
                O::Deferred {
                    holder: s("replica-b/uid"),
                    until: t(NOW + 30),
                    standing: valid(),
                },
                None,
                Some((true, reason::TOKEN_VALID)),
                vec![(Normal, reason::REFRESH_DEFERRED)],
            ),
            (
                O::Deferred {
                    holder: s("replica-b/uid"),
                    until: t(NOW + 30),
                    standing: expired(),
                },
                was_ok.clone(),
                Some((false, reason::REFRESH_DEFERRED)),
                vec![(Normal, reason::REFRESH_DEFERRED)],
            ),
            (
                O::AwaitingCallSlot {
                    destination: s("https://auth.example.com:443"),
                    standing: valid(),
                },
                was_ok.clone(),
                Some((true, reason::TOKEN_REFRESHED)),
                vec![],
            ),
            (
                O::AwaitingCallSlot {
                    destination: s("https://auth.example.com:443"),
                    standing: expired(),
                },
                was_ok.clone(),
                Some((false, reason::AWAITING_CALL_SLOT)),
                vec![],
            ),
            (
                O::AwaitingLogin,
                was_refused.clone(),
                Some((false, reason::REAUTHORIZATION_REQUIRED)),
                vec![],
            ),
            (
                O::AwaitingConfig,
                Some(condition(false, reason::ANSWER_REFUSED, "m")),
                Some((false, reason::ANSWER_REFUSED)),
                vec![],
            ),
            // A reason this version does not know reads as a failed refresh.
            (
                O::AwaitingLogin,
                Some(condition(false, "SomethingElse", "m")),
                Some((false, reason::REFRESH_FAILED)),
                vec![],
            ),
            (
                O::Suspended,
                was_ok.clone(),
                Some((false, reason::SUSPENDED)),
                vec![],
            ),
            (
                O::InvalidSpec(s("refreshBefore must not be negative")),
                None,
                Some((false, reason::INVALID_SPEC)),
                vec![(Warning, reason::INVALID_SPEC)],
            ),
            (
                O::InUse(s("already refreshed by \"other\"")),
                None,
                Some((false, reason::REFRESH_TOKEN_IN_USE)),
                vec![(Warning, reason::REFRESH_TOKEN_IN_USE)],
            ),
            (
                O::SecretImmutable(s("Secret \"rt\" is immutable")),
                None,
                Some((false, reason::SECRET_IMMUTABLE)),
                vec![(Warning, reason::SECRET_IMMUTABLE)],
            ),
            (
                O::NotSelected(s("shard=a")),
                was_ok.clone(),
                Some((false, reason::NOT_SELECTED)),
                vec![(Warning, reason::NOT_SELECTED)],
            ),
            (
                O::TargetConflict(s(
                    "Secret \"app\" exists and was not created by this credential",
                )),
                None,
                Some((false, reason::TARGET_CONFLICT)),
                vec![(Warning, reason::TARGET_CONFLICT)],
            ),
            (
                O::SecretNotFound(s("Secret \"rt\" not found")),
                None,
                Some((false, reason::SECRET_NOT_FOUND)),
                vec![(Warning, reason::SECRET_NOT_FOUND)],
            ),
            (
                O::SecretKeyMissing(s("Secret \"rt\" has no key \"k\"")),
                None,
                Some((false, reason::SECRET_KEY_MISSING)),
                vec![(Warning, reason::SECRET_KEY_MISSING)],
            ),
            (
                O::RefreshFailed {
                    failure: failure(),
                    attempt: 2,
                    next_try: t(NOW + 60),
                    published_until: None,
                },
                was_ok.clone(),
                Some((false, reason::REFRESH_FAILED)),
                vec![(Warning, reason::REFRESH_FAILED)],
            ),
            (
                O::ReauthorizationRequired {
                    failure: failure(),
                    secret: s("rt"),
                },
                was_ok.clone(),
                Some((false, reason::REAUTHORIZATION_REQUIRED)),
                vec![(Warning, reason::REAUTHORIZATION_REQUIRED)],
            ),
            (
                O::AnswerRefused { failure: failure() },
                None,
                Some((false, reason::ANSWER_REFUSED)),
                vec![(Warning, reason::ANSWER_REFUSED)],
            ),
            (
                O::WriteBackPending {
                    secret: s("rt"),
                    why: s("the API server answered 503 ServiceUnavailable"),
                },
                None,
                Some((false, reason::WRITE_BACK_PENDING)),
                vec![(Warning, reason::WRITE_BACK_PENDING)],
            ),
            (
                O::PublishFailed {
                    why: s("applying target Secret t: the API server could not be reached"),
                },
                None,
                Some((false, reason::PUBLISH_FAILED)),
                vec![(Warning, reason::PUBLISH_FAILED)],
            ),
            (
                O::Reverted {
                    secret: s("rt"),
                    key: s("refresh_token"),
                },
                None,
                Some((false, reason::REFRESH_TOKEN_REVERTED)),
                vec![(Warning, reason::REFRESH_TOKEN_REVERTED)],
            ),
            (
                O::Restored {
                    secret: s("rt"),
                    key: s("refresh_token"),
                },
                was_ok.clone(),
                None,
                vec![(Warning, event::REFRESH_TOKEN_RESTORED)],
            ),
            (
                O::ReplacedByPerson,
                was_refused,
                None,
                vec![(Normal, event::REFRESH_TOKEN_REPLACED)],
            ),
        ]
    }

    /// A reconcile between two refreshes (not due yet, or due and parked for a call slot)
    /// must find `Ready` as the refresh wrote it: a different word is a status write.
    #[test]
    fn a_look_between_refreshes_leaves_ready_as_the_refresh_wrote_it() {
        let expires_at = t(NOW + 600);
        let refreshed = report(
            &Outcome::Refreshed {
                expires_at,
                next_refresh: t(NOW + 400),
            },
            Some(&condition(true, reason::TOKEN_VALID, "m")),
            t(NOW),
        )
        .ready
        .unwrap();
        let written = condition(true, refreshed.reason, &refreshed.message);
        let standing = Standing {
            expires_at: Some(expires_at),
            failing: false,
        };
        for later in [
            Outcome::Waiting {
                until: t(NOW + 400),
                standing,
            },
            Outcome::AwaitingCallSlot {
                destination: s("https://auth.example.com:443"),
                standing,
            },
        ] {
            let r = report(&later, Some(&written), t(NOW + 400));
            assert_eq!(r.ready.as_ref(), Some(&refreshed), "{later:?}");
        }
    }

    #[test]
    fn each_outcome_reports_its_ready_reason_and_events() {
        for (outcome, previous, ready, events) in table() {
            let r = report(&outcome, previous.as_ref(), t(NOW));
            assert_eq!(
                r.ready.as_ref().map(|v| (v.ready, v.reason)),
                ready,
                "{outcome:?}"
            );
            let got: Vec<_> = r.events.iter().map(|e| (e.type_, e.reason)).collect();
            assert_eq!(got, events, "{outcome:?}");
        }
    }

    #[test]
    fn every_ready_reason_has_a_table_row() {
        let rows: Vec<&str> = table()
            .iter()
            .filter_map(|(_, _, ready, _)| ready.map(|r| r.1))
            .collect();
        for r in READY_REASONS {
            assert!(rows.contains(&r), "no table row reports Ready reason {r}");
        }
    }

    /// Adding a reason to `status::reason` without saying whether `Ready` or
    /// `ReloginSoon` carries it (and so, for `Ready`, without a table row) fails here.
    #[test]
    fn every_reason_constant_is_a_known_ready_or_relogin_reason() {
        let relogin = [
            reason::DEADLINE_NEAR,
            reason::DEADLINE_FAR,
            reason::NO_DEADLINE,
            reason::DEADLINE_PASSED,
        ];
        let source = include_str!("status.rs");
        let module = source
            .split("pub mod reason {")
            .nth(1)
            .and_then(|m| m.split("\n}").next())
            .expect("status.rs has `pub mod reason`");
        let declared: Vec<&str> = module
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(declared.len(), READY_REASONS.len() + relogin.len());
        for r in declared {
            assert!(
                READY_REASONS.contains(&r) || relogin.contains(&r),
                "reason {r} is neither in READY_REASONS nor a ReloginSoon reason"
            );
        }
    }

    #[test]
    fn a_problem_waiting_for_a_person_warns_once_per_change() {
        let outcomes = [
            Outcome::InvalidSpec(s("m")),
            Outcome::InUse(s("m")),
            Outcome::SecretNotFound(s("m")),
            Outcome::SecretKeyMissing(s("m")),
            Outcome::SecretImmutable(s("m")),
            Outcome::TargetConflict(s("m")),
            Outcome::NotSelected(s("m")),
            Outcome::Reverted {
                secret: s("rt"),
                key: s("k"),
            },
        ];
        for o in outcomes {
            let first = report(&o, None, t(NOW));
            assert_eq!(first.events.len(), 1, "{o:?}");
            let v = first.ready.unwrap();
            let written = condition(v.ready, v.reason, &v.message);
            let again = report(&o, Some(&written), t(NOW + 30));
            assert_eq!(again.events, [], "a repeated {o:?} emitted a second Event");
            assert_eq!(again.ready, Some(v.clone()));
            let changed = condition(v.ready, v.reason, "another message");
            assert_eq!(report(&o, Some(&changed), t(NOW)).events.len(), 1);
        }
    }

    #[test]
    fn another_shards_not_selected_is_not_carried_forward_by_the_shard_that_selects_it() {
        let left = condition(false, reason::NOT_SELECTED, "no longer selected by …");
        let r = report(&Outcome::AwaitingConfig, Some(&left), t(NOW));
        let ready = r.ready.unwrap();
        assert_eq!(ready.reason, reason::REFRESH_FAILED);
        assert!(!ready.message.contains("selected"), "{}", ready.message);
    }

    #[test]
    fn a_failed_refresh_event_reads_alike_at_every_repeat_and_the_status_keeps_the_attempt() {
        let failed = |attempt, next_try| Outcome::RefreshFailed {
            failure: failure(),
            attempt,
            next_try,
            published_until: Some(t(NOW + 120)),
        };
        let first = report(&failed(1, t(NOW + 30)), None, t(NOW));
        let later = report(&failed(7, t(NOW + 900)), None, t(NOW + 600));
        assert!(later.events.is_empty(), "{:?}", later.events);
        let e = &first.events[0];
        assert_eq!(e.action, failure().cause);
        assert!(e.note.contains("counts attempts 1, 2, 4, 8"), "{}", e.note);
        assert!(!e.note.contains(&t(NOW + 30).to_string()), "{}", e.note);
        // Repeats read alike, so that they count on one Event.
        let repeat = report(&failed(4, t(NOW + 300)), None, t(NOW + 200));
        assert_eq!(repeat.events, first.events);
        let m = first.ready.unwrap().message;
        assert!(m.contains("attempt 1, next try at"), "{m}");
        assert!(
            m.ends_with(&format!("stays valid until {}", t(NOW + 120))),
            "{m}"
        );
        assert_eq!(first.next_refresh, Next::At(t(NOW + 30)));
        let m = later.ready.unwrap().message;
        assert!(m.ends_with("; no valid access token is published"), "{m}");
    }

    #[test]
    fn a_long_outage_reports_failed_refreshes_at_attempts_one_two_four_eight() {
        let with_events: Vec<u32> = (1..=1000)
            .filter(|&attempt| {
                let failed = Outcome::RefreshFailed {
                    failure: failure(),
                    attempt,
                    next_try: t(NOW + 30),
                    published_until: None,
                };
                !report(&failed, None, t(NOW)).events.is_empty()
            })
            .collect();
        assert_eq!(with_events, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
    }

    #[test]
    fn a_refused_login_or_answer_unschedules_the_next_refresh() {
        for o in [
            Outcome::AwaitingLogin,
            Outcome::AwaitingConfig,
            Outcome::ReauthorizationRequired {
                failure: failure(),
                secret: s("rt"),
            },
            Outcome::AnswerRefused { failure: failure() },
        ] {
            assert_eq!(report(&o, None, t(NOW)).next_refresh, Next::Unscheduled);
        }
        let waiting = Outcome::Waiting {
            until: t(NOW + 5),
            standing: valid(),
        };
        assert_eq!(
            report(&waiting, None, t(NOW)).next_refresh,
            Next::At(t(NOW + 5))
        );
    }

    #[test]
    fn relogin_soon_warns_only_when_it_turns_true() {
        assert!(relogin_warning(false, true, "m").is_some_and(|n| n.type_ == Warning));
        assert_eq!(relogin_warning(true, true, "m"), None);
        assert_eq!(relogin_warning(false, false, "m"), None);
    }

    #[test]
    fn no_message_or_note_carries_a_token_from_the_errors_it_reports() {
        const TOKEN: &str = "rt-SECRET-5f1c9e";
        let token = || Some(SecretString::from(TOKEN.to_owned()));
        let token_errors = [
            TokenError::MalformedResponse {
                operation: Operation::Refresh,
                field: "access_token",
                problem: "is missing",
                refresh_token: token(),
            },
            TokenError::ApiHostNotAllowed {
                operation: Operation::Refresh,
                host: "api.example".into(),
                refresh_token: token(),
            },
            TokenError::OutcomeUnknown {
                operation: Operation::Refresh,
                detail: "the answer did not arrive in time",
                refresh_token: token(),
            },
            TokenError::ResponseTooLarge {
                operation: Operation::Refresh,
                limit: 65_536,
                refresh_token: token(),
            },
        ];
        // An admission webhook may echo the object sent, tokens included, in its message.
        let kube = || {
            kube::Error::Api(
                kube::core::Status::failure(&format!("denied: data.token={TOKEN}"), "Forbidden")
                    .with_code(403)
                    .boxed(),
            )
        };
        let secret_error = SecretError::Api {
            name: "rt".into(),
            source: kube(),
        };
        let mut outcomes = vec![
            Outcome::WriteBackPending {
                secret: s("rt"),
                why: crate::secrets::kube_reason(&kube()),
            },
            Outcome::PublishFailed {
                why: crate::controller::Error::Target(s("t"), kube()).to_string(),
            },
            Outcome::SecretNotFound(secret_error.to_string()),
        ];
        for e in &token_errors {
            let failure = Failure::from(e);
            outcomes.extend([
                Outcome::RefreshFailed {
                    failure: failure.clone(),
                    attempt: 1,
                    next_try: t(NOW),
                    published_until: None,
                },
                Outcome::ReauthorizationRequired {
                    failure: failure.clone(),
                    secret: s("rt"),
                },
                Outcome::AnswerRefused { failure },
            ]);
        }
        for o in &outcomes {
            let r = report(o, None, t(NOW));
            let words = r
                .ready
                .iter()
                .map(|v| &v.message)
                .chain(r.events.iter().map(|e| &e.note));
            for w in words {
                assert!(!w.contains(TOKEN), "{o:?} reports a token: {w}");
            }
        }
    }
}
