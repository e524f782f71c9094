//! `/metrics` over HTTPS on a port of its own, for the holders of a bearer token the API
//! server accepts and allows `get /metrics` (see [`crate::metrics_auth`]). The certificate is
//! generated at start (self-signed) or read from `tls.crt`/`tls.key` in a directory, again
//! whenever they change.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::metrics_auth::{Gate, GateError, Review, Verdict};

/// Connections open at once. Prometheus keeps one open per target; the bound keeps a flood
/// of idle or slow connections from holding memory. When it is reached, a new connection
/// closes an unauthenticated one to make room (see [`Connections::admit`]); only when every
/// open connection is authenticated is the new one closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// Unauthenticated connections one source address may hold; its next one closes its oldest.
/// A client, or a pod, that never authenticates thus keeps at most this many of the
/// [`MAX_CONNECTIONS`], however fast it connects.
const MAX_UNAUTHENTICATED_PER_PEER: usize = 8;
/// A TLS handshake that takes longer ends the connection (a scraper's takes milliseconds).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// A request's headers that take longer end the connection; also how long an idle
/// keep-alive connection stays open (hyper's header timer runs while waiting for the next
/// request).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the certificate files are checked for a renewal (cert-manager rewrites the
/// mounted Secret well before the old certificate expires).
const CERT_CHECK_EVERY: Duration = Duration::from_secs(10);

/// The server's certificate and key: from `dir` (`tls.crt`, `tls.key`, as cert-manager and
/// `kubernetes.io/tls` Secrets name them), read again when they change, or generated for this
/// process.
pub fn tls_config(dir: Option<&Path>) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certified = match dir {
        Some(dir) => CertFiles::load(dir, &provider)?,
        None => {
            // Scrapers of a self-signed certificate skip verification (the ServiceMonitor's
            // insecureSkipVerify); the bearer token, not the certificate, proves who may read.
            let generated = rcgen::generate_simple_self_signed(vec![
                "eagle-eye-operator".to_owned(),
                "localhost".to_owned(),
            ])
            .context("generating the metrics server's certificate")?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                generated.signing_key.serialize_der(),
            ));
            CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider)?
        }
    };
    let resolver = CertResolver {
        files: dir.map(|d| d.to_owned()),
        provider: provider.clone(),
        check_every: CERT_CHECK_EVERY,
        state: Mutex::new(CertState {
            certified: Arc::new(certified),
            modified: dir.and_then(CertFiles::modified),
            checked: Instant::now(),
        }),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // The connection loop speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `tls.crt` and `tls.key` in a directory.
struct CertFiles;

impl CertFiles {
    fn load(dir: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
        let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let chain = CertificateDer::pem_file_iter(&crt)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading {}", crt.display()))?;
        anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", crt.display());
        let key = PrivateKeyDer::from_pem_file(&key)
            .with_context(|| format!("reading {}", key.display()))?;
        CertifiedKey::from_der(chain, key, provider)
            .context("the metrics server's certificate and key do not match")
    }

    /// The later modification time of the two files (through the symlinks a Secret volume
    /// swaps on update).
    fn modified(dir: &Path) -> Option<SystemTime> {
        let time = |f: &str| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        };
        time("tls.crt").max(time("tls.key"))
    }
}

/// Hands out the current certificate; with files, looks at most every `check_every` whether
/// they changed and loads them again (a pair that does not load keeps the old one).
#[derive(Debug)]
struct CertResolver {
    files: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    check_every: Duration,
    state: Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    certified: Arc<CertifiedKey>,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = &self.files
            && state.checked.elapsed() >= self.check_every
        {
            state.checked = Instant::now();
            let modified = CertFiles::modified(dir);
            if modified != state.modified {
                match CertFiles::load(dir, &self.provider) {
                    Ok(certified) => {
                        tracing::info!(dir = %dir.display(), "metrics server: loaded the renewed certificate");
                        state.certified = Arc::new(certified);
                        state.modified = modified;
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "metrics server: keeping the old certificate")
                    }
                }
            }
        }
        Some(state.certified.clone())
    }
}

struct Served<R> {
    gate: Gate<R>,
    metrics: Arc<Metrics>,
}

