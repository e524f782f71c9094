//! The operator binary run on the host as the chart's Deployment would run it, with the
//! chart's ServiceAccount's permissions only (impersonated): enough to bring a credential to
//! Ready in both scopes, and nothing outside the watched namespaces in namespaced scope.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::standin::{StandIn, StandInConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::chart::{
    alert_metric_names, alert_rules, all_options_on, can, find, fullname, install, ok,
    release_name, render, run, scratch, service_account,
};
use crate::support::operator::{
    create_secrets, credential, login, ready, secret_data, wait_for_reason,
};
use crate::support::{TestEnv, env, eventually};

#[tokio::test]
async fn the_operator_with_only_the_cluster_scope_rbac_brings_a_credential_to_ready() {
    let home = env().await;
    let apps = env().await;
    let release = release_name(&home);
    // Cluster scope watches every namespace, those of the tests running beside this one too:
    // a selector unique to this test keeps its operator off their credentials.
    let (label, shard) = ("eagle-eye-operator.io/test", home.namespace.clone());
    let selector = format!("{label}={shard}");
    // Prometheus's ServiceAccount reads /metrics (the chart binds it to the reader role).
    let values = json!({
        "scope": "cluster",
        "credentialSelector": selector,
        "metrics": {"readers": [{"kind": "ServiceAccount", "name": "prometheus"}]},
    });
    let si = stand_in().await;
    install(&home, &release, &host_values(values, &si)).await;

    let login = login(&si, "helm-cluster", true).await;
    create_secrets(&apps, "cam", &login).await;
    let mut cr = credential("cam", &si, json!({}));
    cr.metadata.labels = Some([(label.to_owned(), shard)].into());
    apps.api()
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    let pod = ChartPod::start(&home, &release, &si).await;

    wait_for_reason(&apps, "cam", "TokenRefreshed", Duration::from_secs(60)).await;
    let data = secret_data(&apps, "cam-token")
        .await
        .expect("target Secret");
    assert!(si.access_token_is_live(&data["access_token"]));
    let lease = Api::<Lease>::namespaced(home.client.clone(), &home.namespace)
        .get(&eagle_eye_operator::shard::lease_name(Some(&selector)))
        .await
        .expect("the shard's Lease in the release namespace");
    // The pod name (from POD_NAME, as the chart sets it) and a random suffix per process.
    let holder = lease.spec.unwrap().holder_identity.unwrap_or_default();
    assert!(
        holder.starts_with(&format!("{}_", pod.name)),
        "Lease holder {holder:?} is not pod {:?}'s",
        pod.name
    );

    // /metrics as the chart's ServiceMonitor scrapes it: its scheme, path and TLS settings,
    // and a ServiceAccount's token. The operator (with the chart's RBAC only) asks the API
    // server who holds the token and whether they may read /metrics.
    let docs = render(&home, &all_options_on(json!({})), &[]).await;
    let endpoint = &find(&docs, "ServiceMonitor")["spec"]["endpoints"][0];
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(endpoint["tlsConfig"]["insecureSkipVerify"] == true)
        .build()
        .unwrap();
    let url = format!(
        "{}://127.0.0.1:{}{}",
        endpoint["scheme"].as_str().unwrap(),
        pod.metrics_port().await,
        endpoint["path"].as_str().unwrap()
    );
    let scrape = |token: Option<String>| {
        let mut request = http.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (prometheus, stranger) = (
        crate::support::service_account_token(&home, "prometheus").await,
        crate::support::service_account_token(&home, "stranger").await,
    );
    assert_eq!(scrape(None).await.0, 401, "no token");
    assert_eq!(
        scrape(Some("made-up".into())).await.0,
        401,
        "a made-up token"
    );
    assert_eq!(
        scrape(Some(stranger)).await.0,
        403,
        "a ServiceAccount without the reader role"
    );
    let (code, metrics) = scrape(Some(prometheus)).await;
    assert_eq!(code, 200, "{metrics}");
    // Nor is anything served plainly on the probes' port.
    let plain = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        pod.admin_port().await
    ))
    .await
    .unwrap();
    assert_eq!(plain.status(), 404);

    // Every series the chart's alerts use is exposed, with the labels they aggregate by.
    for name in alert_metric_names(&alert_rules(&docs)) {
        assert!(
            metrics.lines().any(|l| l.starts_with(&name)),
            "{name} not in /metrics:\n{metrics}"
        );
    }
    let ready_line = metrics
        .lines()
        // A cluster-wide operator also reports credentials other tests left behind.
        .find(|l| {
            l.starts_with("eagle_eye_credential_ready{")
                && l.contains(r#"credential="cam""#)
                && l.contains(&format!(r#"namespace="{}""#, apps.namespace))
        })
        .unwrap_or_else(|| panic!("no ready gauge for cam:\n{metrics}"));
    assert!(ready_line.ends_with(" 1"), "{ready_line}");
    pod.assert_never_forbidden();
}

#[tokio::test]
async fn the_operator_with_only_the_namespaced_rbac_serves_its_namespaces_and_cannot_read_others() {
    let home = env().await;
    let (apps, other) = (env().await, env().await);
    let release = release_name(&home);
    let values = json!({
        "scope": "namespaced",
        "watchNamespaces": [apps.namespace],
        "podNudge": {"enabled": true},
    });
    let si = stand_in().await;
    install(&home, &release, &host_values(values, &si)).await;

    let theirs = login(&si, "helm-unwatched", true).await;
    create_secrets(&other, "cam", &theirs).await;
    let cr = credential("cam", &si, json!({}));
    other
        .api()
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    let ours = login(&si, "helm-watched", true).await;
    create_secrets(&apps, "cam", &ours).await;
    // Here with both opt-ins of issue 12, which the chart's RBAC must cover too.
    let consumer: Pod = serde_json::from_value(json!({
        "metadata": {"name": "vms", "labels": {"app": "vms"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .unwrap();
    apps.api::<Pod>()
        .create(&PostParams::default(), &consumer)
        .await
        .unwrap();
    let opted_in = credential(
        "cam",
        &si,
        json!({"revokeOnDelete": true, "consumers": {"podSelector": {"matchLabels": {"app": "vms"}}}}),
    );
    apps.api()
        .create(&PostParams::default(), &opted_in)
        .await
        .unwrap();
    let pod = ChartPod::start(&home, &release, &si).await;

    wait_for_reason(&apps, "cam", "TokenRefreshed", Duration::from_secs(60)).await;
    eventually(
        "the consuming pod nudged",
        Duration::from_secs(30),
        || async {
            let p = apps.api::<Pod>().get("vms").await.ok()?;
            p.metadata
                .annotations?
                .contains_key("eagle-eye-operator.io/token-issued-at")
                .then_some(())
        },
    )
    .await;
    // By now the other namespace's credential would have been handled too; it was not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        ready(&other, "cam").await.is_none(),
        "a credential outside the scope got a status"
    );
    assert!(secret_data(&other, "cam-token").await.is_none());
    assert!(si.refresh_token_is_live(&theirs.grant.refresh_token));
    // And could not have: as the operator's identity, the other namespace's Secrets are closed.
    let sa = service_account(&home, &release);
    let read = [
        "get",
        "secret",
        "cam-client",
        "-n",
        &other.namespace,
        "--as",
        &sa,
    ];
    let denied = run(&home, "kubectl", &read, None).await;
    assert!(
        !denied.ok && denied.stderr.contains("forbidden"),
        "{}",
        denied.stderr
    );
    let read = [
        "get",
        "secret",
        "cam-client",
        "-n",
        &apps.namespace,
        "--as",
        &sa,
        "-o",
        "name",
    ];
    ok(&home, "kubectl", &read, None).await;
    let stored = secret_data(&apps, "cam-refresh").await.unwrap()["refresh_token"].clone();
    apps.api::<EagleEyeCredential>()
        .delete("cam", &Default::default())
        .await
        .unwrap();
    eventually("the credential gone", Duration::from_secs(30), || async {
        apps.api::<EagleEyeCredential>()
            .get_opt("cam")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!si.refresh_token_is_live(&stored), "not revoked");
    pod.assert_never_forbidden();
}

#[tokio::test]
async fn two_releases_with_credential_selectors_split_the_credentials_with_the_charts_rbac_only() {
    let home = env().await;
    let apps = env().await;
    let si = stand_in().await;
    let label = "eagle-eye-operator.io/shard";
    let mut pods = Vec::new();
    for shard in ["a", "b"] {
        let release = format!("{}-{shard}", release_name(&home));
        let values = json!({
            "scope": "namespaced",
            "watchNamespaces": [apps.namespace],
            // Spaces as a values file may carry them: the operator and the chart agree.
            "credentialSelector": format!(" {label}={shard} "),
        });
        install(&home, &release, &host_values(values, &si)).await;
        let login = login(&si, &format!("helm-shard-{shard}"), true).await;
        let name = format!("cam-{shard}");
        create_secrets(&apps, &name, &login).await;
        let mut cr = credential(&name, &si, json!({}));
        cr.metadata.labels = Some([(label.to_owned(), shard.to_owned())].into());
        apps.api::<EagleEyeCredential>()
            .create(&PostParams::default(), &cr)
            .await
            .unwrap();
        pods.push((shard, name, ChartPod::start(&home, &release, &si).await));
    }
    for (shard, name, pod) in &pods {
        wait_for_reason(&apps, name, "TokenRefreshed", Duration::from_secs(60)).await;
        let by: Vec<String> = crate::support::operator::events(&apps, name, "TokenRefreshed")
            .await
            .into_iter()
            .filter_map(|e| e.reporting_instance)
            .collect();
        assert!(
            !by.is_empty() && by.iter().all(|i| i.starts_with(&format!("{}_", pod.name))),
            "{name} refreshed by {by:?}, not only by {}",
            pod.name
        );
        // Each release leads in its own Lease, the one its Role names.
        let lease = eagle_eye_operator::shard::lease_name(Some(&format!("{label}={shard}")));
        let holder = Api::<Lease>::namespaced(home.client.clone(), &home.namespace)
            .get(&lease)
            .await
            .unwrap_or_else(|e| panic!("Lease {lease}: {e}"))
            .spec
            .unwrap()
            .holder_identity
            .unwrap_or_default();
        assert!(
            holder.starts_with(&format!("{}_", pod.name)),
            "{lease}: {holder}"
        );
        assert!(si.counters().reused_refresh_tokens == 0, "shard {shard}");
        pod.assert_never_forbidden();
    }
}

/// The chart's operator container run as a host process: the installed Deployment's args
/// and env (downward-API fields filled in as the kubelet would), and a kubeconfig that
/// impersonates the chart's ServiceAccount, so only the chart's RBAC applies.
struct ChartPod {
    name: String,
    log: PathBuf,
    _child: tokio::process::Child,
}

impl ChartPod {
    async fn start(home: &TestEnv, release: &str, stand_in: &StandIn) -> ChartPod {
        let deployment = Api::<Deployment>::namespaced(home.client.clone(), &home.namespace)
            .get(&fullname(release))
            .await
            .unwrap();
        let spec = deployment.spec.template.spec.unwrap();
        let container = &spec.containers[0];
        let name = format!("{}-0", fullname(release));
        let mut vars: Vec<(String, String)> = container
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
                let value = match field.map(|f| f.field_path.as_str()) {
                    None => e.value.clone().unwrap_or_default(),
                    Some("metadata.name") => name.clone(),
                    Some("metadata.namespace") => home.namespace.clone(),
                    Some(other) => panic!("no stand-in for the downward-API field {other}"),
                };
                (e.name.clone(), value)
            })
            .collect();
        let dir = scratch(home);
        if let Some(pem) = stand_in.ca_pem() {
            // In a cluster this is authCaSecret's mount; here a file on the host.
            let ca = dir.join("auth-ca.pem");
            std::fs::write(&ca, pem).unwrap();
            vars.push((
                "EAGLE_EYE_AUTH_CA_FILE".into(),
                ca.to_string_lossy().into_owned(),
            ));
        }
        let sa = format!(
            "system:serviceaccount:{}:{}",
            home.namespace,
            spec.service_account_name.unwrap()
        );
        let kubeconfig = dir.join("kubeconfig-as-service-account");
        std::fs::write(
            &kubeconfig,
            impersonating(home.plane.kubeconfig_path(), &sa),
        )
        .unwrap();
        // kube-apiserver's RBAC caches trail the install a little; a real pod starts seconds
        // later. Wait until the grants are in force so that any denial is a real one.
        let watched: Vec<String> = container
            .args
            .iter()
            .flatten()
            .find_map(|a| a.strip_prefix("--namespaces="))
            .map(|n| n.split(',').map(|n| format!("-n={n}")).collect())
            .unwrap_or_else(|| vec!["-A".into()]);
        let lease_ns = format!("-n={}", home.namespace);
        eventually(
            "the chart's RBAC in force",
            Duration::from_secs(10),
            || async {
                let mut ok = can(home, &sa, &["create", "leases", &lease_ns]).await;
                for ns in &watched {
                    ok &= can(
                        home,
                        &sa,
                        &["watch", "eagleeyecredentials.eagle-eye-operator.io", ns],
                    )
                    .await;
                }
                ok.then_some(())
            },
        )
        .await;
        let log = dir.join("operator.log");
        let out = std::fs::File::create(&log).unwrap();
        // The one departure from the chart's arguments: on a shared host the admin and
        // metrics servers take any free port (the log says which) instead of a fixed one.
        let args = container.args.iter().flatten().map(|a| {
            if a.starts_with("--admin-port=") {
                "--admin-port=0".to_owned()
            } else if a.starts_with("--metrics-port=") {
                "--metrics-port=0".to_owned()
            } else {
                a.clone()
            }
        });
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_eagle-eye-operator"))
            .args(args)
            .envs(vars)
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("starting the operator binary");
        ChartPod {
            name,
            log,
            _child: child,
        }
    }

    /// The admin server's port, from the start-up log line.
    async fn admin_port(&self) -> u16 {
        self.port_logged("admin server listening").await
    }

    /// The HTTPS metrics server's port, from the start-up log line.
    async fn metrics_port(&self) -> u16 {
        self.port_logged("metrics server listening").await
    }

    async fn port_logged(&self, message: &str) -> u16 {
        eventually(message, Duration::from_secs(30), || async {
            let logs = std::fs::read_to_string(&self.log).ok()?;
            // The chart logs JSON.
            let line = logs.lines().find(|l| l.contains(message))?;
            let line: Value = serde_json::from_str(line).ok()?;
            let addr: std::net::SocketAddr = line["addr"].as_str()?.parse().ok()?;
            Some(addr.port())
        })
        .await
    }

    /// Every API call the operator made was allowed: the chart's RBAC is not merely enough
    /// eventually, after retries of denied requests.
    fn assert_never_forbidden(&self) {
        let logs = std::fs::read_to_string(&self.log).unwrap();
        assert!(
            !logs.to_lowercase().contains("forbidden"),
            "denied API calls:\n{logs}"
        );
    }
}

/// The admin kubeconfig with every user impersonating `user` (the admin may impersonate).
fn impersonating(kubeconfig: &Path, user: &str) -> String {
    let mut config: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    for entry in config["users"].as_array_mut().unwrap() {
        entry["user"]["as"] = user.into();
    }
    serde_saphyr::to_string(&config).unwrap()
}

/// Values for an operator run on the host: the stand-in's loopback address accepted as an
/// API base, and with its port as an auth server.
fn host_values(mut values: Value, si: &StandIn) -> Value {
    values["allowedApiHosts"] = json!(["127.0.0.1", "localhost"]);
    let auth_hosts = crate::support::operator::allowed_auth_hosts(&[si]);
    values["allowedAuthHosts"] = json!(auth_hosts.split(',').collect::<Vec<_>>());
    values["logLevel"] = "info,eagle_eye_operator=debug".into();
    values
}

async fn stand_in() -> StandIn {
    StandIn::start(StandInConfig::default()).await.unwrap()
}
