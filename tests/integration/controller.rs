//! The controller against a real control plane and the auth stand-in, observed as a user
//! would: the target Secret, the credential's status, the stand-in's view of the tokens.

use std::time::{Duration, Instant};

use crate::support::operator::{
    Operator, api_accepts, create_credential, create_secrets, credential, login, ready, secret,
    secret_data, stand_in, wait_for_reason,
};
use crate::support::{env, eventually, figure};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::{Fault, Gate, StandIn, StandInConfig};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};

#[tokio::test]
async fn credential_becomes_ready_and_publishes_a_token_the_api_accepts() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "ready-client", true).await;
    create_secrets(&env, "cam", &login).await;
    let _op = Operator::start(&env, &si, &[]).await;
    let started = Instant::now();
    create_credential(&env, "cam", &si, serde_json::json!({})).await;

    let cr = wait_for_reason(&env, "cam", "TokenRefreshed", Duration::from_secs(30)).await;
    figure(format!("Ready after {:?}", started.elapsed()));
    let data = secret_data(&env, "cam-token").await.expect("target Secret");
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "access_token",
            "base_url",
            "expires_at",
            "hostname",
            "port",
            "token_type"
        ]
    );
    let port = si.url().port().unwrap();
    assert_eq!(
        data["base_url"],
        format!("https://127.0.0.1:{port}"),
        "base URL follows httpsBaseUrl"
    );
    assert_eq!(
        (
            data["hostname"].as_str(),
            data["port"].parse::<u16>().unwrap()
        ),
        ("127.0.0.1", port)
    );
    assert_eq!(data["token_type"], "Bearer");
    assert!(api_accepts(&si, &data["base_url"], &data["access_token"]).await);
    let status = cr.status.unwrap();
    assert_eq!(status.base_url.as_deref(), Some(data["base_url"].as_str()));
    assert_eq!(status.failed_refresh_attempts, 0);
    assert!(status.refresh_token_deadline.is_some() && status.refresh_token_deadline_is_estimate);
    let expires: jiff::Timestamp = data["expires_at"].parse().unwrap();
    assert_eq!(status.access_token_expires_at.unwrap().0, expires);
}

