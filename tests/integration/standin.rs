//! The auth stand-in, spoken to over HTTP(S) as the operator would: each test states one rule of
//! the vendor's "Logging in" guide (or of Spring, where the guide is silent) or one fault.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use eagle_eye_testbed::standin::{ClientRegistration, Fault, Gate, StandIn, StandInConfig};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Certificate, Client, RequestBuilder, redirect};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REDIRECT: &str = "http://127.0.0.1:3333";
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const SECOND: Duration = Duration::from_secs(1);
/// The vendor's answer for an expired, used, rotated or revoked code or refresh token.
const DEAD_GRANT: (u16, &str) = (401, "invalid_grant");
const BAD_REQUEST: (u16, &str) = (400, "invalid_request");

fn registration(id: &str, secret: &str, rotating: bool) -> ClientRegistration {
    let redirect_uris = vec![REDIRECT.to_owned()];
    ClientRegistration {
        id: id.into(),
        secret: secret.into(),
        redirect_uris,
        rotating,
    }
}

fn rot() -> ClientRegistration {
    registration("rotating-client", "rotating-secret", true)
}

fn perm() -> ClientRegistration {
    registration("permanent-client", "permanent-secret", false)
}

fn refresh_form(token: &str) -> [(&str, &str); 3] {
    [
        ("grant_type", "refresh_token"),
        ("scope", "vms.all"),
        ("refresh_token", token),
    ]
}

/// A response read to the end, so that assertions need no more awaits.
struct Answer {
    status: u16,
    headers: HeaderMap,
    bytes: Vec<u8>,
    json: Value,
}

impl Answer {
    async fn of(request: RequestBuilder) -> Self {
        let response = request.send().await.expect("the stand-in answers");
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let bytes = response.bytes().await.unwrap().to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            bytes,
            json,
        }
    }

    /// Asserts a success and returns its body.
    fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.bytes));
        &self.json
    }

    fn text(&self, key: &str) -> String {
        self.ok()[key].as_str().unwrap().to_owned()
    }

    /// The status and OAuth2 `error` code, asserting the body holds nothing else.
    fn error(&self) -> (u16, &str) {
        assert_eq!(
            self.json.as_object().map(|o| o.len()),
            Some(1),
            "{}",
            self.json
        );
        (self.status, self.json["error"].as_str().unwrap_or_default())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// A stand-in with a rotating and a permanent client, and an HTTP client that trusts only its CA
/// and follows no redirects.
struct Harness {
    s: StandIn,
    c: Client,
}

impl Harness {
    async fn start(config: StandInConfig) -> Self {
        let s = StandIn::start(config).await.expect("stand-in starts");
        s.register_client(rot());
        s.register_client(perm());
        let mut builder = Client::builder()
            .no_proxy()
            .redirect(redirect::Policy::none());
        if let Some(pem) = s.ca_pem() {
            builder = builder.tls_certs_only([Certificate::from_pem(pem.as_bytes()).unwrap()]);
        }
        Self {
            s,
            c: builder.build().unwrap(),
        }
    }

    async fn new() -> Self {
        Self::start(StandInConfig::default()).await
    }

    async fn plain() -> Self {
        Self::start(StandInConfig {
            tls: false,
            ..Default::default()
        })
        .await
    }

    fn at(&self, path: &str) -> url::Url {
        self.s.url().join(path).unwrap()
    }

    /// A POST to the token endpoint with the headers the guide asks for, but no credentials.
    fn post(&self) -> RequestBuilder {
        self.c
            .post(self.at("oauth2/token"))
            .header(ACCEPT, "application/json")
    }

    fn token(&self, client: &ClientRegistration) -> RequestBuilder {
        self.post().basic_auth(&client.id, Some(&client.secret))
    }

    async fn refresh(&self, client: &ClientRegistration, token: &str) -> Answer {
        Answer::of(self.token(client).form(&refresh_form(token))).await
    }

    async fn exchange(&self, code: &str, redirect_uri: &str) -> Answer {
        let form = [("grant_type", "authorization_code"), ("scope", "vms.all")];
        let form = [&form[..], &[("code", code), ("redirect_uri", redirect_uri)]].concat();
        Answer::of(self.token(&rot()).form(&form)).await
    }

    async fn authorize(&self, client_id: &str, redirect_uri: &str) -> Answer {
        let mut url = self.at("oauth2/authorize");
        url.query_pairs_mut().extend_pairs([
            ("scope", "vms.all"),
            ("client_id", client_id),
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("state", "xyz 1"),
        ]);
        Answer::of(self.c.get(url)).await
    }

    /// Phase 1 over HTTP: the code the redirect carries.
    async fn code(&self) -> String {
        let location = self
            .authorize(&rot().id, REDIRECT)
            .await
            .header("location")
            .unwrap()
            .to_owned();
        let location = url::Url::parse(&location).unwrap();
        location
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned()
    }

    async fn users_self(&self, access_token: &str) -> u16 {
        let request = self
            .c
            .get(self.at("api/v3.0/users/self"))
            .bearer_auth(access_token);
        Answer::of(request).await.status
    }
}

#[tokio::test]
async fn code_exchange_answers_the_vendors_body_pointing_at_the_standin() {
    let h = Harness::new().await;
    let answer = h.exchange(&h.code().await, REDIRECT).await;
    let (access, refresh) = (answer.text("access_token"), answer.text("refresh_token"));
    let port = h.s.url().port().unwrap();
    let expected = json!({
        "access_token": access, "expires_in": 43_200,
        "httpsBaseUrl": { "hostname": "127.0.0.1", "port": port },
        "refresh_token": refresh, "scope": "vms.all", "token_type": "Bearer",
    });
    assert_eq!(answer.ok(), &expected);
    assert_eq!(refresh.len(), 100);
    let parts: Vec<&str> = access.split('.').collect();
    assert_eq!(parts.len(), 3);
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let fixed = ["iss", "aud", "client_id"].map(|k| claims[k].as_str().unwrap());
    assert_eq!(fixed, ["vms.auth.v1", "vms.api", "rotating-client"]);
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 43_200);
    assert_eq!(h.users_self(&access).await, 200);
    assert_eq!(h.s.counters().code_exchanges, 1);
}

