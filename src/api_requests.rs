//! Every request this process sends to the Kubernetes API server, counted by verb and
//! resource as kube-apiserver's own `apiserver_request_total` counts them, so that what the
//! operator costs the API server is read from the operator, not guessed from a metric that
//! has no client label. Labels come from the request's method and path, never from a name:
//! a fixed set of verbs and the resources this program addresses.

use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The metric's name as scraped (OpenMetrics appends `_total`).
pub const KUBE_API_REQUESTS: &str = "eagle_eye_kube_api_requests";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    /// kube-apiserver's verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `apply`,
    /// `delete`, `deletecollection`, or the method of a non-resource request.
    pub verb: String,
    /// The resource and subresource (`eagleeyecredentials/status`), or `nonresource`.
    pub resource: String,
}

/// One count per process: every client built by [`client`] adds to it.
static REQUESTS: LazyLock<Family<Request, Counter>> = LazyLock::new(Family::default);

/// The process's request counts, for the metrics registry.
pub fn family() -> Family<Request, Counter> {
    REQUESTS.clone()
}

/// What kube-apiserver would call this request: its verb and resource.
pub fn classify<B>(req: &http::Request<B>) -> Request {
    let path = req.uri().path();
    let watch = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "watch=true" || p == "watch=1" || p == "watch")
    });
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/… or /apis/{group}/{version}/…
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => {
            return Request {
                verb: req.method().as_str().to_ascii_lowercase(),
                resource: "nonresource".into(),
            };
        }
    };
    // namespaces/{ns}/{plural}/… names a namespaced resource; namespaces/{ns} alone, the
    // namespace itself.
    let rest = match rest {
        ["namespaces", _ns, plural, tail @ ..] => {
            let mut r = vec![*plural];
            r.extend_from_slice(tail);
            r
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] => ("nonresource".to_owned(), false),
        [plural] => ((*plural).to_owned(), false),
        [plural, _name] => ((*plural).to_owned(), true),
        [plural, _name, sub, ..] => (format!("{plural}/{sub}"), true),
    };
    let apply = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/apply-patch"));
    let verb = match *req.method() {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH if apply => "apply",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    };
    Request {
        verb: verb.into(),
        resource,
    }
}

/// When this process last found the API server unreachable: a request that failed on the
/// way (connection refused or reset, a timeout) or was answered 5xx or 429, or the first
/// answer after such failures (clients back off up to 30 s between attempts, so the last
/// failure may be well before the API server came back). The process's start counts as
/// such a moment, since it saw nothing before it. One per process (the simulator has one
/// per simulated process); read by `intent::verdict_after_outage`.
pub struct Reachability {
    clock: fn() -> Timestamp,
    last_unreachable: Mutex<(Timestamp, bool)>,
}

impl Reachability {
    /// Reachability with the time taken from `clock` (the process's, or a simulated one),
    /// unreachable until now.
    pub fn new(clock: fn() -> Timestamp) -> Arc<Self> {
        Arc::new(Reachability {
            clock,
            last_unreachable: Mutex::new((clock(), false)),
        })
    }

    /// When a request last found the API server unreachable, or the process started.
    pub fn last_unreachable(&self) -> Timestamp {
        crate::lock(&self.last_unreachable).0
    }

    fn observe(&self, unreachable: bool) {
        let mut last = crate::lock(&self.last_unreachable);
        let (at, failing) = &mut *last;
        if unreachable || *failing {
            *at = (self.clock)().max(*at);
        }
        *failing = unreachable;
    }
}

/// A tower service that counts each request it passes on (`REQUESTS`) and notes whether
/// its answer says the API server is unreachable (`Reachability`).
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    reach: Arc<Reachability>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        REQUESTS.get_or_create(&classify(&req)).inc();
        let answer = self.inner.call(req);
        let reach = self.reach.clone();
        Box::pin(async move {
            let answer = answer.await;
            reach.observe(answer.as_ref().map_or(true, |r| {
                r.status().is_server_error() || r.status() == http::StatusCode::TOO_MANY_REQUESTS
            }));
            answer
        })
    }
}

