//! `/metrics` over HTTPS on a port of its own, for the holders of a bearer token the API
//! server accepts and allows `get /metrics` (see [`crate::metrics_auth`]). The certificate is
//! generated at start (self-signed) or read from `tls.crt`/`tls.key` in a directory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::metrics_auth::{Gate, GateError, Review, Verdict};

/// Connections served at once; more are closed on accept. Prometheus keeps one open per
/// target; the bound keeps a flood of idle or slow connections from holding memory.
const MAX_CONNECTIONS: usize = 64;
/// A TLS handshake or a request's headers that take longer end the connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's certificate and key: from `dir` (`tls.crt`, `tls.key`, as cert-manager and
/// `kubernetes.io/tls` Secrets name them), or generated for this process.
pub fn tls_config(dir: Option<&Path>) -> anyhow::Result<ServerConfig> {
    let (chain, key) = match dir {
        Some(dir) => {
            let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
            let chain = CertificateDer::pem_file_iter(&crt)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading {}", crt.display()))?;
            anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", crt.display());
            let key = PrivateKeyDer::from_pem_file(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            (chain, key)
        }
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
            (vec![generated.cert.der().clone()], key)
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the metrics server's certificate and key do not match")?;
    // The connection loop speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
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
/// without a good token cannot keep one of the [`MAX_CONNECTIONS`] for itself by reusing it.
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
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                continue; // dropped: closed at once
            };
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        let service = service.clone();
                        async move {
                            let response = hyper::service::Service::call(&service, request).await;
                            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                        }
                    });
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HANDSHAKE_TIMEOUT);
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
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

    #[test]
    fn a_certificate_directory_without_its_files_is_refused() {
        let dir = std::env::temp_dir().join(format!("no-certs-{:08x}", rand::random::<u32>()));
        let refused = tls_config(Some(&dir)).unwrap_err();
        assert!(format!("{refused:#}").contains("tls.crt"), "{refused:#}");
    }

    #[test]
    fn a_certificate_directory_with_tls_crt_and_tls_key_is_served() {
        let dir = std::env::temp_dir().join(format!("certs-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("tls.crt"), made.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), made.signing_key.serialize_pem()).unwrap();
        tls_config(Some(&dir)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
