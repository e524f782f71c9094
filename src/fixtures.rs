//! Test fixtures for single reconcile steps: builder-style objects and an API-server
//! verifier over `tower_test`, which states call by call what the reconciler must send.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::{Client, Resource};

use crate::controller::{Census, Context, Leadership, Memory, Settings, Shared, StoredCredential};
use crate::crd::EagleEyeCredential;
use crate::secrets;
use crate::status::Lifetimes;
use crate::token::{TokenClient, TokenClientOptions};

pub const NS: &str = "video";
const CR_PATH: &str =
    "/apis/eagle-eye-operator.io/v1alpha1/namespaces/video/eagleeyecredentials/cam";

impl EagleEyeCredential {
    /// A credential `video/cam` whose Secrets are `cam-client` and `cam-refresh`; its auth
    /// server is an address nothing listens on, so any token call fails loudly.
    pub fn test() -> Self {
        let mut cr: EagleEyeCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "eagle-eye-operator.io/v1alpha1",
            "kind": "EagleEyeCredential",
            "metadata": {"name": "cam", "namespace": NS, "uid": "uid-cam", "generation": 1},
            "spec": {
                "clientSecretRef": {"name": "cam-client"},
                "refreshTokenSecretRef": {"name": "cam-refresh"},
                "authUrl": "https://127.0.0.1:1",
            }
        }))
        .expect("valid test credential");
        cr.metadata.creation_timestamp = None;
        cr
    }
}

/// A Secret in the test namespace as the API server would answer with it.
pub fn secret(name: &str, data: &[(&str, &str)], annotations: &[(&str, &str)]) -> Secret {
    let annotations = annotations
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut s = secrets::opaque(name, data.iter().copied(), annotations);
    s.metadata.namespace = Some(NS.into());
    s.metadata.resource_version = Some("1".into());
    s
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answers the reconciler's requests in the order a scenario expects them.
pub struct ApiServerVerifier(Handle);

/// A context whose client talks to the returned verifier.
pub fn testcontext() -> (Arc<Context>, ApiServerVerifier) {
    testcontext_at(jiff::Timestamp::now)
}

/// A fixed time for reconciles that [`testcontext_at`] runs: the waits they ask for are then
/// exact.
pub fn fixed_now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_893_456_000).expect("2030-01-01 is a valid time")
}

/// Like [`testcontext`], with the reconciler's clock reading `clock`.
pub fn testcontext_at(clock: fn() -> jiff::Timestamp) -> (Arc<Context>, ApiServerVerifier) {
    let store = Writer::<StoredCredential>::default().as_reader();
    context_over(
        store.clone(),
        vec![store],
        shared(clock),
        clock,
        Arc::default(),
    )
}

/// What a test process's controllers share, its clock reading `clock`.
pub fn shared(clock: fn() -> jiff::Timestamp) -> Shared {
    Shared {
        metrics: Default::default(),
        memory: Memory::default(),
        leadership: Leadership::unchecked(),
        known: Default::default(),
        reads: Default::default(),
        reach: crate::api_requests::Reachability::new(clock),
        shard: None,
    }
}

/// A controller's context over `store`, one of the process's `all_stores`, with its own
/// verifier, its clock reading `clock`, and the term's `census`.
pub fn context_over(
    store: Store<StoredCredential>,
    all_stores: Vec<Store<StoredCredential>>,
    shared: Shared,
    clock: fn() -> jiff::Timestamp,
    census: Arc<Census>,
) -> (Arc<Context>, ApiServerVerifier) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, NS);
    let reporter = Reporter {
        controller: "eagle-eye-operator".into(),
        instance: None,
    };
    let tokens = TokenClient::new(TokenClientOptions {
        timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    })
    .expect("token client");
    let settings = Settings {
        // The fixtures' authUrl, port included.
        auth_policy: crate::token::AuthPolicy::new(&["127.0.0.1:1"], false)
            .expect("a valid policy"),
        lifetimes: Lifetimes::default(),
        identity: "test-process".into(),
        in_flight_grace: jiff::SignedDuration::from_mins(5),
        pod_nudge: None,
        workload_restart: None,
        revoke_retry_for: jiff::SignedDuration::from_mins(5),
        clock,
    };
    (
        Arc::new(
            Context::new(
                client, reporter, tokens, settings, store, all_stores, shared,
            )
            .with_census(census),
        ),
        ApiServerVerifier(handle),
    )
}

impl ApiServerVerifier {
    /// GET of the credential (each reconcile reads it fresh).
    pub async fn get_credential(mut self, cr: &EagleEyeCredential) -> Self {
        let (req, send) = self.0.next_request().await.expect("credential GET");
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", CR_PATH));
        send.send_response(json(StatusCode::OK, &serde_json::to_value(cr).unwrap()));
        self
    }

