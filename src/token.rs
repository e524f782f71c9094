//! Client for the Eagle Eye Networks OAuth2 token endpoint (`/oauth2/token`, `/oauth2/revoke`).
//!
//! It speaks HTTP and the vendor's JSON and knows nothing of Kubernetes. Every answer is
//! size-capped, time-boxed and validated before a [`TokenGrant`] is handed out, and no error
//! carries response text, tokens or secrets. A refresh is never abandoned while the server
//! may still answer it, and calls are limited in number so a backlog cannot swamp the server:
//! per destination, so a server that never answers holds up only calls to it, and per
//! tenant, shared fairly (see [`TokenClient::reserve`]).

mod auth_url;
mod destination;
mod error;
mod extract;
mod grant;
mod options;
#[doc(hidden)]
pub mod transport;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use secrecy::SecretString;
use url::Url;

pub use auth_url::{AuthPolicy, AuthUrl, AuthUrlError, EAGLE_EYE_AUTH_HOSTS, LOOPBACK_HOSTS};
pub use destination::Destination;
pub use error::{ErrorClass, OAuthErrorCode, Operation, TokenError};
pub use grant::{ApiBase, MAX_EXPIRES_IN, MAX_TOKEN_BYTES, TokenGrant};
pub use options::{EAGLE_EYE_API_HOSTS, TokenClientOptions};
pub use wire::MAX_RETRY_AFTER;

use grant::{HostPattern, Problem};

/// A call must start within this of its [`CallSlot`] being granted, or it is not made.
/// The slot's [`CallSlot::deadline`] allows for it.
pub const MAX_SLOT_HOLD: Duration = Duration::from_secs(30);

/// Error answers are read only this far to find an RFC 6749 `error` code.
const ERROR_BODY_LIMIT: usize = 8 * 1024;
/// A success answer over `max_response_bytes` is read on to here, only to find a new
/// refresh token; what lies beyond is never read.
const EXTRACT_CEILING: usize = 1024 * 1024;
/// Longest `connect_timeout` or `answer_timeout` accepted; keeps deadlines representable.
const MAX_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// The application's OAuth2 client credentials. Debug shows the id, never the secret.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub id: String,
    pub secret: SecretString,
}

/// Calls the token endpoint. Cheap to clone: clones share one connection pool and one set
/// of call slots.
#[derive(Debug, Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    slots: Arc<crate::fair::Slots<Destination>>,
    /// Set when the process stops: calls in flight finish, none starts.
    closed: Arc<std::sync::atomic::AtomicBool>,
    settings: Arc<Settings>,
    /// Set only by the simulator: requests go there instead of over HTTP.
    transport: Option<Arc<dyn transport::Transport>>,
}

#[derive(Debug)]
struct Settings {
    answer_limit: Duration,
    max_concurrent_calls: usize,
    max_response_bytes: usize,
    allowed_api_hosts: Vec<HostPattern>,
    auth_policy: AuthPolicy,
}

/// The right to make one call to one destination, from [`TokenClient::reserve`]; the
/// slot frees when the call made with it ends, or when it is dropped unused.
#[derive(Debug)]
pub struct CallSlot {
    permit: crate::fair::Permit<Destination>,
    start_by: Instant,
    deadline: Instant,
}

impl CallSlot {
    /// The latest moment a call made with this slot may still be waiting for its answer:
    /// granted + [`MAX_SLOT_HOLD`] + [`TokenClient::answer_limit`]. The client never waits
    /// past it (the server may still act on the request after it). A record that the
    /// refresh token may be spent must stay valid at least until then.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether a call may still start with this slot ([`MAX_SLOT_HOLD`] since it was
    /// granted has not passed).
    pub fn usable(&self) -> bool {
        now() < self.start_by
    }

    /// Whether a call may still start with this slot `margin` from now.
    pub fn usable_for(&self, margin: Duration) -> bool {
        now() + margin < self.start_by
    }

    /// Time left until [`CallSlot::deadline`], e.g. to turn it into a wall-clock time.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(now())
    }

    /// Where a call made with this slot may go.
    pub fn destination(&self) -> &Destination {
        self.permit.destination()
    }
}

