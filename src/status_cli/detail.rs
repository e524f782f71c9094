//! `status NAME`: one credential in depth, as data (`-o json`) and as text. The Secrets it
//! names appear by key only, never with a value.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use serde::Serialize;

use crate::crd::EagleEyeCredential;

use super::row::Row;
use super::table::columns;
use super::when;

/// How many of the most recent events to show.
pub const EVENT_LIMIT: usize = 10;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    #[serde(flatten)]
    pub row: Row,
    pub conditions: Vec<ConditionLine>,
    pub events: Vec<EventLine>,
    pub target_secret: TargetSecretInfo,
    pub refresh_token_secret: SecretInfo,
    pub client_secret: SecretInfo,
    pub history: History,
}

/// What the credential went through: status.revision, status.history, the last renew
/// request and the workload restarts. Fingerprint prefixes only, never a token.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub revision: u64,
    pub refreshes: Vec<crate::crd::RefreshRecord>,
    pub renew: Option<crate::crd::RenewStatus>,
    pub restarts: Vec<crate::crd::WorkloadRestart>,
}

/// The history `cr`'s status holds.
pub fn history_of(cr: &EagleEyeCredential) -> History {
    let s = cr.status.clone().unwrap_or_default();
    History {
        revision: s.revision,
        refreshes: s.history,
        renew: s.renew,
        restarts: s.restarts,
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLine {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub note: String,
    pub count: i32,
    pub last_seen: Option<Timestamp>,
}

/// What could be learned about a Secret the credential names.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    pub name: String,
    /// `Found`, `NotFound`, or `Unreadable` (no permission, or the API failed).
    pub state: SecretState,
    /// Key names present (values are never shown).
    pub keys: Vec<String>,
    /// The keys the credential expects in it that are missing.
    pub missing_keys: Vec<String>,
    /// The login-time annotation (refresh-token Secret only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_time: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SecretState {
    Found,
    NotFound,
    Unreadable,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSecretInfo {
    #[serde(flatten)]
    pub secret: SecretInfo,
    /// When the access token in the Secret expires (its `expires_at` key).
    pub access_token_expires_at: Option<Timestamp>,
    pub access_token_expired: Option<bool>,
}

/// A Secret as read (`Ok(None)`: not found; `Err`: not readable) reduced to its key names.
pub fn secret_info(
    name: &str,
    read: &Result<Option<Secret>, ()>,
    expected: &[&str],
    login_time: bool,
) -> SecretInfo {
    let (state, keys, annotation) = match read {
        Ok(Some(s)) => {
            let keys: Vec<String> = s.data.iter().flatten().map(|(k, _)| k.clone()).collect();
            let annotation = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::secrets::LOGIN_TIME).cloned());
            (SecretState::Found, keys, annotation)
        }
        Ok(None) => (SecretState::NotFound, Vec::new(), None),
        Err(()) => (SecretState::Unreadable, Vec::new(), None),
    };
    let missing_keys = match state {
        SecretState::Found => expected
            .iter()
            .filter(|k| !k.is_empty() && !keys.iter().any(|have| have == *k))
            .map(|k| k.to_string())
            .collect(),
        _ => Vec::new(),
    };
    SecretInfo {
        name: name.to_owned(),
        state,
        keys,
        missing_keys,
        login_time: if login_time { annotation } else { None },
    }
}

/// The target Secret, with the expiry of the token in it from its `expires_at` key (not a
/// secret), else from the operator's annotation.
pub fn target_info(
    cr: &EagleEyeCredential,
    name: &str,
    read: &Result<Option<Secret>, ()>,
    now: Timestamp,
) -> TargetSecretInfo {
    let keys = &cr.spec.target.keys;
    let expected = [keys.access_token.as_str(), keys.base_url.as_str()];
    let secret = secret_info(name, read, &expected, false);
    let expires_at = match read {
        Ok(Some(s)) => s
            .data
            .as_ref()
            .and_then(|d| d.get(&keys.expires_at))
            .and_then(|v| std::str::from_utf8(&v.0).ok()?.trim().parse().ok())
            .or_else(|| crate::target::published(s).map(|p| p.expires_at)),
        _ => None,
    };
    TargetSecretInfo {
        secret,
        access_token_expires_at: expires_at,
        access_token_expired: expires_at.map(|e| e <= now),
    }
}

