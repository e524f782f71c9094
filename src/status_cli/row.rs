//! One credential's health as `status` reports it, from its status alone: a pure function of
//! the resource, `now` and the re-login warning window.

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde::Serialize;

use crate::crd::{EagleEyeCredential, RotationMode};
use crate::status::{READY, RELOGIN_SOON, condition};

use super::when;

/// The summary of one credential; also its `-o json` form.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub name: String,
    /// `Ready` is `True`.
    pub ready: bool,
    /// The `Ready` condition's status: `True`, `False`, or `Unknown` when the operator has
    /// not reported yet.
    pub ready_status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub suspended: bool,
    pub access_token_expires_at: Option<Timestamp>,
    pub access_token_expired: Option<bool>,
    pub refresh_token_deadline: Option<Timestamp>,
    pub refresh_token_deadline_is_estimate: bool,
    /// Whole days until the refresh-token deadline (negative once it has passed).
    pub days_left: Option<i64>,
    /// The deadline is inside the warning window (or past): a person must log in again.
    pub relogin_soon: bool,
    pub rotation: Option<RotationMode>,
    pub last_refresh_at: Option<Timestamp>,
    pub next_refresh_at: Option<Timestamp>,
    pub failed_refresh_attempts: u32,
    pub last_failure_time: Option<Timestamp>,
    pub base_url: Option<String>,
}

impl Row {
    pub fn new(cr: &EagleEyeCredential, now: Timestamp, warning: SignedDuration) -> Row {
        let status = cr.status.clone().unwrap_or_default();
        let ready = condition(&status.conditions, READY);
        let relogin = condition(&status.conditions, RELOGIN_SOON);
        let deadline = status.refresh_token_deadline.as_ref().map(|t| t.0);
        let expires = status.access_token_expires_at.as_ref().map(|t| t.0);
        let inside_window = deadline.is_some_and(|d| d.duration_since(now) <= warning);
        Row {
            namespace: cr.namespace().unwrap_or_default(),
            name: cr.name_any(),
            ready: ready.is_some_and(|c| c.status == "True"),
            ready_status: ready.map_or_else(|| "Unknown".to_owned(), |c| c.status.clone()),
            reason: ready.map(|c| c.reason.clone()),
            message: ready.map(|c| c.message.clone()),
            suspended: cr.spec.suspend,
            access_token_expires_at: expires,
            access_token_expired: expires.map(|e| e <= now),
            refresh_token_deadline: deadline,
            refresh_token_deadline_is_estimate: status.refresh_token_deadline_is_estimate,
            days_left: deadline.map(|d| when::days_left(d, now)),
            relogin_soon: inside_window || relogin.is_some_and(|c| c.status == "True"),
            rotation: status.rotation,
            last_refresh_at: status.last_refresh_at.map(|t| t.0),
            next_refresh_at: status.next_refresh_at.map(|t| t.0),
            failed_refresh_attempts: status.failed_refresh_attempts,
            last_failure_time: status.last_failure_time.map(|t| t.0),
            base_url: status.base_url,
        }
    }

    /// `in 11h`, `expired 10m ago`, or `-`.
    pub fn token_expires_cell(&self, now: Timestamp) -> String {
        match self.access_token_expires_at {
            Some(e) if e <= now => format!("expired {}", when::relative(e, now)),
            Some(e) => when::relative(e, now),
            None => "-".into(),
        }
    }

    /// `2027-02-26 (89d)`, with `~` for an estimated deadline and `!` when a re-login is due.
    pub fn relogin_cell(&self) -> String {
        let flag = if self.relogin_soon { " !" } else { "" };
        let tilde = if self.refresh_token_deadline_is_estimate {
            "~"
        } else {
            ""
        };
        match (self.refresh_token_deadline, self.days_left) {
            (Some(d), Some(days)) if days < 0 => {
                format!("{} (passed){flag}", when::date(d))
            }
            (Some(d), Some(days)) => format!("{} ({tilde}{days}d){flag}", when::date(d)),
            _ if self.rotation == Some(RotationMode::NonRotating) => "never".into(),
            _ => "-".into(),
        }
    }

