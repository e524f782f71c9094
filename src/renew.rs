//! Renew requests (spec.renewRequest, set by `kubectl eagleeye renew`): whether one is
//! still to serve, and what its outcome says. Pure: the schedule takes [`wanted`] as an
//! input (a due refresh like any other, through every guard of `crate::decide`), and the
//! report records [`result`] in status.renew, which serves each request once.
//!
//! A request is served once its value is in status.renew, or (when it is a time, as the
//! plugin writes it) once the published access token was issued after it: a refresh whose
//! status write failed is not repeated for the same request.

use jiff::Timestamp;

use crate::crd::RenewStatus;
use crate::outcome::Outcome;

/// The outcome of a request served by a new access token.
pub const RENEWED: &str = "Renewed";
/// The refresh was tried and failed; its retries go on under the usual backoff.
pub const FAILED: &str = "Failed";
/// The credential cannot refresh (suspended, a dead login, a spec or Secret to fix).
pub const REFUSED: &str = "Refused";

/// The request not handled yet, if there is one.
pub fn unhandled<'a>(request: Option<&'a str>, handled: Option<&RenewStatus>) -> Option<&'a str> {
    let request = request.map(str::trim).filter(|r| !r.is_empty())?;
    (handled.map(|h| h.request.as_str()) != Some(request)).then_some(request)
}

/// Whether an access token issued at `issued_at` already answers `request` (a time).
pub fn served_by(request: &str, issued_at: Option<Timestamp>) -> bool {
    match (request.parse::<Timestamp>(), issued_at) {
        (Ok(asked), Some(issued)) => issued >= asked,
        _ => false,
    }
}

/// Whether a refresh is wanted for the renew request.
pub fn wanted(
    request: Option<&str>,
    handled: Option<&RenewStatus>,
    issued_at: Option<Timestamp>,
) -> bool {
    unhandled(request, handled).is_some_and(|r| !served_by(r, issued_at))
}

/// What a reconcile that ended with `outcome` says of an unhandled request: `None` while
/// it is still on its way (waiting for a slot, another holder, a write-back).
pub fn result(outcome: &Outcome) -> Option<(&'static str, String)> {
    let refused = |why: &str| Some((REFUSED, why.to_owned()));
    match outcome {
        Outcome::Refreshed { .. } => Some((
            RENEWED,
            "a new access token is published; the one before it no longer works".into(),
        )),
        Outcome::RefreshFailed { failure, .. } => Some((
            FAILED,
            format!(
                "the refresh failed ({}); it is retried under the usual backoff, see the Ready condition",
                failure.cause
            ),
        )),
        Outcome::Suspended => refused(
            "the credential is suspended (spec.suspend): nothing is refreshed until it is resumed",
        ),
        Outcome::AwaitingLogin | Outcome::ReauthorizationRequired { .. } => refused(
            "the auth server refused this login: a person must log in again (kubectl eagleeye authorize); a renew cannot bring it back",
        ),
        Outcome::AwaitingConfig | Outcome::AnswerRefused { .. } => refused(
            "the operator's configuration refused the last answer for this login: see the Ready condition",
        ),
        Outcome::InvalidSpec(_)
        | Outcome::InUse(_)
        | Outcome::TargetConflict(_)
        | Outcome::NotSelected(_)
        | Outcome::SecretNotFound(_)
        | Outcome::SecretKeyMissing(_)
        | Outcome::SecretImmutable(_)
        | Outcome::Reverted { .. } => {
            refused("the credential cannot refresh: see the Ready condition for what to fix")
        }
        Outcome::Waiting { .. }
        | Outcome::Deferred { .. }
        | Outcome::AwaitingCallSlot { .. }
        | Outcome::WriteBackPending { .. }
        | Outcome::PublishFailed { .. }
        | Outcome::Restored { .. }
        | Outcome::ReplacedByPerson => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn handled(request: &str) -> RenewStatus {
        RenewStatus {
            request: request.into(),
            outcome: RENEWED.into(),
            message: String::new(),
            handled_at: Time(t("2026-12-06T10:00:00Z")),
        }
    }

    #[test]
    fn a_request_is_wanted_until_handled_and_never_again_after() {
        let req = Some("2026-12-06T10:00:00Z");
        assert!(wanted(req, None, Some(t("2026-12-06T09:00:00Z"))));
        assert!(!wanted(req, Some(&handled("2026-12-06T10:00:00Z")), None));
        assert!(wanted(
            Some("2026-12-06T11:00:00Z"),
            Some(&handled("2026-12-06T10:00:00Z")),
            None
        ));
        assert!(!wanted(None, None, None));
        assert!(!wanted(Some("  "), None, None));
    }

    #[test]
    fn a_timed_request_is_served_by_a_token_issued_after_it_even_if_its_status_was_lost() {
        let req = Some("2026-12-06T10:00:00Z");
        assert!(!wanted(req, None, Some(t("2026-12-06T10:00:01Z"))));
        assert!(served_by(
            "2026-12-06T10:00:00Z",
            Some(t("2026-12-06T10:00:00Z"))
        ));
        // Any other request id is served by its status record alone.
        assert!(wanted(
            Some("incident-42"),
            None,
            Some(t("2030-01-01T00:00:00Z"))
        ));
    }

    #[test]
    fn a_suspended_or_dead_credential_refuses_a_renew_and_a_wait_keeps_it_pending() {
        assert_eq!(result(&Outcome::Suspended).unwrap().0, REFUSED);
        assert_eq!(result(&Outcome::AwaitingLogin).unwrap().0, REFUSED);
        let refreshed = Outcome::Refreshed {
            expires_at: t("2026-12-06T11:00:00Z"),
            next_refresh: t("2026-12-06T10:30:00Z"),
        };
        assert_eq!(result(&refreshed).unwrap().0, RENEWED);
        assert!(result(&Outcome::ReplacedByPerson).is_none());
    }
}
