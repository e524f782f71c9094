//! Issue 8: ways the operator loses a login or stops working, each as a user observes it: the
//! credential's conditions and Events, the published Secret, the stand-in's count of refresh
//! tokens spent twice, and the operator process itself.

use std::time::{Duration, Instant};

use crate::support::operator::{
    Operator, api_accepts, create_credential, create_secrets_holding, login, ready, secret_data,
    stand_in,
};
use crate::support::{TestEnv, env, figure, get, series, within};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::{Fault, StandIn};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;

/// Ready reasons of a credential that holds a working token.
const WORKING: [&str; 2] = ["TokenRefreshed", "TokenValid"];
/// Ready reasons after which only a new Phase 1 login helps.
const LOST: [&str; 2] = ["ReauthorizationRequired", "RefreshTokenReverted"];

/// `text` with every known secret value replaced, so that a failure message never shows one.
fn redact(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.trim().is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s, "<redacted>"))
}

/// The lines of an operator's log that report a panic, secret values redacted.
fn panics_in(logs: &str, secrets: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = logs.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("panicked"))
        .map(|(i, l)| {
            // The panic's message is on the line after its location.
            let message = lines.get(i + 1).copied().unwrap_or_default();
            redact(&format!("{l} {message}"), secrets)
                .chars()
                .take(400)
                .collect()
        })
        .collect()
}

/// A Ready condition as (status, reason, message).
type ReadyCondition = (String, String, String);

/// `name`'s Ready condition as text, secret values redacted.
async fn describe(env: &TestEnv, name: &str, secrets: &[&str]) -> String {
    match ready(env, name).await {
        Some((s, r, m)) => format!("Ready={s} {r}: {}", redact(&m, secrets)),
        None => "no Ready condition".to_owned(),
    }
}

async fn stored_refresh_token(env: &TestEnv, name: &str) -> Option<String> {
    secret_data(env, &format!("{name}-refresh"))
        .await?
        .remove("refresh_token")
}

/// Waits until the refresh token stored for `name` is the live one at the stand-in: right
/// after a rotation it may be a few milliseconds away from its write-back.
async fn assert_stored_token_is_live(env: &TestEnv, si: &StandIn, name: &str) {
    let live = within(Duration::from_secs(20), || async {
        let stored = stored_refresh_token(env, name).await?;
        si.refresh_token_is_live(&stored).then_some(())
    })
    .await;
    assert!(
        live.is_some(),
        "the refresh token stored for {name} is not the live one at the auth server"
    );
}

/// Notes of the Events in `env`'s namespace.
async fn event_notes(env: &TestEnv) -> Vec<String> {
    crate::support::operator::all_events(env)
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .collect()
}

/// A TCP front for the stand-in that, like a real auth server, lets a request it has
/// received run to its end when the client hangs up. The stand-in alone drops a delayed
/// request whose client left (its HTTP server cancels the handler on the client's TLS
/// close_notify or end of stream), and so never rotates the token the request spent. The
/// front passes TLS through untouched except for the client's alerts, and keeps its side of
/// the connection open until the stand-in has answered. Returns the auth URL to give
/// credentials.
async fn finishing_front(si: &StandIn) -> String {
    use tokio::net::{TcpListener, TcpStream};
    let upstream = format!("127.0.0.1:{}", si.url().port().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                // Dropping the write half would end the stream to the stand-in: it lives as
                // long as this task.
                let (mut server_read, mut server_write) = server.into_split();
                let up = forward_tls_records_but_alerts(&mut client_read, &mut server_write);
                let down = async {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    // The client has gone: read the answer nobody waits for.
                    let _ = tokio::io::copy(&mut server_read, &mut tokio::io::sink()).await;
                };
                let both = futures::future::join(up, down);
                let _ = tokio::time::timeout(Duration::from_secs(60), both).await;
            });
        }
    });
    format!("https://127.0.0.1:{port}/")
}

