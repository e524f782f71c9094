//! What can go wrong at the token endpoint, and what the caller should do about it.
//!
//! Every message here is built from our own words, status codes and validated OAuth error
//! codes only: response bodies, tokens, secrets and request bodies never reach an error.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// How the caller should react to a [`TokenError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The login is dead (refresh token or code expired, revoked or already used):
    /// only a person repeating the authorization-code login can fix it.
    Reauthorize,
    /// The client's settings are wrong (credentials, scope, URL): a person must fix them.
    /// Retrying is allowed but should be slow.
    ClientConfig,
    /// The endpoint or the network misbehaved, or the answer was unusable; retrying with
    /// backoff should work. When the request was sent, the error carries any new refresh
    /// token the answer held ([`TokenError::refresh_token`]): store it before retrying.
    Transient,
    /// The request may have reached the server, but no complete answer came back (a timeout
    /// or a broken connection after sending): the server may have acted on it, and for a
    /// rotating refresh token that means the token sent may be dead and its successor lost
    /// with the answer. Not a plain retry: spending the same token again may be a reuse.
    OutcomeUnknown,
    /// The server answered, and has most likely rotated the refresh token (the error
    /// carries the new one: store it), but this client's configuration refuses the answer
    /// (an API host outside `allowed_api_hosts`). Every further refresh would rotate and be
    /// refused the same way: report it, and do not spend again until the configuration
    /// changes.
    RefusedByConfig,
}

/// Which token endpoint call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Refresh,
    ExchangeCode,
    Revoke,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Refresh => "token refresh",
            Operation::ExchangeCode => "authorization code exchange",
            Operation::Revoke => "token revocation",
        })
    }
}

/// An RFC 6749 `error` code, kept only when it matches `^[a-z_]{1,40}$` so that it can
/// safely appear in logs, events and metric labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OAuthErrorCode(String);

impl OAuthErrorCode {
    pub fn parse(code: &str) -> Option<Self> {
        let valid = (1..=40).contains(&code.len())
            && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        valid.then(|| OAuthErrorCode(code.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `error` member of an RFC 6749 §5.2 error body, if the body is one.
    /// `error_description` and everything else is ignored on purpose: servers echo input.
    pub(crate) fn from_body(body: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        OAuthErrorCode::parse(value.get("error")?.as_str()?)
    }
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A failed call to the token endpoint. Display and Debug are safe to log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The client or the call is misconfigured; nothing was sent.
    #[error("token client configuration: {0}")]
    Config(String),
    /// The endpoint answered with a non-success status.
    #[error("{operation}: token endpoint answered HTTP {status}{}", code_suffix(.error_code))]
    Status {
        operation: Operation,
        status: u16,
        error_code: Option<OAuthErrorCode>,
        retry_after: Option<Duration>,
    },
    /// No connection could be made (DNS, refused, TLS handshake, `connect_timeout`), or it
    /// closed before the request was written: nothing reached the server.
    #[error("{operation}: token endpoint unreachable ({detail})")]
    Connect {
        operation: Operation,
        detail: &'static str,
    },
    /// The request may have reached the server, but no complete answer came back in the
    /// answer limit, or the connection broke first. A new refresh token found in a partial
    /// success answer is kept here (never displayed).
    #[error(
        "{operation}: outcome unknown, the request was sent but {detail}; the server may have acted on it"
    )]
    OutcomeUnknown {
        operation: Operation,
        detail: &'static str,
        refresh_token: Option<secrecy::SecretString>,
    },
    /// The call slot was held past [`crate::token::MAX_SLOT_HOLD`] before the call was
    /// made, so it was not made: nothing was sent.
    #[error("{operation}: not sent, its call slot was held too long before the call")]
    SlotExpired { operation: Operation },
    /// A success answer that is not a usable token response. `field` names the JSON member,
    /// never its value. When the answer did carry a refresh token, the server has most
    /// likely rotated the one sent: it is kept here (never displayed) so that it can be
    /// stored instead of lost.
    #[error("{operation}: malformed token response: {field} {problem}")]
    MalformedResponse {
        operation: Operation,
        field: &'static str,
        problem: &'static str,
        refresh_token: Option<secrecy::SecretString>,
    },
    /// The answer was longer than `max_response_bytes`. It was read on (to a fixed ceiling)
    /// only to find a new refresh token, kept here (never displayed).
    #[error("{operation}: token response exceeds {limit} bytes")]
    ResponseTooLarge {
        operation: Operation,
        limit: usize,
        refresh_token: Option<secrecy::SecretString>,
    },
    /// A success answer naming an API host that `allowed_api_hosts` does not allow: a
    /// settings problem (or a spoofed answer). `host` is a validated bare host name or IP.
    /// The new refresh token the answer carried is kept here (never displayed).
    #[error(
        "{operation}: the token response names API host {host:?} (httpsBaseUrl.hostname), which the allowed API hosts do not include"
    )]
    ApiHostNotAllowed {
        operation: Operation,
        host: String,
        refresh_token: Option<secrecy::SecretString>,
    },
}