#[tokio::test]
async fn refresh_rotates_and_kills_the_old_pair() {
    let h = Harness::new().await;
    let old = h.s.login(&rot().id);
    let new = h.refresh(&rot(), &old.refresh_token).await;
    let (new_refresh, new_access) = (new.text("refresh_token"), new.text("access_token"));
    assert_ne!(new_refresh, old.refresh_token);
    assert_ne!(new_access, old.access_token);
    assert!(!h.s.refresh_token_is_live(&old.refresh_token));
    assert!(!h.s.access_token_is_live(&old.access_token));
    assert!(h.s.refresh_token_is_live(&new_refresh) && h.s.access_token_is_live(&new_access));
    assert_eq!(h.users_self(&old.access_token).await, 401);
    assert_eq!(h.users_self(&new_access).await, 200);
    assert_eq!(h.s.counters().refreshes, 1);
}

#[tokio::test]
async fn reused_refresh_token_is_refused_and_counted() {
    let h = Harness::new().await;
    let old = h.s.login(&rot().id);
    let survivor = h
        .refresh(&rot(), &old.refresh_token)
        .await
        .text("refresh_token");
    assert_eq!(
        h.refresh(&rot(), &old.refresh_token).await.error(),
        DEAD_GRANT
    );
    let n = h.s.counters();
    assert_eq!(
        [n.reused_refresh_tokens, n.refreshes, n.rejected],
        [1, 1, 1]
    );
    assert!(
        h.s.refresh_token_is_live(&survivor),
        "a reuse does not end the chain"
    );
}

