//! The Helm chart against the real control plane, with the real `helm` and `kubectl`: it
//! installs in both scopes, its values are checked, its pods pass the `restricted` Pod
//! Security Standard, its CRD is the one in `crds/` (installed and upgraded from templates/,
//! see `crd_upgrade`), and its RBAC is exactly enough: the
//! operator binary, run on the host with the chart's Deployment arguments while
//! impersonating the chart's ServiceAccount, brings a credential to Ready with nothing more.
//! Also the container image's build contract, which cannot be built here (no Docker engine).

mod as_service_account;
mod chart;
mod crd_upgrade;
mod image;

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::env;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use chart::{
    CHART, alert_rules, all_options_on, assert_access, docs_to_json_list, find, flatten_rules,
    fullname, install, installed, kinds, ok, operator_rules, parse_docs, pod_nudge_rules,
    release_name, render, run, scratch, service_account, values_file, workload_restart_rules,
};

const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/eagleeyecredentials.yaml");

#[tokio::test]
async fn the_charts_crd_is_the_generated_one_also_when_packaged_and_kept_on_uninstall() {
    let env = env().await;
    let crd = std::fs::read(CRD).unwrap();
    let in_chart = Path::new(CHART).join("files/eagleeyecredentials.yaml");
    assert_eq!(
        std::fs::read(&in_chart).unwrap(),
        crd,
        "{}",
        in_chart.display()
    );
    // Rendered from templates/ (so that `helm upgrade` upgrades it): the generated CRD, with
    // the keep annotation unless crds.keep is false, and nothing when crds.install is false.
    let generated: Value = serde_saphyr::from_str(std::str::from_utf8(&crd).unwrap()).unwrap();
    for (values, keep) in [
        (json!({"crds": {"install": true}}), true),
        (json!({"crds": {"install": true, "keep": false}}), false),
    ] {
        let docs = render(&env, &values, &[]).await;
        let mut rendered = find(&docs, "CustomResourceDefinition").clone();
        let annotations = rendered["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        assert_eq!(
            annotations,
            keep.then(|| json!({"helm.sh/resource-policy": "keep"})),
            "{values}"
        );
        assert_eq!(rendered, generated, "{values}");
    }
    let docs = render(&env, &json!({"crds": {"install": false}}), &[]).await;
    assert!(!kinds(&docs).contains("CustomResourceDefinition"));
    // Nothing in crds/, which Helm would install once and never upgrade.
    let shown = ok(&env, "helm", &["show", "crds", CHART], None).await;
    assert_eq!(shown.trim(), "", "helm show crds");

    // What users install from a chart repository is the package: it must hold the file
    // itself, not a link.
    let dir = scratch(&env);
    let dir_arg = dir.to_string_lossy();
    ok(&env, "helm", &["package", CHART, "-d", &dir_arg], None).await;
    let package = dir.join("eagle-eye-operator-0.1.0.tgz");
    let untar = std::process::Command::new("tar")
        .args(["-xmzf", &package.to_string_lossy(), "-C", &dir_arg])
        .status()
        .unwrap();
    assert!(untar.success());
    let packaged = dir.join("eagle-eye-operator/files/eagleeyecredentials.yaml");
    assert!(!packaged.symlink_metadata().unwrap().is_symlink());
    assert_eq!(std::fs::read(packaged).unwrap(), crd, "the packaged CRD");
}

#[tokio::test]
async fn helm_lint_strict_passes_in_both_scopes_with_every_option_on() {
    let env = env().await;
    for (name, values) in [
        ("defaults", json!({})),
        ("cluster-all", all_options_on(json!({"scope": "cluster"}))),
        (
            "namespaced-all",
            all_options_on(json!({"scope": "namespaced", "watchNamespaces": ["a", "b"]})),
        ),
        (
            "single",
            json!({"replicaCount": 1, "leaderElection": {"enabled": false}}),
        ),
    ] {
        let file = values_file(&env, name, &values);
        let out = ok(
            &env,
            "helm",
            &["lint", "--strict", CHART, "-f", &file],
            None,
        )
        .await;
        assert!(out.contains("0 chart(s) failed"), "{name}: {out}");
    }
}

