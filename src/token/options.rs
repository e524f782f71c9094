//! The settings of a [`TokenClient`](super::TokenClient), and above all its time limits:
//! short before a request can have reached the server, long once it may have, because an
//! answer abandoned after the server rotated the refresh token loses the login.

use std::time::Duration;

/// The API hosts the vendor uses; the default allow-list.
pub const EAGLE_EYE_API_HOSTS: &str = "*.eagleeyenetworks.com";

/// Settings of a [`TokenClient`](super::TokenClient).
///
/// A call runs in three stretches, each with its own limit:
/// 1. waiting for a call slot (`max_concurrent_calls` per destination and per tenant): no
///    limit here (a caller that must not wait long bounds it), and nothing sent;
/// 2. connecting, TCP and TLS (`connect_timeout`): when it runs out nothing was sent, and
///    the error is [`Transient`](super::ErrorClass::Transient), safe to retry;
/// 3. sending and reading the whole answer (`answer_timeout`): when it runs out, or the
///    connection breaks, the server may have acted on the request, and the error is
///    [`OutcomeUnknown`](super::ErrorClass::OutcomeUnknown).
///
/// Stretches 2 and 3 together never last longer than
/// [`TokenClient::answer_limit`](super::TokenClient::answer_limit).
#[derive(Debug, Clone)]
pub struct TokenClientOptions {
    /// Longest wait to open a connection, TCP and TLS.
    pub connect_timeout: Duration,
    /// How long the server may take to answer once the request may have been sent,
    /// counted from the end of connecting at the earliest. Generous on purpose: giving up
    /// does not stop the server from rotating the refresh token, and an abandoned answer
    /// takes the new one with it.
    pub answer_timeout: Duration,
    /// An extra ceiling on connecting, sending and answering together, for callers that
    /// set one limit for everything; `Duration::MAX` (the default) sets none. When set,
    /// connecting is also limited to half of it, so a call it cuts short is one that was
    /// sent.
    pub timeout: Duration,
    /// Calls at once to one destination (scheme, host and port), across all clones of the
    /// client: a backlog of due credentials must not all hit the auth server at once, and a
    /// destination that never answers holds only its own slots. Also the most one tenant
    /// (namespace) holds across all destinations. Further calls wait; a freed slot goes to
    /// the waiting tenant that holds the fewest, the earliest among equals.
    pub max_concurrent_calls: usize,
    /// Success answers longer than this are refused (read on only to find a new refresh
    /// token, up to 1 MiB); error answers are read at most 8 KiB, or this if smaller.
    pub max_response_bytes: usize,
    /// Extra PEM CA certificates trusted besides the system roots (private or test CAs).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Hosts a token response may name as the API base: exact names or IPs, or `*.domain`
    /// for any name below `domain` (not `domain` itself). Empty allows any host.
    pub allowed_api_hosts: Vec<String>,
    /// Hosts the auth URL may name, as `host[:port]`, `[v6][:port]` or `*.domain[:port]`
    /// (hosts matched as `allowed_api_hosts` matches them; no port: only the scheme's
    /// default, 443 for https). Empty (the default) allows any host and port: the operator
    /// and `authorize` always pass
    /// `--allowed-auth-hosts` (default [`EAGLE_EYE_AUTH_HOSTS`](super::EAGLE_EYE_AUTH_HOSTS)).
    pub allowed_auth_hosts: Vec<String>,
    /// Allow `http://` auth URLs to a loopback host (tests and sandboxes only); plain http
    /// to any other host is always refused.
    pub allow_http: bool,
}

impl Default for TokenClientOptions {
    /// Production settings: 10 s to connect, 300 s to answer, no extra ceiling, 4 calls
    /// at once, 64 KiB answers, https only, API hosts limited to [`EAGLE_EYE_API_HOSTS`],
    /// and any auth host.
    fn default() -> Self {
        TokenClientOptions {
            connect_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(300),
            timeout: Duration::MAX,
            max_concurrent_calls: 4,
            max_response_bytes: 64 * 1024,
            extra_ca_pem: None,
            allowed_api_hosts: vec![EAGLE_EYE_API_HOSTS.to_owned()],
            allowed_auth_hosts: Vec::new(),
            allow_http: false,
        }
    }
}
