//! An answer received but not yet stored and published, and how it is stored when no
//! reconcile will come to do it (shutdown, a lost Lease, a deleted credential): retried, and
//! put back in memory when the attempt is dropped half-way, so it is never silently lost.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

use super::memory::Memory;
use crate::content::{self, Content, Pending};
use crate::secrets;
use crate::secrets::fingerprint;
use crate::token::TokenGrant;

#[derive(Clone)]
pub struct Held {
    pub spent_fingerprint: String,
    /// The new refresh token; `None` when the server did not rotate.
    pub new_token: Option<SecretString>,
    /// The whole answer when it was usable: its access token is published once stored.
    pub grant: Option<TokenGrant>,
    /// When the answer arrived (whole seconds): the access token's life counts from here.
    pub received_at: Timestamp,
    /// The spent list beside the refresh token: as read, then as written with the new one.
    pub spent: Vec<String>,
    pub namespace: String,
    pub secret: String,
    pub key: String,
    pub credential: String,
}

impl Held {
    /// Whether its access token is still worth publishing at `now`.
    pub fn publishable(&self, now: Timestamp) -> bool {
        self.grant.as_ref().is_some_and(|g| {
            SignedDuration::try_from(g.expires_in)
                .ok()
                .and_then(|life| self.received_at.checked_add(life).ok())
                .is_some_and(|expires| expires > now)
        })
    }

    /// Fingerprint of the refresh token that is current once this is stored.
    pub fn new_fingerprint(&self) -> String {
        self.new_token
            .as_ref()
            .map(|t| fingerprint(t.expose_secret()))
            .unwrap_or_else(|| self.spent_fingerprint.clone())
    }
}

impl Memory {
    /// Stores every held refresh token, retrying until `limit`; used when no reconcile will
    /// come to do it (shutdown, a lost Lease, a deleted credential). Publishing is left to
    /// the next reconcile: once stored, the token is safe. Returns how many are still held.
    pub async fn flush(&self, client: &Client, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let keys: Vec<String> = self.held_keys();
            for k in keys {
                if let Some(held) = self.take(&k) {
                    self.store_or_keep(client, &k, held).await;
                }
            }
            let left = self.held_keys().len();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stores `held`. It stays in memory until the store is acknowledged, so that a store
    /// dropped half-way (a follower's retry cancelled by shutdown or by leading again) or a
    /// process dying meanwhile has it exactly where a held answer always is.
    pub(crate) async fn store_or_keep(&self, client: &Client, key: &str, held: Held) {
        let fingerprint = held.new_fingerprint();
        self.put(key, held.clone());
        match store(client, &held).await {
            Ok(()) => {
                self.take_if(key, |h| h.new_fingerprint() == fingerprint);
                info!(credential = %key, "stored a held refresh token");
            }
            Err(e) => {
                warn!(credential = %key, error = %e, "could not store a held refresh token yet")
            }
        }
    }
}

/// Stores `held` unless the Secret already holds it or a person replaced the spent token.
/// A Secret that is gone or emptied keeps the token waiting, as a reconcile does.
async fn store(client: &Client, held: &Held) -> Result<(), String> {
    let Some(new) = &held.new_token else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &held.namespace);
    let stored = secrets::read_refresh_token(&api, &held.secret, &held.key, held.received_at)
        .await
        .map_err(|e| e.to_string())?;
    // A person's new login wins, and a token already stored needs nothing; the spent
    // token, or one rotated out and put back meanwhile, is written over.
    let new_fp = fingerprint(new.expose_secret());
    let pending = Pending {
        spent: &held.spent_fingerprint,
        new: &new_fp,
    };
    let dead = crate::spent::union(&stored.spent, &held.spent);
    match content::classify(&stored.fingerprint, Some(pending), &dead) {
        Content::NewLogin | Content::StoredByUs | Content::Current => return Ok(()),
        Content::AwaitingWriteBack | Content::SpentPutBack => {}
    }
    let stored = secrets::StoredToken {
        spent: dead,
        ..stored
    };
    secrets::write_back(
        &api,
        &stored,
        &held.spent_fingerprint,
        &held.key,
        new,
        &held.credential,
        held.received_at,
    )
    .await
    .map(|_| ())
    .map_err(|e| secrets::kube_reason(&e))
}

