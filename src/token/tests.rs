//! The client against hand-made HTTP servers: bodies that never end or stall, handshakes
//! that never finish, and call slots.

use secrecy::ExposeSecret;

use super::*;

#[test]
fn client_with_default_options_builds() {
    TokenClient::new(TokenClientOptions::default()).unwrap();
}

#[test]
fn bad_allow_list_entries_are_config_errors() {
    let options = TokenClientOptions {
        allowed_api_hosts: vec!["https://api.eagleeyenetworks.com".into()],
        ..TokenClientOptions::default()
    };
    let err = TokenClient::new(options).unwrap_err();
    assert_eq!(
        (err.class(), err.reason()),
        (ErrorClass::ClientConfig, "Config")
    );
}

#[test]
fn extra_ca_must_hold_certificates() {
    for pem in [b"not a pem".to_vec(), Vec::new()] {
        let options = TokenClientOptions {
            extra_ca_pem: Some(pem),
            ..TokenClientOptions::default()
        };
        assert!(matches!(
            TokenClient::new(options),
            Err(TokenError::Config(_))
        ));
    }
}

#[tokio::test]
async fn http_auth_url_is_refused_before_any_request() {
    // Nothing listens on port 9: a request would fail with Connect, not Config.
    let client = TokenClient::new(TokenClientOptions::default()).unwrap();
    let creds = ClientCredentials {
        id: "id".into(),
        secret: SecretString::from("secret"),
    };
    let base = Url::parse("http://127.0.0.1:9").unwrap();
    let err = client
        .refresh(&base, &creds, &SecretString::from("rt"), "vms.all")
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Config(_)), "{err:?}");
    let err = client
        .revoke(&base, &creds, &SecretString::from("rt"))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Config(_)), "{err:?}");
}

/// A plain-HTTP server that answers every connection with `head`, then streams `chunk`
/// forever as a chunked body (or nothing more, when `chunk` is empty, leaving it hanging).
async fn endless_server(head: &'static str, chunk: &'static [u8]) -> Url {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if chunk.is_empty() {
                    std::future::pending::<()>().await;
                }
                let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
                // Ends when the client hangs up.
                while socket.write_all(&frame).await.is_ok() {}
            });
        }
    });
    url
}

fn lax_client(timeout: Duration) -> TokenClient {
    TokenClient::new(TokenClientOptions {
        allow_http: true,
        timeout,
        max_response_bytes: 4096,
        ..TokenClientOptions::default()
    })
    .unwrap()
}

fn creds() -> ClientCredentials {
    ClientCredentials {
        id: "id".into(),
        secret: SecretString::from("secret"),
    }
}

#[tokio::test]
async fn an_endless_body_without_length_is_cut_at_the_cap() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                transfer-encoding: chunked\r\n\r\n";
    let base = endless_server(head, &[b'A'; 1000]).await;
    let err = lax_client(Duration::from_secs(10))
        .refresh(&base, &creds(), &SecretString::from("rt"), "vms.all")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ResponseTooLarge");
}

#[tokio::test]
async fn a_success_body_that_stops_midway_is_an_unknown_outcome() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                content-length: 100\r\n\r\n{\"access_token\":";
    let base = endless_server(head, b"").await;
    let started = Instant::now();
    let err = lax_client(Duration::from_millis(500))
        .refresh(&base, &creds(), &SecretString::from("rt"), "vms.all")
        .await
        .unwrap_err();
    assert_eq!(
        (err.class(), err.reason()),
        (ErrorClass::OutcomeUnknown, "OutcomeUnknown")
    );
    assert!(err.refresh_token().is_none());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_refresh_token_read_before_the_answer_stalled_is_handed_on() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                content-length: 1000\r\n\r\n{\"refresh_token\":\"rt-new\",\"access_token\":\"";
    let base = endless_server(head, b"").await;
    let client = TokenClient::new(TokenClientOptions {
        allow_http: true,
        connect_timeout: Duration::from_millis(300),
        answer_timeout: Duration::from_millis(300),
        ..TokenClientOptions::default()
    })
    .unwrap();
    let err = client
        .refresh(&base, &creds(), &SecretString::from("rt"), "vms.all")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown);
    let carried = err.refresh_token().map(|t| t.expose_secret().to_owned());
    assert_eq!(carried.as_deref(), Some("rt-new"));
    assert!(!format!("{err} {err:?}").contains("rt-new"));
}

