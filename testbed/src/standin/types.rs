//! The plain data the stand-in's public API hands in and out. Secrets and tokens are kept out
//! of `Debug` output, so a test that logs these values leaks nothing.

use std::fmt;
use std::time::{Instant, SystemTime};

use super::faults::Fault;

/// An OAuth2 client known to the stand-in, as the vendor's developer portal would hold it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRegistration {
    pub id: String,
    pub secret: String,
    /// The OAuth whitelist: `redirect_uri` must equal one of these, compared as strings.
    pub redirect_uris: Vec<String>,
    /// `true` is the vendor's default; `false` is the permanent, non-rotating refresh token.
    pub rotating: bool,
}

// The secret stays out of debug output, as it must stay out of logs.
impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("redirect_uris", &self.redirect_uris)
            .field("rotating", &self.rotating)
            .finish()
    }
}

/// What a successful token response carries.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    pub access_token: String,
    pub refresh_token: String,
    /// Whole seconds left on the access token, rounded down.
    pub expires_in: u64,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// What the stand-in has seen, for tests and benchmarks to assert on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every request to `/oauth2/token`, faulted or not.
    pub token_requests: u64,
    /// Successful `refresh_token` grants (including a non-rotating client handed its active token).
    pub refreshes: u64,
    /// Successful `authorization_code` grants over HTTP (`StandIn::login` is not counted).
    pub code_exchanges: u64,
    /// Attempts to use a refresh token that an earlier refresh had already rotated out.
    pub reused_refresh_tokens: u64,
    /// Token requests answered with an OAuth2 error (4xx); injected faults are not counted.
    pub rejected: u64,
}

/// One call to the API (`/api/v3.0/users/self`) and whether its access token was accepted:
/// what a workload holding the token would see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiCall {
    /// When it was answered, on the real wall clock.
    pub at: SystemTime,
    /// The caller's `X-Consumer` header, by which a benchmark tells its workloads apart.
    pub consumer: Option<String>,
    pub accepted: bool,
}

/// One request to `/oauth2/token`, with when it came: counters cannot tell a client that
/// backs off from one that retries at once, the times between these can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// When it arrived, before its body was read: for gaps between requests.
    pub arrived: Instant,
    /// The same moment on the real wall clock (not moved by `advance_clock`): for comparing
    /// with times a client wrote down.
    pub arrived_at: SystemTime,
    /// The fault it was dealt, if any.
    pub fault: Option<Fault>,
    /// The HTTP status it was answered with; `None` while it waits (a `Delay` or `Hold`),
    /// and for good after a `Hang` or `DropConnection`.
    pub status: Option<u16>,
}