#[tokio::test]
async fn unused_refresh_token_dies_after_idle_ttl() {
    let h = Harness::new().await;
    let grant = h.s.login(&rot().id);
    h.s.advance_clock(14 * DAY - 5 * SECOND);
    assert!(h.s.refresh_token_is_live(&grant.refresh_token));
    h.s.advance_clock(5 * SECOND);
    assert!(!h.s.refresh_token_is_live(&grant.refresh_token));
    assert_eq!(
        h.refresh(&rot(), &grant.refresh_token).await.error(),
        DEAD_GRANT
    );
    assert_eq!(h.s.counters().reused_refresh_tokens, 0);
}

#[tokio::test]
async fn chain_dies_at_chain_ttl_even_when_refreshed() {
    let h = Harness::new().await;
    let mut token = h.s.login(&rot().id).refresh_token;
    for _ in 0..6 {
        h.s.advance_clock(13 * DAY);
        token = h.refresh(&rot(), &token).await.text("refresh_token");
    }
    // Day 78: idle would let this token live to day 92, but the chain ends at day 90.
    h.s.advance_clock(12 * DAY - 60 * SECOND);
    assert!(h.s.refresh_token_is_live(&token));
    h.s.advance_clock(60 * SECOND);
    assert_eq!(h.refresh(&rot(), &token).await.error(), DEAD_GRANT);
}

#[tokio::test]
async fn non_rotating_returns_same_refresh_token_and_active_access_token_until_expiry() {
    let config = StandInConfig {
        access_ttl: 3600 * SECOND,
        ..Default::default()
    };
    let h = Harness::start(config).await;
    let first = h.s.login(&perm().id);
    // 2999.999 s are left; whole seconds rounded down give 2999 unless the request takes
    // longer than a second to arrive (rounding to nearest would give 3000).
    h.s.advance_clock(Duration::from_millis(600_001));
    let again = h.refresh(&perm(), &first.refresh_token).await;
    assert_eq!(again.text("refresh_token"), first.refresh_token);
    assert_eq!(again.text("access_token"), first.access_token);
    assert_eq!(
        again.ok()["expires_in"],
        2999,
        "remaining whole seconds, rounded down"
    );

    h.s.advance_clock(3000 * SECOND);
    assert!(!h.s.access_token_is_live(&first.access_token));
    let fresh = h.refresh(&perm(), &first.refresh_token).await;
    assert_eq!(fresh.text("refresh_token"), first.refresh_token);
    assert_ne!(fresh.text("access_token"), first.access_token);
    assert_eq!(fresh.ok()["expires_in"], 3600);

    h.s.advance_clock(400 * DAY);
    h.refresh(&perm(), &first.refresh_token).await.ok();
    assert_eq!(h.s.counters().refreshes, 3);
}

#[tokio::test]
async fn code_is_single_use_and_expires() {
    let h = Harness::new().await;
    let code = h.code().await;
    h.exchange(&code, REDIRECT).await.ok();
    assert_eq!(h.exchange(&code, REDIRECT).await.error(), DEAD_GRANT);

    let late = h.code().await;
    h.s.advance_clock(5 * 60 * SECOND);
    assert_eq!(h.exchange(&late, REDIRECT).await.error(), DEAD_GRANT);
    assert_eq!(h.s.counters().code_exchanges, 1);
}

#[tokio::test]
async fn redirect_uri_must_match_exactly() {
    let h = Harness::new().await;
    let near_misses = [
        "http://127.0.0.1:3333/",
        "http://localhost:3333",
        "https://127.0.0.1:3333",
    ];
    for wrong in near_misses {
        let page = h.authorize(&rot().id, wrong).await;
        assert_eq!(
            (page.status, page.header("location")),
            (400, None),
            "{wrong}"
        );
    }
    assert_eq!(h.authorize("unknown-client", REDIRECT).await.status, 400);

    let approved = h.authorize(&rot().id, REDIRECT).await;
    assert_eq!(approved.status, 302);
    let location = approved.header("location").unwrap();
    assert!(
        location.starts_with("http://127.0.0.1:3333?code="),
        "{location}"
    );
    assert!(location.ends_with("&state=xyz+1"), "{location}");

    let code = h.code().await;
    let slash = h.exchange(&code, "http://127.0.0.1:3333/").await;
    assert_eq!(slash.error(), (400, "invalid_grant"));
    h.exchange(&code, REDIRECT).await.ok();
}