#[tokio::test]
async fn rotating_tokens_rotate_three_times_with_no_reuse_and_no_stale_token() {
    let env = env().await;
    // 6 s tokens: a rotation about every 4 s.
    let si = stand_in(Duration::from_secs(6)).await;
    let login = login(&si, "rotating-client", true).await;
    create_secrets(&env, "rot", &login).await;
    let mut op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "rot", &si, serde_json::json!({})).await;

    let mut seen_refresh = vec![login.grant.refresh_token.clone()];
    let mut seen_access = Vec::new();
    let mut dead_since: Option<Instant> = None;
    let mut worst_dead = Duration::ZERO;
    const ROTATIONS: usize = 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The first refresh and three rotations.
    while seen_refresh.len() < ROTATIONS + 2 {
        assert!(
            Instant::now() < deadline,
            "only {} rotations in 60 s",
            seen_refresh.len() - 1
        );
        if let (Some(refresh), Some(target)) = (
            secret_data(&env, "rot-refresh").await,
            secret_data(&env, "rot-token").await,
        ) {
            let rt = &refresh["refresh_token"];
            if seen_refresh.last() != Some(rt) {
                seen_refresh.push(rt.clone());
            }
            let at = &target["access_token"];
            if seen_access.last() != Some(at) {
                seen_access.push(at.clone());
            }
            if si.access_token_is_live(at) {
                dead_since = None;
            } else {
                let since = *dead_since.get_or_insert_with(Instant::now);
                worst_dead = worst_dead.max(since.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    figure(format!(
        "{} refresh tokens, {} access tokens; longest stale target: {worst_dead:?}",
        seen_refresh.len(),
        seen_access.len()
    ));
    // No stale token: the stand-in kills the old access token the moment it rotates, and the
    // new one is published right after the write-back (milliseconds). A target sampled dead
    // for seconds waited for something it should not (a requeue, a watch event); 3 s leaves
    // room for a loaded machine.
    assert!(
        worst_dead <= Duration::from_secs(3),
        "the target held a dead access token for {worst_dead:?}"
    );
    // Each rotation published its access token (the last one may still be on its way), and
    // the published token works.
    assert!(
        seen_access.len() + 2 >= seen_refresh.len(),
        "{} rotations published only {} access tokens",
        seen_refresh.len() - 1,
        seen_access.len()
    );
    eventually(
        "the published access token to work",
        Duration::from_secs(30),
        || async {
            let target = secret_data(&env, "rot-token").await?;
            api_accepts(&si, &target["base_url"], &target["access_token"])
                .await
                .then_some(())
        },
    )
    .await;
    // Stop the operator the way Kubernetes does, so that no rotation is between the token
    // endpoint's answer and its write-back while the stored token is judged.
    assert!(op.terminate().await.success());
    let current = secret_data(&env, "rot-refresh").await.unwrap()["refresh_token"].clone();
    assert!(
        si.refresh_token_is_live(&current),
        "the stored refresh token is the live one"
    );
    for old in seen_refresh.iter().filter(|t| **t != current) {
        assert!(
            !si.refresh_token_is_live(old),
            "a rotated-out refresh token is dead"
        );
    }
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "no refresh token was spent twice"
    );
    assert_no_secret_in(
        &op.logs(),
        &env,
        "rot",
        &si,
        &login,
        &seen_refresh,
        &seen_access,
    )
    .await;
    // How long each rotated token existed only in memory: from the token endpoint's answer
    // until kube-apiserver acknowledged the write-back.
    let mut windows: Vec<f64> = op
        .logs()
        .lines()
        .filter(|l| l.contains("rotated refresh token stored"))
        .filter_map(|l| {
            l.split("window_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    windows.sort_by(f64::total_cmp);
    assert!(windows.len() >= ROTATIONS, "{windows:?}");
    figure(format!(
        "write-back window over {} rotations: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        windows.len(),
        windows[0],
        windows[windows.len() / 2],
        windows[windows.len() - 1]
    ));
    op.kill().await;
}

/// Every secret value the lifecycle produced is absent from logs, events and status.
async fn assert_no_secret_in(
    logs: &str,
    env: &crate::support::TestEnv,
    name: &str,
    _si: &StandIn,
    login: &crate::support::operator::Login,
    refresh: &[String],
    access: &[String],
) {
    let events = env
        .client
        .request_text(
            http::Request::get(format!(
                "/apis/events.k8s.io/v1/namespaces/{}/events",
                env.namespace
            ))
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap();
    let cr =
        serde_json::to_string(&env.api::<EagleEyeCredential>().get(name).await.unwrap()).unwrap();
    assert!(logs.contains("refreshing"), "the logs were captured");
    let mut secrets: Vec<&str> = vec![&login.client_secret, &login.grant.access_token];
    secrets.extend(refresh.iter().map(String::as_str));
    secrets.extend(access.iter().map(String::as_str));
    for s in secrets {
        for (what, text) in [
            ("logs", logs),
            ("events", events.as_str()),
            ("credential", cr.as_str()),
        ] {
            assert!(!text.contains(s), "a secret value appears in the {what}");
        }
    }
}

#[tokio::test]
async fn non_rotating_token_is_renewed_across_the_expiry_boundary() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(6)).await;
    let login = login(&si, "permanent-client", false).await;
    create_secrets(&env, "perm", &login).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(
        &env,
        "perm",
        &si,
        serde_json::json!({"rotation": "NonRotating"}),
    )
    .await;

    let first = eventually("a published token", Duration::from_secs(30), || async {
        secret_data(&env, "perm-token").await
    })
    .await;
    let calls_for_first = si.counters().token_requests;
    // Sampled every 100 ms until the next token is published: how long the published one
    // was no longer accepted.
    let mut expired_since: Option<Instant> = None;
    let mut longest_expired = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        assert!(
            Instant::now() < deadline,
            "no new access token 30 s after the first"
        );
        if let Some(now) = secret_data(&env, "perm-token").await {
            if now["access_token"] != first["access_token"] {
                break now;
            }
            if si.access_token_is_live(&now["access_token"]) {
                expired_since = None;
            } else {
                let since = *expired_since.get_or_insert_with(Instant::now);
                longest_expired = longest_expired.max(since.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(si.access_token_is_live(&second["access_token"]));
    // One call at expiry: a call before the server's token expired would have got the same
    // token back, and a hot loop many.
    assert_eq!(
        si.counters().token_requests - calls_for_first,
        1,
        "token calls from the first access token to the second"
    );
    figure(format!(
        "non-rotating: the expired access token stayed published {longest_expired:?}"
    ));
    // Renewed 2 s after the published expiry (the server's `expires_in` is rounded down),
    // on the reconciler's whole-second clock: within 4 s.
    assert!(
        longest_expired <= Duration::from_secs(4),
        "the expired access token stayed published {longest_expired:?}"
    );
    assert_eq!(
        secret_data(&env, "perm-refresh").await.unwrap()["refresh_token"],
        login.grant.refresh_token,
        "the permanent refresh token is not rewritten"
    );
    let cr = env.api::<EagleEyeCredential>().get("perm").await.unwrap();
    let status = cr.status.unwrap();
    assert!(
        status.refresh_token_deadline.is_none(),
        "non-rotating tokens have no deadline"
    );
    assert_eq!(si.counters().reused_refresh_tokens, 0);
}

#[tokio::test]
async fn auto_mode_detects_a_non_rotating_token() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "auto-client", false).await;
    create_secrets(&env, "auto", &login).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "auto", &si, serde_json::json!({})).await;
    let cr = wait_for_reason(&env, "auto", "TokenRefreshed", Duration::from_secs(30)).await;
    assert_eq!(
        cr.status.unwrap().rotation,
        Some(eagle_eye_operator::crd::RotationMode::NonRotating)
    );
}

#[tokio::test]
async fn dead_login_requires_reauthorization_and_a_new_refresh_token_recovers_it() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "relogin-client", true).await;
    // The chain dies before the operator ever sees it, as after 90 days.
    si.end_chain(&login.grant.refresh_token);
    create_secrets(&env, "dead", &login).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "dead", &si, serde_json::json!({})).await;
    let cr = wait_for_reason(
        &env,
        "dead",
        "ReauthorizationRequired",
        Duration::from_secs(30),
    )
    .await;
    let (_, _, message) = ready(&env, "dead").await.unwrap();
    assert!(message.contains("Phase 1"), "{message}");
    assert!(cr.status.unwrap().failed_refresh_attempts >= 1);

    // A person logs in again and stores the new refresh token; nothing is restarted.
    let fresh = si.login("relogin-client");
    put_refresh_token(&env, "dead-refresh", &fresh.refresh_token).await;
    let cr = wait_for_reason(&env, "dead", "TokenRefreshed", Duration::from_secs(30)).await;
    let status = cr.status.unwrap();
    assert!(status.refused_login_fingerprint.is_none() && status.failed_refresh_attempts == 0);
    let data = secret_data(&env, "dead-token").await.unwrap();
    assert!(api_accepts(&si, &data["base_url"], &data["access_token"]).await);
}

#[tokio::test]
async fn missing_secret_is_reported_and_recovers_once_created() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "late-client", true).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "late", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "late", "SecretNotFound", Duration::from_secs(30)).await;
    // The client Secret with a wrong key name: still a clear condition.
    env.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret(
                "late-client",
                &[
                    ("client_id", &login.client_id),
                    ("secret", &login.client_secret),
                ],
            ),
        )
        .await
        .unwrap();
    wait_for_reason(&env, "late", "SecretKeyMissing", Duration::from_secs(30)).await;
    env.api::<Secret>()
        .delete("late-client", &DeleteParams::default())
        .await
        .unwrap();
    create_secrets(&env, "late", &login).await;
    wait_for_reason(&env, "late", "TokenRefreshed", Duration::from_secs(60)).await;
}