/// The time slots and deadlines are measured in: tokio's clock, which is the system's
/// monotonic clock except under paused test time (the simulator), where the deadlines must
/// move with the time the runtime's timers see.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How reading a success answer ended.
enum BodyEnd {
    Complete,
    /// The ceiling was reached: the body may go on.
    Ceiling,
    Failed(reqwest::Error),
    TimedOut,
}

/// A success answer, as far as it was read.
struct Answer {
    body: Vec<u8>,
    end: BodyEnd,
}

impl TokenClient {
    pub fn new(options: TokenClientOptions) -> Result<Self, TokenError> {
        let config = |msg: String| TokenError::Config(msg);
        let limits = [
            options.timeout,
            options.connect_timeout,
            options.answer_timeout,
        ];
        if limits.iter().any(Duration::is_zero) {
            return Err(config("timeouts must be longer than zero".into()));
        }
        if options.connect_timeout > MAX_LIMIT || options.answer_timeout > MAX_LIMIT {
            return Err(config(
                "connect_timeout and answer_timeout must be at most 24 hours".into(),
            ));
        }
        if options.max_concurrent_calls == 0 {
            return Err(config("max_concurrent_calls must be more than zero".into()));
        }
        if options.max_response_bytes == 0 {
            return Err(config("max_response_bytes must be more than zero".into()));
        }
        let allowed_api_hosts = options
            .allowed_api_hosts
            .iter()
            .map(|p| {
                HostPattern::parse(p).ok_or_else(|| {
                    config(format!(
                        "allowed_api_hosts entry {p:?} is not a host, IP or *.domain pattern"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let auth_policy = match options.allowed_auth_hosts.is_empty() {
            true => AuthPolicy::any_host(options.allow_http),
            false => {
                AuthPolicy::new(&options.allowed_auth_hosts, options.allow_http).map_err(config)?
            }
        };
        // Connecting must end well before an overall ceiling does, or a call cut short
        // while connecting could not be told from one cut short after sending.
        let connect_timeout = options.connect_timeout.min(options.timeout / 2);
        let answer_limit = options
            .timeout
            .min(connect_timeout + options.answer_timeout);

        let mut builder = reqwest::Client::builder()
            // No overall timeout here: each call has its own deadline, and must know
            // whether it ran out before or after sending.
            .connect_timeout(connect_timeout)
            // A redirect would re-send the credentials elsewhere; a moved endpoint is a
            // settings problem for a person to fix.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!options.allow_http)
            .user_agent(concat!("eagle-eye-operator/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &options.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|_| config("extra_ca_pem is not a PEM certificate bundle".into()))?;
            if certs.is_empty() {
                return Err(config("extra_ca_pem holds no certificate".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| config(format!("cannot build the HTTP client: {}", error_chain(&e))))?;
        Ok(TokenClient {
            http,
            slots: crate::fair::Slots::new(
                options.max_concurrent_calls,
                options.max_concurrent_calls,
            ),
            closed: Arc::default(),
            settings: Arc::new(Settings {
                answer_limit,
                max_concurrent_calls: options.max_concurrent_calls,
                max_response_bytes: options.max_response_bytes,
                allowed_api_hosts,
                auth_policy,
            }),
            transport: None,
        })
    }

    /// Sends every request through `transport` instead of HTTP (the simulator's seam).
    #[doc(hidden)]
    pub fn with_transport(mut self, transport: Arc<dyn transport::Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The longest a call takes from its start to its end, whatever the server does:
    /// `min(timeout, connect_timeout + answer_timeout)` (connect_timeout capped at half of
    /// timeout). Waiting for a call slot comes before it and is not counted.
    pub fn answer_limit(&self) -> Duration {
        self.settings.answer_limit
    }

    /// No call may start from now on (the process is stopping): a caller holding or
    /// waiting for a slot checks [`TokenClient::is_closed`] before it records anything.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Calls in progress or waiting to start with a reserved slot, across all clones and
    /// destinations.
    pub fn in_flight(&self) -> usize {
        self.slots.held()
    }

    /// The most calls that may be in flight at once to one destination, and for one
    /// tenant across all destinations (`max_concurrent_calls`).
    pub fn max_concurrent_calls(&self) -> usize {
        self.settings.max_concurrent_calls
    }

    /// Destinations with a call in flight or waiting: idle ones are forgotten.
    pub fn busy_destinations(&self) -> usize {
        self.slots.destinations()
    }

    /// Waits for a call slot to `auth_base`'s destination (scheme, host, port) for `tenant`
    /// (the credential's namespace). Each destination has `max_concurrent_calls` slots of
    /// its own, so one that never answers holds up only calls to it; a tenant holds at most
    /// `max_concurrent_calls` across all destinations; a freed slot goes to the waiting
    /// tenant holding the fewest, the earliest first among equals.
    ///
    /// Take a slot before recording that a refresh token is about to be spent, so that the
    /// record's validity ([`CallSlot::deadline`]) does not include the wait; then call
    /// [`TokenClient::refresh_with`] within [`MAX_SLOT_HOLD`]. Dropping the future or the
    /// slot is always safe: nothing has been sent. The wait has no limit here: a caller
    /// that must not wait long (a reconcile holding a controller seat) bounds it.
    pub fn reserve(
        &self,
        auth_base: &Url,
        tenant: &str,
    ) -> impl Future<Output = CallSlot> + Send + use<> {
        let slots = Arc::clone(&self.slots);
        let (destination, tenant) = (Destination::of(auth_base), tenant.to_owned());
        let answer_limit = self.settings.answer_limit;
        async move {
            let permit = slots.acquire(destination, &tenant).await;
            let granted = now();
            CallSlot {
                permit,
                start_by: granted + MAX_SLOT_HOLD,
                deadline: granted + MAX_SLOT_HOLD + answer_limit,
            }
        }
    }

    /// Trades a refresh token for a new access token (and, when rotating, a new refresh
    /// token that replaces the one sent, which is then dead). Waits for a call slot first,
    /// as the tenant `""` (callers that serve several tenants use [`TokenClient::reserve`]).
    pub async fn refresh(
        &self,
        auth_base: &Url,
        creds: &ClientCredentials,
        refresh_token: &SecretString,
        scope: &str,
    ) -> Result<TokenGrant, TokenError> {
        let slot = self.reserve(auth_base, "").await;
        self.refresh_with(slot, auth_base, creds, refresh_token, scope)
            .await
    }

    /// [`TokenClient::refresh`] with a slot taken earlier by [`TokenClient::reserve`].
    /// Sends nothing, and fails `Transient` ([`TokenError::SlotExpired`]), when the slot
    /// was held past [`MAX_SLOT_HOLD`]; a slot from another client is a `Config` error.
    pub async fn refresh_with(
        &self,
        slot: CallSlot,
        auth_base: &Url,
        creds: &ClientCredentials,
        refresh_token: &SecretString,
        scope: &str,
    ) -> Result<TokenGrant, TokenError> {
        let form = wire::refresh_form(scope, refresh_token);
        self.grant(slot, Operation::Refresh, auth_base, creds, form, scope)
            .await
    }

    /// Trades an authorization code (Phase 1 login) for the first tokens. `redirect_uri`
    /// must be the exact string used in the authorize request.
    pub async fn exchange_code(
        &self,
        auth_base: &Url,
        creds: &ClientCredentials,
        code: &SecretString,
        redirect_uri: &str,
        scope: &str,
    ) -> Result<TokenGrant, TokenError> {
        let form = wire::code_form(scope, code, redirect_uri);
        let slot = self.reserve(auth_base, "").await;
        self.grant(slot, Operation::ExchangeCode, auth_base, creds, form, scope)
            .await
    }

    /// Revokes a refresh token (and the access token issued from it). Waits for a call
    /// slot first.
    pub async fn revoke(
        &self,
        auth_base: &Url,
        creds: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<(), TokenError> {
        let slot = self.reserve(auth_base, "").await;
        self.revoke_with(slot, auth_base, creds, refresh_token)
            .await
    }

    /// [`TokenClient::revoke`] with a slot taken earlier by [`TokenClient::reserve`].
    pub async fn revoke_with(
        &self,
        slot: CallSlot,
        auth_base: &Url,
        creds: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<(), TokenError> {
        let operation = Operation::Revoke;
        let form = wire::revoke_form(refresh_token);
        // The body means nothing; a cap stops an endless one.
        let limit = self.settings.max_response_bytes;
        let answer = self
            .call(slot, operation, auth_base, "revoke", creds, form, limit + 1)
            .await?;
        match answer.end {
            BodyEnd::Failed(e) => Err(TokenError::from_reqwest(operation, e)),
            BodyEnd::TimedOut => Err(no_answer_in_time(operation, None)),
            BodyEnd::Ceiling => Err(TokenError::ResponseTooLarge {
                operation,
                limit,
                refresh_token: None,
            }),
            BodyEnd::Complete => Ok(()),
        }
    }

    async fn grant(
        &self,
        slot: CallSlot,
        operation: Operation,
        auth_base: &Url,
        creds: &ClientCredentials,
        form: String,
        scope: &str,
    ) -> Result<TokenGrant, TokenError> {
        let limit = self.settings.max_response_bytes;
        let ceiling = EXTRACT_CEILING.max(limit + 1);
        let answer = self
            .call(slot, operation, auth_base, "token", creds, form, ceiling)
            .await?;
        // From here on the server has answered 200: it has most likely rotated the token
        // sent, so whatever else is wrong, a new one in the body is handed on.
        let carried = || extract::refresh_token(&answer.body).token();
        match answer.end {
            BodyEnd::Failed(e) => {
                return Err(match TokenError::from_reqwest(operation, e) {
                    TokenError::OutcomeUnknown {
                        operation, detail, ..
                    } => TokenError::OutcomeUnknown {
                        operation,
                        detail,
                        refresh_token: carried(),
                    },
                    other => other,
                });
            }
            BodyEnd::TimedOut => return Err(no_answer_in_time(operation, carried())),
            BodyEnd::Complete if answer.body.len() <= limit => {}
            BodyEnd::Complete | BodyEnd::Ceiling => {
                return Err(TokenError::ResponseTooLarge {
                    operation,
                    limit,
                    refresh_token: carried(),
                });
            }
        }
        grant::parse_grant(&answer.body, scope, &self.settings.allowed_api_hosts).map_err(|r| {
            match r.problem {
                Problem::Malformed { field, problem } => TokenError::MalformedResponse {
                    operation,
                    field,
                    problem,
                    refresh_token: r.refresh_token,
                },
                Problem::HostNotAllowed { host } => TokenError::ApiHostNotAllowed {
                    operation,
                    host,
                    refresh_token: r.refresh_token,
                },
            }
        })
    }

    /// POSTs `form` to `{auth_base}/oauth2/{leaf}` and returns a success answer, read up to
    /// `ceiling` bytes. The slot is held until the call ends.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        slot: CallSlot,
        operation: Operation,
        auth_base: &Url,
        leaf: &str,
        creds: &ClientCredentials,
        form: String,
        ceiling: usize,
    ) -> Result<Answer, TokenError> {
        // The last check before the credentials leave the process: the same as the
        // operator's and authorize's, so a URL they accepted is never refused here.
        let url = AuthUrl::from_url(auth_base, &self.settings.auth_policy)
            .map_err(|e| TokenError::Config(e.to_string()))?
            .endpoint(leaf);
        if !slot.permit.belongs_to(&self.slots) {
            return Err(TokenError::Config(
                "the call slot belongs to another token client".into(),
            ));
        }
        // A slot to a healthy destination must not carry a call to another one.
        if *slot.destination() != Destination::of(&url) {
            return Err(TokenError::Config(format!(
                "the call slot was reserved for {}, not {}",
                slot.destination(),
                Destination::of(&url)
            )));
        }
        let started = now();
        if started > slot.start_by {
            return Err(TokenError::SlotExpired { operation });
        }
        // Never past the slot's deadline, which a caller may have promised to others.
        let deadline = (started + self.settings.answer_limit).min(slot.deadline);
        let host = url.host_str().unwrap_or_default().to_owned();
        let result = self
            .send(operation, url, creds, form, ceiling, deadline)
            .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => {
                tracing::debug!(%operation, %host, elapsed_ms, "token endpoint answered")
            }
            Err(err) => tracing::debug!(
                %operation, %host, elapsed_ms, reason = err.reason(), error = %err,
                "token endpoint call failed"
            ),
        }
        drop(slot);
        result
    }

    async fn send(
        &self,
        operation: Operation,
        url: Url,
        creds: &ClientCredentials,
        form: String,
        ceiling: usize,
        deadline: Instant,
    ) -> Result<Answer, TokenError> {
        let deadline = tokio::time::Instant::from_std(deadline);
        if let Some(transport) = &self.transport {
            let request = transport::Request {
                url,
                authorization: wire::basic_auth(&creds.id, &creds.secret)
                    .to_str()
                    .unwrap_or_default()
                    .to_owned(),
                form,
            };
            return self
                .send_via(transport.post(request), operation, ceiling, deadline)
                .await;
        }
        let request = self
            .http
            .post(url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(AUTHORIZATION, wire::basic_auth(&creds.id, &creds.secret))
            .body(form)
            .send();
        // Connecting ends (connect_timeout) well before the deadline: running out here
        // means the request may have been sent.
        let mut response = match tokio::time::timeout_at(deadline, request).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(TokenError::from_reqwest(operation, e)),
            Err(_) => return Err(no_answer_in_time(operation, None)),
        };
        let status = response.status();
        if status.is_success() {
            let (body, end) = read_capped(&mut response, ceiling, deadline).await;
            return Ok(Answer { body, end });
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| wire::parse_retry_after(v, jiff::Timestamp::now()));
        // The body only serves to find an OAuth error code: any trouble reading it just
        // means there is none.
        let limit = ERROR_BODY_LIMIT.min(self.settings.max_response_bytes);
        let error_code = match read_capped(&mut response, limit + 1, deadline).await {
            (body, BodyEnd::Complete) if body.len() <= limit => OAuthErrorCode::from_body(&body),
            _ => None,
        };
        Err(TokenError::Status {
            operation,
            status: status.as_u16(),
            error_code,
            retry_after,
        })
    }
}

impl TokenClient {
    /// `send` over a [`transport::Transport`]: the same deadline and the same errors as
    /// over HTTP.
    async fn send_via(
        &self,
        answer: transport::Answer,
        operation: Operation,
        ceiling: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, TokenError> {
        let response = match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => return Err(no_answer_in_time(operation, None)),
            Ok(Err(transport::Failure::NotSent)) => {
                return Err(TokenError::Connect {
                    operation,
                    detail: "connection refused",
                });
            }
            Ok(Err(transport::Failure::MaybeSent)) => {
                return Err(TokenError::OutcomeUnknown {
                    operation,
                    detail: "the connection failed before the answer was complete",
                    refresh_token: None,
                });
            }
            Ok(Ok(response)) => response,
        };
        if (200..300).contains(&response.status) {
            let mut body = response.body;
            let end = match body.len() > ceiling {
                true => {
                    body.truncate(ceiling);
                    BodyEnd::Ceiling
                }
                false => BodyEnd::Complete,
            };
            return Ok(Answer { body, end });
        }
        let retry_after = response
            .retry_after
            .as_deref()
            .and_then(|v| wire::parse_retry_after(v, jiff::Timestamp::now()));
        let limit = ERROR_BODY_LIMIT.min(self.settings.max_response_bytes);
        let error_code = match response.body.len() <= limit {
            true => OAuthErrorCode::from_body(&response.body),
            false => None,
        };
        Err(TokenError::Status {
            operation,
            status: response.status,
            error_code,
            retry_after,
        })
    }
}

fn no_answer_in_time(operation: Operation, refresh_token: Option<SecretString>) -> TokenError {
    TokenError::OutcomeUnknown {
        operation,
        detail: "no answer came in time",
        refresh_token,
    }
}

/// Reads the body chunk by chunk, keeping at most `ceiling` bytes, until it ends, fails,
/// or `deadline` passes; what was read is kept in every case.
async fn read_capped(
    response: &mut reqwest::Response,
    ceiling: usize,
    deadline: tokio::time::Instant,
) -> (Vec<u8>, BodyEnd) {
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => return (body, BodyEnd::TimedOut),
            Ok(Err(e)) => return (body, BodyEnd::Failed(e)),
            Ok(Ok(None)) => return (body, BodyEnd::Complete),
            Ok(Ok(Some(chunk))) => {
                let room = ceiling - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, BodyEnd::Ceiling);
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// An error with its causes. Only for errors that carry no request data (a reqwest builder
/// error, before any URL or request exists).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests;