/// The layer that counts requests and notes unreachability into `reach`.
pub fn layer<S>(reach: Arc<Reachability>) -> impl tower::Layer<S, Service = Counted<S>> {
    tower::layer::layer_fn(move |inner| Counted {
        inner,
        reach: reach.clone(),
    })
}

/// How long a request may wait for its answer to begin (a watch's included: kube-apiserver
/// sends its head at once, and kube-runtime waits for it with no limit of its own). kube's
/// client sets no limit once connected, so a connection gone silent (a peer gone without a
/// reset, a frozen proxy) would hold a request, and whatever waits on it, forever: a
/// rotated token's write-back would never be tried again, the Lease watch would freeze, and
/// no outage would be noted. At 30 s, a holder that stalls this long and then backs off (at
/// most 30 s) tries again well within the 90 s another replica waits after an outage
/// (`intent::AFTER_OUTAGE`). kube-apiserver ends its own slow requests at 60 s
/// (`--request-timeout`) and the operator's are small (lists are paged); a write that its
/// admission webhooks keep longer than this counts as failed (and the API server as
/// unreachable), though it may land: the next reconcile reads it.
pub const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// The layer that fails a request whose answer has not begun within [`ANSWER_LIMIT`]; the
/// body after is not limited (a watch's stays open for minutes).
pub fn answer_limit() -> tower::timeout::TimeoutLayer {
    tower::timeout::TimeoutLayer::new(ANSWER_LIMIT)
}

