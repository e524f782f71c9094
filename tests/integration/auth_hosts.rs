//! Where secrets may be sent (issue 9): a credential's `authUrl` must name a host in the
//! operator's `--allowed-auth-hosts`, and `authorize` sends the person logging in only to an
//! allowed host, or to one they named themselves with `--auth-url`.

use std::time::Duration;

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::{StandIn, StandInConfig};
use kube::api::PostParams;

use crate::support::env;
use crate::support::operator::{
    Operator, create_secrets, credential, login, ready, set_flag, stand_in, wait_for_reason,
};

/// A second auth server (plain http, so that nothing but the allow-list could keep the
/// operator from reaching it) on 127.0.0.1: named as `localhost` it is outside the
/// operator's allow-list, named as `127.0.0.1` inside. The refused credential's Secrets are
/// never sent there; the allowed one shows that they would have arrived.
#[tokio::test]
async fn a_credential_whose_auth_host_is_not_allowed_is_invalid_and_nothing_reaches_that_host() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let outside = StandIn::start(StandInConfig {
        tls: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let port = outside.url().port().unwrap();
    let mut op = Operator::start(&env, &si, &["--allow-insecure-http"]).await;
    let allowed = format!("127.0.0.1:{port}");
    op.set_args(|args| set_flag(args, "--allowed-auth-hosts", &allowed))
        .await;

    let refused = login(&outside, "outside-client", true).await;
    create_secrets(&env, "outside", &refused).await;
    let api = env.api::<EagleEyeCredential>();
    let cr = credential(
        "outside",
        &outside,
        serde_json::json!({"authUrl": format!("http://localhost:{port}")}),
    );
    api.create(&PostParams::default(), &cr).await.unwrap();
    wait_for_reason(&env, "outside", "InvalidSpec", Duration::from_secs(30)).await;
    let (status, _, message) = ready(&env, "outside").await.unwrap();
    assert_eq!(status, "False");
    assert!(
        message.contains("--allowed-auth-hosts") && message.contains("localhost"),
        "{message}"
    );
    // Long enough for a refresh to have gone out, had it been allowed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(outside.counters().token_requests, 0, "nothing was sent");

    // The same server under an allowed name is reached: the count above is not zero for
    // want of a way there.
    let allowed = login(&outside, "inside-client", true).await;
    create_secrets(&env, "inside", &allowed).await;
    let cr = credential(
        "inside",
        &outside,
        serde_json::json!({"authUrl": format!("http://127.0.0.1:{port}")}),
    );
    api.create(&PostParams::default(), &cr).await.unwrap();
    wait_for_reason(&env, "inside", "TokenRefreshed", Duration::from_secs(30)).await;
    assert!(outside.counters().token_requests >= 1);
    let (_, reason, _) = ready(&env, "outside").await.unwrap();
    assert_eq!(reason, "InvalidSpec");
    let requests = outside.counters().token_requests;
    assert_eq!(
        outside.counters().refreshes,
        requests,
        "every request came from the allowed credential"
    );
}

/// What the token client would refuse (a query, a fragment, userinfo), the API server
/// refuses already.
#[tokio::test]
async fn the_api_server_refuses_auth_urls_with_a_query_fragment_or_userinfo() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let api = env.api::<EagleEyeCredential>();
    let base = si.url().to_string();
    let host = si.url().authority().to_owned();
    for (i, url) in [
        format!("{base}?x=1"),
        format!("{base}#f"),
        format!("https://user:pass@{host}/"),
    ]
    .into_iter()
    .enumerate()
    {
        let cr = credential(&format!("bad{i}"), &si, serde_json::json!({"authUrl": url}));
        let err = api.create(&PostParams::default(), &cr).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("authUrl must not have a user name or password, query or fragment"),
            "{url}: {err}"
        );
    }
    // A path prefix is fine.
    let cr = credential(
        "prefixed",
        &si,
        serde_json::json!({"authUrl": format!("{base}prefix/")}),
    );
    api.create(&PostParams::default(), &cr).await.unwrap();
}

/// `authorize` without `--auth-url` does not send the person to a credential's authUrl
/// outside its own `--allowed-auth-hosts`: whoever may edit the credential must not choose
/// the login page.
#[tokio::test]
async fn authorize_refuses_a_credential_auth_url_outside_its_allow_list() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let cr = credential("phish", &si, serde_json::json!({}));
    env.api::<EagleEyeCredential>()
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("eagle-eye-auth-hosts-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("auth-ca.pem");
    std::fs::write(&ca, si.ca_pem().unwrap()).unwrap();
    let ca = ca.to_string_lossy().into_owned();
    let run = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_eagle-eye-operator"));
        command
            .args([
                "authorize",
                "phish",
                "--namespace",
                &env.namespace,
                "--paste",
                "--no-browser",
                "--auth-ca-file",
                &ca,
                "--allowed-api-hosts",
                "127.0.0.1",
            ])
            .args(extra)
            .env("KUBECONFIG", env.plane.kubeconfig_path())
            .env_remove("EAGLE_EYE_ALLOWED_AUTH_HOSTS")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        async move { command.output().await }
    };
    let done = tokio::time::timeout(Duration::from_secs(60), run(&[]))
        .await
        .expect("authorize ends at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--allowed-auth-hosts") && stderr.contains("--auth-url"),
        "{stderr}"
    );
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&done.stdout).contains("/oauth2/authorize"),
        "no login URL was shown"
    );
    assert_eq!(si.counters().token_requests, 0);

    // Allowing the host and its port gets past the check (to the missing client Secret).
    let allowed = format!("127.0.0.1:{}", si.url().port().unwrap());
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        run(&["--allowed-auth-hosts", &allowed]),
    )
    .await
    .expect("authorize ends at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("--allowed-auth-hosts"), "{stderr}");
    assert!(stderr.contains("phish-client"), "{stderr}");
}

/// An allowed host on a port no `--allowed-auth-hosts` entry names is refused as a wrong
/// host is: `InvalidSpec` naming the flag, the host and the port, and nothing sent there.
#[tokio::test]
async fn a_credential_on_an_allowed_host_but_another_port_is_invalid_and_nothing_reaches_it() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let other_port = StandIn::start(StandInConfig {
        tls: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let port = other_port.url().port().unwrap();
    // The operator allows 127.0.0.1 and localhost on the first stand-in's port only.
    let _op = Operator::start(&env, &si, &["--allow-insecure-http"]).await;
    let refused = login(&other_port, "port-client", true).await;
    create_secrets(&env, "port", &refused).await;
    let cr = credential(
        "port",
        &other_port,
        serde_json::json!({"authUrl": format!("http://127.0.0.1:{port}")}),
    );
    env.api::<EagleEyeCredential>()
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    wait_for_reason(&env, "port", "InvalidSpec", Duration::from_secs(30)).await;
    let (status, _, message) = ready(&env, "port").await.unwrap();
    assert_eq!(status, "False");
    for part in ["--allowed-auth-hosts", "127.0.0.1", &port.to_string()] {
        assert!(message.contains(part), "{part}: {message}");
    }
    // Long enough for a refresh to have gone out, had it been allowed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(other_port.counters().token_requests, 0, "nothing was sent");
}
