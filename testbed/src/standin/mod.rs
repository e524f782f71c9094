//! A faithful fake of the Eagle Eye auth server (auth.eagleeyenetworks.com) for integration
//! tests, the local sandbox and benchmarks; never used by the operator's production path.
//! It follows the vendor's "Logging in" guide, and a Spring Authorization Server where the
//! guide is silent, and can inject faults into the token endpoint.

mod faults;
mod http;
mod ledger;
mod mint;
mod oauth_error;
mod request;
mod server;
mod tls;
mod types;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

pub use faults::{Fault, Gate};
pub use types::{ApiCall, ClientRegistration, Counters, Grant, TokenRequest};

use faults::FaultQueue;
use ledger::{Ledger, Lifetimes, Standing};

const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Lifetimes the stand-in enforces, and whether it speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandInConfig {
    /// Lifetime of a fresh access token, sent as `expires_in` (vendor: at most 12 hours).
    pub access_ttl: Duration,
    /// A rotating refresh token dies this long after it was issued (vendor: 14 days).
    pub idle_ttl: Duration,
    /// A rotating chain dies this long after its Phase 1 login (vendor: 90 days).
    pub chain_ttl: Duration,
    /// An authorization code must be exchanged within this (vendor: 5 minutes).
    pub code_ttl: Duration,
    /// HTTPS with a per-instance CA (see [`StandIn::ca_pem`]) when true, plain HTTP otherwise.
    pub tls: bool,
}

impl Default for StandInConfig {
    fn default() -> Self {
        Self {
            access_ttl: 12 * HOUR,
            idle_ttl: 14 * DAY,
            chain_ttl: 90 * DAY,
            code_ttl: Duration::from_secs(5 * 60),
            tls: true,
        }
    }
}

/// State shared by the handle and the request handlers.
struct Shared {
    ledger: Mutex<Ledger>,
    faults: Mutex<FaultQueue>,
    /// Every token request so far, in order of arrival.
    token_requests: Mutex<Vec<TokenRequest>>,
    /// How far `advance_clock` has moved the stand-in's notion of now.
    clock_offset: Mutex<Duration>,
    /// Every call to the API so far, in order.
    api_calls: Mutex<Vec<ApiCall>>,
    /// The address it listens on, named as the API host in token responses.
    host: String,
    port: u16,
}

/// A panicking test thread must not take every later request down with it; the ledger's
/// updates are small enough that a half-done one is still usable test state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    fn now(&self) -> SystemTime {
        let offset = *lock(&self.clock_offset);
        // Invariant: `advance_clock` refuses offsets that overflow `SystemTime` now, and the
        // wall clock will not run far enough past that check to overflow later.
        SystemTime::now()
            .checked_add(offset)
            .expect("stand-in clock offset fits SystemTime")
    }

    /// Counts and records a token request and takes the fault it should suffer, if any.
    /// Returns the request's place in the record, for [`Shared::answered`].
    fn begin_token_request(&self) -> (usize, Option<Fault>) {
        let arrived = Instant::now();
        let arrived_at = SystemTime::now();
        self.ledger().counters.token_requests += 1;
        let fault = lock(&self.faults).take();
        let mut requests = lock(&self.token_requests);
        requests.push(TokenRequest {
            arrived,
            arrived_at,
            fault: fault.clone(),
            status: None,
        });
        (requests.len() - 1, fault)
    }

    /// Records the status the `index`th token request was answered with.
    fn answered(&self, index: usize, status: u16) {
        if let Some(request) = lock(&self.token_requests).get_mut(index) {
            request.status = Some(status);
        }
    }
}

/// A running stand-in on `127.0.0.1`. Shuts down on drop or with [`StandIn::shutdown`].
pub struct StandIn {
    shared: Arc<Shared>,
    url: Url,
    ca_pem: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Binds `127.0.0.1:0` and starts serving. Must be called inside a Tokio runtime.
    pub async fn start(config: StandInConfig) -> io::Result<StandIn> {
        Self::start_on(config, Ipv4Addr::LOCALHOST).await
    }

