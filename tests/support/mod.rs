//! Shared by every integration test binary: one real control plane per binary, started on
//! first use (the reaper in `testbed` removes it when the binary exits), the project's CRDs
//! from `crds/` installed, and a fresh namespace per test.
#![allow(dead_code)]

pub mod operator;

use std::path::Path;

use eagle_eye_testbed::plane::ControlPlane;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::OnceCell;

static PLANE: OnceCell<ControlPlane> = OnceCell::const_new();

/// The binary's control plane. Panics with instructions when it cannot be had: under
/// `CI=true` an integration test is never skipped.
pub async fn plane() -> &'static ControlPlane {
    PLANE.get_or_init(new_plane).await
}

/// A control plane with the project's CRDs installed.
async fn new_plane() -> ControlPlane {
    with_crds(ControlPlane::from_env_or_start()).await
}

async fn with_crds(
    plane: impl std::future::Future<Output = anyhow::Result<ControlPlane>>,
) -> ControlPlane {
    let plane = plane
        .await
        .unwrap_or_else(|e| panic!("no control plane for the integration tests: {e:#}"));
    let client = plane.client().await.expect("admin client");
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    plane
        .install_crds(&client, &crds)
        .await
        .expect("installing crds/");
    plane
}

/// Like [`env`], on a control plane of the test's own: for tests that stop kube-apiserver,
/// so that they disturb nobody and need not wait for each other. The plane lives until the
/// test binary exits (the test bed's reaper then removes it).
pub async fn own_env() -> TestEnv {
    // Always a local one, even with EAGLE_EYE_TEST_KUBECONFIG: these tests stop kube-apiserver
    // or watch every namespace.
    let plane: &'static ControlPlane = Box::leak(Box::new(with_crds(ControlPlane::start()).await));
    env_on(plane).await
}

pub struct TestEnv {
    pub plane: &'static ControlPlane,
    pub client: Client,
    pub namespace: String,
}

/// A fresh namespace on the binary's control plane, with an admin client for this test.
pub async fn env() -> TestEnv {
    env_on(plane().await).await
}

/// A fresh namespace on `plane`, with an admin client for this test: a second tenant beside
/// the first.
pub async fn env_on(plane: &'static ControlPlane) -> TestEnv {
    let client = plane.client().await.expect("admin client");
    let namespace = format!("t-{:08x}", rand::random::<u32>());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the test namespace");
    TestEnv {
        plane,
        client,
        namespace,
    }
}

impl TestEnv {
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// Polls `check` every 100 ms until it returns `Some`, failing the test with `what` after
/// `limit`. Tests wait on observable state this way instead of sleeping and hoping. The
/// limit holds even when a check itself never finishes (a stream with no next item, a
/// request with no answer).
pub async fn eventually<T, F, Fut>(what: &str, limit: std::time::Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match within(limit, check).await {
        Some(v) => v,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Like `eventually`, but `None` at the limit, so the caller can say what it saw instead of
/// only that time ran out.
pub async fn within<T, F, Fut>(limit: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let polling = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(limit, polling).await.ok()
}

/// Prints a measured figure and appends it to `target/tmp/figures.txt`, which `.ci/run` shows
/// after the tests: libtest hides the output of passing tests.
pub fn figure(line: String) {
    use std::io::Write;
    println!("{line}");
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{test}: {line}");
    }
}

/// GET `path` on a local admin server: status and body, or `(0, "")` when unreachable.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{addr}{path}")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// The value of a series in OpenMetrics text, e.g. `eagle_eye_leader`.
pub fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A client of the test's control plane acting as `user` (impersonated by the admin), with
/// the test's namespace as its default.
pub async fn client_as(env: &TestEnv, user: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(env.plane.kubeconfig_path()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_owned());
    config.default_namespace = env.namespace.clone();
    kube::Client::try_from(config).unwrap()
}

/// A token of a new ServiceAccount `name` in the test's namespace, from the TokenRequest API
/// (what the kubelet mounts in a pod).
pub async fn service_account_token(env: &TestEnv, name: &str) -> String {
    let accounts = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        env.client.clone(),
        &env.namespace,
    );
    let account = k8s_openapi::api::core::v1::ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create(&kube::api::PostParams::default(), &account)
        .await
        .unwrap();
    let request = k8s_openapi::api::authentication::v1::TokenRequest {
        spec: Some(Default::default()),
        ..Default::default()
    };
    accounts
        .create_token_request(name, &kube::api::PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .expect("a token")
}

/// A figure of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`), 0 once the process is gone.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}
