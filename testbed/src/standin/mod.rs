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
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

pub use faults::{Fault, Gate};
pub use types::{ClientRegistration, Counters, Grant};

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
    /// How far `advance_clock` has moved the stand-in's notion of now.
    clock_offset: Mutex<Duration>,
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

    /// Counts a token request and takes the fault it should suffer, if any.
    fn begin_token_request(&self) -> Option<Fault> {
        self.ledger().counters.token_requests += 1;
        lock(&self.faults).take()
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
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let port = listener.local_addr()?.port();
        let tls = if config.tls {
            Some(tls::generate()?)
        } else {
            None
        };
        let scheme = if config.tls { "https" } else { "http" };
        let url = Url::parse(&format!("{scheme}://127.0.0.1:{port}/")).map_err(io::Error::other)?;
        let lifetimes = Lifetimes {
            access: config.access_ttl,
            idle: config.idle_ttl,
            chain: config.chain_ttl,
            code: config.code_ttl,
        };
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger::new(lifetimes)),
            faults: Mutex::new(FaultQueue::default()),
            clock_offset: Mutex::new(Duration::ZERO),
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