#[tokio::test]
async fn client_secret_with_reserved_characters_is_form_decoded() {
    let h = Harness::new().await;
    let odd = registration("odd:client", "a+b%2F c:d/e", true);
    h.s.register_client(odd.clone());
    let grant = h.s.login(&odd.id);
    let form = refresh_form(&grant.refresh_token);
    let encode = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let encoded = STANDARD.encode(format!("{}:{}", encode(&odd.id), encode(&odd.secret)));
    let rfc = h
        .post()
        .header(AUTHORIZATION, format!("Basic {encoded}"))
        .form(&form);
    Answer::of(rfc).await.ok();

    // The vendor's samples do not encode; a standard server then reads another id and secret.
    let raw = Answer::of(h.token(&odd).form(&form)).await;
    assert_eq!(raw.error(), (401, "invalid_client"));
}

#[tokio::test]
async fn query_parameters_are_refused() {
    let h = Harness::new().await;
    let grant = h.s.login(&rot().id);
    let mut url = h.at("oauth2/token");
    url.set_query(Some("scope=vms.all"));
    let request = h.c.post(url).header(ACCEPT, "application/json");
    let request = request.basic_auth(&rot().id, Some(rot().secret));
    let form = refresh_form(&grant.refresh_token);
    assert_eq!(Answer::of(request.form(&form)).await.error(), BAD_REQUEST);
    assert!(h.s.refresh_token_is_live(&grant.refresh_token));
}

#[tokio::test]
async fn json_body_is_refused() {
    let h = Harness::new().await;
    let grant = h.s.login(&rot().id);
    let body = json!({ "grant_type": "refresh_token", "refresh_token": grant.refresh_token });
    assert_eq!(
        Answer::of(h.token(&rot()).json(&body)).await.error(),
        BAD_REQUEST
    );
    // The guide's curl sample: JSON text under a form content type.
    let curl = h
        .token(&rot())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    assert_eq!(
        Answer::of(curl.body(body.to_string())).await.error(),
        BAD_REQUEST
    );
    assert!(h.s.refresh_token_is_live(&grant.refresh_token));
}

#[tokio::test]
async fn wrong_client_credentials_get_invalid_client() {
    let h = Harness::new().await;
    let grant = h.s.login(&rot().id);
    let post = || h.post().form(&refresh_form(&grant.refresh_token));
    let requests = [
        post().basic_auth("rotating-client", Some("wrong")),
        post().basic_auth("nobody", Some("rotating-secret")),
        post(),
    ];
    for request in requests {
        let answer = Answer::of(request).await;
        assert_eq!(answer.error(), (401, "invalid_client"));
        assert_eq!(
            answer.header("www-authenticate"),
            Some("Basic realm=\"oauth2\"")
        );
    }
    assert_eq!(h.s.counters().rejected, 3);
    assert!(h.s.refresh_token_is_live(&grant.refresh_token));
}

#[tokio::test]
async fn scope_other_than_vms_all_is_forbidden_and_unknown_grant_type_unsupported() {
    let h = Harness::new().await;
    let token = h.s.login(&rot().id).refresh_token;
    let mut form = refresh_form(&token);
    form[1].1 = "vms.read";
    let answer = Answer::of(h.token(&rot()).form(&form)).await;
    assert_eq!(answer.error(), (403, "invalid_scope"));
    let password = [("grant_type", "password"), ("scope", "vms.all")];
    let answer = Answer::of(h.token(&rot()).form(&password)).await;
    assert_eq!(answer.error(), (400, "unsupported_grant_type"));
    assert!(h.s.refresh_token_is_live(&token));
}

