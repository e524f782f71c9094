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
    let port = closed_port();
    let first = client.reserve(&port, "ns").await;
    let second = clone.reserve(&port, "ns").await;
    assert_eq!(client.in_flight(), 2);
    // A third waits: both clones share the slots.
    let third = tokio::time::timeout(Duration::from_millis(100), client.reserve(&port, "ns")).await;
    assert!(third.is_err(), "no third slot while two are held");
    drop(first);
    assert_eq!(clone.in_flight(), 1);
    // Using a slot frees it when the call ends, whatever the outcome.
    let err = client
        .refresh_with(
            second,
            &port,
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
    let slot = client.reserve(&closed_port(), "ns").await;
    let after = Instant::now();
    let span = MAX_SLOT_HOLD + client.answer_limit();
    assert!(slot.deadline() >= before + span && slot.deadline() <= after + span);
    assert!(slot.remaining() <= span && slot.remaining() > span - Duration::from_secs(5));
}

#[tokio::test]
async fn a_slot_held_too_long_sends_nothing() {
    let client = client_with_slots(1);
    let port = closed_port();
    let mut slot = client.reserve(&port, "ns").await;
    slot.start_by = Instant::now() - Duration::from_millis(1);
    // The port is closed: had anything been tried, this would be a Connect error.
    let err = client
        .refresh_with(slot, &port, &creds(), &SecretString::from("rt"), "vms.all")
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
    let port = closed_port();
    let slot = other.reserve(&port, "ns").await;
    let err = client
        .refresh_with(slot, &port, &creds(), &SecretString::from("rt"), "vms.all")
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

fn dest(port: u16) -> Url {
    Url::parse(&format!("https://auth.example.com:{port}/")).unwrap()
}

/// Polls a reservation once: `Some` when granted at once; else it stays in the queue.
fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    futures::FutureExt::now_or_never(fut)
}

#[tokio::test]
async fn a_freed_slot_goes_to_the_waiting_namespace_holding_the_fewest_not_the_earliest() {
    let client = client_with_slots(2);
    let (a1, _a2) = (
        client.reserve(&dest(443), "a").await,
        client.reserve(&dest(443), "a").await,
    );
    // Namespace a asks first for a third slot, b after it.
    let mut a3 = Box::pin(client.reserve(&dest(443), "a"));
    let mut b1 = Box::pin(client.reserve(&dest(443), "b"));
    assert!(poll_once(&mut a3).is_none() && poll_once(&mut b1).is_none());
    drop(a1);
    let granted = poll_once(&mut b1);
    assert!(granted.is_some(), "b, holding none, gets the freed slot");
    assert!(poll_once(&mut a3).is_none(), "a, holding one, waits on");
}

#[tokio::test]
async fn among_namespaces_holding_as_many_the_earliest_waiter_gets_the_slot() {
    let client = client_with_slots(1);
    let held = client.reserve(&dest(443), "x").await;
    let mut b = Box::pin(client.reserve(&dest(443), "b"));
    let mut a = Box::pin(client.reserve(&dest(443), "a"));
    assert!(poll_once(&mut b).is_none() && poll_once(&mut a).is_none());
    drop(held);
    let granted = poll_once(&mut b);
    assert!(granted.is_some());
    assert!(poll_once(&mut a).is_none());
}

#[tokio::test]
async fn a_destination_whose_slots_are_all_held_does_not_delay_calls_to_another() {
    let client = client_with_slots(2);
    // Namespace a's calls to a port that never answers hold every slot of that destination.
    let _stuck = (
        client.reserve(&dest(9443), "a").await,
        client.reserve(&dest(9443), "a").await,
    );
    let mut more_stuck = Box::pin(client.reserve(&dest(9443), "b"));
    assert!(poll_once(&mut more_stuck).is_none());
    // Namespace b's call to the healthy destination starts at once.
    let mut healthy = Box::pin(client.reserve(&dest(443), "b"));
    let slot = poll_once(&mut healthy).expect("a slot of its own destination");
    assert_eq!(slot.destination(), &Destination::of(&dest(443)));
    assert_eq!(client.in_flight(), 3);
}

#[tokio::test]
async fn a_namespace_never_holds_more_than_its_ceiling_across_destinations() {
    let client = client_with_slots(2);
    let _held = (
        client.reserve(&dest(1001), "a").await,
        client.reserve(&dest(1002), "a").await,
    );
    let mut third = Box::pin(client.reserve(&dest(1003), "a"));
    assert!(poll_once(&mut third).is_none(), "a is at its ceiling of 2");
    let mut other = Box::pin(client.reserve(&dest(1003), "b"));
    assert!(poll_once(&mut other).is_some(), "b is not held up by a");
}

#[tokio::test]
async fn idle_destinations_are_forgotten() {
    let client = client_with_slots(1);
    let all = futures::future::join_all(
        (1..=50).map(|port| client.reserve(&dest(port), &format!("ns{port}"))),
    );
    let slots = tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .expect("one slot at each of 50 destinations at once");
    assert_eq!(client.busy_destinations(), 50);
    // A waiter that gives up leaves nothing behind either.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(20), client.reserve(&dest(1), "late")).await;
    assert!(gave_up.is_err());
    drop(slots);
    assert_eq!((client.busy_destinations(), client.in_flight()), (0, 0));
    let mut late = Box::pin(client.reserve(&dest(1), "late"));
    assert!(poll_once(&mut late).is_some());
}

#[tokio::test]
async fn a_waiter_that_gives_up_hands_its_turn_on() {
    let client = client_with_slots(1);
    let held = client.reserve(&dest(443), "a").await;
    let mut quitter = Box::pin(client.reserve(&dest(443), "b"));
    let mut next = Box::pin(client.reserve(&dest(443), "c"));
    assert!(poll_once(&mut quitter).is_none() && poll_once(&mut next).is_none());
    drop(quitter);
    drop(held);
    let granted = poll_once(&mut next);
    assert!(granted.is_some());
    assert_eq!(client.in_flight(), 1);
}

#[tokio::test]
async fn a_slot_reserved_for_one_destination_carries_no_call_to_another() {
    let client = client_with_slots(2);
    let slot = client.reserve(&closed_port(), "ns").await;
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
    assert!(
        matches!(&err, TokenError::Config(m) if m.contains("reserved for")),
        "{err:?}"
    );
    assert_eq!(client.in_flight(), 0);
}