/// Copies TLS records until the client's stream ends, leaving out alerts: plaintext ones
/// (content type 21) and TLS 1.3 encrypted ones (application data of exactly 19 bytes: a
/// 2-byte alert, its inner content type and a 16-byte tag; no HTTP request is that short).
async fn forward_tls_records_but_alerts(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut header = [0u8; 5];
    loop {
        if from.read_exact(&mut header).await.is_err() {
            return;
        }
        let mut body = vec![0; usize::from(u16::from_be_bytes([header[3], header[4]]))];
        if from.read_exact(&mut body).await.is_err() {
            return;
        }
        let alert = header[0] == 21 || (header[0] == 23 && body.len() == 19);
        if !alert && (to.write_all(&header).await.is_err() || to.write_all(&body).await.is_err()) {
            return;
        }
    }
}

// 0. A slow auth server.

#[tokio::test]
async fn a_slow_auth_server_that_answers_after_twelve_seconds_does_not_lose_the_login() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "slow-client", true).await;
    create_secrets_holding(&env, "slow", &login, &login.grant.refresh_token).await;
    // Every answer takes 12 s, and the server rotates the token whether or not the client
    // is still waiting for it.
    si.inject(Fault::Delay(Duration::from_secs(12)), 1000);
    let auth_url = finishing_front(&si).await;
    // The front's port, besides the stand-in's: an allow-list entry names its port.
    let front = url::Url::parse(&auth_url).unwrap();
    let front = format!("127.0.0.1:{}", front.port().unwrap());
    let _op = Operator::start(&env, &si, &["--allowed-auth-hosts", &front]).await;
    let started = Instant::now();
    create_credential(&env, "slow", &si, serde_json::json!({"authUrl": auth_url})).await;

    let secrets = [login.grant.refresh_token.as_str(), &login.client_secret];
    // Until it works, or its login is lost: at the auth server (a refresh token spent twice)
    // or as the credential reports it.
    let settled = within(Duration::from_secs(120), || async {
        let reason = ready(&env, "slow").await.map(|(_, r, _)| r);
        let reported =
            reason.is_some_and(|r| WORKING.contains(&r.as_str()) || LOST.contains(&r.as_str()));
        (reported || si.counters().reused_refresh_tokens > 0).then_some(())
    })
    .await;
    let ready_after = started.elapsed();
    let now = describe(&env, "slow", &secrets).await;
    let counters = si.counters();
    assert!(
        settled.is_some(),
        "neither Ready nor lost within 120 s: {now} ({counters:?})"
    );
    assert_eq!(
        counters.reused_refresh_tokens, 0,
        "the slow server cost the login, a refresh token was spent twice ({counters:?}); the credential reports {now}"
    );
    assert!(
        ready(&env, "slow")
            .await
            .is_some_and(|(s, r, _)| s == "True" && WORKING.contains(&r.as_str())),
        "the slow server cost the login: {now} ({counters:?})"
    );
    figure(format!(
        "Ready after {ready_after:?} with a 12 s auth server"
    ));
    // Every request sent has had its (slow) answer, so none is left to spend a token late.
    let answered = within(Duration::from_secs(30), || async {
        si.token_requests()
            .iter()
            .all(|r| r.status.is_some())
            .then_some(())
    })
    .await;
    assert!(
        answered.is_some(),
        "a token request is still unanswered after 30 s"
    );
    let counters = si.counters();
    assert_eq!(
        counters.reused_refresh_tokens, 0,
        "a late request spent a refresh token twice ({counters:?})"
    );
    assert!(
        ready(&env, "slow")
            .await
            .is_some_and(|(s, _, _)| s == "True"),
        "still Ready once every answer is in: {}",
        describe(&env, "slow", &secrets).await
    );
    assert_stored_token_is_live(&env, &si, "slow").await;
    let data = secret_data(&env, "slow-token")
        .await
        .expect("target Secret");
    assert!(
        api_accepts(&si, &data["base_url"], &data["access_token"]).await,
        "the published access token works"
    );
}