#[cfg(test)]
mod tests {
    //! The held map on its own, and its store against a scripted API server: a token is
    //! either in its Secret or still held, whatever the API server answers.

    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use jiff::Timestamp;
    use k8s_openapi::api::core::v1::Secret;
    use kube::Client;
    use kube::client::Body;
    use secrecy::{ExposeSecret, SecretString};

    use super::Held;
    use crate::controller::memory::Memory;
    use crate::fixtures::{NS, secret};
    use crate::secrets::fingerprint;
    use crate::spent;

    const KEY: &str = "video/cam";
    const SECRET_PATH: &str = "/api/v1/namespaces/video/secrets/cam-refresh";

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn client() -> (Client, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(svc, NS), handle)
    }

    /// What the operator holds after trading `spent` for `new` (`None`: no rotation).
    fn held(spent: &str, new: Option<&str>) -> Held {
        Held {
            spent_fingerprint: fingerprint(spent),
            new_token: new.map(|t| SecretString::from(t.to_owned())),
            grant: None,
            received_at: "2026-11-28T12:00:00Z".parse::<Timestamp>().unwrap(),
            spent: Vec::new(),
            namespace: NS.into(),
            secret: "cam-refresh".into(),
            key: "refresh_token".into(),
            credential: "cam".into(),
        }
    }

    fn refresh_secret(token: &str, spent_list: &[&str]) -> Secret {
        let rendered = spent::render(
            &spent_list
                .iter()
                .map(|t| fingerprint(t))
                .collect::<Vec<_>>(),
        );
        let annotations: Vec<(&str, &str)> = if spent_list.is_empty() {
            Vec::new()
        } else {
            vec![(spent::ANNOTATION, rendered.as_str())]
        };
        secret("cam-refresh", &[("refresh_token", token)], &annotations)
    }

    fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap()
    }

    fn failure(code: u16, reason: &str) -> Response<Body> {
        json(
            StatusCode::from_u16(code).unwrap(),
            &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": reason, "code": code, "message": reason}),
        )
    }

    /// Answers the next request, which must be a GET of the refresh-token Secret.
    async fn answer_get(handle: &mut Handle, answer: Response<Body>) {
        let (req, send) = handle.next_request().await.expect("Secret GET");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            ("GET", SECRET_PATH)
        );
        send.send_response(answer);
    }

    /// Answers the next request, which must be a replace of the refresh-token Secret, with
    /// success, and returns the Secret sent.
    async fn answer_put(handle: &mut Handle) -> Secret {
        let (req, send) = handle.next_request().await.expect("Secret PUT");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            ("PUT", SECRET_PATH)
        );
        let body = req.into_body().collect_bytes().await.unwrap();
        let sent: Secret = serde_json::from_slice(&body).unwrap();
        send.send_response(json(StatusCode::OK, &serde_json::to_value(&sent).unwrap()));
        sent
    }

    /// No further request arrives.
    async fn no_more_requests(handle: &mut Handle) {
        let next = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
        assert!(matches!(next, Err(_) | Ok(None)), "unexpected request");
    }

    /// Ends the scenario: once the client is gone, a request the script still waits for
    /// fails the test instead of hanging it.
    async fn finish<T>(client: Client, server: tokio::task::JoinHandle<T>) -> T {
        drop(client);
        server
            .await
            .expect("the API server saw the requests the scenario expects")
    }

    fn stored_token(s: &Secret) -> String {
        String::from_utf8(s.data.as_ref().unwrap()["refresh_token"].0.clone()).unwrap()
    }

    #[test]
    fn a_held_token_is_handed_out_once_and_then_is_gone() {
        let tokens = Memory::default();
        assert!(tokens.is_empty());
        tokens.put(KEY, held("rt-1", Some("rt-2")));
        assert!(!tokens.is_empty());
        assert!(tokens.take("video/other").is_none());
        let taken = tokens.take(KEY).expect("held");
        assert_eq!(taken.new_token.unwrap().expose_secret(), "rt-2");
        assert!(tokens.take(KEY).is_none());
        assert!(tokens.is_empty());
    }

    #[test]
    fn every_clone_shares_one_map_so_a_new_controller_term_finds_the_token() {
        let process = Memory::default();
        let last_term = process.clone();
        last_term.put(KEY, held("rt-1", Some("rt-2")));
        assert!(!process.is_empty());
        assert!(process.take(KEY).is_some());
        assert!(last_term.is_empty());

        last_term.remember_live(KEY, &SecretString::from("rt-2"));
        assert_eq!(process.live(KEY, &[]).unwrap().expose_secret(), "rt-2");
    }

    #[test]
    fn the_current_fingerprint_is_the_new_tokens_or_the_spent_ones_without_rotation() {
        assert_eq!(
            held("rt-1", Some("rt-2")).new_fingerprint(),
            fingerprint("rt-2")
        );
        assert_eq!(held("rt-1", None).new_fingerprint(), fingerprint("rt-1"));
    }

    #[tokio::test]
    async fn a_held_token_is_stored_over_the_spent_one_with_the_spent_one_marked() {
        let (client, mut handle) = client();
        let tokens = Memory::default();
        let server = tokio::spawn(async move {
            answer_get(
                &mut handle,
                json(
                    StatusCode::OK,
                    &serde_json::to_value(refresh_secret("rt-1", &[])).unwrap(),
                ),
            )
            .await;
            let sent = answer_put(&mut handle).await;
            no_more_requests(&mut handle).await;
            sent
        });
        tokens
            .store_or_keep(&client, KEY, held("rt-1", Some("rt-2")))
            .await;
        let sent = finish(client, server).await;
        assert_eq!(stored_token(&sent), "rt-2");
        assert_eq!(sent.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(
            spent::read(sent.metadata.annotations.as_ref()),
            [fingerprint("rt-1")]
        );
        assert!(tokens.is_empty(), "stored, so no longer held");
    }

    #[tokio::test]
    async fn a_token_put_back_by_a_sync_tool_is_written_over() {
        let (client, mut handle) = client();
        let tokens = Memory::default();
        let server = tokio::spawn(async move {
            // rt-0 was rotated out before rt-1, which is being traded for rt-2.
            answer_get(
                &mut handle,
                json(
                    StatusCode::OK,
                    &serde_json::to_value(refresh_secret("rt-0", &["rt-0"])).unwrap(),
                ),
            )
            .await;
            answer_put(&mut handle).await
        });
        tokens
            .store_or_keep(&client, KEY, held("rt-1", Some("rt-2")))
            .await;
        assert_eq!(stored_token(&finish(client, server).await), "rt-2");
        assert!(tokens.is_empty());
    }

    #[tokio::test]
    async fn a_new_login_stored_by_a_person_wins_over_a_held_token() {
        let (client, mut handle) = client();
        let tokens = Memory::default();
        let server = tokio::spawn(async move {
            answer_get(
                &mut handle,
                json(
                    StatusCode::OK,
                    &serde_json::to_value(refresh_secret("person-login", &[])).unwrap(),
                ),
            )
            .await;
            no_more_requests(&mut handle).await;
        });
        tokens
            .store_or_keep(&client, KEY, held("rt-1", Some("rt-2")))
            .await;
        finish(client, server).await;
        assert!(
            tokens.is_empty(),
            "the person's login is kept, nothing held"
        );
    }

    #[tokio::test]
    async fn a_held_token_stays_held_while_its_secret_cannot_be_read_or_written() {
        for (what, answers) in [
            ("GET fails", vec![failure(503, "ServiceUnavailable")]),
            ("Secret gone", vec![failure(404, "NotFound")]),
            (
                "PUT fails",
                vec![
                    json(
                        StatusCode::OK,
                        &serde_json::to_value(refresh_secret("rt-1", &[])).unwrap(),
                    ),
                    failure(500, "InternalError"),
                ],
            ),
        ] {
            let (client, mut handle) = client();
            let tokens = Memory::default();
            let server = tokio::spawn(async move {
                for answer in answers {
                    let (_, send) = handle.next_request().await.expect("a request");
                    send.send_response(answer);
                }
                no_more_requests(&mut handle).await;
            });
            tokens
                .store_or_keep(&client, KEY, held("rt-1", Some("rt-2")))
                .await;
            finish(client, server).await;
            let kept = tokens.take(KEY).unwrap_or_else(|| panic!("{what}: lost"));
            assert_eq!(kept.new_token.unwrap().expose_secret(), "rt-2", "{what}");
        }
    }

    #[tokio::test]
    async fn a_token_being_stored_stays_held_until_the_store_is_acknowledged() {
        let (client, mut handle) = client();
        let tokens = Memory::default();
        let mut store = Box::pin(tokens.store_or_keep(&client, KEY, held("rt-1", Some("rt-2"))));
        // The request reaches the API server, whose answer never comes: then the store is
        // dropped, as shutdown drops a follower's retry.
        tokio::select! {
            _ = &mut store => panic!("the store finished without an answer"),
            req = handle.next_request() => assert!(req.is_some()),
        }
        assert!(!tokens.is_empty(), "held while being stored");
        drop(store);
        let kept = tokens
            .take(KEY)
            .expect("still held once the store is dropped");
        assert_eq!(kept.new_token.unwrap().expose_secret(), "rt-2");
    }

    #[tokio::test]
    async fn flush_retries_until_the_api_server_answers_within_its_limit() {
        let (client, mut handle) = client();
        let tokens = Memory::default();
        tokens.put(KEY, held("rt-1", Some("rt-2")));
        let server = tokio::spawn(async move {
            // Down twice, then back.
            for _ in 0..2 {
                answer_get(&mut handle, failure(503, "ServiceUnavailable")).await;
            }
            answer_get(
                &mut handle,
                json(
                    StatusCode::OK,
                    &serde_json::to_value(refresh_secret("rt-1", &[])).unwrap(),
                ),
            )
            .await;
            let sent = answer_put(&mut handle).await;
            no_more_requests(&mut handle).await;
            sent
        });
        let left = tokens.flush(&client, Duration::from_secs(30)).await;
        assert_eq!(left, 0);
        assert_eq!(stored_token(&finish(client, server).await), "rt-2");
        assert!(tokens.is_empty());
    }

    #[tokio::test]
    async fn flush_gives_up_at_its_limit_and_says_how_many_tokens_are_still_held() {
        let (client, mut handle) = client();
        let tokens = Memory::default();
        tokens.put(KEY, held("rt-1", Some("rt-2")));
        tokens.put("video/lobby", held("rt-a", None));
        let server = tokio::spawn(async move {
            let mut gets = 0;
            while let Some((req, send)) = handle.next_request().await {
                assert_eq!(req.method().as_str(), "GET");
                gets += 1;
                send.send_response(failure(503, "ServiceUnavailable"));
            }
            gets
        });
        let started = tokio::time::Instant::now();
        let left = tokens.flush(&client, Duration::from_secs(1)).await;
        let took = started.elapsed();
        let gets = finish(client, server).await;
        // A token without a rotation needs no write: only the rotated one is left.
        assert_eq!(left, 1);
        assert_eq!(
            tokens.take(KEY).unwrap().new_token.unwrap().expose_secret(),
            "rt-2"
        );
        assert!(tokens.is_empty());
        assert!(gets >= 2, "retried: {gets} attempts");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}