fn code_suffix(code: &Option<OAuthErrorCode>) -> String {
    code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
}

impl TokenError {
    /// A new refresh token that came with an otherwise unusable answer (malformed, too
    /// large, cut short, or naming a disallowed API host). The server has most likely
    /// rotated the token sent: store this one before anything else.
    pub fn refresh_token(&self) -> Option<&secrecy::SecretString> {
        match self {
            TokenError::MalformedResponse { refresh_token, .. }
            | TokenError::ResponseTooLarge { refresh_token, .. }
            | TokenError::ApiHostNotAllowed { refresh_token, .. }
            | TokenError::OutcomeUnknown { refresh_token, .. } => refresh_token.as_ref(),
            TokenError::Config(_)
            | TokenError::Status { .. }
            | TokenError::Connect { .. }
            | TokenError::SlotExpired { .. } => None,
        }
    }

    pub fn class(&self) -> ErrorClass {
        self.classify().0
    }

    /// Short CamelCase reason for metric labels and condition reasons.
    pub fn reason(&self) -> &'static str {
        self.classify().1
    }

    /// The server's `Retry-After`, when it sent one with an error status.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, for errors that got as far as one.
    pub fn status(&self) -> Option<u16> {
        match self {
            TokenError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The validated OAuth `error` code, if the server sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            TokenError::Status { error_code, .. } => error_code.as_ref().map(|c| c.as_str()),
            _ => None,
        }
    }

    fn classify(&self) -> (ErrorClass, &'static str) {
        match self {
            TokenError::Config(_) => (ErrorClass::ClientConfig, "Config"),
            TokenError::Status {
                operation,
                status,
                error_code,
                ..
            } => classify_status(*operation, *status, error_code.as_ref().map(|c| c.as_str())),
            TokenError::Connect { .. } => (ErrorClass::Transient, "Connect"),
            TokenError::SlotExpired { .. } => (ErrorClass::Transient, "SlotExpired"),
            TokenError::OutcomeUnknown { .. } => (ErrorClass::OutcomeUnknown, "OutcomeUnknown"),
            TokenError::MalformedResponse { .. } => (ErrorClass::Transient, "MalformedResponse"),
            TokenError::ResponseTooLarge { .. } => (ErrorClass::Transient, "ResponseTooLarge"),
            TokenError::ApiHostNotAllowed { .. } => {
                (ErrorClass::RefusedByConfig, "ApiHostNotAllowed")
            }
        }
    }

    /// Maps a reqwest failure to a kind, keeping nothing of its text (it may carry the URL,
    /// and its sources are third-party messages we do not control).
    pub(crate) fn from_reqwest(operation: Operation, err: reqwest::Error) -> Self {
        let err = err.without_url();
        if err.is_builder() {
            return TokenError::Config("the request could not be built".into());
        }
        if !may_have_been_sent(&err) {
            let detail = if err.is_timeout() {
                "connect timed out"
            } else {
                transport_detail(&err)
            };
            return TokenError::Connect { operation, detail };
        }
        let detail = match transport_detail(&err) {
            _ if err.is_timeout() => "no answer came in time",
            "connection closed" => "the connection closed before the answer was complete",
            "TLS certificate rejected" | "TLS handshake failed" => "the TLS session failed",
            _ => "the connection failed before the answer was complete",
        };
        TokenError::OutcomeUnknown {
            operation,
            detail,
            refresh_token: None,
        }
    }
}

/// Whether the request may have reached the server. Only two failures prove it did not: a
/// failed connect (reqwest's `connect_timeout` included, and TLS, which is part of the
/// connect), and hyper cancelling a request it never started to write.
fn may_have_been_sent(err: &reqwest::Error) -> bool {
    if err.is_connect() {
        return false;
    }
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        // The outermost hyper error is the one that says what became of the request.
        if let Some(hyper_err) = e.downcast_ref::<hyper::Error>() {
            return !hyper_err.is_canceled();
        }
        source = e.source();
    }
    true
}

