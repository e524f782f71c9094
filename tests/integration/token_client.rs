//! The token client against the auth stand-in, over real HTTPS: success paths, every error
//! class, every injected fault, the time limits and call slots, and what error and grant
//! text may show.

use std::time::{Duration, Instant};

use eagle_eye_operator::token::{
    ClientCredentials, ErrorClass, TokenClient, TokenClientOptions, TokenError, TokenGrant,
};
use eagle_eye_testbed::standin::{ClientRegistration, Fault, Gate, StandIn, StandInConfig};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

const SCOPE: &str = "vms.all";
const REDIRECT_URI: &str = "http://127.0.0.1:3333";
/// Every character RFC 6749 §2.3.1 encoding changes, plus a colon that splits naive parsers.
const AWKWARD_SECRET: &str = "s3cr+t%2F:/ wo rd%";

struct Env {
    stand_in: StandIn,
    client: TokenClient,
    creds: ClientCredentials,
}

fn options_for(stand_in: &StandIn) -> TokenClientOptions {
    TokenClientOptions {
        extra_ca_pem: stand_in.ca_pem().map(String::into_bytes),
        allowed_api_hosts: vec!["127.0.0.1".into()],
        ..TokenClientOptions::default()
    }
}

async fn env_with(secret: &str, options: impl FnOnce(&StandIn) -> TokenClientOptions) -> Env {
    let stand_in = StandIn::start(StandInConfig {
        tls: true,
        ..StandInConfig::default()
    })
    .await
    .expect("stand-in starts");
    stand_in.register_client(ClientRegistration {
        id: "operator-test".into(),
        secret: secret.into(),
        redirect_uris: vec![REDIRECT_URI.into()],
        rotating: true,
    });
    let client = TokenClient::new(options(&stand_in)).expect("token client builds");
    let creds = ClientCredentials {
        id: "operator-test".into(),
        secret: SecretString::from(secret),
    };
    Env {
        stand_in,
        client,
        creds,
    }
}

async fn env() -> Env {
    env_with("plain-secret", options_for).await
}

impl Env {
    async fn refresh(&self, refresh_token: &str) -> Result<TokenGrant, TokenError> {
        let token = SecretString::from(refresh_token);
        self.client
            .refresh(&self.stand_in.url(), &self.creds, &token, SCOPE)
            .await
    }

    async fn refresh_fresh_login(&self) -> Result<TokenGrant, TokenError> {
        let login = self.stand_in.login(&self.creds.id);
        self.refresh(&login.refresh_token).await
    }

