//! What the status says: conditions and the refresh-token deadline, as pure functions.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
/// True when the refresh token nears its end and a person must repeat the Phase 1 login.
pub const RELOGIN_SOON: &str = "ReloginSoon";
/// Present when spec.consumers is set: whether the selected pods carry the annotation of
/// the latest access token.
pub const PODS_NUDGED: &str = "PodsNudged";

/// Present when spec.consumers.restart is set: whether every workload it names is
/// restarted for the latest access token.
pub const WORKLOADS_RESTARTED: &str = "WorkloadsRestarted";

/// Reasons of the `WorkloadsRestarted` condition.
pub mod restart_reason {
    pub const WORKLOADS_RESTARTED: &str = "WorkloadsRestarted";
    /// A restart waits for spec.consumers.restartPause since the last one to pass.
    pub const RESTART_PENDING: &str = "RestartPending";
    /// A workload named by spec.consumers.restart does not exist, or a selector matches none.
    pub const RESTART_TARGET_MISSING: &str = "RestartTargetMissing";
    /// Reading or patching a workload failed (most often: no RBAC).
    pub const RESTART_FAILED: &str = "RestartFailed";
    /// The operator runs without `--restart-workloads`.
    pub const RESTART_DISABLED: &str = "RestartDisabled";
}

/// Present when spec.target.template is set: whether every template renders.
pub const TEMPLATES_RENDERED: &str = "TemplatesRendered";

/// Reasons of the `TemplatesRendered` condition.
pub mod template_reason {
    pub const TEMPLATES_RENDERED: &str = "TemplatesRendered";
    /// A template names an unknown field, is malformed, or uses a key of the operator's own.
    pub const INVALID_TEMPLATE: &str = "InvalidTemplate";
}

/// Reasons of the `PodsNudged` condition.
pub mod pods_reason {
    pub const PODS_NUDGED: &str = "PodsNudged";
    /// Listing or patching pods failed (most often: no RBAC on pods).
    pub const POD_NUDGE_FAILED: &str = "PodNudgeFailed";
    /// The operator runs without `--nudge-pods`.
    pub const POD_NUDGE_DISABLED: &str = "PodNudgeDisabled";
    /// A round was cut short by its time budget; the next one follows within seconds.
    pub const NUDGE_IN_PROGRESS: &str = "NudgeInProgress";
    /// The selector matches no running or pending pod.
    pub const NO_PODS_SELECTED: &str = "NoPodsSelected";
}

/// Reasons of the `Ready` condition.
pub mod reason {
    pub const TOKEN_REFRESHED: &str = "TokenRefreshed";
    pub const TOKEN_VALID: &str = "TokenValid";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The refresh-token Secret is immutable: no rotated token could be written back.
    pub const SECRET_IMMUTABLE: &str = "SecretImmutable";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const REFRESH_FAILED: &str = "RefreshFailed";
    pub const REAUTHORIZATION_REQUIRED: &str = "ReauthorizationRequired";
    pub const REFRESH_TOKEN_IN_USE: &str = "RefreshTokenInUse";
    /// The refresh-token Secret holds a token this operator already rotated out.
    pub const REFRESH_TOKEN_REVERTED: &str = "RefreshTokenReverted";
    pub const WRITE_BACK_PENDING: &str = "WriteBackPending";
    pub const PUBLISH_FAILED: &str = "PublishFailed";
    pub const SUSPENDED: &str = "Suspended";
    /// The server answered, but the operator's configuration refuses the answer (an API
    /// host outside `--allowed-api-hosts`); nothing is spent until that changes.
    pub const ANSWER_REFUSED: &str = "AnswerRefused";
    /// Due, with no valid access token published, but another process may still receive
    /// the answer to a refresh it sent with the stored token: spending it meanwhile could
    /// lose the login, so the refresh waits until that answer is stored or can no longer
    /// come.
    pub const REFRESH_DEFERRED: &str = "RefreshDeferred";
    /// Due, and every token-call slot this credential may take is busy; shown only once
    /// the published token has expired (before that, `Ready` stays as it was).
    pub const AWAITING_CALL_SLOT: &str = "AwaitingCallSlot";
    /// The target Secret exists and is not this credential's to write (another
    /// credential's, or anything else's without the opt-in annotation): nothing is written.
    pub const TARGET_CONFLICT: &str = "TargetConflict";
    /// Relabelled out of the shard (`--credential-selector`) that refreshed it, and not
    /// (yet) selected by another: nothing refreshes it until an operator's selector matches.
    pub const NOT_SELECTED: &str = "NotSelected";
    pub const DEADLINE_NEAR: &str = "DeadlineNear";
    pub const DEADLINE_FAR: &str = "DeadlineFar";
    pub const NO_DEADLINE: &str = "NoDeadline";
    pub const DEADLINE_PASSED: &str = "DeadlinePassed";
}