#[tokio::test]
async fn server_errors_and_rate_limits_back_off_and_recover() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "flaky-client", true).await;
    create_secrets(&env, "flaky", &login).await;
    // The 429 comes first and asks for longer than the first backoff (1 s to 1.2 s), so only
    // an operator that honours Retry-After waits that long; the 503s after it are failures
    // 2 to 4, whose backoff doubles: 2 s, 4 s, 8 s, each plus up to a fifth of jitter.
    const RETRY_AFTER: u64 = 4;
    si.inject(
        Fault::TooManyRequests {
            retry_after_secs: RETRY_AFTER,
        },
        1,
    );
    si.inject(Fault::Status(503), 3);
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "flaky", &si, serde_json::json!({})).await;
    let failing = wait_for_reason(&env, "flaky", "RefreshFailed", Duration::from_secs(30)).await;
    assert!(failing.status.unwrap().last_failure_time.is_some());
    let (_, _, message) = ready(&env, "flaky").await.unwrap();
    assert!(message.contains("next try at"), "{message}");
    let cr = wait_for_reason(&env, "flaky", "TokenRefreshed", Duration::from_secs(90)).await;
    assert_eq!(cr.status.unwrap().failed_refresh_attempts, 0);
    let data = secret_data(&env, "flaky-token").await.unwrap();
    assert!(api_accepts(&si, &data["base_url"], &data["access_token"]).await);
    assert_eq!(si.counters().reused_refresh_tokens, 0);

    let requests = si.token_requests();
    let statuses: Vec<Option<u16>> = requests.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(429), Some(503), Some(503), Some(503), Some(200)],
        "one 429, three 503s, one success, and nothing else"
    );
    let gaps: Vec<Duration> = requests
        .windows(2)
        .map(|w| w[1].arrived - w[0].arrived)
        .collect();
    figure(format!(
        "gaps between token requests after a 429 (Retry-After: {RETRY_AFTER}) and three 503s: {gaps:?}"
    ));
    // Only lower bounds: a loaded machine can make any gap longer. The operator counts each
    // delay from the failure time it records, in whole seconds, so a retry may come up to a
    // second before the delay has passed since the failed request.
    let second = Duration::from_secs(1);
    assert!(
        gaps[0] > Duration::from_secs(RETRY_AFTER) - second,
        "retried {:?} after a 429 with Retry-After: {RETRY_AFTER}",
        gaps[0]
    );
    // Failure n waits at least 2^(n-1) s, jitter only adding to it.
    for (n, gap) in (2..=4).zip(&gaps[1..]) {
        let backoff = Duration::from_secs(1 << (n - 1));
        assert!(
            *gap > backoff - second,
            "failure {n} was retried after {gap:?}; its backoff is at least {backoff:?}"
        );
    }
}