    /// Phase 1 as a browser would do it, returning the code from the redirect.
    async fn authorize(&self) -> String {
        let browser = reqwest::Client::builder()
            .tls_certs_merge(
                reqwest::Certificate::from_pem_bundle(self.stand_in.ca_pem().unwrap().as_bytes())
                    .unwrap(),
            )
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut url = self.stand_in.url().join("oauth2/authorize").unwrap();
        url.query_pairs_mut()
            .append_pair("scope", SCOPE)
            .append_pair("client_id", &self.creds.id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", REDIRECT_URI);
        let response = browser.get(url).send().await.unwrap();
        assert_eq!(response.status(), 302);
        let location = response.headers()["location"].to_str().unwrap();
        let location = Url::parse(location).unwrap();
        let code = location.query_pairs().find(|(k, _)| k == "code");
        code.expect("redirect carries a code").1.into_owned()
    }

    async fn exchange(&self, code: &str, redirect_uri: &str) -> Result<TokenGrant, TokenError> {
        let code = SecretString::from(code);
        self.client
            .exchange_code(
                &self.stand_in.url(),
                &self.creds,
                &code,
                redirect_uri,
                SCOPE,
            )
            .await
    }
}

fn class_and_reason(err: &TokenError) -> (ErrorClass, &'static str) {
    (err.class(), err.reason())
}

#[tokio::test]
async fn refresh_returns_a_working_access_token_and_rotates_the_refresh_token() {
    let env = env().await;
    let login = env.stand_in.login("operator-test");
    let grant = env.refresh(&login.refresh_token).await.unwrap();

    assert!(
        env.stand_in
            .access_token_is_live(grant.access_token.expose_secret())
    );
    let new_refresh = grant
        .refresh_token
        .as_ref()
        .expect("rotating client gets a new one");
    assert_ne!(new_refresh.expose_secret(), login.refresh_token);
    assert!(
        env.stand_in
            .refresh_token_is_live(new_refresh.expose_secret())
    );
    assert!(!env.stand_in.refresh_token_is_live(&login.refresh_token));
    assert!(!env.stand_in.access_token_is_live(&login.access_token));
    assert_eq!(grant.expires_in, Duration::from_secs(12 * 3600));
    assert_eq!(grant.api.hostname, "127.0.0.1");
    assert_eq!(grant.scope, SCOPE);
    assert_eq!(grant.token_type, "Bearer");
    assert_eq!(env.stand_in.counters().refreshes, 1);
}

#[tokio::test]
async fn a_secret_with_reserved_characters_authenticates() {
    let env = env_with(AWKWARD_SECRET, options_for).await;
    let grant = env.refresh_fresh_login().await.unwrap();
    assert!(
        env.stand_in
            .access_token_is_live(grant.access_token.expose_secret())
    );
}

#[tokio::test]
async fn a_rotated_out_refresh_token_asks_for_a_new_login() {
    let env = env().await;
    let login = env.stand_in.login("operator-test");
    env.refresh(&login.refresh_token).await.unwrap();

    let err = env.refresh(&login.refresh_token).await.unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::Reauthorize, "InvalidGrant")
    );
    assert_eq!(err.oauth_error(), Some("invalid_grant"));
    assert_eq!(env.stand_in.counters().reused_refresh_tokens, 1);
}

#[tokio::test]
async fn an_ended_chain_asks_for_a_new_login() {
    let env = env().await;
    let login = env.stand_in.login("operator-test");
    env.stand_in.end_chain(&login.refresh_token);
    let err = env.refresh(&login.refresh_token).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Reauthorize);
}

#[tokio::test]
async fn a_wrong_secret_is_a_client_configuration_error() {
    let env = env().await;
    let login = env.stand_in.login("operator-test");
    let wrong = ClientCredentials {
        id: env.creds.id.clone(),
        secret: SecretString::from("not-the-secret"),
    };
    let token = SecretString::from(login.refresh_token.as_str());
    let err = env
        .client
        .refresh(&env.stand_in.url(), &wrong, &token, SCOPE)
        .await
        .unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::ClientConfig, "InvalidClient")
    );
    assert_eq!(err.status(), Some(401));
    assert!(env.stand_in.refresh_token_is_live(&login.refresh_token));
}

#[tokio::test]
async fn a_scope_the_client_may_not_use_is_forbidden() {
    let env = env().await;
    let login = env.stand_in.login("operator-test");
    let token = SecretString::from(login.refresh_token.as_str());
    let err = env
        .client
        .refresh(&env.stand_in.url(), &env.creds, &token, "vms.none")
        .await
        .unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::ClientConfig, "Forbidden")
    );
}

#[tokio::test]
async fn an_authorization_code_is_exchanged_once() {
    let env = env().await;
    let code = env.authorize().await;
    let grant = env.exchange(&code, REDIRECT_URI).await.unwrap();
    assert!(
        env.stand_in
            .access_token_is_live(grant.access_token.expose_secret())
    );
    assert!(
        env.stand_in
            .refresh_token_is_live(grant.refresh_token.unwrap().expose_secret())
    );
    assert_eq!(env.stand_in.counters().code_exchanges, 1);

    let err = env.exchange(&code, REDIRECT_URI).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Reauthorize);
}

#[tokio::test]
async fn a_code_with_another_redirect_uri_is_refused() {
    let env = env().await;
    let code = env.authorize().await;
    let err = env
        .exchange(&code, "http://localhost:3333")
        .await
        .unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::Reauthorize, "InvalidGrant")
    );
}