// 1. A stored refresh token with whitespace around it.

/// Stores the login's refresh token as `pad` writes it, and lets the operator refresh three
/// times (two rotations of tokens it stored itself).
async fn a_padded_refresh_token_survives_rotations(variant: &str, pad: fn(&str) -> String) {
    let env = env().await;
    // Access tokens of 10 s: a refresh every 6 to 7 s.
    let si = stand_in(Duration::from_secs(10)).await;
    let login = login(&si, &format!("padded-{variant}"), true).await;
    create_secrets_holding(&env, "pad", &login, &pad(&login.grant.refresh_token)).await;
    let op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "pad", &si, serde_json::json!({})).await;
    let secrets = [login.grant.refresh_token.as_str(), &login.client_secret];

    let addr = op.admin_addr().await;
    let reconciles = || async {
        series(&get(addr, "/metrics").await.1, "eagle_eye_reconciles_total").unwrap_or(0.0)
    };
    // Until three refreshes (the second and third spend tokens the operator stored itself),
    // or until the login is lost. The window from the first refresh on is where a hot
    // requeue would show.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut window: Option<(Instant, f64)> = None;
    let lost = loop {
        let counters = si.counters();
        if window.is_none() && counters.refreshes >= 1 {
            window = Some((Instant::now(), reconciles().await));
        }
        if counters.reused_refresh_tokens > 0 {
            break true;
        }
        if counters.refreshes >= 3 {
            break false;
        }
        if ready(&env, "pad")
            .await
            .is_some_and(|(_, r, _)| LOST.contains(&r.as_str()))
        {
            break true;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than 3 refreshes in 90 s ({counters:?}); the credential reports {}",
            describe(&env, "pad", &secrets).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let counters = si.counters();
    let now = describe(&env, "pad", &secrets).await;
    assert_eq!(
        counters.reused_refresh_tokens, 0,
        "a rotated-out refresh token was spent again ({counters:?}); the credential reports {now}"
    );
    assert!(!lost, "the login was lost: {now} ({counters:?})");
    let (window_start, reconciles_before) = window.expect("a first refresh");
    let reconciled = reconciles().await - reconciles_before;
    assert!(
        ready(&env, "pad")
            .await
            .is_some_and(|(s, r, _)| s == "True" && WORKING.contains(&r.as_str())),
        "not Ready after three refreshes: {now}"
    );
    assert_stored_token_is_live(&env, &si, "pad").await;

    // No hot requeue: every token request was one successful refresh, spaced as the tokens'
    // life asks (6 to 7 s), and reconciles stayed few over the two rotations.
    let requests = si.token_requests();
    let statuses: Vec<Option<u16>> = requests.iter().map(|r| r.status).collect();
    let gaps: Vec<Duration> = requests
        .windows(2)
        .map(|w| w[1].arrived - w[0].arrived)
        .collect();
    figure(format!(
        "{variant}: {} token requests, gaps {gaps:?}; {reconciled} reconciles over {:?}",
        requests.len(),
        window_start.elapsed()
    ));
    assert!(
        statuses.iter().all(|s| matches!(s, Some(200) | None)),
        "every token request was a successful refresh: {statuses:?}"
    );
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_secs(2)),
        "token requests came too close together: {gaps:?}"
    );
    assert!(
        reconciled <= 40.0,
        "{reconciled} reconciles over two rotations ({:?}): a hot requeue",
        window_start.elapsed()
    );
}

#[tokio::test]
async fn a_stored_refresh_token_with_a_trailing_newline_survives_rotations_without_hot_requeue() {
    a_padded_refresh_token_survives_rotations("lf", |t| format!("{t}\n")).await;
}

#[tokio::test]
async fn a_stored_refresh_token_with_a_trailing_crlf_survives_rotations_without_hot_requeue() {
    a_padded_refresh_token_survives_rotations("crlf", |t| format!("{t}\r\n")).await;
}

