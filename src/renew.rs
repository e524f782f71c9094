//! Renew requests (spec.renewRequest, set by `kubectl eagleeye renew`): whether one is
//! still to serve, and what its outcome says. Pure: the schedule takes [`wanted`] as an
//! input (a due refresh like any other, through every guard of `crate::decide`), and the
//! report records [`result`] in status.renew, which serves each request once.
//!
//! A request is served once its value is in status.renew. Never by comparing the request's
//! time with the published token's: the request carries the clock of whoever wrote it (a
//! laptop ten minutes slow would have a token issued before the request pass for its
//! answer, and a renew after a leak report success while the leaked token lives on). The
//! price: when the status write after a renew's refresh fails, the request is served once
//! more (a second refresh, through every guard).

use crate::crd::RenewStatus;
use crate::outcome::Outcome;

/// The outcome of a request served by a new access token.
pub const RENEWED: &str = "Renewed";
/// What a renew of a login whose tokens do not rotate says: the refresh is made, but the
/// server may hand back the same access token until it expires.
pub const NON_ROTATING: &str = "refreshed, but this login's tokens do not rotate: the server may return the same access token until it expires, so the one before may still work until then";
/// The refresh was tried and failed; its retries go on under the usual backoff.
pub const FAILED: &str = "Failed";
/// The credential cannot refresh (suspended, a dead login, a spec or Secret to fix).
pub const REFUSED: &str = "Refused";

/// The request not handled yet, if there is one.
pub fn unhandled<'a>(request: Option<&'a str>, handled: Option<&RenewStatus>) -> Option<&'a str> {
    let request = request.map(str::trim).filter(|r| !r.is_empty())?;
    (handled.map(|h| h.request.as_str()) != Some(request)).then_some(request)
}

/// Whether a refresh is wanted for the renew request.
pub fn wanted(request: Option<&str>, handled: Option<&RenewStatus>) -> bool {
    unhandled(request, handled).is_some()
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
    use jiff::Timestamp;
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
        assert!(wanted(req, None));
        assert!(!wanted(req, Some(&handled("2026-12-06T10:00:00Z"))));
        assert!(wanted(
            Some("2026-12-06T11:00:00Z"),
            Some(&handled("2026-12-06T10:00:00Z"))
        ));
        assert!(!wanted(None, None));
        assert!(!wanted(Some("  "), None));
        assert!(wanted(Some("incident-42"), None));
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