/// A client for `config` whose every request is counted and watched for unreachability,
/// none waits more than [`ANSWER_LIMIT`] for its answer to begin, and none is retried
/// inside the client: kube's own retry of 429, 503 and 504 can hold one request for
/// minutes. The operator backs off on its own (at most 30 s between attempts), and a
/// process holding an answer it could not store must try again within that (see
/// `intent::verdict_after_outage`).
pub fn client(mut config: kube::Config, reach: Arc<Reachability>) -> kube::Result<kube::Client> {
    config.default_retry = false;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&answer_limit())
        .with_layer(&layer(reach))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classified(method: &str, uri: &str, content_type: Option<&str>) -> (String, String) {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(c) = content_type {
            b = b.header(http::header::CONTENT_TYPE, c);
        }
        let r = classify(&b.body(()).unwrap());
        (r.verb, r.resource)
    }

    #[test]
    fn requests_are_named_by_verb_and_resource_as_kube_apiserver_names_them() {
        let cases = [
            (
                ("GET", "/api/v1/namespaces/n/secrets/s", None),
                ("get", "secrets"),
            ),
            (
                ("GET", "/api/v1/namespaces/n/secrets?limit=100", None),
                ("list", "secrets"),
            ),
            (
                (
                    "GET",
                    "/api/v1/namespaces/n/secrets?watch=true&resourceVersion=5",
                    None,
                ),
                ("watch", "secrets"),
            ),
            (
                ("PUT", "/api/v1/namespaces/n/secrets/s", None),
                ("update", "secrets"),
            ),
            (
                ("POST", "/api/v1/namespaces/n/events", None),
                ("create", "events"),
            ),
            (
                (
                    "PATCH",
                    "/apis/eagle-eye-operator.io/v1/namespaces/n/eagleeyecredentials/c/status?fieldManager=x",
                    Some("application/apply-patch+yaml"),
                ),
                ("apply", "eagleeyecredentials/status"),
            ),
            (
                (
                    "PATCH",
                    "/apis/coordination.k8s.io/v1/namespaces/n/leases/l",
                    Some("application/merge-patch+json"),
                ),
                ("patch", "leases"),
            ),
            (
                (
                    "GET",
                    "/apis/eagle-eye-operator.io/v1/eagleeyecredentials",
                    None,
                ),
                ("list", "eagleeyecredentials"),
            ),
            (("GET", "/api/v1/namespaces/n", None), ("get", "namespaces")),
            (
                ("DELETE", "/api/v1/namespaces/n/pods", None),
                ("deletecollection", "pods"),
            ),
            (("GET", "/version", None), ("get", "nonresource")),
        ];
        for ((method, uri, ct), (verb, resource)) in cases {
            assert_eq!(
                classified(method, uri, ct),
                (verb.to_owned(), resource.to_owned()),
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn no_name_from_a_path_becomes_a_label() {
        let (verb, resource) = classified(
            "GET",
            "/api/v1/namespaces/tenant-secret-ns/secrets/my-precious-token",
            None,
        );
        assert!(!format!("{verb}{resource}").contains("precious"));
        assert!(!resource.contains("tenant"));
    }

    /// A server that answers every request with `status`, and counts them.
    async fn answering(status: u16) -> (url::Url, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                (
                    http::StatusCode::from_u16(status).unwrap(),
                    [("retry-after", "0")],
                    "{}",
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}").parse().unwrap(), seen)
    }

    async fn get_once(url: url::Url, reach: Arc<Reachability>) {
        let config = kube::Config::new(url.as_str().parse().unwrap());
        let client = client(config, reach).unwrap();
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client, "n");
        let _ = secrets.get_opt("s").await;
    }

    static NOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    fn test_clock() -> Timestamp {
        test_clock_at(NOW.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Clients back off up to 30 s between attempts: the API server counts as unreachable
    /// until the first answer after the failures, not only until the last failure.
    #[test]
    fn the_first_answer_after_failures_ends_the_outage_later_ones_do_not() {
        let set = |s: i64| NOW.store(s, std::sync::atomic::Ordering::SeqCst);
        set(0);
        let reach = Reachability::new(test_clock);
        set(10);
        reach.observe(false);
        assert_eq!(reach.last_unreachable(), test_clock_at(0), "the start");
        set(20);
        reach.observe(true);
        set(50);
        reach.observe(true);
        assert_eq!(reach.last_unreachable(), test_clock_at(50));
        set(80);
        reach.observe(false);
        set(95);
        reach.observe(false);
        assert_eq!(reach.last_unreachable(), test_clock_at(80));
    }

    fn test_clock_at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// A connection gone silent fails the request at the limit, a watch's too, so that
    /// whatever waits on it (a rotated token's write-back, the Lease watch) is tried again;
    /// an answer that has begun is handed on as it is.
    #[tokio::test(start_paused = true)]
    async fn an_answer_that_never_begins_fails_at_the_limit() {
        use tower::{Layer, Service};
        type BoxError = Box<dyn std::error::Error + Send + Sync>;
        let request = |uri: &str| http::Request::get(uri).body(()).unwrap();
        let silent = tower::service_fn(|_: http::Request<()>| {
            futures::future::pending::<Result<http::Response<()>, BoxError>>()
        });
        let mut client = answer_limit().layer(silent);
        for uri in [
            "/api/v1/namespaces/n/secrets/s",
            "/api/v1/namespaces/n/secrets?watch=true&resourceVersion=5",
        ] {
            let started = tokio::time::Instant::now();
            assert!(client.call(request(uri)).await.is_err(), "{uri}");
            assert_eq!(started.elapsed(), ANSWER_LIMIT, "{uri}");
        }

        let answering = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        });
        let mut client = answer_limit().layer(answering);
        let started = tokio::time::Instant::now();
        assert!(
            client
                .call(request("/api/v1/namespaces/n/secrets/s"))
                .await
                .is_ok()
        );
        assert!(started.elapsed() < ANSWER_LIMIT);
    }

    /// kube's client would retry a 503 up to 15 times, for minutes in all; the operator's
    /// own backoff decides, and the process notes the API server unreachable at once.
    #[tokio::test]
    async fn a_503_is_sent_once_and_marks_the_api_server_unreachable_a_404_does_not() {
        let (url, seen) = answering(503).await;
        let reach = Reachability::new(Timestamp::now);
        let born = reach.last_unreachable();
        get_once(url, reach.clone()).await;
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(reach.last_unreachable() > born);
        for status in [200, 404, 403] {
            let (url, _) = answering(status).await;
            let reach = Reachability::new(Timestamp::now);
            let born = reach.last_unreachable();
            get_once(url, reach.clone()).await;
            assert_eq!(reach.last_unreachable(), born, "{status}");
        }
        // Nothing listening: a transport failure.
        let reach = Reachability::new(Timestamp::now);
        let born = reach.last_unreachable();
        get_once("http://127.0.0.1:9".parse().unwrap(), reach.clone()).await;
        assert!(reach.last_unreachable() > born);
    }
}