    /// GET of the credential, answered with a 404: it was deleted.
    pub async fn credential_gone(mut self) -> Self {
        let (req, send) = self.0.next_request().await.expect("credential GET");
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", CR_PATH));
        send.send_response(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "eagleeyecredentials \"cam\" not found"}),
        ));
        self
    }

    /// GET of a Secret, answered with `secret` or a 404.
    pub async fn get_secret(mut self, name: &str, secret: Option<&Secret>) -> Self {
        let (req, send) = self.0.next_request().await.expect("Secret GET");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            (
                "GET",
                format!("/api/v1/namespaces/{NS}/secrets/{name}").as_str()
            )
        );
        send.send_response(match secret {
            Some(s) => json(StatusCode::OK, &serde_json::to_value(s).unwrap()),
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("secrets {name:?} not found")}),
            ),
        });
        self
    }

    /// An Event with `reason`, returned for inspection of its note.
    pub async fn event(mut self, reason: &str) -> (Self, String) {
        let (req, send) = self.0.next_request().await.expect("Event POST");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            (
                "POST",
                format!("/apis/events.k8s.io/v1/namespaces/{NS}/events").as_str()
            )
        );
        let body: serde_json::Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["reason"], reason);
        let note = body["note"].as_str().unwrap_or_default().to_owned();
        send.send_response(json(StatusCode::CREATED, &body));
        (self, note)
    }

    /// The status written by server-side apply, returned for inspection.
    pub async fn status_apply(mut self) -> (Self, serde_json::Value) {
        let (req, send) = self.0.next_request().await.expect("status PATCH");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            ("PATCH", format!("{CR_PATH}/status").as_str())
        );
        let query = req.uri().query().unwrap_or_default().to_owned();
        assert!(
            query.contains("fieldManager=eagle-eye-operator") && query.contains("force=true"),
            "{query}"
        );
        let body: serde_json::Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        let mut answer = serde_json::to_value(EagleEyeCredential::test()).unwrap();
        answer["status"] = body["status"].clone();
        send.send_response(json(StatusCode::OK, &answer));
        (self, body["status"].clone())
    }

    /// No further request arrives.
    pub async fn done(mut self) {
        let next =
            tokio::time::timeout(std::time::Duration::from_millis(100), self.0.next_request())
                .await;
        assert!(
            matches!(next, Err(_) | Ok(None)),
            "unexpected extra request"
        );
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn ready_condition(status: &serde_json::Value) -> &serde_json::Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready condition")
}

