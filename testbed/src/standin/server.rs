//! The accept loop. Hand-written over hyper rather than `axum::serve` because a fault must be
//! able to close a connection without writing a byte, and because it also terminates TLS.
//! Every connection is a task in one `JoinSet`, so shutting down ends hung requests too.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Put into each request's extensions: notifying it closes the connection the request came on,
/// with nothing written.
#[derive(Clone, Debug)]
pub struct ConnectionKill(Arc<Notify>);

impl ConnectionKill {
    pub fn fire(&self) {
        // `notify_one` keeps a permit if the connection task is not waiting yet.
        self.0.notify_one();
    }
}

/// Accepts connections until `stop` fires or its sender is dropped, then ends them all.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    connections.spawn(connection(tcp, tls.clone(), router.clone()));
                }
                // Per-connection failures (a reset before accept, fd exhaustion) must not stop
                // the stand-in; the next accept tries again.
                Err(error) => tracing::debug!(%error, "stand-in accept failed"),
            },
            // Reap finished connections so the set does not grow for the stand-in's lifetime.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn connection(tcp: TcpStream, tls: Option<TlsAcceptor>, router: Router) {
    match tls {
        None => serve(tcp, router).await,
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(stream) => serve(stream, router).await,
            Err(error) => tracing::debug!(%error, "stand-in TLS handshake failed"),
        },
    }
}

async fn serve<I>(io: I, router: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = ConnectionKill(Arc::new(Notify::new()));
    let per_request = kill.clone();
    let router = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(per_request.clone());
        let router = router.clone();
        async move {
            let response = hyper::service::Service::call(&router, request).await;
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = served => {
            if let Err(error) = result {
                tracing::debug!(%error, "stand-in connection ended with an error");
            }
        }
        // Dropping the connection future closes the socket with no response written.
        () = kill.0.notified() => {}
    }
}