#[tokio::test]
async fn hostile_responses_leave_the_operator_healthy_with_a_clear_condition() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "hostile-client", true).await;
    create_secrets(&env, "hostile", &login).await;
    si.inject(Fault::NonJson, 1);
    si.inject(
        Fault::Oversized {
            bytes: 50 * 1024 * 1024,
        },
        1,
    );
    si.inject(Fault::Hang, 1);
    si.inject(Fault::DropConnection, 1);
    let mut op = Operator::start(&env, &si, &["--token-timeout", "2s"]).await;
    create_credential(&env, "hostile", &si, serde_json::json!({})).await;
    // Each failure shows in the Ready condition for a second or so, and in an Event that
    // stays: the Events are what is checked, once the operator has got through them all.
    wait_for_reason(&env, "hostile", "TokenRefreshed", Duration::from_secs(60)).await;
    let notes: Vec<String> = env
        .api::<k8s_openapi::api::events::v1::Event>()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RefreshFailed"))
        .filter_map(|e| e.note)
        .collect();
    // A hang and a dropped connection come after the request was sent: the server may have
    // acted on it, so both are an unknown outcome, not a plain transient failure.
    for r in ["MalformedResponse", "ResponseTooLarge", "OutcomeUnknown"] {
        assert!(notes.iter().any(|n| n.contains(r)), "no {r} in {notes:#?}");
    }
    assert!(op.is_running(), "the operator survived");
    assert_eq!(si.counters().reused_refresh_tokens, 0);
}

