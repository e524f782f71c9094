//! The admin server: `/healthz` (the process serves) and `/readyz` (it reached the API
//! server and, when leading, its caches are synced) for the kubelet's probes, plain HTTP with
//! nothing secret in them. `/metrics` is served here only with `--metrics-insecure` (on
//! loopback, for local development); otherwise by [`crate::metrics_server`], authenticated.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The probes, and `/metrics` without authentication when `open_metrics` is given.
pub fn router(health: Health, open_metrics: Option<Arc<Metrics>>) -> Router {
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    match open_metrics {
        Some(metrics) => probes.route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics_response(&metrics) }
            }),
        ),
        None => probes,
    }
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// The OpenMetrics page, for whichever server was allowed to serve it.
pub fn metrics_response(metrics: &Metrics) -> impl IntoResponse + use<> {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// Binds the admin port; serving runs until the process exits.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    open_metrics: Option<Arc<Metrics>>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(health, open_metrics)).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn status(router: Router, path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).unwrap();
        router.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn the_admin_port_serves_probes_but_not_metrics_by_default() {
        let health = Health::default();
        let r = router(health.clone(), None);
        assert_eq!(status(r.clone(), "/healthz").await, StatusCode::OK);
        assert_eq!(
            status(r.clone(), "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(status(r.clone(), "/readyz").await, StatusCode::OK);
        assert_eq!(status(r, "/metrics").await, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn metrics_insecure_serves_metrics_on_the_admin_port() {
        let r = router(Health::default(), Some(Arc::new(Metrics::default())));
        assert_eq!(status(r, "/metrics").await, StatusCode::OK);
    }
}