#[tokio::test]
async fn a_stored_refresh_token_with_surrounding_spaces_survives_rotations_without_hot_requeue() {
    a_padded_refresh_token_survives_rotations("spaces", |t| format!("  {t}  ")).await;
}

// 2. One tenant's Secret must not stop the operator for the others.

#[tokio::test]
async fn a_login_time_near_the_end_of_time_in_one_namespace_does_not_stop_another() {
    let (env_a, env_b) = (env().await, env().await);
    // One auth server for both tenants: the operator trusts one CA file.
    let si = stand_in(Duration::from_secs(10)).await;
    let hostile = login(&si, "hostile-client", true).await;
    let normal = login(&si, "normal-client", true).await;
    create_secrets_holding(&env_a, "a", &hostile, &hostile.grant.refresh_token).await;
    let refresh = env_a.api::<Secret>();
    let mut annotated = refresh.get("a-refresh").await.unwrap();
    annotated.metadata.annotations = Some(
        [(
            "eagle-eye-operator.io/login-time".to_string(),
            "9999-12-30T00:00:00Z".to_string(),
        )]
        .into(),
    );
    refresh
        .replace("a-refresh", &PostParams::default(), &annotated)
        .await
        .unwrap();
    create_secrets_holding(&env_b, "b", &normal, &normal.grant.refresh_token).await;
    // One process watching both namespaces (`start` names A; the flag adds B).
    let mut op = Operator::start(&env_a, &si, &["--namespaces", &env_b.namespace]).await;
    let addr = op.admin_addr().await;
    create_credential(&env_a, "a", &si, serde_json::json!({})).await;
    create_credential(&env_b, "b", &si, serde_json::json!({})).await;
    let secrets = [
        hostile.grant.refresh_token.as_str(),
        &hostile.client_secret,
        &normal.grant.refresh_token,
        &normal.client_secret,
    ];

    // B keeps refreshing: three rotations of its stored refresh token, while the process
    // stays up throughout.
    let mut seen_b = vec![normal.grant.refresh_token.clone()];
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen_b.len() < 4 {
        if !op.is_running() {
            panic!(
                "the operator process exited; panics in its log: {:#?}",
                panics_in(&op.logs(), &secrets)
            );
        }
        if Instant::now() > deadline {
            let b_now = describe(&env_b, "b", &secrets).await;
            panic!(
                "B rotated {} times in 90 s; B reports {b_now}; panics in the log: {:#?}",
                seen_b.len() - 1,
                panics_in(&op.logs(), &secrets)
            );
        }
        if let Some(t) = stored_refresh_token(&env_b, "b").await
            && seen_b.last() != Some(&t)
        {
            seen_b.push(t);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(op.is_running(), "the operator process is alive");
    assert_eq!(get(addr, "/healthz").await.0, 200, "/healthz answers");
    let (b_status, b_reason, _) = ready(&env_b, "b").await.unwrap();
    assert!(
        b_status == "True" && WORKING.contains(&b_reason.as_str()),
        "B is Ready: {b_status} {b_reason}"
    );
    assert_stored_token_is_live(&env_b, &si, "b").await;

    // A says something clear about itself: a login time no clock could show is ignored, so A
    // works, and its deadline is an estimate that says how to make it exact.
    let a_works = within(Duration::from_secs(30), || async {
        let (status, reason, _) = ready(&env_a, "a").await?;
        (status == "True" && WORKING.contains(&reason.as_str())).then_some(())
    })
    .await;
    assert!(
        a_works.is_some(),
        "A, whose login time is ignored, is not Ready: {}",
        describe(&env_a, "a", &secrets).await
    );
    let relogin = env_a
        .api::<EagleEyeCredential>()
        .get("a")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "ReloginSoon")
        .expect("A reports ReloginSoon");
    assert!(
        relogin.message.contains("estimated")
            && relogin.message.contains("eagle-eye-operator.io/login-time"),
        "A's deadline does not say it is an estimate, nor how to make it exact: {}",
        relogin.message
    );
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no refresh token was spent twice"
    );
    let panics = panics_in(&op.logs(), &secrets);
    assert!(panics.is_empty(), "the operator panicked: {panics:#?}");
}