#[tokio::test]
async fn restarting_the_operator_with_fresh_tokens_causes_no_refresh() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "restart-client", true).await;
    create_secrets(&env, "rs", &login).await;
    let mut op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "rs", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "rs", "TokenRefreshed", Duration::from_secs(30)).await;
    let before = si.counters().refreshes;
    assert!(op.terminate().await.success(), "clean exit on SIGTERM");
    op.restart().await;
    eventually(
        "the restarted operator to reconcile the credential",
        Duration::from_secs(30),
        || async { op.current_logs().contains("reconciled").then_some(()) },
    )
    .await;
    assert_eq!(
        si.counters().refreshes,
        before,
        "a restart with valid tokens refreshes nothing"
    );
    assert_eq!(ready(&env, "rs").await.unwrap().0, "True");
}

#[tokio::test]
async fn deleting_the_credential_removes_the_target_secret_but_not_the_refresh_token() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "gc-client", true).await;
    create_secrets(&env, "gc", &login).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "gc", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "gc", "TokenRefreshed", Duration::from_secs(30)).await;
    env.api::<EagleEyeCredential>()
        .delete("gc", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the target Secret to be garbage-collected",
        Duration::from_secs(60),
        || async { secret_data(&env, "gc-token").await.is_none().then_some(()) },
    )
    .await;
    let refresh = secret_data(&env, "gc-refresh")
        .await
        .expect("the refresh-token Secret stays");
    assert!(
        si.refresh_token_is_live(&refresh["refresh_token"]),
        "and still holds the live token"
    );
    assert!(secret_data(&env, "gc-client").await.is_some());
}

#[tokio::test]
async fn a_second_credential_on_the_same_refresh_token_is_refused() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "shared-client", true).await;
    create_secrets(&env, "first", &login).await;
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "first", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "first", "TokenRefreshed", Duration::from_secs(30)).await;
    let mut second = credential("second", &si, serde_json::json!({}));
    second.spec.client_secret_ref.name = "first-client".into();
    second.spec.refresh_token_secret_ref.name = "first-refresh".into();
    env.api()
        .create(&PostParams::default(), &second)
        .await
        .unwrap();
    wait_for_reason(&env, "second", "RefreshTokenInUse", Duration::from_secs(30)).await;
    assert_eq!(si.counters().reused_refresh_tokens, 0);
    assert!(secret_data(&env, "second-token").await.is_none());
}

#[tokio::test]
async fn api_server_rejects_malformed_specs() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let api = env.api::<EagleEyeCredential>();
    let cases = [
        (
            "plain http to a remote host",
            serde_json::json!({"authUrl": "http://auth.example.com"}),
            "authUrl must be https",
        ),
        (
            "negative refreshBefore",
            serde_json::json!({"refreshBefore": "-5m"}),
            "refreshBefore must be a non-negative duration",
        ),
        (
            "empty Secret name",
            serde_json::json!({"clientSecretRef": {"name": ""}}),
            "name must not be empty",
        ),
        (
            "a target named like the refresh-token Secret",
            serde_json::json!({"target": {"name": "bad3-refresh"}}),
            "must not be the client or refresh-token Secret",
        ),
        (
            "a refresh-token Secret named like the default target",
            serde_json::json!({"refreshTokenSecretRef": {"name": "bad4-token"}}),
            "must not be the client or refresh-token Secret",
        ),
        (
            "a target named like the client Secret",
            serde_json::json!({"target": {"name": "bad5-client"}}),
            "must not be the client or refresh-token Secret",
        ),
        (
            "two target keys of one name (the access token overwritten by `Bearer`)",
            serde_json::json!({"target": {"keys": {"tokenType": "access_token"}}}),
            "target key names must differ",
        ),
        (
            "a target key no Secret can hold",
            serde_json::json!({"target": {"keys": {"baseUrl": "base url"}}}),
            "must be valid Secret keys",
        ),
    ];
    for (i, (what, extra, message)) in cases.into_iter().enumerate() {
        let cr = credential(&format!("bad{i}"), &si, extra);
        let err = api
            .create(&PostParams::default(), &cr)
            .await
            .expect_err(what);
        assert!(err.to_string().contains(message), "{what}: {err}");
    }
    // Left-out keys (empty names) may repeat, and a distinct target name is fine.
    let fine = credential(
        "fine",
        &si,
        serde_json::json!({"target": {"name": "fine-published", "keys": {"hostname": "", "port": ""}}}),
    );
    api.create(&PostParams::default(), &fine)
        .await
        .expect("a valid spec");
}