/// Every reason the `Ready` condition carries (the others are `ReloginSoon`'s): a reason
/// read back from the status is one of these.
pub const READY_REASONS: [&str; 18] = [
    reason::TOKEN_REFRESHED,
    reason::TOKEN_VALID,
    reason::SECRET_NOT_FOUND,
    reason::SECRET_KEY_MISSING,
    reason::INVALID_SPEC,
    reason::REFRESH_FAILED,
    reason::REAUTHORIZATION_REQUIRED,
    reason::REFRESH_TOKEN_IN_USE,
    reason::REFRESH_TOKEN_REVERTED,
    reason::WRITE_BACK_PENDING,
    reason::PUBLISH_FAILED,
    reason::SUSPENDED,
    reason::ANSWER_REFUSED,
    reason::REFRESH_DEFERRED,
    reason::AWAITING_CALL_SLOT,
    reason::TARGET_CONFLICT,
    reason::SECRET_IMMUTABLE,
    reason::NOT_SELECTED,
];

/// Sets condition `type_`, keeping its lastTransitionTime unless its status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Lifetimes of rotating refresh tokens (the vendor's 14 and 90 days by default).
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub idle: SignedDuration,
    pub chain: SignedDuration,
    /// How long before the deadline `ReloginSoon` turns true.
    pub warning: SignedDuration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            idle: SignedDuration::from_hours(14 * 24),
            chain: SignedDuration::from_hours(90 * 24),
            warning: SignedDuration::from_hours(7 * 24),
        }
    }
}

/// The refresh token's deadline: the earlier of its idle end (issued + idle) and its chain
/// end (login + chain).
pub fn deadline(l: &Lifetimes, chain_started: Timestamp, token_issued: Timestamp) -> Timestamp {
    (token_issued + l.idle).min(chain_started + l.chain)
}

/// `ReloginSoon`: (status, reason, message).
pub fn relogin(
    l: &Lifetimes,
    deadline: Option<Timestamp>,
    estimate: bool,
    now: Timestamp,
) -> (bool, &'static str, String) {
    let Some(deadline) = deadline else {
        return (
            false,
            reason::NO_DEADLINE,
            "non-rotating refresh tokens do not expire".into(),
        );
    };
    let hint = if estimate {
        " (estimated from when the operator first saw the token; annotate the refresh-token Secret with eagle-eye-operator.io/login-time for an exact deadline)"
    } else {
        ""
    };
    let left = deadline.duration_since(now);
    if left <= SignedDuration::ZERO {
        (
            true,
            reason::DEADLINE_PASSED,
            format!("the refresh token died at {deadline}{hint}; repeat the Phase 1 login"),
        )
    } else if left <= l.warning {
        let days = left.as_secs() / 86_400;
        (
            true,
            reason::DEADLINE_NEAR,
            format!(
                "the refresh token dies at {deadline}, in {days} days{hint}; repeat the Phase 1 login before then"
            ),
        )
    } else {
        (
            false,
            reason::DEADLINE_FAR,
            format!("the refresh token lives until {deadline}{hint}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time() {
        let mut c = Vec::new();
        set_condition(&mut c, READY, true, "A", "m".into(), Some(1), t(0));
        set_condition(&mut c, READY, true, "B", "m2".into(), Some(2), t(50));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Time(t(0)));
        assert_eq!(c[0].reason, "B");
        set_condition(&mut c, READY, false, "C", "m3".into(), Some(2), t(60));
        assert_eq!(c[0].last_transition_time, Time(t(60)));
    }

    #[test]
    fn deadline_is_the_earlier_of_idle_and_chain_end() {
        let l = Lifetimes::default();
        let day = 86_400;
        assert_eq!(deadline(&l, t(0), t(day)), t(15 * day));
        assert_eq!(deadline(&l, t(0), t(80 * day)), t(90 * day));
    }

    #[test]
    fn relogin_turns_true_inside_the_warning_window() {
        let l = Lifetimes::default();
        let day = 86_400;
        assert!(!relogin(&l, Some(t(30 * day)), false, t(0)).0);
        let (on, why, msg) = relogin(&l, Some(t(30 * day)), true, t(25 * day));
        assert!(
            on && why == reason::DEADLINE_NEAR
                && msg.contains("in 5 days")
                && msg.contains("estimated")
        );
        assert_eq!(
            relogin(&l, Some(t(30 * day)), false, t(30 * day)).1,
            reason::DEADLINE_PASSED
        );
        assert_eq!(
            relogin(&l, None, false, t(0)),
            (
                false,
                reason::NO_DEADLINE,
                "non-rotating refresh tokens do not expire".into()
            )
        );
    }
}