// 3. Two processes with default flags.

#[tokio::test]
async fn two_processes_started_with_default_flags_elect_one_leader_and_spend_each_token_once() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(10)).await;
    let login = login(&si, "twins-client", true).await;
    create_secrets_holding(&env, "twins", &login, &login.grant.refresh_token).await;
    // No --instance: the same Lease namespace and name, and the same host name.
    let first = Operator::start(&env, &si, &[]).await;
    let second = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "twins", &si, serde_json::json!({})).await;
    let (addr_1, addr_2) = (first.admin_addr().await, second.admin_addr().await);
    let leaders = || async {
        let l1 = series(&get(addr_1, "/metrics").await.1, "eagle_eye_leader")?;
        let l2 = series(&get(addr_2, "/metrics").await.1, "eagle_eye_leader")?;
        Some((l1, l2))
    };
    let one = within(Duration::from_secs(30), || async {
        leaders().await.filter(|(a, b)| a + b == 1.0)
    })
    .await;
    assert!(
        one.is_some(),
        "not exactly one leader within 30 s: {:?}",
        leaders().await
    );

    // Four refreshes, with both processes asked who leads all along.
    let mut both_led = 0;
    let mut samples = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while si.counters().refreshes < 4 {
        assert!(
            Instant::now() < deadline,
            "only {} refreshes in 90 s",
            si.counters().refreshes
        );
        if let Some((l1, l2)) = leaders().await {
            samples += 1;
            if l1 == 1.0 && l2 == 1.0 {
                both_led += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    figure(format!(
        "both processes reported leading in {both_led} of {samples} samples"
    ));
    assert_eq!(both_led, 0, "both processes led at once");
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no refresh token was spent twice"
    );
    let (status, reason, _) = ready(&env, "twins").await.unwrap();
    assert!(status == "True" && WORKING.contains(&reason.as_str()));
    assert_stored_token_is_live(&env, &si, "twins").await;
}

// 5. One refresh token copied into two Secrets.

/// Of two credentials whose Secrets hold copies of one refresh token, which works and which
/// was refused, once the auth server has seen `refreshes` refreshes and both report.
async fn winner_and_refused(
    si: &StandIn,
    a: (&TestEnv, &str),
    b: (&TestEnv, &str),
    refreshes: u64,
    secrets: &[&str],
) -> ((String, ReadyCondition), (String, ReadyCondition)) {
    let both = within(Duration::from_secs(90), || async {
        if si.counters().refreshes < refreshes {
            return None;
        }
        Some((ready(a.0, a.1).await?, ready(b.0, b.1).await?))
    })
    .await;
    let show = |c: &ReadyCondition| format!("Ready={} {}: {}", c.0, c.1, redact(&c.2, secrets));
    let Some((ca, cb)) = both else {
        panic!(
            "fewer than {refreshes} refreshes, or a credential without a Ready condition, in 90 s ({:?}); {}: {}; {}: {}",
            si.counters(),
            a.1,
            describe(a.0, a.1, secrets).await,
            b.1,
            describe(b.0, b.1, secrets).await
        )
    };
    let counters = si.counters();
    assert_eq!(
        counters.reused_refresh_tokens,
        0,
        "the copied refresh token was spent twice ({counters:?}); {}: {}; {}: {}",
        a.1,
        show(&ca),
        b.1,
        show(&cb)
    );
    let works = |c: &ReadyCondition| c.0 == "True" && WORKING.contains(&c.1.as_str());
    match (works(&ca), works(&cb)) {
        (true, false) => ((a.1.to_owned(), ca), (b.1.to_owned(), cb)),
        (false, true) => ((b.1.to_owned(), cb), (a.1.to_owned(), ca)),
        _ => panic!(
            "not exactly one of the two works: {}: {}; {}: {}",
            a.1,
            show(&ca),
            b.1,
            show(&cb)
        ),
    }
}

#[tokio::test]
async fn a_refresh_token_copied_into_two_secrets_of_one_namespace_is_spent_by_one_credential_only()
{
    let env = env().await;
    let si = stand_in(Duration::from_secs(10)).await;
    let login = login(&si, "copies-client", true).await;
    let token = login.grant.refresh_token.clone();
    create_secrets_holding(&env, "left", &login, &token).await;
    create_secrets_holding(&env, "right", &login, &token).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "left", &si, serde_json::json!({})).await;
    create_credential(&env, "right", &si, serde_json::json!({})).await;
    let secrets = [token.as_str(), &login.client_secret];

    let ((winner, _), (refused, (_, reason, message))) =
        winner_and_refused(&si, (&env, "left"), (&env, "right"), 3, &secrets).await;
    let live = stored_refresh_token(&env, &winner).await.unwrap();
    assert!(
        !message.contains(&token) && !message.contains(&live),
        "the refusal's message names the refresh token"
    );
    // The refusal names the credential that refreshes the token and what to do.
    assert_eq!(reason, "RefreshTokenInUse", "{refused}: {message}");
    assert!(
        message.contains(&format!("as EagleEyeCredential {winner:?}"))
            && message.contains("give each credential its own login"),
        "{refused}'s message names neither the credential that refreshes the token nor the fix: {message}"
    );
    for note in event_notes(&env).await {
        assert!(
            !note.contains(&token) && !note.contains(&live),
            "an Event names the refresh token"
        );
    }
    assert_stored_token_is_live(&env, &si, &winner).await;
}

