//! Faults a test can inject into the token endpoint, the queue that hands them out, and the
//! responses they produce. A faulted request is answered here, before the ledger sees it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Misbehaviour of the token endpoint, for the next requests to `/oauth2/token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// This status (e.g. 500, 502, 503) with a small plain-text body. A code outside 100..=999
    /// becomes 500.
    Status(u16),
    /// 429 with `Retry-After: N` and the vendor's resource-API error body.
    TooManyRequests { retry_after_secs: u64 },
    /// 200 with an HTML page, as a captive portal or misrouted proxy would answer.
    NonJson,
    /// 200 with a JSON-looking body of exactly this many bytes.
    Oversized { bytes: usize },
    /// No answer until the stand-in shuts down.
    Hang,
    /// The connection is closed once the request is read; no response byte is written.
    DropConnection,
    /// A normal answer, after this delay.
    Delay(Duration),
    /// A normal answer, once the test opens the gate: for lining a request up with
    /// something else the test does, however long that takes.
    Hold(Gate),
    /// The request is processed (a refresh rotates the token) but the answer names another
    /// API host than the stand-in, as a spoofed or misrouted response would.
    ForeignApiHost,
    /// The request is processed (a refresh rotates the token) and the normal answer gets an
    /// extra `padding` member that makes it this many bytes long (never shorter than the
    /// normal answer plus the empty member), as an appending proxy or a server bug might.
    Padded { bytes: usize },
    /// The request is processed (a refresh rotates the token) and the normal answer gets an
    /// extra member holding bytes that are not UTF-8.
    InvalidUtf8,
}

/// Holds requests faulted with [`Fault::Hold`] until opened.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(tokio::sync::Semaphore::new(0)))
    }

    /// Lets every held request through, now and later.
    pub fn open(&self) {
        self.0.close();
    }

    pub(super) async fn pass(&self) {
        // A closed semaphore refuses the permit at once: that is the open gate.
        let _ = self.0.acquire().await;
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Gate) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Gate {}

/// Faults waiting to be applied, in the order they were injected.
#[derive(Debug, Default)]
pub struct FaultQueue {
    pending: VecDeque<(Fault, usize)>,
}

impl FaultQueue {
    /// Queues `fault` for `times` requests after those already queued.
    pub fn push(&mut self, fault: Fault, times: usize) {
        if times > 0 {
            self.pending.push_back((fault, times));
        }
    }

    /// The fault for the request arriving now, if any.
    pub fn take(&mut self) -> Option<Fault> {
        let (fault, left) = self.pending.front_mut()?;
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            self.pending.pop_front();
        }
        Some(fault)
    }
}

/// What the token endpoint does about a fault.
#[derive(Debug)]
pub enum Action {
    /// Answer this instead of processing the request.
    Respond(Response),
    /// Never answer; the connection task is ended when the stand-in shuts down.
    Hang,
    /// Close the connection without writing anything.
    Drop,
    /// Wait, then process the request normally.
    Delay(Duration),
    /// Wait for the gate, then process the request normally.
    Hold(Gate),
    /// Process the request, but answer with a foreign `httpsBaseUrl.hostname`.
    ForeignApiHost,
    /// Process the request, then alter the bytes of a success answer.
    Mangle(Mangle),
}

/// How a success answer's body is altered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mangle {
    /// An extra `"padding":"xxx…"` member, to reach this many bytes.
    PadTo(usize),
    /// An extra member whose value holds bytes that are not UTF-8.
    InvalidUtf8,
}

impl Mangle {
    /// `body` is a JSON object; the extra member goes last.
    pub fn apply(self, body: Vec<u8>) -> Vec<u8> {
        let mut out = body;
        // Drop the closing brace (and anything after it) to append one more member.
        let end = out.iter().rposition(|&b| b == b'}').unwrap_or(out.len());
        out.truncate(end);
        match self {
            Mangle::PadTo(bytes) => {
                const HEAD: &[u8] = b",\"padding\":\"";
                const TAIL: &[u8] = b"\"}";
                let pad = bytes.saturating_sub(out.len() + HEAD.len() + TAIL.len());
                out.reserve(HEAD.len() + pad + TAIL.len());
                out.extend_from_slice(HEAD);
                out.resize(out.len() + pad, b'x');
                out.extend_from_slice(TAIL);
            }
            Mangle::InvalidUtf8 => out.extend_from_slice(b",\"note\":\"\xc3\x28\xff\xfe\"}"),
        }
        out
    }
}