fn classify_status(
    operation: Operation,
    status: u16,
    code: Option<&str>,
) -> (ErrorClass, &'static str) {
    use ErrorClass::*;
    match (status, code) {
        (400 | 401, Some("invalid_grant")) => (Reauthorize, "InvalidGrant"),
        // Codes naming the client itself: a new login would not help.
        (_, Some("invalid_client")) => (ClientConfig, "InvalidClient"),
        (_, Some("unauthorized_client")) => (ClientConfig, "UnauthorizedClient"),
        (_, Some("temporarily_unavailable" | "server_error")) => (Transient, "ServerError"),
        // A bare 401 on a refresh or code exchange: the vendor documents 401 for an expired,
        // revoked or already-rotated token. On a revocation only the client is checked.
        (401, _) if operation == Operation::Revoke => (ClientConfig, "Unauthorized"),
        (401, _) => (Reauthorize, "Unauthorized"),
        (403, _) => (ClientConfig, "Forbidden"),
        (408, _) => (Transient, "Timeout"),
        (429, _) => (Transient, "RateLimited"),
        (500..=599, _) => (Transient, "ServerError"),
        (400..=499, _) => (ClientConfig, "BadRequest"),
        // 1xx/3xx (redirects are not followed: a moved token endpoint is a settings problem).
        _ => (ClientConfig, "UnexpectedStatus"),
    }
}