#[tokio::test]
async fn a_refresh_token_copied_across_namespaces_is_spent_once_and_the_refusal_names_nothing_of_the_other_tenant()
 {
    let (env_n, env_s) = (env().await, env().await);
    let si = stand_in(Duration::from_secs(10)).await;
    let login = login(&si, "tenants-client", true).await;
    let token = login.grant.refresh_token.clone();
    create_secrets_holding(&env_n, "north", &login, &token).await;
    create_secrets_holding(&env_s, "south", &login, &token).await;
    let _op = Operator::start(&env_n, &si, &["--namespaces", &env_s.namespace]).await;
    create_credential(&env_n, "north", &si, serde_json::json!({})).await;
    create_credential(&env_s, "south", &si, serde_json::json!({})).await;
    let secrets = [token.as_str(), &login.client_secret];

    let ((winner, _), (refused, (_, reason, message))) =
        winner_and_refused(&si, (&env_n, "north"), (&env_s, "south"), 3, &secrets).await;
    let (winner_env, refused_env) = if winner == "north" {
        (&env_n, &env_s)
    } else {
        (&env_s, &env_n)
    };
    let live = stored_refresh_token(winner_env, &winner).await.unwrap();
    assert!(
        !message.contains(&token) && !message.contains(&live),
        "the refusal's message names the refresh token"
    );
    assert_eq!(reason, "RefreshTokenInUse", "{refused}: {message}");
    assert!(
        message.contains("as a credential in another namespace")
            && message.contains("give each credential its own login"),
        "{refused}'s message says neither that another namespace refreshes the token nor the fix: {message}"
    );
    let other_tenant = [winner_env.namespace.as_str(), &winner];
    for name in other_tenant {
        assert!(
            !message.contains(name),
            "{refused}'s condition names the other tenant's {name}: {message}"
        );
    }
    for note in event_notes(refused_env).await {
        assert!(
            !note.contains(&token) && !note.contains(&live),
            "an Event names the refresh token"
        );
        for name in other_tenant {
            assert!(
                !note.contains(name),
                "an Event in {refused}'s namespace names the other tenant's {name}: {note}"
            );
        }
    }
    assert_stored_token_is_live(winner_env, &si, &winner).await;
}