/// One HTTP/1.1 exchange over raw TCP, so that headers reqwest always adds can be left out and
/// a connection closed without a response can be told from an empty one.
async fn raw(s: &StandIn, accept: &str) -> Vec<u8> {
    let auth = STANDARD.encode("rotating-client:rotating-secret");
    let request = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Basic {auth}\r\n{accept}Content-Length: 19\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\r\ngrant_type=password",
    );
    let port = s.url().port().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(5 * SECOND, tcp.read_to_end(&mut answer)).await;
    // A reset is as good as a close here: either way the bytes read so far are the answer.
    let _ = read.expect("the stand-in answers or closes");
    answer
}

#[tokio::test]
async fn accept_must_allow_json_and_plain_http_works_without_tls() {
    let h = Harness::plain().await;
    assert_eq!((h.s.url().scheme(), h.s.ca_pem()), ("http", None));
    let missing = raw(&h.s, "").await;
    assert!(
        missing.starts_with(b"HTTP/1.1 406"),
        "{}",
        String::from_utf8_lossy(&missing)
    );
    let grant = h.s.login(&rot().id);
    let html = h.c.post(h.at("oauth2/token")).header(ACCEPT, "text/html");
    let html = html.basic_auth(&rot().id, Some(rot().secret));
    let answer = Answer::of(html.form(&refresh_form(&grant.refresh_token))).await;
    assert_eq!(answer.status, 406);
    h.refresh(&rot(), &grant.refresh_token).await.ok();
}

#[tokio::test]
async fn revoke_kills_the_refresh_token_and_its_access_token() {
    let h = Harness::new().await;
    let grant = h.s.login(&rot().id);
    let revoke =
        h.c.post(h.at("oauth2/revoke"))
            .basic_auth(&rot().id, Some(rot().secret));
    let answer = Answer::of(revoke.form(&[("token", &grant.refresh_token)])).await;
    assert_eq!(answer.status, 200);
    assert!(!h.s.refresh_token_is_live(&grant.refresh_token));
    assert!(!h.s.access_token_is_live(&grant.access_token));
    assert_eq!(
        h.refresh(&rot(), &grant.refresh_token).await.error(),
        DEAD_GRANT
    );
}

#[tokio::test]
async fn ended_chain_refuses_its_refresh_token() {
    let h = Harness::new().await;
    let grant = h.s.login(&rot().id);
    h.s.end_chain(&grant.refresh_token);
    assert!(!h.s.access_token_is_live(&grant.access_token));
    assert_eq!(
        h.refresh(&rot(), &grant.refresh_token).await.error(),
        DEAD_GRANT
    );
}

#[tokio::test]
async fn status_fault_answers_5xx_with_a_small_body() {
    let h = Harness::new().await;
    for code in [500, 502, 503] {
        h.s.inject(Fault::Status(code), 1);
        let answer = h.refresh(&rot(), "any").await;
        assert_eq!(answer.status, code);
        assert!(!answer.bytes.is_empty() && answer.bytes.len() < 200);
    }
}

#[tokio::test]
async fn too_many_requests_fault_sends_retry_after() {
    let h = Harness::new().await;
    h.s.inject(
        Fault::TooManyRequests {
            retry_after_secs: 7,
        },
        1,
    );
    let answer = h.refresh(&rot(), "any").await;
    assert_eq!(
        (answer.status, answer.header("retry-after")),
        (429, Some("7"))
    );
    let (code, status) = (answer.json["code"].as_u64(), answer.json["status"].as_str());
    assert_eq!((code, status), (Some(429), Some("tooManyRequests")));
    assert!(answer.json["message"].is_string());
}

#[tokio::test]
async fn non_json_fault_answers_200_with_html() {
    let h = Harness::new().await;
    h.s.inject(Fault::NonJson, 1);
    let answer = h.refresh(&rot(), "any").await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(serde_json::from_slice::<Value>(&answer.bytes).is_err());
}

#[tokio::test]
async fn oversized_fault_sends_exactly_that_many_bytes() {
    let h = Harness::new().await;
    h.s.inject(Fault::Oversized { bytes: 3 << 20 }, 1);
    let answer = h.refresh(&rot(), "any").await;
    assert_eq!((answer.status, answer.bytes.len()), (200, 3 << 20));
}