#[tokio::test]
async fn plain_http_auth_url_is_refused_unless_the_operator_allows_it() {
    let env = env().await;
    let si = StandIn::start(StandInConfig {
        tls: false,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(si.url().scheme(), "http");
    let login = login(&si, "http-client", true).await;
    create_secrets(&env, "plain", &login).await;
    let mut op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "plain", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "plain", "InvalidSpec", Duration::from_secs(30)).await;
    let (_, _, message) = ready(&env, "plain").await.unwrap();
    assert!(message.contains("--allow-insecure-http"), "{message}");
    assert_eq!(si.counters().token_requests, 0, "nothing was sent in clear");

    op.kill().await;
    let _op = Operator::start(&env, &si, &["--allow-insecure-http"]).await;
    wait_for_reason(&env, "plain", "TokenRefreshed", Duration::from_secs(30)).await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_at_the_level_asked_for() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "json-client", true).await;
    create_secrets(&env, "json", &login).await;
    // The fixture sets RUST_LOG to debug; the flag wins over it.
    let op = Operator::start(&env, &si, &["--log-format", "json", "--log-level", "info"]).await;
    create_credential(&env, "json", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "json", "TokenRefreshed", Duration::from_secs(30)).await;
    let logs = op.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "refreshing"), "{logs}");
    assert!(
        lines.iter().all(|l| l["level"] != "DEBUG"),
        "--log-level info overrides RUST_LOG"
    );
}

#[tokio::test]
async fn a_rotated_token_in_an_answer_that_fails_validation_is_still_stored() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "foreign-client", true).await;
    create_secrets(&env, "foreign", &login).await;
    // The server rotates the token but its answer is over the size cap (a proxy padding
    // it); the retry after it is held at the stand-in while the test looks at what was
    // published. (An API host outside the allow-list is a configuration error instead: see
    // `token_safety_b`.)
    si.inject(Fault::Padded { bytes: 100_000 }, 1);
    let retry = Gate::new();
    si.inject(Fault::Hold(retry.clone()), 1);
    let _op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "foreign", &si, serde_json::json!({})).await;
    let failing = wait_for_reason(&env, "foreign", "RefreshFailed", Duration::from_secs(30)).await;
    let message = &failing
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(message.contains("ResponseTooLarge"), "{message}");
    let stored = secret_data(&env, "foreign-refresh").await.unwrap();
    assert_ne!(
        stored["refresh_token"], login.grant.refresh_token,
        "the rotated token was stored"
    );
    // ... and in the same write the token it replaced was marked spent, although nothing
    // was published: a sync tool putting it back now would not get it spent again.
    let annotations = env
        .api::<Secret>()
        .get("foreign-refresh")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default();
    assert!(
        eagle_eye_operator::spent::read(Some(&annotations)).contains(
            &eagle_eye_operator::secrets::fingerprint(&login.grant.refresh_token)
        ),
        "{annotations:?}"
    );
    eventually(
        "the retry to reach the stand-in",
        Duration::from_secs(30),
        || async { (si.token_requests().len() == 2).then_some(()) },
    )
    .await;
    assert!(
        secret_data(&env, "foreign-token").await.is_none(),
        "nothing from the foreign answer was published"
    );

    retry.open();
    wait_for_reason(&env, "foreign", "TokenRefreshed", Duration::from_secs(30)).await;
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "the dead token was never spent again"
    );
    let data = secret_data(&env, "foreign-token").await.unwrap();
    assert_eq!(data["hostname"], "127.0.0.1", "the good answer's host");
    assert!(api_accepts(&si, &data["base_url"], &data["access_token"]).await);
}