#[tokio::test]
async fn revoking_a_refresh_token_kills_it() {
    let env = env().await;
    let login = env.stand_in.login("operator-test");
    let token = SecretString::from(login.refresh_token.as_str());
    env.client
        .revoke(&env.stand_in.url(), &env.creds, &token)
        .await
        .unwrap();
    assert!(!env.stand_in.refresh_token_is_live(&login.refresh_token));
    let err = env.refresh(&login.refresh_token).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Reauthorize);
}

#[tokio::test]
async fn server_errors_are_transient() {
    let env = env().await;
    env.stand_in.inject(Fault::Status(503), 1);
    let err = env.refresh_fresh_login().await.unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::Transient, "ServerError")
    );
    assert_eq!(err.status(), Some(503));
    // The fault consumed one request; the next one works.
    env.refresh_fresh_login().await.unwrap();
}

#[tokio::test]
async fn rate_limiting_is_transient_and_carries_retry_after() {
    let env = env().await;
    env.stand_in.inject(
        Fault::TooManyRequests {
            retry_after_secs: 7,
        },
        1,
    );
    let err = env.refresh_fresh_login().await.unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::Transient, "RateLimited")
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn an_html_answer_is_a_malformed_response() {
    let env = env().await;
    env.stand_in.inject(Fault::NonJson, 1);
    let err = env.refresh_fresh_login().await.unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::Transient, "MalformedResponse")
    );
}

#[tokio::test]
async fn an_oversized_answer_is_refused() {
    let env = env().await;
    env.stand_in
        .inject(Fault::Oversized { bytes: 1024 * 1024 }, 1);
    let err = env.refresh_fresh_login().await.unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::Transient, "ResponseTooLarge")
    );
    assert!(err.refresh_token().is_none(), "that answer carried none");

    // Just over a small cap, so the limit is what refuses it, not luck.
    let env = env_with("plain-secret", |s| TokenClientOptions {
        max_response_bytes: 4096,
        ..options_for(s)
    })
    .await;
    env.stand_in.inject(Fault::Oversized { bytes: 4097 }, 1);
    let err = env.refresh_fresh_login().await.unwrap_err();
    assert_eq!(err.reason(), "ResponseTooLarge");
}

/// Options with short limits, for tests of what happens when they run out.
fn short_limits(s: &StandIn, connect: Duration, answer: Duration) -> TokenClientOptions {
    TokenClientOptions {
        connect_timeout: connect,
        answer_timeout: answer,
        ..options_for(s)
    }
}

#[tokio::test]
async fn a_hanging_endpoint_past_the_answer_limit_is_an_unknown_outcome() {
    let second = Duration::from_secs(1);
    let env = env_with("plain-secret", |s| short_limits(s, second, second)).await;
    assert_eq!(env.client.answer_limit(), 2 * second);
    env.stand_in.inject(Fault::Hang, 1);
    let started = Instant::now();
    let err = env.refresh_fresh_login().await.unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::OutcomeUnknown, "OutcomeUnknown")
    );
    assert!(err.to_string().contains("no answer came in time"), "{err}");
    assert!(started.elapsed() < 4 * second, "{:?}", started.elapsed());
    // The request did reach the server, which is why the outcome is unknown.
    let log = env.stand_in.token_requests();
    assert_eq!((log.len(), log[0].status), (1, None));
}

#[tokio::test]
async fn a_twelve_second_answer_is_received_not_abandoned() {
    // The case: connecting may take 10 s at most, but the answer may take longer.
    let env = env_with("plain-secret", |s| TokenClientOptions {
        answer_timeout: Duration::from_secs(30),
        ..options_for(s)
    })
    .await;
    env.stand_in
        .inject(Fault::Delay(Duration::from_secs(12)), 1);
    let login = env.stand_in.login("operator-test");
    let started = Instant::now();
    let grant = env.refresh(&login.refresh_token).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(12));
    let rotated = grant
        .refresh_token
        .expect("a rotating client gets a new one");
    assert!(env.stand_in.refresh_token_is_live(rotated.expose_secret()));
    assert!(!env.stand_in.refresh_token_is_live(&login.refresh_token));
}

