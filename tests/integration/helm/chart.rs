//! Helpers: the chart's values, rendering and installing it, and running the real `helm`
//! and `kubectl` of the control plane.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::support::TestEnv;

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/eagle-eye-operator");

/// Every opt-in object on, and the values that switch on template branches.
pub fn all_options_on(mut values: Value) -> Value {
    let on = json!({
        "metrics": {
            "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": true, "reloginWithinDays": 10},
            "certSecret": "metrics-cert",
            "readers": [
                {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"},
                {"kind": "Group", "name": "metrics-readers"},
            ],
        },
        "podDisruptionBudget": {"enabled": true},
        "podNudge": {"enabled": true, "perSecond": 50},
        "workloadRestart": {"enabled": true, "perSecond": 3},
        "networkPolicy": {"enabled": true},
        "authCaSecret": {"name": "proxy-ca"},
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
        "podAnnotations": {"example.com/a": "b"},
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
    });
    for (k, v) in on.as_object().unwrap() {
        values
            .as_object_mut()
            .unwrap()
            .entry(k.clone())
            .or_insert(v.clone());
    }
    values
}

/// The RBAC rules of a (Cluster)Role as `group/resource[/name]:verb`.
pub fn flatten_rules(rules: &Value) -> BTreeSet<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert(format!("{group}/{resource}:{verb}"));
                }
            }
        }
    }
    out
}

/// What the operator does with credentials, Secrets and Events: the whole grant.
pub fn operator_rules() -> BTreeSet<String> {
    let grant = [
        (
            "eagle-eye-operator.io/eagleeyecredentials",
            &["get", "list", "watch", "patch"][..],
        ),
        (
            "eagle-eye-operator.io/eagleeyecredentials/status",
            &["patch"],
        ),
        (
            "/secrets",
            &["get", "list", "watch", "update", "patch", "create"],
        ),
        ("events.k8s.io/events", &["create", "patch"]),
    ];
    grant
        .iter()
        .flat_map(|(r, verbs)| verbs.iter().map(move |v| format!("{r}:{v}")))
        .collect()
}

/// What `podNudge.enabled` adds to the grant.
pub fn pod_nudge_rules() -> BTreeSet<String> {
    ["/pods:list".to_string(), "/pods:patch".to_string()].into()
}

/// What `workloadRestart.enabled` adds to the grant: get, list and patch on the three kinds.
pub fn workload_restart_rules() -> BTreeSet<String> {
    ["deployments", "statefulsets", "daemonsets"]
        .iter()
        .flat_map(|k| ["get", "list", "patch"].map(|v| format!("apps/{k}:{v}")))
        .collect()
}

pub fn alert_rules(docs: &[Value]) -> Vec<Value> {
    find(docs, "PrometheusRule")["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// The `eagle_eye_*` series named in the alerts' expressions.
pub fn alert_metric_names(rules: &[Value]) -> BTreeSet<String> {
    rules
        .iter()
        .flat_map(|r| {
            r["expr"]
                .as_str()
                .unwrap()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("eagle_eye_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn release_name(env: &TestEnv) -> String {
    format!("r{}", env.namespace.trim_start_matches("t-"))
}

pub fn fullname(release: &str) -> String {
    format!("{release}-eagle-eye-operator")
}

pub fn service_account(env: &TestEnv, release: &str) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        env.namespace,
        fullname(release)
    )
}

pub async fn install(env: &TestEnv, release: &str, values: &Value) {
    let file = values_file(env, release, values);
    let args = ["install", release, CHART, "-n", &env.namespace, "-f", &file];
    ok(env, "helm", &args, None).await;
}

/// Kinds of the objects a release installed.
pub async fn installed(env: &TestEnv, release: &str) -> BTreeSet<String> {
    let manifest = ok(
        env,
        "helm",
        &["get", "manifest", release, "-n", &env.namespace],
        None,
    )
    .await;
    let docs = parse_docs(&manifest);
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap().to_lowercase();
        let name = doc["metadata"]["name"].as_str().unwrap();
        let mut args = vec!["get", &kind, name, "-o", "name"];
        let ns = doc["metadata"]["namespace"].as_str();
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        ok(env, "kubectl", &args, None).await;
    }
    kinds(&docs)
}

pub async fn render(env: &TestEnv, values: &Value, extra: &[&str]) -> Vec<Value> {
    let file = values_file(env, "render", values);
    let mut args = vec!["template", "r", CHART, "-n", &env.namespace, "-f", &file];
    args.extend(extra);
    parse_docs(&ok(env, "helm", &args, None).await)
}

pub fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

pub fn docs_to_json_list(docs: &[Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string()
}

pub fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect()
}

pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// Values as a file for `-f`. The shared control plane's CRD is the test harness's (from
/// crds/), not a release's: unless a test says otherwise, the chart leaves it alone.
pub fn values_file(env: &TestEnv, name: &str, values: &Value) -> String {
    let mut values = values.clone();
    if let Some(v) = values.as_object_mut() {
        v.entry("crds").or_insert(json!({"install": false}));
    }
    let file = scratch(env).join(format!("{name}.json"));
    std::fs::write(&file, values.to_string()).unwrap();
    file.to_string_lossy().into_owned()
}

/// A directory for this test's files.
pub fn scratch(env: &TestEnv) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eagle-eye-helm-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(env: &TestEnv, tool: &str, args: &[&str], stdin: Option<&str>) -> Ran {
    let bins = env
        .plane
        .bin_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            eagle_eye_testbed::plane::binaries().expect("the directory with kubectl and helm")
        });
    // Helm's own state (repositories, cache) stays out of the user's home.
    let helm_home =
        std::env::temp_dir().join(format!("eagle-eye-helm-home-{}", std::process::id()));
    let mut child = tokio::process::Command::new(bins.join(tool))
        .args(args)
        .env("KUBECONFIG", env.plane.kubeconfig_path())
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {tool}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{tool} {args:?} took over 2 minutes"))
        .unwrap();
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the tool and returns its output, failing the test with its error output otherwise.
pub async fn ok(env: &TestEnv, tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(env, tool, args, stdin).await;
    assert!(
        out.ok,
        "{tool} {args:?} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// `kubectl auth can-i ARGS --as SA`.
pub async fn can(env: &TestEnv, sa: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend(args);
    all.extend(["--as", sa]);
    let out = run(env, "kubectl", &all, None).await;
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl {all:?}: {}{}", out.stdout, out.stderr),
    }
}

/// Asks `kubectl auth can-i QUERY --as SA` for each `(query, allowed)` and fails listing
/// every answer that differs.
pub async fn assert_access(env: &TestEnv, sa: &str, expected: &[(String, bool)]) {
    let mut wrong = Vec::new();
    for (query, allowed) in expected {
        let args: Vec<&str> = query.split_whitespace().collect();
        if can(env, sa, &args).await != *allowed {
            wrong.push(format!("{query}: expected {allowed}"));
        }
    }
    assert!(wrong.is_empty(), "{sa}:\n{}", wrong.join("\n"));
}