fn router<R: Review>(gate: Gate<R>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(guarded::<R>))
        .with_state(Arc::new(Served { gate, metrics }))
}

/// 401 without an accepted token, 403 when its owner may not `get /metrics`, 503 when the
/// API server cannot be asked now. A refused request's connection is closed: a client
/// without a good token cannot keep one of the [`MAX_CONNECTIONS`] for itself by reusing it;
/// a connection that served a `200` is authenticated and never closed to make room.
async fn guarded<R: Review>(State(s): State<Arc<Served<R>>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or_default();
    let verdict = if token.is_empty() {
        Ok(Verdict::Unauthenticated)
    } else {
        s.gate.check(token).await
    };
    let close = (header::CONNECTION, "close");
    match verdict {
        Ok(Verdict::Allowed) => crate::admin::metrics_response(&s.metrics).into_response(),
        Ok(Verdict::Unauthenticated) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer"), close],
            "a bearer token the Kubernetes API server accepts is required\n",
        )
            .into_response(),
        Ok(Verdict::Forbidden) => (
            StatusCode::FORBIDDEN,
            [close],
            "not allowed get on the non-resource URL /metrics (bind the metrics-reader ClusterRole)\n",
        )
            .into_response(),
        Err(e) => {
            if let GateError::Review(_) = e {
                tracing::warn!(error = %e, "cannot review a metrics reader's token");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5"), close],
                "cannot check the token now\n",
            )
                .into_response()
        }
    }
}

/// The open connections, oldest first, and which of them have been authenticated (served a
/// `200`: a request whose token was reviewed and allowed).
///
/// A connection that has not authenticated yet may be closed to make room for a new one:
/// whoever can reach the port (any pod, unless `networkPolicy.metricsFrom` says otherwise)
/// could otherwise hold every connection, without a token, and lock the scrapers out.
struct Connections {
    max: usize,
    per_peer: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next: u64,
    /// By admission order: the smallest id is the oldest.
    by_id: BTreeMap<u64, Conn>,
}

struct Conn {
    peer: IpAddr,
    authenticated: bool,
    /// Dropped (the entry removed) to close the connection.
    _close: oneshot::Sender<()>,
}

/// An admitted connection's place; forgotten when dropped.
struct Slot {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().by_id.remove(&self.id);
    }
}

