//! The error answers of the stand-in's OAuth2 endpoints: RFC 6749 bodies with the statuses the
//! vendor documents (401 for a dead code or refresh token, 403 for a scope not allowed).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ledger::GrantError;
use super::request::Malformed;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OAuthError {
    /// The endpoint takes POST only.
    MethodNotAllowed,
    /// `Accept` does not admit `application/json`.
    NotAcceptable,
    /// Query parameters, a non-form body, a missing or repeated parameter, an unreadable header.
    InvalidRequest,
    /// Missing or wrong client credentials.
    InvalidClient,
    /// Unknown, expired, used, rotated or revoked code or refresh token.
    InvalidGrant,
    /// A code presented with a different `redirect_uri`.
    RedirectMismatch,
    UnsupportedGrantType,
    /// A scope other than `vms.all`.
    InvalidScope,
}

impl OAuthError {
    fn status(self) -> StatusCode {
        match self {
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::InvalidClient | Self::InvalidGrant => StatusCode::UNAUTHORIZED,
            Self::InvalidScope => StatusCode::FORBIDDEN,
            Self::InvalidRequest | Self::RedirectMismatch | Self::UnsupportedGrantType => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// The RFC 6749 `error` code; `None` where the answer is plain HTTP, not OAuth2.
    pub fn code(self) -> Option<&'static str> {
        match self {
            Self::MethodNotAllowed | Self::NotAcceptable => None,
            Self::InvalidRequest => Some("invalid_request"),
            Self::InvalidClient => Some("invalid_client"),
            Self::InvalidGrant | Self::RedirectMismatch => Some("invalid_grant"),
            Self::UnsupportedGrantType => Some("unsupported_grant_type"),
            Self::InvalidScope => Some("invalid_scope"),
        }
    }
}

impl From<Malformed> for OAuthError {
    fn from(_: Malformed) -> Self {
        Self::InvalidRequest
    }
}

impl From<GrantError> for OAuthError {
    fn from(error: GrantError) -> Self {
        match error {
            GrantError::Refused => Self::InvalidGrant,
            GrantError::RedirectMismatch => Self::RedirectMismatch,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = match self.code() {
            Some(code) => (status, Json(serde_json::json!({ "error": code }))).into_response(),
            // The client accepts no JSON (or used the wrong method): a plain reason will do.
            None => (status, status.canonical_reason().unwrap_or_default()).into_response(),
        };
        let headers = response.headers_mut();
        match self {
            Self::InvalidClient => {
                let challenge = HeaderValue::from_static("Basic realm=\"oauth2\"");
                headers.insert(header::WWW_AUTHENTICATE, challenge);
            }
            Self::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        // Spring marks every token-endpoint answer uncacheable.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        response
    }
}
