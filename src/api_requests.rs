//! Every request this process sends to the Kubernetes API server, counted by verb and
//! resource as kube-apiserver's own `apiserver_request_total` counts them, so that what the
//! operator costs the API server is read from the operator, not guessed from a metric that
//! has no client label. Labels come from the request's method and path, never from a name:
//! a fixed set of verbs and the resources this program addresses.

use std::sync::LazyLock;
use std::task::{Context, Poll};

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

/// A tower service that counts each request it passes on.
#[derive(Clone)]
pub struct Counted<S>(S);

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        REQUESTS.get_or_create(&classify(&req)).inc();
        self.0.call(req)
    }
}

/// A client for `config` whose every request is counted.
pub fn client(config: kube::Config) -> kube::Result<kube::Client> {
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::layer::layer_fn(Counted))
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
}