/// The credential's events, oldest first, the last [`EVENT_LIMIT`] of them.
pub fn event_lines(cr: &EagleEyeCredential, events: &[Event]) -> Vec<EventLine> {
    let uid = cr.metadata.uid.as_deref();
    let name = cr.metadata.name.as_deref();
    let mut lines: Vec<EventLine> = events
        .iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| match (uid, r.uid.as_deref()) {
                    (Some(a), Some(b)) => a == b,
                    _ => {
                        r.kind.as_deref() == Some("EagleEyeCredential") && r.name.as_deref() == name
                    }
                })
        })
        .map(|e| EventLine {
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            note: e.note.clone().unwrap_or_default(),
            count: e
                .series
                .as_ref()
                .map(|s| s.count)
                .or(e.deprecated_count)
                .unwrap_or(1),
            last_seen: e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        })
        .collect();
    lines.sort_by_key(|l| l.last_seen);
    let skip = lines.len().saturating_sub(EVENT_LIMIT);
    lines.split_off(skip)
}

impl Detail {
    pub fn render(&self, now: Timestamp) -> String {
        let r = &self.row;
        let at = |t: Option<Timestamp>| {
            t.map_or_else(
                || "-".to_owned(),
                |t| format!("{t} ({})", when::relative(t, now)),
            )
        };
        let mut out = String::new();
        let mut field = |label: &str, value: String| {
            out.push_str(&format!("{:<22}{value}\n", format!("{label}:")));
        };
        field("Name", r.name.clone());
        field("Namespace", r.namespace.clone());
        let why = match (&r.reason, &r.message) {
            (Some(reason), Some(message)) => format!("  {reason}: {message}"),
            _ => "  (the operator has not reported on it yet)".to_owned(),
        };
        field("Ready", format!("{}{why}", r.ready_status));
        if r.suspended {
            field("Suspended", "yes: the operator does not refresh it".into());
        }
        field("Access token expires", at(r.access_token_expires_at));
        let deadline = match r.refresh_token_deadline {
            Some(d) => format!(
                "{}{}{}",
                at(Some(d)),
                if r.refresh_token_deadline_is_estimate {
                    " (estimated: no login-time annotation)"
                } else {
                    ""
                },
                if r.relogin_soon {
                    format!(
                        "  ! log in again: kubectl eagleeye authorize {} -n {}",
                        r.name, r.namespace
                    )
                } else {
                    String::new()
                }
            ),
            None => r.relogin_cell(),
        };
        field("Re-login by", deadline);
        field("Last refresh", at(r.last_refresh_at));
        field("Next refresh", at(r.next_refresh_at));
        let failures = match r.last_failure_time {
            Some(t) if r.failed_refresh_attempts > 0 => format!(
                "{} (last {})",
                r.failed_refresh_attempts,
                when::relative(t, now)
            ),
            _ => r.failed_refresh_attempts.to_string(),
        };
        field("Failed refreshes", failures);
        field("Base URL", r.base_url.clone().unwrap_or_else(|| "-".into()));
        field(
            "Rotation",
            r.rotation.map_or_else(|| "-".into(), |m| format!("{m:?}")),
        );

        let t = &self.target_secret;
        let token = match (t.secret.state, t.access_token_expires_at) {
            (SecretState::Found, Some(e)) if e <= now => {
                format!("EXPIRED at {e} ({})", when::relative(e, now))
            }
            (SecretState::Found, Some(e)) => {
                format!("valid until {e} ({})", when::relative(e, now))
            }
            (SecretState::Found, None) => "expiry unknown (no expires_at key)".into(),
            _ => "-".into(),
        };
        field("Target Secret", secret_line(&t.secret));
        field("  access token", token);
        let rt = &self.refresh_token_secret;
        let login = rt
            .login_time
            .as_ref()
            .map(|l| format!("; login time {l}"))
            .unwrap_or_default();
        field(
            "Refresh-token Secret",
            format!("{}{login}", secret_line(rt)),
        );
        field("Client Secret", secret_line(&self.client_secret));

        let h = &self.history;
        field("Revision", h.revision.to_string());
        if let Some(r) = &h.renew {
            field(
                "Last renew",
                format!(
                    "{} {:?} ({}): {}",
                    r.outcome,
                    r.request,
                    when::relative(r.handled_at.0, now),
                    r.message
                ),
            );
        }
        out.push_str("\nHistory (newest last):\n");
        if h.refreshes.is_empty() {
            out.push_str("  (none)\n");
        } else {
            let cells: Vec<Vec<String>> = h
                .refreshes
                .iter()
                .map(|e| {
                    vec![
                        e.time.0.to_string(),
                        e.revision.to_string(),
                        e.outcome.clone(),
                        e.attempts.to_string(),
                        e.refresh_token_fingerprint.clone(),
                        e.process.clone(),
                    ]
                })
                .collect();
            out.push_str(&indent(&columns(
                &[
                    "TIME",
                    "REVISION",
                    "OUTCOME",
                    "ATTEMPTS",
                    "REFRESH TOKEN",
                    "PROCESS",
                ],
                &cells,
            )));
        }
        if !h.restarts.is_empty() {
            out.push_str("\nRestarted workloads:\n");
            let cells: Vec<Vec<String>> = h
                .restarts
                .iter()
                .map(|r| {
                    vec![
                        format!("{}/{}", r.kind, r.name),
                        r.revision.to_string(),
                        r.restarted_at
                            .as_ref()
                            .map_or_else(|| "-".into(), |t| when::relative(t.0, now)),
                        r.problem.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            out.push_str(&indent(&columns(
                &["WORKLOAD", "REVISION", "RESTARTED", "PROBLEM"],
                &cells,
            )));
        }

        out.push_str("\nConditions:\n");
        let cells: Vec<Vec<String>> = self
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    when::relative(c.last_transition_time, now),
                    c.message.clone(),
                ]
            })
            .collect();
        out.push_str(&indent(&columns(
            &["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"],
            &cells,
        )));
        out.push_str("\nEvents:\n");
        if self.events.is_empty() {
            out.push_str("  (none)\n");
        } else {
            let cells: Vec<Vec<String>> = self
                .events
                .iter()
                .map(|e| {
                    vec![
                        e.last_seen
                            .map_or_else(|| "-".into(), |t| when::relative(t, now)),
                        e.type_.clone(),
                        e.reason.clone(),
                        e.count.to_string(),
                        e.note.clone(),
                    ]
                })
                .collect();
            out.push_str(&indent(&columns(
                &["LAST SEEN", "TYPE", "REASON", "COUNT", "MESSAGE"],
                &cells,
            )));
        }
        out
    }
}