    pub fn last_refresh_cell(&self, now: Timestamp) -> String {
        self.last_refresh_at
            .map_or_else(|| "-".into(), |t| when::relative(t, now))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// A credential whose status is given as JSON, times relative to `t(0)` filled in by
    /// the caller.
    pub fn credential(name: &str, status: serde_json::Value) -> EagleEyeCredential {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "eagle-eye-operator.io/v1alpha1",
            "kind": "EagleEyeCredential",
            "metadata": {"name": name, "namespace": "video"},
            "spec": {"clientSecretRef": {"name": "c"}, "refreshTokenSecretRef": {"name": "r"}},
            "status": status,
        }))
        .unwrap()
    }

    pub fn cond(type_: &str, status: &str, reason: &str) -> serde_json::Value {
        serde_json::json!({"type": type_, "status": status, "reason": reason,
            "message": format!("{reason} message"), "lastTransitionTime": t(-3600).to_string()})
    }

    const WEEK: SignedDuration = SignedDuration::from_hours(7 * 24);

    #[test]
    fn a_healthy_credential_reads_ready_with_time_left() {
        let cr = credential(
            "good",
            serde_json::json!({
                "conditions": [cond("Ready", "True", "TokenRefreshed"), cond("ReloginSoon", "False", "DeadlineFar")],
                "accessTokenExpiresAt": t(11 * 3600 + 30).to_string(),
                "refreshTokenDeadline": t(80 * 86_400 + 5).to_string(),
                "lastRefreshAt": t(-300).to_string(),
                "baseUrl": "https://api.c001.eagleeyenetworks.com",
            }),
        );
        let row = Row::new(&cr, t(0), WEEK);
        assert!(row.ready && !row.relogin_soon);
        assert_eq!(row.reason.as_deref(), Some("TokenRefreshed"));
        assert_eq!(row.days_left, Some(80));
        assert_eq!(row.access_token_expired, Some(false));
        assert_eq!(row.token_expires_cell(t(0)), "in 11h");
        assert_eq!(
            row.relogin_cell(),
            format!("{} (80d)", when::date(t(80 * 86_400)))
        );
        assert_eq!(row.last_refresh_cell(t(0)), "5m ago");
    }

    #[test]
    fn a_deadline_inside_the_window_is_flagged_even_before_the_operator_says_so() {
        let cr = credential(
            "dying",
            serde_json::json!({
                "conditions": [cond("Ready", "True", "TokenValid")],
                "refreshTokenDeadline": t(3 * 86_400 + 60).to_string(),
                "refreshTokenDeadlineIsEstimate": true,
            }),
        );
        let row = Row::new(&cr, t(0), WEEK);
        assert!(row.ready && row.relogin_soon);
        assert!(
            row.relogin_cell().ends_with("(~3d) !"),
            "{}",
            row.relogin_cell()
        );
        let calm = Row::new(&cr, t(0), SignedDuration::from_hours(24));
        assert!(!calm.relogin_soon);
    }

    #[test]
    fn a_passed_deadline_and_an_expired_token_say_so() {
        let cr = credential(
            "dead",
            serde_json::json!({
                "conditions": [cond("Ready", "False", "ReauthorizationRequired"), cond("ReloginSoon", "True", "DeadlinePassed")],
                "accessTokenExpiresAt": t(-600).to_string(),
                "refreshTokenDeadline": t(-60).to_string(),
                "failedRefreshAttempts": 3,
            }),
        );
        let row = Row::new(&cr, t(0), WEEK);
        assert!(!row.ready && row.relogin_soon);
        assert_eq!(row.access_token_expired, Some(true));
        assert_eq!(row.token_expires_cell(t(0)), "expired 10m ago");
        assert!(row.relogin_cell().ends_with("(passed) !"));
        assert_eq!(row.failed_refresh_attempts, 3);
    }

    #[test]
    fn a_credential_without_status_is_not_ready_and_unknown() {
        let cr = credential("new", serde_json::json!({}));
        let row = Row::new(&cr, t(0), WEEK);
        assert!(!row.ready);
        assert_eq!(row.ready_status, "Unknown");
        assert_eq!(
            (row.token_expires_cell(t(0)), row.relogin_cell()),
            ("-".into(), "-".into())
        );
    }

    #[test]
    fn non_rotating_tokens_never_need_a_relogin() {
        let cr = credential(
            "perm",
            serde_json::json!({"conditions": [cond("Ready", "True", "TokenValid")], "rotation": "NonRotating"}),
        );
        assert_eq!(Row::new(&cr, t(0), WEEK).relogin_cell(), "never");
    }
}
