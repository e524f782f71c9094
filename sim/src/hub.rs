//! Where every request of every simulated process waits: the kube API requests (through a
//! `tower::Service` under a real `kube::Client`) and the token requests (through the token
//! client's transport seam). Nothing is answered here; the driver picks, by seed, which
//! pending request happens next and how.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use eagle_eye_operator::token::transport;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;

pub type ApiReply = Result<http::Response<Full<Bytes>>, String>;

pub struct ApiRequest {
    pub proc: usize,
    pub incarnation: u32,
    pub method: http::Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Bytes,
    pub reply: oneshot::Sender<ApiReply>,
}

pub struct TokenRequest {
    pub proc: usize,
    pub incarnation: u32,
    pub request: transport::Request,
    pub reply: oneshot::Sender<Result<transport::Response, transport::Failure>>,
    /// When it reached the endpoint (the client gives up `answer_limit` later).
    pub at: tokio::time::Instant,
    /// The API's resourceVersion when it was sent.
    pub sent_rv: u64,
}

#[derive(Default)]
pub struct Pending {
    pub api: Vec<ApiRequest>,
    pub token: Vec<TokenRequest>,
    /// The API's resourceVersion (`Api::shared_rv`).
    pub api_rv: Arc<std::sync::atomic::AtomicU64>,
}

pub type Hub = Arc<Mutex<Pending>>;

pub fn lock(hub: &Hub) -> std::sync::MutexGuard<'_, Pending> {
    hub.lock().unwrap_or_else(|e| e.into_inner())
}

/// One process's way to the simulated API server.
#[derive(Clone)]
pub struct ApiService {
    pub hub: Hub,
    pub proc: usize,
    pub incarnation: u32,
}

impl tower::Service<http::Request<kube::client::Body>> for ApiService {
    type Response = http::Response<Full<Bytes>>;
    type Error = String;
    type Future = BoxFuture<'static, Result<Self::Response, String>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            let (reply, answer) = oneshot::channel();
            lock(&me.hub).api.push(ApiRequest {
                proc: me.proc,
                incarnation: me.incarnation,
                method: parts.method,
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                body,
                reply,
            });
            answer
                .await
                .unwrap_or_else(|_| Err("connection reset".to_owned()))
        })
    }
}

/// One process's way to the simulated token endpoint.
#[derive(Debug)]
pub struct TokenTransport {
    pub hub: Hub,
    pub proc: usize,
    pub incarnation: u32,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} api, {} token", self.api.len(), self.token.len())
    }
}

impl transport::Transport for TokenTransport {
    fn post(&self, request: transport::Request) -> transport::Answer {
        let (reply, answer) = oneshot::channel();
        let mut pending = lock(&self.hub);
        let sent_rv = pending.api_rv.load(std::sync::atomic::Ordering::Relaxed);
        pending.token.push(TokenRequest {
            proc: self.proc,
            incarnation: self.incarnation,
            request,
            reply,
            at: tokio::time::Instant::now(),
            sent_rv,
        });
        drop(pending);
        Box::pin(async move { answer.await.unwrap_or(Err(transport::Failure::MaybeSent)) })
    }
}
