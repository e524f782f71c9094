//! Who may read `/metrics` (issue 18): the page names every watched credential, so it is
//! served over HTTPS only to bearer tokens the real kube-apiserver accepts and allows
//! `get /metrics`, and a flood of made-up tokens cannot make the operator flood the API
//! server with reviews.

use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};

use crate::support::operator::{Operator, stand_in};
use crate::support::{TestEnv, env, figure, get};
use eagle_eye_testbed::standin::StandIn;

/// A new ServiceAccount's token (TokenRequest API), bound to a reader role when `reader`.
async fn account(env: &TestEnv, name: &str, reader: bool) -> String {
    let token = crate::support::service_account_token(env, name).await;
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        ..Default::default()
    };
    if reader {
        let role = format!("{}-{name}-metrics-reader", env.namespace);
        Api::<ClusterRole>::all(env.client.clone())
            .create(
                &PostParams::default(),
                &ClusterRole {
                    metadata: meta(role.clone()),
                    rules: Some(vec![PolicyRule {
                        non_resource_urls: Some(vec!["/metrics".into()]),
                        verbs: vec!["get".into()],
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        Api::<ClusterRoleBinding>::all(env.client.clone())
            .create(
                &PostParams::default(),
                &ClusterRoleBinding {
                    metadata: meta(role.clone()),
                    role_ref: RoleRef {
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        kind: "ClusterRole".into(),
                        name: role,
                    },
                    subjects: Some(vec![Subject {
                        kind: "ServiceAccount".into(),
                        name: name.into(),
                        namespace: Some(env.namespace.clone()),
                        ..Default::default()
                    }]),
                },
            )
            .await
            .unwrap();
    }
    token
}

/// TokenReviews kube-apiserver has answered so far (its own `apiserver_request_total`).
async fn token_reviews(env: &TestEnv) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = env.client.request_text(request).await.unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(r#"resource="tokenreviews""#)
                && l.contains(r#"verb="POST""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(http: &reqwest::Client, url: &str, token: Option<&str>) -> Option<u16> {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Some(request.send().await.ok()?.status().as_u16())
}

/// An operator serving /metrics as the chart does (HTTPS, reviewed tokens), on loopback, and
/// the stand-in it is configured for.
async fn with_secure_metrics(env: &TestEnv) -> (Operator, StandIn) {
    let si = stand_in(Duration::from_secs(3600)).await;
    let args = ["--metrics-port", "0", "--metrics-address", "127.0.0.1"];
    (Operator::start(env, &si, &args).await, si)
}

#[tokio::test]
async fn metrics_need_a_token_allowed_to_read_them_and_a_flood_of_made_up_tokens_is_bounded() {
    let env = env().await;
    let (op, _si) = with_secure_metrics(&env).await;
    let (reader, stranger) = (
        account(&env, "reader", true).await,
        account(&env, "stranger", false).await,
    );
    let url = format!("https://{}/metrics", op.metrics_addr().await);
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    assert_eq!(scrape(&http, &url, None).await, Some(401), "no token");
    assert_eq!(scrape(&http, &url, Some(&stranger)).await, Some(403));
    // RBAC's caches trail the binding by a moment.
    crate::support::eventually(
        "the reader reads /metrics",
        Duration::from_secs(15),
        || async { (scrape(&http, &url, Some(&reader)).await == Some(200)).then_some(()) },
    )
    .await;
    let (code, text) = get(op.admin_addr().await, "/metrics").await;
    assert_eq!(code, 404, "nothing plain on the probes' port: {text}");

    // 500 requests at once, each with a token never seen before.
    let before = token_reviews(&env).await;
    let started = Instant::now();
    let flood: Vec<_> = (0..500)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            let token = format!("made-up-{:032x}", rand::random::<u128>());
            tokio::spawn(async move { scrape(&http, &url, Some(&token)).await })
        })
        .collect();
    let (mut refused, mut busy, mut dropped) = (0, 0, 0);
    for answer in futures::future::join_all(flood).await {
        match answer.unwrap() {
            Some(401) => refused += 1,
            Some(503) => busy += 1,
            None => dropped += 1,
            Some(other) => panic!("a made-up token got {other}"),
        }
    }
    let took = started.elapsed();
    let reviews = token_reviews(&env).await - before;
    figure(format!(
        "500 made-up tokens at once: {refused} refused 401, {busy} told 503, {dropped} connections closed, in {took:?}; kube-apiserver answered {reviews} TokenReviews"
    ));
    // A request turned away (503, or a connection over the limit) costs no review; the
    // other tests running beside this one may add a few of their own.
    assert!(
        reviews <= f64::from(refused) + 20.0,
        "{reviews} reviews for {refused} 401s"
    );
    // The reader's verdict is still cached: its scrape does not queue behind the flood.
    let scraped = Instant::now();
    assert_eq!(scrape(&http, &url, Some(&reader)).await, Some(200));
    assert!(
        scraped.elapsed() < Duration::from_secs(1),
        "{:?}",
        scraped.elapsed()
    );
}

/// Keeps `per_source` plain TCP connections open from each of `sources` (loopback addresses
/// other than the scraper's 127.0.0.1: other pods), never starting TLS, each one replaced as
/// soon as the server closes it; stops when dropped.
struct IdleFlood(Vec<tokio::task::JoinHandle<()>>);

impl IdleFlood {
    fn start(
        addr: std::net::SocketAddr,
        sources: &[std::net::Ipv4Addr],
        per_source: usize,
    ) -> Self {
        let tasks = sources
            .iter()
            .flat_map(|&source| std::iter::repeat_n(source, per_source))
            .map(|source| {
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    loop {
                        let socket = tokio::net::TcpSocket::new_v4().unwrap();
                        socket.bind((source, 0).into()).unwrap();
                        match socket.connect(addr).await {
                            Ok(mut s) => {
                                let mut b = [0u8; 1];
                                let _ =
                                    tokio::time::timeout(Duration::from_secs(15), s.read(&mut b))
                                        .await;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                })
            })
            .collect();
        IdleFlood(tasks)
    }
}

impl Drop for IdleFlood {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Any pod that reaches the metrics port (the chart's default) may open connections and
/// never start TLS. Found by review: 80 of them filled the 64 connections and the reader
/// got 200 in 0 of 20 scrapes. Unauthenticated connections now make room for new ones, the
/// busiest source's oldest first, and a source keeps at most 8 of them: one such pod, or ten,
/// do not keep a reader out.
#[tokio::test]
async fn idle_connections_that_never_authenticate_do_not_lock_a_reader_out() {
    let env = env().await;
    let (op, _si) = with_secure_metrics(&env).await;
    let reader = account(&env, "reader", true).await;
    let addr = op.metrics_addr().await;
    let url = format!("https://{addr}/metrics");
    // A new connection for every scrape, as a scraper whose keep-alive lapsed makes.
    let http = || {
        reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    crate::support::eventually(
        "the reader reads /metrics",
        Duration::from_secs(15),
        || async { (scrape(&http(), &url, Some(&reader)).await == Some(200)).then_some(()) },
    )
    .await;

    let one_pod = [std::net::Ipv4Addr::new(127, 0, 0, 2)];
    let ten_pods: Vec<_> = (1..=10)
        .map(|i| std::net::Ipv4Addr::new(127, 0, 1, i))
        .collect();
    let mut failed = Vec::new();
    for (what, sources, per_source) in [
        ("80 from one address", &one_pod[..], 80),
        ("80 from ten addresses", &ten_pods[..], 8),
    ] {
        let flood = IdleFlood::start(addr, sources, per_source);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (mut ok, mut tries) = (0, 0);
        for _ in 0..20 {
            tries += 1;
            if scrape(&http(), &url, Some(&reader)).await == Some(200) {
                ok += 1;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        drop(flood);
        figure(format!(
            "idle connections without a token, {what}: the metrics reader got 200 in {ok} of {tries} scrapes"
        ));
        if ok * 10 < tries * 9 {
            failed.push(format!("{what}: {ok} of {tries}"));
        }
    }
    assert!(failed.is_empty(), "the reader was kept out: {failed:?}");
}