#[tokio::test]
async fn values_with_a_typo_or_a_contradiction_are_refused_at_install() {
    let env = env().await;
    let release = release_name(&env);
    for (values, complaint) in [
        (json!({"replicas": 3}), "additional properties 'replicas'"),
        (
            json!({"image": {"repository": "x", "tga": "1"}}),
            "additional properties 'tga'",
        ),
        (
            json!({"metrics": {"serviceMonitor": {"enable": true}}}),
            "additional properties 'enable'",
        ),
        (json!({"scope": "namespace"}), "/scope"),
        (json!({"scope": "namespaced"}), "/watchNamespaces"),
        (
            json!({"scope": "cluster", "watchNamespaces": ["a"]}),
            "/watchNamespaces",
        ),
        (
            json!({"leaderElection": {"enabled": false}}),
            "/replicaCount",
        ),
        (json!({"logFormat": "JSON"}), "/logFormat"),
        // A shard that kept the old default Lease name would share one leader with all.
        (
            json!({"credentialSelector": "shard=a", "leaderElection": {"leaseName": "eagle-eye-operator"}}),
            "a Lease of its own",
        ),
    ] {
        let file = values_file(&env, "typo", &values);
        let args = [
            "install",
            &release,
            CHART,
            "-n",
            &env.namespace,
            "-f",
            &file,
        ];
        let out = run(&env, "helm", &args, None).await;
        assert!(!out.ok, "{values} was accepted");
        assert!(out.stderr.contains(complaint), "{values}: {}", out.stderr);
    }
    let listed = ok(&env, "helm", &["list", "-q", "-n", &env.namespace], None).await;
    assert_eq!(listed.trim(), "", "nothing was installed");
}

#[tokio::test]
async fn the_rendered_chart_with_its_crd_passes_a_server_side_dry_run_in_both_scopes() {
    let env = env().await;
    let watched = crate::support::env().await;
    for values in [
        all_options_on(json!({"scope": "cluster", "crds": {"install": true}})),
        all_options_on(json!({
            "scope": "namespaced",
            "watchNamespaces": [env.namespace, watched.namespace],
            "crds": {"install": true},
        })),
    ] {
        // The Prometheus Operator's CRDs are not installed here: those two objects are
        // checked by `opt_in_objects_render_only_when_enabled_and_fit_together`.
        let docs: Vec<Value> = render(&env, &values, &[])
            .await
            .into_iter()
            .filter(|d| d["apiVersion"] != "monitoring.coreos.com/v1")
            .collect();
        assert!(kinds(&docs).contains("CustomResourceDefinition"));
        let input = docs_to_json_list(&docs);
        let out = ok(
            &env,
            "kubectl",
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&input),
        )
        .await;
        assert_eq!(out.lines().count(), docs.len(), "{out}");
    }
}

#[tokio::test]
async fn install_in_cluster_scope_grants_exactly_the_operators_rules_and_leases_only_at_home() {
    let env = env().await;
    let elsewhere = crate::support::env().await;
    let release = release_name(&env);
    // Without the Prometheus Operator's CRDs here; rendered and checked elsewhere.
    // Pods stay out of the grant unless podNudge is on (the namespaced test turns it on).
    let mut values = all_options_on(json!({
        "scope": "cluster",
        "podNudge": {"enabled": false},
        "workloadRestart": {"enabled": false},
    }));
    values["metrics"] =
        json!({"serviceMonitor": {"enabled": false}, "prometheusRule": {"enabled": false}});
    install(&env, &release, &values).await;
    let names = installed(&env, &release).await;
    for expected in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    let roles = ok(
        &env,
        "kubectl",
        &["get", "clusterrole", &fullname(&release), "-o", "json"],
        None,
    )
    .await;
    let rules: Value = serde_json::from_str(&roles).unwrap();
    assert_eq!(flatten_rules(&rules["rules"]), operator_rules());

    let (home, there) = (&env.namespace, &elsewhere.namespace);
    let lease = "leases.coordination.k8s.io/eagle-eye-operator";
    let other_lease = "leases.coordination.k8s.io/kube-controller-manager";
    let mut expected = vec![
        ("list secrets -A".to_string(), true),
        (
            "watch eagleeyecredentials.eagle-eye-operator.io -A".into(),
            true,
        ),
        (format!("create events.events.k8s.io -n {there}"), true),
        (format!("delete secrets -n {there}"), false),
        // Pods only with podNudge.enabled (off here).
        ("list pods -A".into(), false),
        (format!("patch pods -n {there}"), false),
        (
            "create eagleeyecredentials.eagle-eye-operator.io -A".into(),
            false,
        ),
        // The Lease: only its own, only in the release namespace.
        (format!("create leases.coordination.k8s.io -n {home}"), true),
        (
            format!("create leases.coordination.k8s.io -n {there}"),
            false,
        ),
    ];
    for verb in ["get", "patch", "watch"] {
        expected.push((format!("{verb} {lease} -n {home}"), true));
        expected.push((format!("{verb} {lease} -n {there}"), false));
        expected.push((format!("{verb} {other_lease} -n {home}"), false));
    }
    expected.push((format!("update {lease} -n {home}"), false));
    expected.extend(metrics_review_access());
    assert_access(&env, &service_account(&env, &release), &expected).await;
}