#[tokio::test]
async fn a_slow_answer_within_an_overall_timeout_is_fine() {
    let env = env_with("plain-secret", |s| TokenClientOptions {
        timeout: Duration::from_secs(5),
        ..options_for(s)
    })
    .await;
    env.stand_in
        .inject(Fault::Delay(Duration::from_millis(300)), 1);
    env.refresh_fresh_login().await.unwrap();
}

#[tokio::test]
async fn an_overall_timeout_that_cuts_an_answer_short_is_an_unknown_outcome() {
    let env = env_with("plain-secret", |s| TokenClientOptions {
        timeout: Duration::from_secs(1),
        ..options_for(s)
    })
    .await;
    env.stand_in.inject(Fault::Delay(Duration::from_secs(3)), 1);
    let err = env.refresh_fresh_login().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown);
}

#[tokio::test]
async fn a_connection_dropped_after_the_request_was_read_is_an_unknown_outcome() {
    let env = env().await;
    env.stand_in.inject(Fault::DropConnection, 1);
    let err = env.refresh_fresh_login().await.unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::OutcomeUnknown, "OutcomeUnknown")
    );
    assert!(err.to_string().contains("connection closed"), "{err}");
    assert_eq!(env.stand_in.token_requests().len(), 1);
}

#[tokio::test]
async fn a_closed_port_is_transient_because_nothing_was_sent() {
    let env = env().await;
    let login = env.stand_in.login("operator-test");
    let url = env.stand_in.url();
    env.stand_in.shutdown().await;
    let token = SecretString::from(login.refresh_token.as_str());
    let err = env
        .client
        .refresh(&url, &env.creds, &token, SCOPE)
        .await
        .unwrap_err();
    assert_eq!(class_and_reason(&err), (ErrorClass::Transient, "Connect"));
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn with_two_call_slots_a_third_call_reaches_the_server_only_once_one_frees() {
    let env = env_with("plain-secret", |s| TokenClientOptions {
        max_concurrent_calls: 2,
        ..options_for(s)
    })
    .await;
    let gate = Gate::new();
    env.stand_in.inject(Fault::Hold(gate.clone()), 3);
    let tokens: Vec<String> = (0..3)
        .map(|_| env.stand_in.login("operator-test").refresh_token)
        .collect();
    let calls = futures::future::join_all(tokens.iter().map(|t| env.refresh(t)));
    let watch = async {
        let arrived = tokio::time::timeout(Duration::from_secs(10), async {
            while env.stand_in.token_requests().len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(arrived.is_ok(), "two calls reach the stand-in");
        // Long enough for a third call to arrive, were it let through.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(env.stand_in.token_requests().len(), 2, "the third waits");
        assert_eq!(env.client.in_flight(), 2);
        let opened = Instant::now();
        gate.open();
        opened
    };
    let (results, opened) = tokio::join!(calls, watch);
    for result in results {
        result.unwrap();
    }
    let log = env.stand_in.token_requests();
    assert_eq!(log.len(), 3);
    assert!(
        log[2].arrived >= opened,
        "the third arrived only after the gate opened"
    );
    assert_eq!(env.client.in_flight(), 0);
}

#[tokio::test]
async fn a_reserved_slot_makes_other_calls_wait_and_a_call_dropped_while_waiting_sends_nothing() {
    let env = env_with("plain-secret", |s| TokenClientOptions {
        max_concurrent_calls: 1,
        ..options_for(s)
    })
    .await;
    let slot = env.client.reserve(&env.stand_in.url(), "").await;
    let deadline = slot.deadline();
    let waiting = tokio::time::timeout(Duration::from_millis(300), env.refresh_fresh_login());
    assert!(waiting.await.is_err(), "no slot free: the call waits");
    assert_eq!(env.stand_in.token_requests().len(), 0);

    let login = env.stand_in.login("operator-test");
    let token = SecretString::from(login.refresh_token.as_str());
    let grant = env
        .client
        .refresh_with(slot, &env.stand_in.url(), &env.creds, &token, SCOPE)
        .await
        .unwrap();
    assert!(Instant::now() < deadline);
    assert!(grant.refresh_token.is_some());
    assert_eq!(env.stand_in.token_requests().len(), 1);
    env.refresh_fresh_login().await.unwrap();
}

/// Refreshes a fresh login with `fault` injected; returns the error and the token sent.
async fn refresh_with_fault(env: &Env, fault: Fault) -> (TokenError, String) {
    env.stand_in.inject(fault, 1);
    let login = env.stand_in.login("operator-test");
    let err = env.refresh(&login.refresh_token).await.unwrap_err();
    (err, login.refresh_token)
}

/// The token an error carries is the live one the stand-in rotated to, the one sent dead.
fn assert_carries_the_rotated_token(env: &Env, err: &TokenError, sent: &str) {
    let carried = err
        .refresh_token()
        .expect("the error carries the new token");
    assert!(
        env.stand_in.refresh_token_is_live(carried.expose_secret()),
        "the carried token is the live one: {err}"
    );
    assert!(!env.stand_in.refresh_token_is_live(sent));
}

#[tokio::test]
async fn a_rotated_token_in_an_answer_over_the_size_cap_is_handed_on() {
    let env = env().await;
    // Over the 64 KiB cap, and over the 1 MiB read ceiling too.
    for bytes in [100_000, 3 * 1024 * 1024] {
        let (err, sent) = refresh_with_fault(&env, Fault::Padded { bytes }).await;
        assert_eq!(
            class_and_reason(&err),
            (ErrorClass::Transient, "ResponseTooLarge")
        );
        assert_carries_the_rotated_token(&env, &err, &sent);
    }
}

#[tokio::test]
async fn a_rotated_token_in_an_answer_that_is_not_utf8_is_handed_on() {
    let env = env().await;
    let (err, sent) = refresh_with_fault(&env, Fault::InvalidUtf8).await;
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::Transient, "MalformedResponse")
    );
    assert_carries_the_rotated_token(&env, &err, &sent);
}

#[tokio::test]
async fn an_api_host_outside_the_allow_list_is_a_configuration_refusal_that_keeps_the_token() {
    let vendor_only = env_with("plain-secret", |s| TokenClientOptions {
        allowed_api_hosts: vec!["*.eagleeyenetworks.com".into()],
        ..options_for(s)
    })
    .await;
    let login = vendor_only.stand_in.login("operator-test");
    let err = vendor_only.refresh(&login.refresh_token).await.unwrap_err();
    assert_eq!(
        class_and_reason(&err),
        (ErrorClass::RefusedByConfig, "ApiHostNotAllowed")
    );
    assert!(
        err.to_string()
            .contains("\"127.0.0.1\" (httpsBaseUrl.hostname)"),
        "{err}"
    );
    assert_carries_the_rotated_token(&vendor_only, &err, &login.refresh_token);

    // The same when the answer names a foreign host and the list allows only the stand-in.
    let stand_in_only = env().await;
    let (err, sent) = refresh_with_fault(&stand_in_only, Fault::ForeignApiHost).await;
    assert_eq!(err.reason(), "ApiHostNotAllowed");
    assert!(err.to_string().contains("api.foreign.example"), "{err}");
    assert_carries_the_rotated_token(&stand_in_only, &err, &sent);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let env = env_with("plain-secret", |s| TokenClientOptions {
        extra_ca_pem: None,
        ..options_for(s)
    })
    .await;
    let err = env.refresh_fresh_login().await.unwrap_err();
    assert_eq!(class_and_reason(&err), (ErrorClass::Transient, "Connect"));
    assert!(
        err.to_string().contains("TLS certificate rejected"),
        "{err}"
    );
    assert_eq!(env.stand_in.counters().token_requests, 0);
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let stand_in = StandIn::start(StandInConfig {
        tls: false,
        ..StandInConfig::default()
    })
    .await
    .unwrap();
    stand_in.register_client(ClientRegistration {
        id: "operator-test".into(),
        secret: "plain-secret".into(),
        redirect_uris: vec![REDIRECT_URI.into()],
        rotating: true,
    });
    let creds = ClientCredentials {
        id: "operator-test".into(),
        secret: SecretString::from("plain-secret"),
    };
    let login = stand_in.login("operator-test");
    let token = SecretString::from(login.refresh_token.as_str());
    let strict = TokenClient::new(TokenClientOptions {
        allowed_api_hosts: vec!["127.0.0.1".into()],
        ..TokenClientOptions::default()
    })
    .unwrap();
    let err = strict
        .refresh(&stand_in.url(), &creds, &token, SCOPE)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Config(_)), "{err:?}");
    assert_eq!(stand_in.counters().token_requests, 0);

    let lax = TokenClient::new(TokenClientOptions {
        allow_http: true,
        allowed_api_hosts: vec!["127.0.0.1".into()],
        ..TokenClientOptions::default()
    })
    .unwrap();
    lax.refresh(&stand_in.url(), &creds, &token, SCOPE)
        .await
        .unwrap();
}

