//! A way for token requests to travel other than HTTP: the deterministic simulator
//! (`sim/`) answers them in-process, on its own schedule, so that the real client code
//! (deadlines, error classes, body checks) runs unchanged above it. Production never sets
//! one.

use std::future::Future;
use std::pin::Pin;

use url::Url;

/// A token request as it would go on the wire.
#[derive(Debug)]
pub struct Request {
    pub url: Url,
    /// The `Authorization: Basic …` value.
    pub authorization: String,
    /// The form body.
    pub form: String,
}

/// A complete answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// A request that got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It never reached the server (refused, connect failed).
    NotSent,
    /// It may have reached the server: the connection broke before the answer was complete.
    MaybeSent,
}

pub type Answer = Pin<Box<dyn Future<Output = Result<Response, Failure>> + Send>>;

/// Carries token requests. The client still bounds each with its deadline: an answer that
/// does not come in time is an unknown outcome, as over HTTP.
pub trait Transport: Send + Sync + std::fmt::Debug {
    fn post(&self, request: Request) -> Answer;
}
