//! Receiving the login answer: a one-shot HTTP listener on the loopback redirect URI that
//! shows the person a plain page, or (headless) the redirected address pasted on stdin.
//! Request URIs carry the code, so nothing here logs them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, REFERRER_POLICY};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use tokio::io::AsyncBufReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use super::error::AuthorizeError;
use super::redirect::{CallbackError, check_callback, pasted_query};

/// How long a browser connection may stay open (a preconnect that never sends anything).
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);
/// How long to let the browser finish reading the last page once the answer is in.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

type Outcome = Result<SecretString, CallbackError>;

/// The bound listener: binding comes first so that a busy port fails before the person
/// opens the browser.
pub struct Listener {
    tcp: TcpListener,
    addr: SocketAddr,
}

/// The accept loop after the answer: call [`Drain::finish`] before exiting so that the
/// browser gets its page.
pub struct Drain {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drain {
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(DRAIN_LIMIT * 2, &mut self.task).await;
        self.task.abort();
    }
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> Result<Listener, AuthorizeError> {
        match TcpListener::bind(addr).await {
            Ok(tcp) => Ok(Listener { tcp, addr }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Err(AuthorizeError::PortInUse { addr })
            }
            Err(source) => Err(AuthorizeError::Listen { addr, source }),
        }
    }

    /// Serves requests until one on `path` carries a decisive answer (a code with our state,
    /// or an error), or `limit` passes. Other paths (a browser's `/favicon.ico`) get a 404.
    pub async fn wait(
        self,
        path: &str,
        state: &str,
        limit: Duration,
        redirect_uri: &str,
    ) -> (Result<SecretString, AuthorizeError>, Drain) {
        let (tx, mut rx) = mpsc::channel::<Outcome>(1);
        let (stop, stopped) = oneshot::channel();
        let shared = Arc::new(Expecting {
            path: path.to_owned(),
            state: state.to_owned(),
            answered: Mutex::new(false),
            tx,
        });
        let task = tokio::spawn(accept_loop(self.tcp, shared, stopped));
        let drain = Drain {
            stop: Some(stop),
            task,
        };
        let outcome = match tokio::time::timeout(limit, rx.recv()).await {
            Ok(Some(outcome)) => outcome.map_err(AuthorizeError::from),
            Ok(None) => Err(AuthorizeError::Listen {
                addr: self.addr,
                source: std::io::Error::other("the listener stopped"),
            }),
            Err(_) => Err(AuthorizeError::NoAnswer {
                redirect_uri: redirect_uri.to_owned(),
                waited: humanize(limit),
            }),
        };
        (outcome, drain)
    }
}

struct Expecting {
    path: String,
    state: String,
    /// Only the first decisive answer counts; later ones are told so.
    answered: Mutex<bool>,
    tx: mpsc::Sender<Outcome>,
}

async fn accept_loop(tcp: TcpListener, shared: Arc<Expecting>, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = tcp.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(answer(&shared, &req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
                });
            }
        }
    }
    drop(tcp);
    let _ = tokio::time::timeout(DRAIN_LIMIT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn answer(shared: &Expecting, req: &Request<Incoming>) -> Response<String> {
    if req.uri().path() != shared.path {
        return page(
            StatusCode::NOT_FOUND,
            "Not here",
            "This address is not where the Eagle Eye login answer arrives.",
        );
    }
    let query = req.uri().query().unwrap_or_default();
    if !carries_an_answer(query) {
        // Someone opened the redirect URI by hand, or a browser prefetched it.
        return page(
            StatusCode::NOT_FOUND,
            "Waiting for the login",
            "This address receives the Eagle Eye login answer; open the URL the terminal shows.",
        );
    }
    let outcome = check_callback(query, &shared.state);
    if matches!(outcome, Err(CallbackError::StateMismatch)) {
        // Not this run's answer (an old tab, another program, a forged link): it must not
        // end the wait, or any local page could abort a login.
        eprintln!(
            "Ignored a request to the redirect URI that does not carry this run's state value; still waiting for the login."
        );
        return page(
            StatusCode::BAD_REQUEST,
            "Not this login",
            "This answer does not carry the state value of the login the terminal is waiting for (an older tab, another program, or a forged link). Nothing was used. Open the URL the terminal shows.",
        );
    }
    let first = {
        let mut answered = shared
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !std::mem::replace(&mut *answered, true)
    };
    if !first {
        return page(
            StatusCode::CONFLICT,
            "Already answered",
            "The login was already answered; look at the terminal.",
        );
    }
    let response = match &outcome {
        Ok(_) => page(
            StatusCode::OK,
            "Logged in",
            "The login reached eagle-eye-operator. You can close this tab and return to the terminal.",
        ),
        Err(e) => page(
            StatusCode::BAD_REQUEST,
            "Login not completed",
            &format!("{e}. Look at the terminal for what to do."),
        ),
    };
    let _ = shared.tx.send(outcome).await;
    response
}

/// Whether the query holds anything of a login answer: a request without any of these is
/// not one, and must not end the wait.
fn carries_an_answer(query: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes())
        .any(|(k, _)| matches!(k.as_ref(), "code" | "state" | "error"))
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<String> {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family: sans-serif; margin: 3em\"><h1>{title}</h1><p>{}</p></body></html>\n",
        escape(text)
    );
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Headless mode: reads the address the browser ended up on from standard input.
pub async fn read_pasted(state: &str, limit: Duration) -> Result<SecretString, AuthorizeError> {
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let read = tokio::time::timeout(limit, stdin.read_line(&mut line)).await;
    match read {
        Err(_) => Err(AuthorizeError::Paste(format!(
            "nothing was pasted within {}",
            humanize(limit)
        ))),
        Ok(Err(e)) => Err(AuthorizeError::Paste(e.to_string())),
        Ok(Ok(0)) => Err(AuthorizeError::Paste(
            "standard input ended before an address was pasted".into(),
        )),
        Ok(Ok(_)) => Ok(check_callback(pasted_query(&line), state)?),
    }
}

/// `10m`, `90s`, `1h30m`.
pub fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_flags() {
        assert_eq!(humanize(Duration::from_secs(600)), "10m");
        assert_eq!(humanize(Duration::from_secs(90)), "1m30s");
        assert_eq!(humanize(Duration::from_secs(5400)), "1h30m");
        assert_eq!(humanize(Duration::ZERO), "0s");
    }

    #[test]
    fn only_requests_with_code_state_or_error_are_answers() {
        assert!(carries_an_answer("code=c&state=s"));
        assert!(carries_an_answer("error=access_denied"));
        assert!(carries_an_answer("state=s"));
        assert!(!carries_an_answer(""));
        assert!(!carries_an_answer("utm_source=x"));
    }

    #[test]
    fn pages_escape_their_text() {
        let p = page(StatusCode::OK, "T", "<b>&</b>");
        assert!(p.body().contains("&lt;b&gt;&amp;&lt;/b&gt;"));
        assert_eq!(p.headers()[CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn a_busy_port_is_reported_as_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Listener::bind(addr).await.err().unwrap();
        assert!(matches!(err, AuthorizeError::PortInUse { .. }), "{err}");
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