#[tokio::test]
async fn a_failed_publish_is_retried_without_spending_the_token_again() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "blocked-client", true).await;
    create_secrets(&env, "blocked", &login).await;
    // An immutable Secret where the target should go, opted in for this credential (so it
    // may be written): every apply to it is refused.
    let mut blocker = secret("blocked-token", &[("placeholder", "x")]);
    blocker.immutable = Some(true);
    blocker.metadata.annotations = Some(
        [(
            "eagle-eye-operator.io/adopt".to_owned(),
            "blocked".to_owned(),
        )]
        .into(),
    );
    env.api::<Secret>()
        .create(&PostParams::default(), &blocker)
        .await
        .unwrap();
    let op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "blocked", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "blocked", "PublishFailed", Duration::from_secs(30)).await;
    // Let the error policy retry a few times.
    eventually(
        "three failed publish attempts",
        Duration::from_secs(30),
        || async {
            (op.current_logs().matches("applying target Secret").count() >= 3).then_some(())
        },
    )
    .await;
    assert_eq!(
        si.counters().refreshes,
        1,
        "retries publish the answer they hold; they do not refresh"
    );

    env.api::<Secret>()
        .delete("blocked-token", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_reason(&env, "blocked", "TokenRefreshed", Duration::from_secs(60)).await;
    assert_eq!(si.counters().refreshes, 1, "the held answer was published");
    let data = secret_data(&env, "blocked-token").await.unwrap();
    assert!(api_accepts(&si, &data["base_url"], &data["access_token"]).await);
}

/// Replaces the refresh token in its Secret, as a person or a sync tool would.
async fn put_refresh_token(env: &crate::support::TestEnv, name: &str, token: &str) {
    let api = env.api::<Secret>();
    let mut s = api.get(name).await.unwrap();
    s.data = secret("x", &[("refresh_token", token)]).data;
    api.replace(name, &PostParams::default(), &s).await.unwrap();
}

#[tokio::test]
async fn a_secret_reverted_to_a_rotated_out_token_is_restored_and_the_dead_token_never_spent() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let login = login(&si, "revert-client", true).await;
    create_secrets(&env, "rev", &login).await;
    let mut op = Operator::start(&env, &si, &[]).await;
    create_credential(&env, "rev", &si, serde_json::json!({})).await;
    wait_for_reason(&env, "rev", "TokenRefreshed", Duration::from_secs(30)).await;
    let live = secret_data(&env, "rev-refresh").await.unwrap()["refresh_token"].clone();
    assert_ne!(live, login.grant.refresh_token, "the first refresh rotated");

    // A GitOps or secret-sync tool puts its copy, the login's first token, back.
    put_refresh_token(&env, "rev-refresh", &login.grant.refresh_token).await;
    eventually(
        "the live refresh token written back over the reverted one",
        Duration::from_secs(30),
        || async {
            let now = secret_data(&env, "rev-refresh").await?;
            (now["refresh_token"] == live).then_some(())
        },
    )
    .await;
    let note = eventually(
        "a RefreshTokenRestored event",
        Duration::from_secs(10),
        || async {
            let events = env
                .api::<k8s_openapi::api::events::v1::Event>()
                .list(&Default::default())
                .await
                .ok()?;
            events
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("RefreshTokenRestored"))?
                .note
        },
    )
    .await;
    assert!(
        note.contains("GitOps") && note.contains("rev-refresh"),
        "{note}"
    );
    let (ready_now, _, _) = ready(&env, "rev").await.unwrap();
    assert_eq!(ready_now, "True");
    assert!(si.refresh_token_is_live(&live));

    // The operator restarted meanwhile, so no live copy is left in memory: the dead token
    // is still never spent, and the credential says what to do.
    assert!(op.terminate().await.success());
    put_refresh_token(&env, "rev-refresh", &login.grant.refresh_token).await;
    op.restart().await;
    wait_for_reason(&env, "rev", "RefreshTokenReverted", Duration::from_secs(30)).await;
    let (_, _, message) = ready(&env, "rev").await.unwrap();
    assert!(message.contains("Phase 1"), "{message}");

    // A new login brings it back.
    let fresh = si.login("revert-client");
    put_refresh_token(&env, "rev-refresh", &fresh.refresh_token).await;
    wait_for_reason(&env, "rev", "TokenRefreshed", Duration::from_secs(30)).await;
    assert_eq!(
        si.counters().reused_refresh_tokens,
        0,
        "the rotated-out token was never spent again"
    );
    assert_eq!(
        si.counters().refreshes,
        2,
        "one refresh for the first login, one for the new one"
    );
}