#[tokio::test]
async fn hang_fault_times_out_the_client_and_ends_at_shutdown() {
    let h = Harness::new().await;
    h.s.inject(Fault::Hang, 2);
    let request = h.token(&rot()).form(&refresh_form("any"));
    let impatient = request
        .try_clone()
        .unwrap()
        .timeout(Duration::from_millis(300));
    assert!(impatient.send().await.unwrap_err().is_timeout());
    // (On a loaded machine the impatient request may give up before it is even read.)
    let before = h.s.counters().token_requests;

    let hung = tokio::spawn(request.send());
    crate::support::eventually("the hung request to arrive", 5 * SECOND, || async {
        (h.s.counters().token_requests > before).then_some(())
    })
    .await;
    h.s.shutdown().await;
    let ended = tokio::time::timeout(2 * SECOND, hung)
        .await
        .expect("shutdown ends hung requests");
    assert!(ended.unwrap().is_err(), "a hung request gets no response");
}

#[tokio::test]
async fn dropped_connection_fault_closes_without_a_response() {
    let h = Harness::new().await;
    h.s.inject(Fault::DropConnection, 1);
    let request = h.token(&rot()).form(&refresh_form("any"));
    let error = request
        .send()
        .await
        .expect_err("no response, only a closed connection");
    assert!(!error.is_timeout() && error.status().is_none(), "{error:?}");

    let plain = Harness::plain().await;
    plain.s.inject(Fault::DropConnection, 1);
    let answer = raw(&plain.s, "Accept: application/json\r\n").await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(plain.s.counters().token_requests, 1);
}

#[tokio::test]
async fn delay_fault_answers_normally_after_the_delay() {
    let h = Harness::new().await;
    let grant = h.s.login(&rot().id);
    h.s.inject(Fault::Delay(Duration::from_millis(300)), 1);
    let begun = Instant::now();
    let rotated = h
        .refresh(&rot(), &grant.refresh_token)
        .await
        .text("refresh_token");
    assert!(begun.elapsed() >= Duration::from_millis(300));
    assert!(h.s.refresh_token_is_live(&rotated));
    assert_eq!(h.s.counters().refreshes, 1);
}

#[tokio::test]
async fn hold_fault_answers_normally_once_the_gate_opens_and_not_before() {
    let h = Harness::new().await;
    let grant = h.s.login(&rot().id);
    let gate = Gate::new();
    h.s.inject(Fault::Hold(gate.clone()), 1);
    let client = rot();
    let refresh = h.refresh(&client, &grant.refresh_token);
    tokio::pin!(refresh);
    // The request arrives and waits: nothing is rotated while the gate is shut.
    tokio::select! {
        _ = &mut refresh => panic!("answered before the gate opened"),
        _ = crate::support::eventually("the held request to arrive", 5 * SECOND, || async {
            (h.s.counters().token_requests > 0).then_some(())
        }) => {}
    }
    assert!(h.s.refresh_token_is_live(&grant.refresh_token));
    assert_eq!(h.s.counters().refreshes, 0);
    gate.open();
    let rotated = refresh.await.text("refresh_token");
    assert!(h.s.refresh_token_is_live(&rotated));
    assert_eq!(h.s.counters().refreshes, 1);
}

#[tokio::test]
async fn faulted_request_consumes_nothing() {
    let h = Harness::new().await;
    let grant = h.s.login(&rot().id);
    h.s.inject(Fault::Status(503), 1);
    h.s.inject(Fault::NonJson, 1);
    for expected in [503, 200] {
        assert_eq!(
            h.refresh(&rot(), &grant.refresh_token).await.status,
            expected
        );
        assert!(h.s.refresh_token_is_live(&grant.refresh_token));
        assert!(h.s.access_token_is_live(&grant.access_token));
    }
    let n = h.s.counters();
    assert_eq!([n.token_requests, n.refreshes, n.rejected], [2, 0, 0]);
    h.refresh(&rot(), &grant.refresh_token).await.ok();
    assert_eq!(h.s.counters().token_requests, 3);
}