/// The operator may ask who holds a scraper's token and whether they may read /metrics,
/// and may not read /metrics itself (that is the readers' role).
fn metrics_review_access() -> [(String, bool); 4] {
    [
        ("create tokenreviews.authentication.k8s.io".into(), true),
        (
            "create subjectaccessreviews.authorization.k8s.io".into(),
            true,
        ),
        ("get /metrics".into(), false),
        (
            "create localsubjectaccessreviews.authorization.k8s.io".into(),
            false,
        ),
    ]
}

#[tokio::test]
async fn install_in_namespaced_scope_grants_secrets_only_in_the_watched_namespaces() {
    let env = env().await;
    let (a, b, unwatched) = (
        crate::support::env().await,
        crate::support::env().await,
        crate::support::env().await,
    );
    let release = release_name(&env);
    let values = json!({
        "scope": "namespaced",
        "watchNamespaces": [a.namespace, b.namespace],
        "podNudge": {"enabled": true, "perSecond": 7},
        "workloadRestart": {"enabled": true, "perSecond": 2},
    });
    install(&env, &release, &values).await;

    installed(&env, &release).await;
    // Cluster-wide grants: only what reviews a metrics scraper's token (it reads nothing)
    // and the readers' role.
    let manifest = ok(
        &env,
        "helm",
        &["get", "manifest", &release, "-n", &env.namespace],
        None,
    )
    .await;
    let cluster_wide: BTreeSet<String> = parse_docs(&manifest)
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
        .map(|d| {
            format!(
                "{} {}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let full = fullname(&release);
    assert_eq!(
        cluster_wide,
        BTreeSet::from([
            format!("ClusterRole {full}-metrics-auth"),
            format!("ClusterRoleBinding {full}-metrics-auth"),
            format!("ClusterRole {full}-metrics-reader"),
            format!("ClusterRole {full}-crd-reader"),
            format!("ClusterRoleBinding {full}-crd-reader"),
        ])
    );
    for ns in [&a.namespace, &b.namespace] {
        let role = ok(
            &env,
            "kubectl",
            &["get", "role", &fullname(&release), "-n", ns, "-o", "json"],
            None,
        )
        .await;
        let role: Value = serde_json::from_str(&role).unwrap();
        let mut granted = operator_rules();
        granted.extend(pod_nudge_rules());
        granted.extend(workload_restart_rules());
        assert_eq!(flatten_rules(&role["rules"]), granted, "Role in {ns}");
    }
    let deployment = Api::<Deployment>::namespaced(env.client.clone(), &env.namespace)
        .get(&fullname(&release))
        .await
        .unwrap();
    let args = deployment.spec.template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&format!("--namespaces={},{}", a.namespace, b.namespace)),
        "{args:?}"
    );
    for flag in [
        "--nudge-pods",
        "--pod-nudges-per-second=7",
        "--restart-workloads",
        "--workload-restarts-per-second=2",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }

    let (home, a, b, c) = (
        &env.namespace,
        &a.namespace,
        &b.namespace,
        &unwatched.namespace,
    );
    let lease = "leases.coordination.k8s.io/eagle-eye-operator";
    let expected = [
        (format!("get secrets -n {a}"), true),
        (format!("get secrets -n {b}"), true),
        (
            format!("watch eagleeyecredentials.eagle-eye-operator.io -n {b}"),
            true,
        ),
        (format!("get secrets -n {c}"), false),
        (format!("patch pods -n {a}"), true),
        (format!("list pods -n {b}"), true),
        (format!("patch pods -n {c}"), false),
        (format!("delete pods -n {a}"), false),
        ("list pods -A".into(), false),
        (format!("get secrets -n {home}"), false),
        ("list secrets -A".into(), false),
        (
            "list eagleeyecredentials.eagle-eye-operator.io -A".into(),
            false,
        ),
        (format!("patch {lease} -n {home}"), true),
        (format!("update {lease} -n {home}"), false),
        (format!("update {lease} -n {a}"), false),
    ];
    let mut expected = expected.to_vec();
    expected.extend(metrics_review_access());
    let sa = service_account(&env, &release);
    assert_access(&env, &sa, &expected).await;

    // RBAC cannot narrow `patch pods` to one annotation; the chart's admission policy does.
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "labels": {"app": "vms"}, "annotations": {"team": "a"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.client.clone(), a)
        .create(&Default::default(), &pod)
        .await
        .unwrap();
    // What the operator does: a merge patch (no get, which it is not granted), as its
    // ServiceAccount.
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
        crate::support::client_as(&env, &sa).await,
        a,
    );
    struct Ran {
        ok: bool,
        stderr: String,
    }
    let as_operator = |patch: Value| {
        let pods = &pods;
        async move {
            match pods
                .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ran {
                    ok: true,
                    stderr: String::new(),
                },
                Err(e) => Ran {
                    ok: false,
                    stderr: e.to_string(),
                },
            }
        }
    };
    // A new policy takes a moment to be enforced: wait until a change beyond the
    // annotation is refused, then check that the annotation alone still passes.
    let refused = crate::support::eventually(
        "the admission policy enforced",
        std::time::Duration::from_secs(30),
        || async {
            let r = as_operator(json!({"metadata": {"labels": {"app": "other"}}})).await;
            (!r.ok).then_some(r.stderr)
        },
    )
    .await;
    assert!(refused.contains("only the annotation"), "{refused}");
    for patch in [
        json!({"metadata": {"annotations": {"team": "b"}}}),
        json!({"metadata": {"annotations": {"team": null}}}),
        json!({"metadata": {"finalizers": ["example.com/x"]}}),
        json!({"spec": {"activeDeadlineSeconds": 5}}),
    ] {
        let r = as_operator(patch.clone()).await;
        assert!(
            !r.ok && r.stderr.contains("only the annotation"),
            "{patch}: {}",
            r.stderr
        );
    }
    let nudge = as_operator(json!({"metadata": {"annotations": {
        "eagle-eye-operator.io/token-issued-at": "2026-11-30T09:00:00Z"
    }}}))
    .await;
    assert!(nudge.ok, "{}", nudge.stderr);
    // Anyone else is not concerned by it.
    ok(
        &env,
        "kubectl",
        &["label", "pod", "app", "app=other", "--overwrite", "-n", a],
        None,
    )
    .await;

    // Likewise `patch deployments` (workload restarts) is narrowed to the restart annotation.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}, "annotations": {"team": "a"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(env.client.clone(), a)
        .create(&Default::default(), &deployment)
        .await
        .unwrap();
    let deployments = Api::<Deployment>::namespaced(crate::support::client_as(&env, &sa).await, a);
    let restart_only = "only the pod-template annotation kubectl.kubernetes.io/restartedAt";
    let template = |t: Value| json!({"spec": {"template": t}});
    let refused = crate::support::eventually(
        "the workload admission policy enforced",
        std::time::Duration::from_secs(30),
        || async {
            let image =
                template(json!({"spec": {"containers": [{"name": "app", "image": "evil:1"}]}}));
            let r = deployments
                .patch("api", &PatchParams::default(), &Patch::Strategic(&image))
                .await;
            r.err().map(|e| e.to_string())
        },
    )
    .await;
    assert!(refused.contains(restart_only), "{refused}");
    for patch in [
        template(json!({"metadata": {"annotations": {"team": "b"}}})),
        template(json!({"metadata": {"labels": {"extra": "x"}}})),
        json!({"metadata": {"labels": {"x": "y"}}}),
    ] {
        let r = deployments
            .patch("api", &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(restart_only), "{patch}: {e}");
    }
    let restart = template(json!({"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-12-06T21:00:00.000Z"
    }}}));
    deployments
        .patch("api", &PatchParams::default(), &Patch::Merge(&restart))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_pod_template_is_admitted_under_the_restricted_pod_security_standard() {
    let env = env().await;
    let labels = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.namespace,
            &PatchParams::default(),
            &Patch::Merge(&labels),
        )
        .await
        .unwrap();
    let values = all_options_on(json!({}));
    let docs = render(&env, &values, &[]).await;
    let deployment = find(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = |spec: &Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "operator", "namespace": env.namespace},
               "spec": spec})
        .to_string()
    };
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert!(container["resources"]["requests"]["cpu"].is_string());
    let create = ["create", "--dry-run=server", "-f", "-"];
    ok(&env, "kubectl", &create, Some(&pod(spec))).await;

    // The namespace really enforces: the same pod without its security context is refused.
    let mut bare = spec.clone();
    bare["securityContext"] = json!({});
    bare["containers"][0]["securityContext"] = json!({});
    let refused = run(&env, "kubectl", &create, Some(&pod(&bare))).await;
    assert!(
        !refused.ok && refused.stderr.contains("violates PodSecurity"),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn opt_in_objects_render_only_when_enabled_and_fit_together() {
    let env = env().await;
    let defaults = kinds(&render(&env, &json!({}), &[]).await);
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(!defaults.contains(kind), "{kind} is rendered by default");
    }
    let one = all_options_on(json!({"replicaCount": 1}));
    assert!(!kinds(&render(&env, &one, &[]).await).contains("PodDisruptionBudget"));

    let docs = render(&env, &all_options_on(json!({})), &[]).await;
    assert_eq!(
        find(&docs, "PodDisruptionBudget")["spec"]["minAvailable"],
        1
    );
    let service = find(&docs, "Service");
    let monitor = find(&docs, "ServiceMonitor");
    let selected = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selected.is_empty());
    for (label, value) in selected {
        assert_eq!(
            &service["metadata"]["labels"][label], value,
            "selects the Service"
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    // The Service reaches the HTTPS metrics port, and Prometheus brings its token.
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(
        endpoint["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    assert_eq!(endpoint["tlsConfig"], json!({"insecureSkipVerify": true}));
    let container = &find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<&Value> = container["ports"].as_array().unwrap().iter().collect();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == 8443)
    );
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--metrics-cert-dir=/etc/eagle-eye-operator/metrics-cert"),
        "certSecret is mounted and named: {container}"
    );
    let readers = docs
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRoleBinding"
                && d["roleRef"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("-metrics-reader")
        })
        .expect("metrics.readers bound to the reader role");
    assert_eq!(
        readers["subjects"],
        json!([
            {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"},
            {"kind": "Group", "name": "metrics-readers", "apiGroup": "rbac.authorization.k8s.io"},
        ])
    );
    assert_eq!(
        endpoint["honorLabels"], true,
        "keeps the credential's namespace label"
    );
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");

    let rules = alert_rules(&docs);
    let alerts: BTreeSet<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(
        alerts,
        BTreeSet::from([
            "EagleEyeAccessTokenExpired",
            "EagleEyeCredentialNotReady",
            "EagleEyeOperatorDown",
            "EagleEyeReloginNeeded",
        ])
    );
    let relogin = rules
        .iter()
        .find(|r| r["alert"] == "EagleEyeReloginNeeded")
        .unwrap();
    assert!(
        relogin["expr"].as_str().unwrap().ends_with("< 864000"),
        "10 days: {relogin}"
    );

    let policy = find(&docs, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"],
        json!([{"port": "admin", "protocol": "TCP"}])
    );
    assert_eq!(
        policy["spec"]["ingress"][1]["ports"],
        json!([{"port": "metrics", "protocol": "TCP"}])
    );
    let egress_ports: BTreeSet<i64> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(egress_ports, BTreeSet::from([53, 443, 6443]));
}