    /// Binds `ip` on a free port, e.g. a node's host address that pods reach, and names it
    /// as the API host; its certificate covers it.
    pub async fn start_on(config: StandInConfig, ip: Ipv4Addr) -> io::Result<StandIn> {
        let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await?;
        let port = listener.local_addr()?.port();
        let tls = if config.tls {
            Some(tls::generate(ip)?)
        } else {
            None
        };
        let scheme = if config.tls { "https" } else { "http" };
        let url = Url::parse(&format!("{scheme}://{ip}:{port}/")).map_err(io::Error::other)?;
        let lifetimes = Lifetimes {
            access: config.access_ttl,
            idle: config.idle_ttl,
            chain: config.chain_ttl,
            code: config.code_ttl,
        };
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger::new(lifetimes)),
            faults: Mutex::new(FaultQueue::default()),
            token_requests: Mutex::new(Vec::new()),
            clock_offset: Mutex::new(Duration::ZERO),
            api_calls: Mutex::new(Vec::new()),
            host: ip.to_string(),
            port,
        });
        let (ca_pem, acceptor) = match tls {
            Some(tls) => (Some(tls.ca_pem), Some(tls.acceptor)),
            None => (None, None),
        };
        let (stop, stopped) = oneshot::channel();
        let router = http::router(Arc::clone(&shared));
        let task = tokio::spawn(server::accept_loop(listener, acceptor, router, stopped));
        tracing::debug!(%url, "stand-in started");
        Ok(StandIn {
            shared,
            url,
            ca_pem,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The auth base URL, e.g. `https://127.0.0.1:PORT/`; endpoints are `oauth2/token` etc.
    pub fn url(&self) -> Url {
        self.url.clone()
    }

    /// PEM of the CA that signed the server certificate; `None` without TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Adds (or replaces) a client, as the developer portal and support would.
    pub fn register_client(&self, client: ClientRegistration) {
        self.shared.ledger().register(client);
    }

    /// Phase 1 without the browser: starts a chain as a code exchange would. Not counted in
    /// `code_exchanges`, which counts HTTP exchanges.
    ///
    /// # Panics
    /// If `client_id` was not registered: a mistake in the test.
    pub fn login(&self, client_id: &str) -> Grant {
        let now = self.shared.now();
        let grant = self.shared.ledger().login(client_id, now);
        grant.unwrap_or_else(|| panic!("stand-in login for unregistered client {client_id:?}"))
    }

    /// Makes the next `times` requests to `/oauth2/token` suffer `fault`, after any faults
    /// already queued.
    pub fn inject(&self, fault: Fault, times: usize) {
        lock(&self.shared.faults).push(fault, times);
    }

    pub fn counters(&self) -> Counters {
        self.shared.ledger().counters
    }

    /// Every request to `/oauth2/token` so far, in order of arrival, with when it came and
    /// how it was answered.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.token_requests).clone()
    }

    /// Every call to the API so far, in order, with whether its token was accepted.
    pub fn api_calls(&self) -> Vec<ApiCall> {
        lock(&self.shared.api_calls).clone()
    }

    /// Whether a refresh grant with this token would succeed now.
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        let now = self.shared.now();
        self.shared.ledger().standing(refresh_token, now) == Standing::Live
    }

    /// Whether this access token would be accepted by the API now.
    pub fn access_token_is_live(&self, access_token: &str) -> bool {
        let now = self.shared.now();
        self.shared
            .ledger()
            .access_remaining(access_token, now)
            .is_some()
    }

    /// Moves the stand-in's clock forward; all expiry decisions use it.
    ///
    /// # Panics
    /// If the clock would pass what `SystemTime` can represent.
    pub fn advance_clock(&self, by: Duration) {
        let mut offset = lock(&self.shared.clock_offset);
        let moved = offset
            .checked_add(by)
            .filter(|o| SystemTime::now().checked_add(*o).is_some());
        *offset = moved.expect("advance_clock beyond what SystemTime can represent");
    }

    /// Ends the chain this refresh token belongs to, with its current access token, as the
    /// 90-day limit or a revocation would.
    pub fn end_chain(&self, refresh_token: &str) {
        self.shared.ledger().end_chain(refresh_token);
    }

    /// Stops accepting, ends every open connection (hung requests included) and waits for that.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            // An error means the loop has already ended.
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::debug!(%error, "stand-in accept loop ended abnormally");
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        // Aborting the loop drops its `JoinSet`, which aborts every connection task.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stand_in_with_login() -> (StandIn, Grant) {
        let si = StandIn::start(StandInConfig {
            tls: false,
            ..Default::default()
        })
        .await
        .unwrap();
        si.register_client(ClientRegistration {
            id: "c".into(),
            secret: "s".into(),
            redirect_uris: vec![],
            rotating: false,
        });
        let grant = si.login("c");
        (si, grant)
    }

    async fn refresh(si: &StandIn, grant: &Grant) -> u16 {
        reqwest::Client::new()
            .post(si.url().join("oauth2/token").unwrap())
            .basic_auth("c", Some("s"))
            .header("accept", "application/json")
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &grant.refresh_token),
            ])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn token_requests_are_recorded_in_order_with_their_time_fault_and_status() {
        let (si, grant) = stand_in_with_login().await;
        let rate_limited = Fault::TooManyRequests {
            retry_after_secs: 7,
        };
        si.inject(rate_limited.clone(), 1);
        si.inject(Fault::Status(503), 1);
        let before = Instant::now();
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(refresh(&si, &grant).await);
        }
        let log = si.token_requests();
        assert_eq!(statuses, [429, 503, 200]);
        let recorded: Vec<_> = log.iter().map(|r| (r.fault.clone(), r.status)).collect();
        assert_eq!(
            recorded,
            [
                (Some(rate_limited), Some(429)),
                (Some(Fault::Status(503)), Some(503)),
                (None, Some(200)),
            ]
        );
        assert!(before <= log[0].arrived);
        assert!(log.windows(2).all(|w| w[0].arrived <= w[1].arrived));
        assert_eq!(si.counters().token_requests, 3);
    }

    #[tokio::test]
    async fn a_held_request_is_recorded_on_arrival_and_its_status_once_answered() {
        let (si, grant) = stand_in_with_login().await;
        let gate = Gate::new();
        si.inject(Fault::Hold(gate.clone()), 1);
        let answer = tokio::spawn({
            let url = si.url();
            let token = grant.refresh_token.clone();
            async move {
                reqwest::Client::new()
                    .post(url.join("oauth2/token").unwrap())
                    .basic_auth("c", Some("s"))
                    .header("accept", "application/json")
                    .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        });
        let arrived = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(r) = si.token_requests().pop() {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the held request arrives");
        assert_eq!(arrived.status, None, "not answered while held");
        gate.open();
        assert_eq!(answer.await.unwrap(), 200);
        assert_eq!(si.token_requests()[0].status, Some(200));
    }
}