#[tokio::test]
async fn an_endless_body_carrying_a_refresh_token_hands_it_on() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                transfer-encoding: chunked\r\n\r\n\
                1f\r\n{\"refresh_token\":\"rt-new\",\"a\":\"\r\n";
    let base = endless_server(head, &[b'A'; 1000]).await;
    let started = Instant::now();
    let err = lax_client(Duration::from_secs(10))
        .refresh(&base, &creds(), &SecretString::from("rt"), "vms.all")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ResponseTooLarge");
    let carried = err.refresh_token().map(|t| t.expose_secret().to_owned());
    assert_eq!(carried.as_deref(), Some("rt-new"));
    // Read to the 1 MiB ceiling and no further: well within the limit.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_endless_error_body_still_yields_the_status() {
    let head = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 30\r\n\
                transfer-encoding: chunked\r\n\r\n";
    let base = endless_server(head, &[b'x'; 1000]).await;
    let err = lax_client(Duration::from_secs(10))
        .refresh(&base, &creds(), &SecretString::from("rt"), "vms.all")
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.reason()), (Some(503), "ServerError"));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test]
async fn unreachable_endpoint_is_a_transient_connect_error() {
    let options = TokenClientOptions {
        allow_http: true,
        ..TokenClientOptions::default()
    };
    let client = TokenClient::new(options).unwrap();
    let creds = ClientCredentials {
        id: "id".into(),
        secret: SecretString::from("secret"),
    };
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let err = client
        .refresh(&base, &creds, &SecretString::from("rt"), "vms.all")
        .await
        .unwrap_err();
    assert_eq!(
        (err.class(), err.reason()),
        (ErrorClass::Transient, "Connect")
    );
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn a_tls_handshake_that_never_finishes_is_a_transient_connect_timeout() {
    // The kernel completes the TCP handshake; nobody ever answers the TLS ClientHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("https://{}", listener.local_addr().unwrap())).unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let client = TokenClient::new(TokenClientOptions {
        connect_timeout: Duration::from_millis(300),
        ..TokenClientOptions::default()
    })
    .unwrap();
    let started = Instant::now();
    let err = client
        .refresh(&base, &creds(), &SecretString::from("rt"), "vms.all")
        .await
        .unwrap_err();
    assert_eq!(
        (err.class(), err.reason()),
        (ErrorClass::Transient, "Connect")
    );
    assert!(err.to_string().contains("connect timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    held.abort();
}

fn client_with_slots(max_concurrent_calls: usize) -> TokenClient {
    TokenClient::new(TokenClientOptions {
        allow_http: true,
        max_concurrent_calls,
        ..TokenClientOptions::default()
    })
    .unwrap()
}

fn closed_port() -> Url {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Url::parse(&format!("http://127.0.0.1:{port}")).unwrap()
}

#[tokio::test]
async fn reserved_slots_count_as_in_flight_until_dropped_or_used() {
    let client = client_with_slots(2);
    let clone = client.clone();
    assert_eq!((client.in_flight(), client.max_concurrent_calls()), (0, 2));
    let first = client.reserve().await;
    let second = clone.reserve().await;
    assert_eq!(client.in_flight(), 2);
    // A third waits: both clones share the slots.
    let third = tokio::time::timeout(Duration::from_millis(100), client.reserve()).await;
    assert!(third.is_err(), "no third slot while two are held");
    drop(first);
    assert_eq!(clone.in_flight(), 1);
    // Using a slot frees it when the call ends, whatever the outcome.
    let err = client
        .refresh_with(
            second,
            &closed_port(),
            &creds(),
            &SecretString::from("rt"),
            "vms.all",
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Connect");
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn a_slot_deadline_covers_the_hold_and_the_whole_call() {
    let client = client_with_slots(1);
    assert_eq!(client.answer_limit(), Duration::from_secs(310));
    let before = Instant::now();
    let slot = client.reserve().await;
    let after = Instant::now();
    let span = MAX_SLOT_HOLD + client.answer_limit();
    assert!(slot.deadline() >= before + span && slot.deadline() <= after + span);
    assert!(slot.remaining() <= span && slot.remaining() > span - Duration::from_secs(5));
}

#[tokio::test]
async fn a_slot_held_too_long_sends_nothing() {
    let client = client_with_slots(1);
    let mut slot = client.reserve().await;
    slot.start_by = Instant::now() - Duration::from_millis(1);
    // The port is closed: had anything been tried, this would be a Connect error.
    let err = client
        .refresh_with(
            slot,
            &closed_port(),
            &creds(),
            &SecretString::from("rt"),
            "vms.all",
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.class(), err.reason()),
        (ErrorClass::Transient, "SlotExpired")
    );
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn a_slot_of_another_client_is_refused() {
    let client = client_with_slots(1);
    let other = client_with_slots(1);
    let slot = other.reserve().await;
    let err = client
        .refresh_with(
            slot,
            &closed_port(),
            &creds(),
            &SecretString::from("rt"),
            "vms.all",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Config(_)), "{err:?}");
}

#[test]
fn limits_and_slots_are_validated() {
    let zero = Duration::ZERO;
    let day_and_a_bit = Duration::from_secs(24 * 3600 + 1);
    for options in [
        TokenClientOptions {
            max_concurrent_calls: 0,
            ..TokenClientOptions::default()
        },
        TokenClientOptions {
            answer_timeout: zero,
            ..TokenClientOptions::default()
        },
        TokenClientOptions {
            connect_timeout: zero,
            ..TokenClientOptions::default()
        },
        TokenClientOptions {
            timeout: zero,
            ..TokenClientOptions::default()
        },
        TokenClientOptions {
            answer_timeout: day_and_a_bit,
            ..TokenClientOptions::default()
        },
    ] {
        assert!(matches!(
            TokenClient::new(options),
            Err(TokenError::Config(_))
        ));
    }
}

#[test]
fn an_overall_ceiling_bounds_the_answer_limit() {
    let limit = |timeout| {
        TokenClient::new(TokenClientOptions {
            timeout,
            ..TokenClientOptions::default()
        })
        .unwrap()
        .answer_limit()
    };
    assert_eq!(limit(Duration::MAX), Duration::from_secs(310));
    assert_eq!(limit(Duration::from_secs(10)), Duration::from_secs(10));
    assert_eq!(limit(Duration::from_secs(1000)), Duration::from_secs(310));
}