/// How `fault` plays out.
pub fn action(fault: Fault) -> Action {
    let response = match fault {
        Fault::Hang => return Action::Hang,
        Fault::DropConnection => return Action::Drop,
        Fault::Delay(delay) => return Action::Delay(delay),
        Fault::Hold(gate) => return Action::Hold(gate),
        Fault::ForeignApiHost => return Action::ForeignApiHost,
        Fault::Padded { bytes } => return Action::Mangle(Mangle::PadTo(bytes)),
        Fault::InvalidUtf8 => return Action::Mangle(Mangle::InvalidUtf8),
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = format!("{status} (fault injected by the stand-in)\n");
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                body,
            )
                .into_response()
        }
        Fault::TooManyRequests { retry_after_secs } => {
            let body = serde_json::json!({
                "code": 429,
                "status": "tooManyRequests",
                "message": "Too many requests, retry later",
            });
            let headers = [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::RETRY_AFTER, retry_after_secs.to_string()),
            ];
            (StatusCode::TOO_MANY_REQUESTS, headers, body.to_string()).into_response()
        }
        Fault::NonJson => {
            let body = "<!DOCTYPE html><html><head><title>Maintenance</title></head>\
                        <body><h1>We'll be back soon</h1></body></html>\n";
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                body,
            )
                .into_response()
        }
        Fault::Oversized { bytes } => {
            let body = Body::from(oversized_body(bytes));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
    };
    Action::Respond(response)
}

/// `{"access_token":"AAAA…"}` cut or padded to exactly `bytes` bytes.
fn oversized_body(bytes: usize) -> Vec<u8> {
    const HEAD: &[u8] = b"{\"access_token\":\"";
    const TAIL: &[u8] = b"\"}";
    let mut body = Vec::with_capacity(bytes.max(HEAD.len() + TAIL.len()));
    body.extend_from_slice(HEAD);
    body.resize(bytes.saturating_sub(TAIL.len()).max(HEAD.len()), b'A');
    body.extend_from_slice(TAIL);
    body.truncate(bytes);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_hands_out_each_fault_the_given_number_of_times_in_order() {
        let mut queue = FaultQueue::default();
        queue.push(Fault::NonJson, 2);
        queue.push(Fault::Hang, 0);
        queue.push(Fault::Status(502), 1);
        assert_eq!(queue.take(), Some(Fault::NonJson));
        assert_eq!(queue.take(), Some(Fault::NonJson));
        assert_eq!(queue.take(), Some(Fault::Status(502)));
        assert_eq!(queue.take(), None);
    }

    #[test]
    fn oversized_body_has_exactly_the_requested_length() {
        for n in [0, 1, 5, 19, 20, 1000, 70_000] {
            assert_eq!(oversized_body(n).len(), n);
        }
        assert!(oversized_body(100).starts_with(b"{\"access_token\":\"AAA"));
        assert!(oversized_body(100).ends_with(b"A\"}"));
    }

    #[test]
    fn padding_reaches_the_requested_length_and_keeps_the_members() {
        let body = br#"{"refresh_token":"rt","scope":"vms.all"}"#.to_vec();
        for n in [0, 10, body.len() + 14, 100, 70_000] {
            let padded = Mangle::PadTo(n).apply(body.clone());
            assert_eq!(padded.len(), n.max(body.len() + 13), "{n}");
            let value: serde_json::Value = serde_json::from_slice(&padded).unwrap();
            assert_eq!(value["refresh_token"], "rt");
        }
    }

    #[test]
    fn invalid_utf8_keeps_the_members_before_it() {
        let body = br#"{"refresh_token":"rt"}"#.to_vec();
        let mangled = Mangle::InvalidUtf8.apply(body);
        assert!(std::str::from_utf8(&mangled).is_err());
        assert!(mangled.starts_with(br#"{"refresh_token":"rt","note":""#));
        assert!(mangled.ends_with(b"\"}"));
    }

    #[test]
    fn invalid_status_codes_become_500() {
        let Action::Respond(response) = action(Fault::Status(42)) else {
            panic!("a status fault answers at once");
        };
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