fn secret_line(s: &SecretInfo) -> String {
    match s.state {
        SecretState::Found => {
            let missing = if s.missing_keys.is_empty() {
                String::new()
            } else {
                format!("; MISSING {}", s.missing_keys.join(", "))
            };
            format!("{} (keys: {}{missing})", s.name, s.keys.join(", "))
        }
        SecretState::NotFound => format!("{} (NOT FOUND)", s.name),
        SecretState::Unreadable => format!("{} (cannot be read with your permissions)", s.name),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use crate::status_cli::row::tests::{cond, credential, t};
    use jiff::SignedDuration;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    #[test]
    fn secrets_show_key_names_and_what_is_missing_never_values() {
        let read = Ok(Some(fixtures::secret(
            "een-client",
            &[("client_id", "id-value")],
            &[],
        )));
        let info = secret_info("een-client", &read, &["client_id", "client_secret"], false);
        assert_eq!(info.keys, ["client_id"]);
        assert_eq!(info.missing_keys, ["client_secret"]);
        let line = secret_line(&info);
        assert_eq!(line, "een-client (keys: client_id; MISSING client_secret)");
        assert!(!serde_json::to_string(&info).unwrap().contains("id-value"));
        assert_eq!(
            secret_info("x", &Ok(None), &["k"], false).state,
            SecretState::NotFound
        );
        assert_eq!(
            secret_info("x", &Err(()), &["k"], false).state,
            SecretState::Unreadable
        );
    }

    #[test]
    fn the_target_token_expiry_comes_from_its_expires_at_key() {
        let cr = credential("een", serde_json::json!({}));
        let expires_at = t(-60).to_string();
        let read = Ok(Some(fixtures::secret(
            "een-token",
            &[
                ("access_token", "tok"),
                ("base_url", "https://x"),
                ("expires_at", &expires_at),
            ],
            &[],
        )));
        let info = target_info(&cr, "een-token", &read, t(0));
        assert_eq!(info.access_token_expires_at, Some(t(-60)));
        assert_eq!(info.access_token_expired, Some(true));
        assert!(info.secret.missing_keys.is_empty());
    }

    fn event(uid: &str, reason: &str, at: i64) -> Event {
        Event {
            regarding: Some(ObjectReference {
                uid: Some(uid.into()),
                kind: Some("EagleEyeCredential".into()),
                name: Some("een".into()),
                ..Default::default()
            }),
            reason: Some(reason.into()),
            type_: Some("Normal".into()),
            note: Some(format!("{reason} note")),
            event_time: Some(MicroTime(t(at))),
            ..Default::default()
        }
    }

    #[test]
    fn events_are_this_credentials_last_ten_oldest_first() {
        let mut cr = credential("een", serde_json::json!({}));
        cr.metadata.uid = Some("u1".into());
        let mut events: Vec<Event> = (0..12).map(|i| event("u1", &format!("R{i}"), i)).collect();
        events.push(event("other", "Elsewhere", 100));
        events.reverse();
        let lines = event_lines(&cr, &events);
        assert_eq!(lines.len(), EVENT_LIMIT);
        assert_eq!(lines[0].reason, "R2");
        assert_eq!(lines[9].reason, "R11");
        assert_eq!(lines[9].count, 1);
    }

    #[test]
    fn the_text_shows_conditions_events_secrets_and_the_token_state() {
        let cr = credential(
            "een",
            serde_json::json!({
                "conditions": [cond("Ready", "False", "RefreshFailed"), cond("ReloginSoon", "True", "DeadlineNear")],
                "accessTokenExpiresAt": t(-600).to_string(),
                "refreshTokenDeadline": t(2 * 86_400).to_string(),
                "failedRefreshAttempts": 2,
                "lastFailureTime": t(-60).to_string(),
                "revision": 7,
                "history": [
                    {"time": t(-7200).to_string(), "process": "op-0-ab12", "outcome": "Refreshed",
                     "refreshTokenFingerprint": "1a2b3c4d", "revision": 7, "attempts": 1},
                    {"time": t(-60).to_string(), "process": "op-1-cd34", "outcome": "RefreshFailed",
                     "refreshTokenFingerprint": "1a2b3c4d", "revision": 7, "attempts": 2}
                ],
            }),
        );
        let row = Row::new(&cr, t(0), SignedDuration::from_hours(7 * 24));
        let expires_at = t(-600).to_string();
        let target = Ok(Some(fixtures::secret(
            "een-token",
            &[("access_token", "tok-value"), ("expires_at", &expires_at)],
            &[],
        )));
        let detail = Detail {
            history: history_of(&cr),
            row,
            conditions: cr
                .status
                .as_ref()
                .unwrap()
                .conditions
                .iter()
                .map(|c| ConditionLine {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_transition_time: c.last_transition_time.0,
                })
                .collect(),
            events: vec![EventLine {
                type_: "Warning".into(),
                reason: "RefreshFailed".into(),
                note: "the token endpoint failed".into(),
                count: 2,
                last_seen: Some(t(-60)),
            }],
            target_secret: target_info(&cr, "een-token", &target, t(0)),
            refresh_token_secret: secret_info("r", &Ok(None), &["refresh_token"], true),
            client_secret: secret_info("c", &Err(()), &[], false),
        };
        let text = detail.render(t(0));
        assert!(
            text.contains("Ready:                False  RefreshFailed: RefreshFailed message"),
            "{text}"
        );
        assert!(
            text.contains("! log in again: kubectl eagleeye authorize een -n video"),
            "{text}"
        );
        assert!(
            text.contains("Failed refreshes:     2 (last 60s ago)"),
            "{text}"
        );
        assert!(
            text.contains("een-token (keys: access_token, expires_at; MISSING base_url)"),
            "{text}"
        );
        assert!(text.contains("  access token:       EXPIRED at"), "{text}");
        assert!(text.contains("r (NOT FOUND)"), "{text}");
        assert!(text.contains("c (cannot be read"), "{text}");
        assert!(
            text.contains(
                "  ReloginSoon   True     DeadlineNear    60m ago   DeadlineNear message"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  60s ago     Warning   RefreshFailed   2       the token endpoint failed"
            ),
            "{text}"
        );
        assert!(text.contains("Revision:             7"), "{text}");
        assert!(
            text.contains("7          RefreshFailed   2          1a2b3c4d        op-1-cd34"),
            "{text}"
        );
        assert!(!text.contains("tok-value"));
    }
}