fn ready(status: &serde_json::Value) -> (&str, &str, &str) {
    let c = ready_condition(status);
    (
        c["status"].as_str().unwrap(),
        c["reason"].as_str().unwrap(),
        c["message"].as_str().unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{jitter, reconcile};
    use crate::crd::parse_duration;
    use crate::schedule::{self, Rotation};
    use crate::secrets::fingerprint;
    use crate::target::{EXPIRES_AT, ISSUED_AT, REFRESH_FINGERPRINT};
    use kube::runtime::controller::Action;
    use std::time::Duration;

    /// A reconcile's reads of `cam`'s Secrets: the refresh token, a client Secret that does
    /// not exist, and no target yet. Everything is read before anything is decided.
    async fn reads_finding_no_client_secret(v: ApiServerVerifier) -> ApiServerVerifier {
        v.get_secret(
            "cam-refresh",
            Some(&secret("cam-refresh", &[("refresh_token", "rt-1")], &[])),
        )
        .await
        .get_secret("cam-client", None)
        .await
        .get_secret("cam-token", None)
        .await
    }

    #[tokio::test]
    async fn missing_client_secret_causes_event_and_secret_not_found_status() {
        let (ctx, verifier) = testcontext();
        let cr = EagleEyeCredential::test();
        let server = tokio::spawn(async move {
            let v = verifier.get_credential(&EagleEyeCredential::test()).await;
            let v = reads_finding_no_client_secret(v).await;
            let (v, note) = v.event("SecretNotFound").await;
            assert_eq!(note, "Secret \"cam-client\" not found");
            let (v, status) = v.status_apply().await;
            assert_eq!(ready(&status).0, "False");
            assert_eq!(ready(&status).1, "SecretNotFound");
            assert_eq!(status["observedGeneration"], 1);
            v.done().await;
        });
        let action = reconcile(Arc::new(cr.into()), ctx)
            .await
            .expect("reconcile reports, not fails");
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_reconcile_queued_before_the_last_status_write_reads_the_credential_from_the_store() {
        // The store holds the status this process wrote last; the copy kube-runtime handed
        // the reconcile when it queued it (it then waited for its turn) predates it.
        let mut store = Writer::<StoredCredential>::default();
        let mut written = EagleEyeCredential::test();
        written.status = Some(crate::crd::EagleEyeCredentialStatus {
            failed_refresh_attempts: 1,
            ..Default::default()
        });
        store.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            written.clone().into(),
        ));
        let reader = store.as_reader();
        let (ctx, verifier) = context_over(
            reader.clone(),
            vec![reader],
            shared(jiff::Timestamp::now),
            jiff::Timestamp::now,
            Arc::default(),
        );
        ctx.known.wrote(&written);
        let server = tokio::spawn(async move {
            // No GET of the credential: its first request reads the refresh token.
            let v = reads_finding_no_client_secret(verifier).await;
            let (v, _) = v.event("SecretNotFound").await;
            let (v, _) = v.status_apply().await;
            v.done().await;
        });
        // The handed-over copy also predates a change of spec: were it the copy used, the
        // first read would be of its refresh-token Secret.
        let mut queued = EagleEyeCredential::test();
        queued.spec.refresh_token_secret_ref.name = "cam-old-refresh".into();
        reconcile(Arc::new(queued.into()), ctx)
            .await
            .expect("reconcile reports, not fails");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn valid_published_token_schedules_the_next_refresh_without_calling_the_token_endpoint() {
        let (ctx, verifier) = testcontext_at(fixed_now);
        let now = fixed_now();
        let expires = now + jiff::SignedDuration::from_hours(12);
        let issued = now.to_string();
        let expires_s = expires.to_string();
        let fp = fingerprint("rt-1");
        let mut target = secret(
            "cam-token",
            &[("access_token", "at")],
            &[
                (ISSUED_AT, &issued),
                (EXPIRES_AT, &expires_s),
                (REFRESH_FINGERPRINT, &fp),
            ],
        );
        // Created by this credential: only then are its annotations trusted.
        target.metadata.owner_references = EagleEyeCredential::test()
            .controller_owner_ref(&())
            .map(|o| vec![o]);
        let published = crate::target::published(&target).expect("our annotations");
        let server = tokio::spawn(async move {
            let v = verifier
                .get_credential(&EagleEyeCredential::test())
                .await
                .get_secret(
                    "cam-refresh",
                    Some(&secret("cam-refresh", &[("refresh_token", "rt-1")], &[])),
                )
                .await
                .get_secret(
                    "cam-client",
                    Some(&secret(
                        "cam-client",
                        &[("client_id", "id"), ("client_secret", "cs")],
                        &[],
                    )),
                )
                .await
                .get_secret("cam-token", Some(&target))
                .await;
            let (v, status) = v.status_apply().await;
            assert_eq!(ready(&status).0, "True", "{status}");
            assert!(status["nextRefreshAt"].as_str().is_some());
            v.done().await;
            status
        });
        let cr = EagleEyeCredential::test();
        let action = reconcile(Arc::new(cr.clone().into()), ctx).await.unwrap();
        server.await.unwrap();
        // Due 30 min (refreshBefore) before expiry, less up to 30 s of per-credential jitter;
        // before any refresh, whether the tokens rotate is not known.
        let refresh_before = parse_duration(&cr.spec.refresh_before).unwrap();
        let due = schedule::due_at(&published, Rotation::Unknown, refresh_before, jitter(&cr));
        let lead = expires.duration_since(due);
        assert!(
            (refresh_before..=refresh_before + jiff::SignedDuration::from_secs(30)).contains(&lead),
            "{lead:?}"
        );
        // The reconcile waits until that moment, rounded up to the whole second its clock
        // reads (woken earlier, it would find nothing due and wait again).
        let woken = jiff::Timestamp::from_second(due.as_second() + 1).unwrap();
        assert_eq!(action, Action::requeue(schedule::until(now, woken)));
    }

    #[tokio::test]
    async fn refresh_token_key_missing_is_reported_without_the_values() {
        let (ctx, verifier) = testcontext();
        let server = tokio::spawn(async move {
            let v = verifier
                .get_credential(&EagleEyeCredential::test())
                .await
                .get_secret(
                    "cam-refresh",
                    Some(&secret("cam-refresh", &[("token", "rt-secret-value")], &[])),
                )
                .await
                .get_secret(
                    "cam-client",
                    Some(&secret(
                        "cam-client",
                        &[("client_id", "id"), ("client_secret", "very-secret")],
                        &[],
                    )),
                )
                .await
                .get_secret("cam-token", None)
                .await;
            let (v, note) = v.event("SecretKeyMissing").await;
            assert_eq!(note, "Secret \"cam-refresh\" has no key \"refresh_token\"");
            let (v, status) = v.status_apply().await;
            let text = status.to_string();
            assert!(!text.contains("very-secret") && !text.contains("rt-secret-value"));
            v.done().await;
        });
        reconcile(Arc::new(EagleEyeCredential::test().into()), ctx)
            .await
            .unwrap();
        server.await.unwrap();
    }
}