/// A fixed description of why a request failed, found by walking the error chain.
fn transport_detail(err: &reqwest::Error) -> &'static str {
    let mut io_detail = None;
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => "TLS certificate rejected",
                _ => "TLS handshake failed",
            };
        }
        if let Some(hyper_err) = e.downcast_ref::<hyper::Error>()
            && (hyper_err.is_incomplete_message() || hyper_err.is_closed())
        {
            io_detail = io_detail.or(Some("connection closed"));
        }
        source = match e.downcast_ref::<std::io::Error>() {
            Some(io) => {
                io_detail = io_detail.or(match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => Some("connection refused"),
                    std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof => Some("connection closed"),
                    _ => None,
                });
                // io::Error::source() skips the error it wraps (TLS errors travel that way,
                // sometimes wrapped twice), so step into it instead.
                match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn StdError + 'static)),
                    None => io.source(),
                }
            }
            None => e.source(),
        };
    }
    if let Some(detail) = io_detail {
        detail
    } else if err.is_dns() {
        "DNS lookup failed"
    } else if err.is_connect() {
        "connect failed"
    } else if err.is_body() || err.is_decode() {
        "connection lost while reading the answer"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(operation: Operation, status: u16, code: Option<&str>) -> TokenError {
        TokenError::Status {
            operation,
            status,
            error_code: code.and_then(OAuthErrorCode::parse),
            retry_after: None,
        }
    }

    #[test]
    fn invalid_grant_on_400_or_401_means_the_login_is_dead() {
        for code in [400, 401] {
            let err = status(Operation::Refresh, code, Some("invalid_grant"));
            assert_eq!(err.class(), ErrorClass::Reauthorize);
            assert_eq!(err.reason(), "InvalidGrant");
        }
    }

    #[test]
    fn bare_401_on_refresh_or_code_exchange_means_reauthorize() {
        for op in [Operation::Refresh, Operation::ExchangeCode] {
            let err = status(op, 401, None);
            assert_eq!(err.class(), ErrorClass::Reauthorize);
            assert_eq!(err.reason(), "Unauthorized");
        }
        let err = status(Operation::Refresh, 401, Some("invalid_token"));
        assert_eq!(err.class(), ErrorClass::Reauthorize);
    }

    #[test]
    fn bare_401_on_revoke_is_a_client_problem() {
        assert_eq!(
            status(Operation::Revoke, 401, None).class(),
            ErrorClass::ClientConfig
        );
    }

    #[test]
    fn invalid_client_is_client_config_whatever_the_status() {
        for code in [400, 401] {
            let err = status(Operation::Refresh, code, Some("invalid_client"));
            assert_eq!(err.class(), ErrorClass::ClientConfig);
            assert_eq!(err.reason(), "InvalidClient");
        }
    }

    #[test]
    fn forbidden_and_other_4xx_are_client_config() {
        let err = status(Operation::Refresh, 403, None);
        assert_eq!(
            (err.class(), err.reason()),
            (ErrorClass::ClientConfig, "Forbidden")
        );
        let err = status(Operation::Refresh, 400, Some("invalid_scope"));
        assert_eq!(
            (err.class(), err.reason()),
            (ErrorClass::ClientConfig, "BadRequest")
        );
        let err = status(Operation::Refresh, 404, None);
        assert_eq!(
            (err.class(), err.reason()),
            (ErrorClass::ClientConfig, "BadRequest")
        );
        let err = status(Operation::Refresh, 302, None);
        assert_eq!(
            (err.class(), err.reason()),
            (ErrorClass::ClientConfig, "UnexpectedStatus")
        );
    }

    #[test]
    fn server_errors_and_rate_limits_are_transient() {
        for (code, reason) in [
            (500, "ServerError"),
            (503, "ServerError"),
            (429, "RateLimited"),
        ] {
            let err = status(Operation::Refresh, code, None);
            assert_eq!((err.class(), err.reason()), (ErrorClass::Transient, reason));
        }
        let err = status(Operation::Refresh, 400, Some("temporarily_unavailable"));
        assert_eq!(err.class(), ErrorClass::Transient);
    }

    #[test]
    fn transport_and_response_failures_are_transient() {
        let op = Operation::Refresh;
        for err in [
            TokenError::SlotExpired { operation: op },
            TokenError::Connect {
                operation: op,
                detail: "connection refused",
            },
            TokenError::MalformedResponse {
                operation: op,
                field: "body",
                problem: "is not JSON",
                refresh_token: None,
            },
            TokenError::ResponseTooLarge {
                operation: op,
                limit: 10,
                refresh_token: None,
            },
        ] {
            assert_eq!(err.class(), ErrorClass::Transient, "{err}");
        }
        assert_eq!(
            TokenError::Config("x".into()).class(),
            ErrorClass::ClientConfig
        );
    }

    #[test]
    fn a_request_that_may_have_been_sent_has_an_unknown_outcome() {
        let err = TokenError::OutcomeUnknown {
            operation: Operation::Refresh,
            detail: "no answer came in time",
            refresh_token: None,
        };
        assert_eq!(
            (err.class(), err.reason()),
            (ErrorClass::OutcomeUnknown, "OutcomeUnknown")
        );
        assert_eq!(
            err.to_string(),
            "token refresh: outcome unknown, the request was sent but no answer came in time; \
             the server may have acted on it"
        );
    }

    #[test]
    fn a_disallowed_api_host_is_refused_by_config_and_keeps_the_new_token() {
        let err = TokenError::ApiHostNotAllowed {
            operation: Operation::Refresh,
            host: "api.foreign.example".into(),
            refresh_token: Some(secrecy::SecretString::from("n3w-t0ken")),
        };
        assert_eq!(
            (err.class(), err.reason()),
            (ErrorClass::RefusedByConfig, "ApiHostNotAllowed")
        );
        assert!(err.refresh_token().is_some());
        let text = format!("{err} {err:?}");
        assert!(text.contains("\"api.foreign.example\""), "{text}");
        assert!(!text.contains("n3w-t0ken"), "{text}");
    }

    #[test]
    fn every_error_that_may_follow_a_rotation_can_carry_the_new_token() {
        let op = Operation::Refresh;
        let rt = || Some(secrecy::SecretString::from("rt"));
        for err in [
            TokenError::MalformedResponse {
                operation: op,
                field: "body",
                problem: "is not JSON",
                refresh_token: rt(),
            },
            TokenError::ResponseTooLarge {
                operation: op,
                limit: 1,
                refresh_token: rt(),
            },
            TokenError::ApiHostNotAllowed {
                operation: op,
                host: "h".into(),
                refresh_token: rt(),
            },
            TokenError::OutcomeUnknown {
                operation: op,
                detail: "d",
                refresh_token: rt(),
            },
        ] {
            assert!(err.refresh_token().is_some(), "{err}");
        }
    }

    #[test]
    fn oauth_error_codes_are_kept_only_when_safe() {
        assert_eq!(
            OAuthErrorCode::parse("invalid_grant").unwrap().as_str(),
            "invalid_grant"
        );
        for bad in [
            "",
            "Invalid_Grant",
            "invalid grant",
            "a-b",
            "x\n",
            &"a".repeat(41),
        ] {
            assert!(OAuthErrorCode::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn error_body_yields_the_code_and_drops_the_description() {
        let body = br#"{"error":"invalid_grant","error_description":"token s3cr3t is dead"}"#;
        let err = TokenError::Status {
            operation: Operation::Refresh,
            status: 400,
            error_code: OAuthErrorCode::from_body(body),
            retry_after: None,
        };
        assert_eq!(err.oauth_error(), Some("invalid_grant"));
        let text = format!("{err} {err:?}");
        assert!(!text.contains("s3cr3t") && !text.contains("dead"), "{text}");
        assert_eq!(
            err.to_string(),
            "token refresh: token endpoint answered HTTP 400 (invalid_grant)"
        );
    }

    #[test]
    fn error_bodies_that_are_not_rfc6749_yield_no_code() {
        for body in [
            &b"<html>oops</html>"[..],
            br#"{"error":42}"#,
            br#"{"error":"Bad Thing"}"#,
            b"",
        ] {
            assert!(OAuthErrorCode::from_body(body).is_none());
        }
    }
}