impl Connections {
    fn new(max: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Connections {
            max,
            per_peer,
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer`, closing an unauthenticated one if a bound is reached:
    /// - `peer` already holds `per_peer` unauthenticated connections: its oldest;
    /// - `max` are open: the oldest unauthenticated one of the peer that holds the most
    ///   (the newcomer counted), so one that connects often pays for it, not a scraper that
    ///   opens one connection now and then;
    /// - every open connection is authenticated: none, and the newcomer is refused (`None`).
    ///
    /// The receiver resolves when the connection is to be closed to make room.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<(Slot, oneshot::Receiver<()>)> {
        let mut open = self.lock();
        let unauthenticated = || open.by_id.iter().filter(|(_, c)| !c.authenticated);
        let mut counts = HashMap::<IpAddr, usize>::new();
        for (_, c) in unauthenticated() {
            *counts.entry(c.peer).or_default() += 1;
        }
        let victim = if counts.get(&peer).copied().unwrap_or(0) >= self.per_peer {
            unauthenticated().find(|(_, c)| c.peer == peer)
        } else if open.by_id.len() >= self.max {
            *counts.entry(peer).or_default() += 1;
            let most = counts.values().copied().max().unwrap_or(0);
            // None: every open connection is authenticated, the newcomer is refused.
            Some(unauthenticated().find(|(_, c)| counts[&c.peer] == most)?)
        } else {
            None
        }
        .map(|(id, _)| *id);
        if let Some(id) = victim {
            tracing::debug!(%peer, "metrics server: closing an unauthenticated connection to make room");
            open.by_id.remove(&id);
        }
        let (close, closed) = oneshot::channel();
        let id = open.next;
        open.next += 1;
        open.by_id.insert(
            id,
            Conn {
                peer,
                authenticated: false,
                _close: close,
            },
        );
        drop(open);
        let slot = Slot {
            connections: self.clone(),
            id,
        };
        Some((slot, closed))
    }

    fn authenticated(&self, id: u64) {
        if let Some(c) = self.lock().by_id.get_mut(&id) {
            c.authenticated = true;
        }
    }
}

/// Binds `addr`; serving runs until the process exits.
pub async fn serve<R: Review>(
    addr: SocketAddr,
    tls: ServerConfig,
    gate: Gate<R>,
    metrics: Arc<Metrics>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let service = TowerToHyperService::new(router(gate, metrics));
    let connections = Connections::new(MAX_CONNECTIONS, MAX_UNAUTHENTICATED_PER_PEER);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some((slot, closed)) = connections.admit(peer.ip().to_canonical()) else {
                continue; // dropped: closed at once
            };
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                let (connections, id) = (slot.connections.clone(), slot.id);
                let serving = async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                            let (service, connections) = (service.clone(), connections.clone());
                            async move {
                                let response =
                                    hyper::service::Service::call(&service, request).await;
                                let response = response.unwrap_or_else(|never| match never {});
                                if response.status() == StatusCode::OK {
                                    connections.authenticated(id);
                                }
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let mut builder = http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT);
                    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                        tracing::debug!(error = %e, "metrics connection ended with an error");
                    }
                };
                // Closed to make room: dropping the connection closes its socket.
                tokio::select! {
                    _ = closed => {}
                    () = serving => {}
                }
                drop(slot);
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics_auth::Limits;

    /// `reader` may read, `stranger` may not, `down` cannot be checked, the rest are unknown.
    struct Fake;

    impl Review for Fake {
        async fn review(&self, token: &str) -> Result<Verdict, String> {
            match token {
                "reader" => Ok(Verdict::Allowed),
                "stranger" => Ok(Verdict::Forbidden),
                "down" => Err("unreachable".into()),
                _ => Ok(Verdict::Unauthenticated),
            }
        }
    }

    /// Status and body; a refusal must also close the connection.
    async fn https_get(addr: SocketAddr, token: Option<&str>) -> (u16, String) {
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let mut request = http.get(format!("https://{addr}/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let closes = response.headers().get(header::CONNECTION) == Some(&"close".parse().unwrap());
        assert_eq!(
            closes,
            status != 200,
            "Connection: close on a refusal only ({status})"
        );
        (status, response.text().await.unwrap_or_default())
    }

    #[tokio::test]
    async fn metrics_over_https_need_a_token_whose_owner_may_read_them() {
        let metrics = Arc::new(Metrics::default());
        metrics.set_leader(true);
        let gate = Gate::new(Fake, Limits::default());
        let at = SocketAddr::from(([127, 0, 0, 1], 0));
        let addr = serve(at, tls_config(None).unwrap(), gate, metrics)
            .await
            .unwrap();
        assert_eq!(https_get(addr, None).await.0, 401);
        assert_eq!(https_get(addr, Some("made-up")).await.0, 401);
        assert_eq!(https_get(addr, Some("stranger")).await.0, 403);
        assert_eq!(https_get(addr, Some("down")).await.0, 503);
        let (code, body) = https_get(addr, Some("reader")).await;
        assert_eq!(code, 200);
        assert!(body.contains("eagle_eye_leader 1"), "{body}");
    }

    #[tokio::test]
    async fn plain_http_on_the_metrics_port_gets_no_metrics() {
        let gate = Gate::new(Fake, Limits::default());
        let at = SocketAddr::from(([127, 0, 0, 1], 0));
        let addr = serve(at, tls_config(None).unwrap(), gate, Default::default())
            .await
            .unwrap();
        let plain = reqwest::get(format!("http://{addr}/metrics")).await;
        assert!(plain.is_err(), "{plain:?}");
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Whether the connection was told to close.
    fn is_closed(closed: &mut oneshot::Receiver<()>) -> bool {
        !matches!(closed.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    #[test]
    fn a_peer_that_never_authenticates_keeps_only_its_own_few_connections() {
        let connections = Connections::new(6, 2);
        let mut a: Vec<_> = (0..2).map(|_| connections.admit(ip(1)).unwrap()).collect();
        // Its third closes its first; another peer's are not touched.
        let mut b = connections.admit(ip(2)).unwrap();
        a.push(connections.admit(ip(1)).unwrap());
        assert!(is_closed(&mut a[0].1));
        assert!(!is_closed(&mut a[1].1) && !is_closed(&mut a[2].1));
        assert!(!is_closed(&mut b.1));
        drop(a.remove(0));
        assert_eq!(connections.lock().by_id.len(), 3);
    }

    #[test]
    fn a_full_server_closes_the_oldest_unauthenticated_connection_of_the_busiest_peer() {
        let connections = Connections::new(4, 8);
        let mut scraper = connections.admit(ip(1)).unwrap();
        let mut flood: Vec<_> = (0..3).map(|_| connections.admit(ip(2)).unwrap()).collect();
        // Full: a newcomer from a third peer closes the flood's oldest, not the scraper's
        // older connection.
        let _new = connections.admit(ip(3)).unwrap();
        assert!(is_closed(&mut flood[0].1));
        assert!(!is_closed(&mut scraper.1) && !is_closed(&mut flood[1].1));
        assert_eq!(connections.lock().by_id.len(), 4);
    }

    #[test]
    fn authenticated_connections_are_never_closed_to_make_room() {
        let connections = Connections::new(2, 8);
        let mut reader: Vec<_> = (0..2).map(|_| connections.admit(ip(1)).unwrap()).collect();
        connections.authenticated(reader[0].0.id);
        let _new = connections.admit(ip(2)).unwrap();
        assert!(!is_closed(&mut reader[0].1));
        assert!(is_closed(&mut reader[1].1));
        connections.authenticated(_new.0.id);
        // Every open connection authenticated: the newcomer is refused.
        assert!(connections.admit(ip(3)).is_none());
        assert!(!is_closed(&mut reader[0].1));
    }

    #[test]
    fn a_certificate_directory_without_its_files_is_refused() {
        let dir = std::env::temp_dir().join(format!("no-certs-{:08x}", rand::random::<u32>()));
        let refused = tls_config(Some(&dir)).unwrap_err();
        assert!(format!("{refused:#}").contains("tls.crt"), "{refused:#}");
    }

    /// Writes a new self-signed pair to `dir`; its certificate's DER.
    fn write_pair(dir: &Path) -> Vec<u8> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("tls.crt"), made.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), made.signing_key.serialize_pem()).unwrap();
        made.cert.der().to_vec()
    }

    /// The certificate the server at `addr` presents.
    async fn presented(addr: SocketAddr) -> Vec<u8> {
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .tls_info(true)
            .build()
            .unwrap();
        let response = http
            .get(format!("https://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        let info = response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .unwrap();
        info.peer_certificate().unwrap().to_vec()
    }

    #[tokio::test]
    async fn a_renewed_certificate_in_the_directory_is_served_without_a_restart() {
        let dir = std::env::temp_dir().join(format!("certs-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = write_pair(&dir);
        let mut config = tls_config(Some(&dir)).unwrap();
        // Checked on every handshake here, not every 10 s.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        config.cert_resolver = Arc::new(CertResolver {
            files: Some(dir.clone()),
            provider: provider.clone(),
            check_every: Duration::ZERO,
            state: Mutex::new(CertState {
                certified: Arc::new(CertFiles::load(&dir, &provider).unwrap()),
                modified: CertFiles::modified(&dir),
                checked: Instant::now(),
            }),
        });
        let gate = Gate::new(Fake, Limits::default());
        let at = SocketAddr::from(([127, 0, 0, 1], 0));
        let addr = serve(at, config, gate, Default::default()).await.unwrap();
        assert_eq!(presented(addr).await, first);

        // Modification times can be coarse: make the renewal's visibly later.
        std::thread::sleep(Duration::from_millis(20));
        let renewed = write_pair(&dir);
        let later = SystemTime::now() + Duration::from_secs(2);
        for f in ["tls.crt", "tls.key"] {
            let file = std::fs::File::options()
                .write(true)
                .open(dir.join(f))
                .unwrap();
            file.set_modified(later).unwrap();
        }
        assert_eq!(presented(addr).await, renewed);

        // A half-written renewal (a certificate whose key is not there yet) keeps the last
        // good pair.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("tls.crt"), other.cert.pem()).unwrap();
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join("tls.crt"))
            .unwrap();
        file.set_modified(later + Duration::from_secs(2)).unwrap();
        assert_eq!(presented(addr).await, renewed);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