#[tokio::test]
async fn no_error_or_grant_text_shows_secrets_tokens_or_bodies() {
    let limit = Duration::from_secs(2);
    let env = env_with(AWKWARD_SECRET, |s| short_limits(s, limit, limit)).await;
    let mut secrets: Vec<String> = vec![AWKWARD_SECRET.into(), "s3cr".into()];
    let mut texts = Vec::new();
    let mut record =
        |result: Result<TokenGrant, TokenError>, secrets: &mut Vec<String>| match result {
            Ok(grant) => {
                secrets.push(grant.access_token.expose_secret().to_owned());
                if let Some(rt) = &grant.refresh_token {
                    secrets.push(rt.expose_secret().to_owned());
                }
                texts.push(format!("{grant:?}"));
            }
            Err(err) => {
                if let Some(rt) = err.refresh_token() {
                    secrets.push(rt.expose_secret().to_owned());
                }
                texts.push(format!("{err} | {err:?}"));
            }
        };

    let login = env.stand_in.login("operator-test");
    secrets.push(login.access_token.clone());
    secrets.push(login.refresh_token.clone());
    record(env.refresh(&login.refresh_token).await, &mut secrets);
    // The rotated-out token, sent again.
    record(env.refresh(&login.refresh_token).await, &mut secrets);

    let wrong = ClientCredentials {
        id: env.creds.id.clone(),
        secret: SecretString::from("wr0ng-s3cret"),
    };
    secrets.push("wr0ng-s3cret".into());
    let rt = env.stand_in.login("operator-test").refresh_token;
    secrets.push(rt.clone());
    let token = SecretString::from(rt.as_str());
    record(
        env.client
            .refresh(&env.stand_in.url(), &wrong, &token, SCOPE)
            .await,
        &mut secrets,
    );

    let code = env.authorize().await;
    secrets.push(code.clone());
    record(
        env.exchange(&code, "http://localhost:3333").await,
        &mut secrets,
    );

    for fault in [
        Fault::Status(500),
        Fault::TooManyRequests {
            retry_after_secs: 3,
        },
        Fault::NonJson,
        Fault::Oversized { bytes: 200_000 },
        Fault::DropConnection,
        Fault::Hang,
        Fault::ForeignApiHost,
        Fault::Padded {
            bytes: 2 * 1024 * 1024,
        },
        Fault::InvalidUtf8,
    ] {
        env.stand_in.inject(fault, 1);
        let rt = env.stand_in.login("operator-test").refresh_token;
        secrets.push(rt.clone());
        record(env.refresh(&rt).await, &mut secrets);
    }
    texts.push(format!("{:?}", env.creds));

    let body_fragments = [
        "fault injected",
        "Internal Server Error",
        "tooManyRequests",
        "Too many requests",
        "Maintenance",
        "back soon",
        "html",
        "AAAAAAAA",
        "xxxxxxxx",
        "note",
    ];
    assert!(texts.len() >= 14, "{texts:#?}");
    let carried = texts
        .iter()
        .filter(|t| t.contains("refresh_token: Some("))
        .count();
    assert!(
        carried >= 3,
        "errors carrying a rotated token were checked: {texts:#?}"
    );
    for text in &texts {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret or token leaked into: {text}"
            );
        }
        for fragment in body_fragments {
            assert!(
                !text.contains(fragment),
                "response text {fragment:?} leaked into: {text}"
            );
        }
    }
}
