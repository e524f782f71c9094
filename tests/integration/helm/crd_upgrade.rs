//! Safe upgrades (issue 22): a release of the previous chart (its CRD in crds/, as Helm
//! installs once and never upgrades) on a control plane of its own, credentials created
//! under it, then `helm upgrade` to this chart, which templates the CRD: nothing is lost,
//! the new fields are kept, the CRD stays on uninstall, and the operator refuses to start
//! against the old CRD and starts against the new one.

use std::time::Duration;

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_testbed::plane::ControlPlane;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::chart::{CHART, ok, run, scratch, values_file};
use crate::support::operator::{Operator, credential, stand_in};
use crate::support::{TestEnv, env_on, eventually};

/// The CRD as generated before this chart templated it (from git history).
const PREVIOUS_CRD: &str = include_str!("previous-crd.yaml");
const CRD_NAME: &str = "eagleeyecredentials.eagle-eye-operator.io";

/// The previous chart: this one with its CRD in crds/ (the previous CRD), not in templates/.
fn previous_chart(env: &TestEnv) -> String {
    let dir = scratch(env).join("previous");
    let _ = std::fs::remove_dir_all(&dir);
    let copied = std::process::Command::new("cp")
        .args(["-r", CHART, &dir.to_string_lossy()])
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_file(dir.join("templates/crds.yaml")).unwrap();
    std::fs::remove_dir_all(dir.join("files")).unwrap();
    std::fs::create_dir_all(dir.join("crds")).unwrap();
    std::fs::write(dir.join("crds/eagleeyecredentials.yaml"), PREVIOUS_CRD).unwrap();
    dir.to_string_lossy().into_owned()
}

async fn spec_of(env: &TestEnv, name: &str) -> Value {
    let cr = env.api::<EagleEyeCredential>().get(name).await.unwrap();
    serde_json::to_value(cr.spec).unwrap()
}

#[tokio::test]
async fn an_upgrade_from_the_previous_chart_upgrades_the_crd_loses_nothing_and_keeps_new_fields() {
    // The CRD is cluster-wide: an old one must not disturb other tests.
    let plane: &'static ControlPlane = Box::leak(Box::new(
        ControlPlane::start().await.expect("a control plane"),
    ));
    let env = env_on(plane).await;
    let release = "een";
    let previous = previous_chart(&env);
    let values = values_file(&env, "upgrade", &json!({"replicaCount": 0}));
    ok(
        &env,
        "helm",
        &[
            "install",
            release,
            &previous,
            "-n",
            &env.namespace,
            "-f",
            &values,
        ],
        None,
    )
    .await;

    // Credentials written under the previous CRD, with the fields it knows.
    let si = stand_in(Duration::from_secs(3600)).await;
    let api = env.api::<EagleEyeCredential>();
    let extras = [
        ("plain", json!({})),
        (
            "nudged",
            json!({"consumers": {"podSelector": {"matchLabels": {"app": "vms"}}}, "revokeOnDelete": true,
                   "target": {"name": "vms-token", "labels": {"team": "a"}}, "refreshBefore": "45m"}),
        ),
    ];
    for (name, extra) in &extras {
        api.create(
            &PostParams::default(),
            &credential(name, &si, extra.clone()),
        )
        .await
        .unwrap();
    }
    let before = [spec_of(&env, "plain").await, spec_of(&env, "nudged").await];
    // The old schema prunes what it does not know: the reason to upgrade it.
    let renew = json!({"spec": {"renewRequest": "2030-01-01T00:00:00Z"}});
    api.patch("plain", &PatchParams::default(), &Patch::Merge(&renew))
        .await
        .unwrap();
    assert_eq!(api.get("plain").await.unwrap().spec.renew_request, None);

    // This operator refuses to run against it, naming what is missing.
    let mut op = Operator::start(&env, &si, &[]).await;
    let exited = tokio::time::timeout(Duration::from_secs(30), async {
        while op.is_running() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let logs = op.current_logs();
    assert!(
        exited.is_ok(),
        "the operator still runs against the old CRD:\n{logs}"
    );
    assert!(logs.contains("is older than this operator"), "{logs}");
    assert!(
        logs.contains("spec.renewRequest") && logs.contains("status.history"),
        "{logs}"
    );

    // Upgrade to this chart. The CRD came from crds/, so no release owns it yet: Helm
    // takes it over only when asked (--take-ownership, Helm 3.17 and later).
    let crds_on = values_file(
        &env,
        "crds-on",
        &json!({"replicaCount": 0, "crds": {"install": true}}),
    );
    let mut upgrade = vec![
        "upgrade",
        release,
        CHART,
        "-n",
        &env.namespace,
        "-f",
        &crds_on,
    ];
    let refused = run(&env, "helm", &upgrade, None).await;
    assert!(
        !refused.ok && refused.stderr.contains("ownership"),
        "{}",
        refused.stderr
    );
    upgrade.push("--take-ownership");
    ok(&env, "helm", &upgrade, None).await;

    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let crd = crds.get(CRD_NAME).await.unwrap();
    assert_eq!(
        crd.metadata
            .annotations
            .unwrap_or_default()
            .get("helm.sh/resource-policy"),
        Some(&"keep".to_string())
    );
    // Nothing lost.
    assert_eq!(
        [spec_of(&env, "plain").await, spec_of(&env, "nudged").await],
        before
    );
    // New fields are kept now.
    let new_fields = json!({"spec": {
        "renewRequest": "2030-01-01T00:00:00Z",
        "consumers": {"restart": [{"kind": "Deployment", "name": "api"}], "restartPause": "2m"},
        "target": {"template": {"Authorization": "{{ .tokenType }} {{ .accessToken }}"}},
    }});
    eventually(
        "the API server to serve the new schema",
        Duration::from_secs(30),
        || async {
            api.patch(
                "nudged",
                &PatchParams::default(),
                &Patch::Merge(&new_fields),
            )
            .await
            .ok()?;
            let cr = api.get("nudged").await.ok()?;
            cr.spec.renew_request.is_some().then_some(())
        },
    )
    .await;
    let cr = api.get("nudged").await.unwrap();
    let consumers = cr.spec.consumers.clone().unwrap();
    assert_eq!(consumers.restart.len(), 1);
    assert_eq!(consumers.restart_pause, "2m");
    assert!(
        consumers.pod_selector.is_some(),
        "the old field beside the new ones"
    );
    assert_eq!(cr.spec.target.template.len(), 1);
    assert_eq!(cr.spec.target.labels.get("team"), Some(&"a".to_string()));
    assert!(cr.spec.revoke_on_delete);

    // And this operator starts against it.
    drop(op);
    let mut op = Operator::start(&env, &si, &[]).await;
    eventually(
        "the operator to accept the CRD",
        Duration::from_secs(30),
        || async {
            op.current_logs()
                .contains("the served CRD has every field")
                .then_some(())
        },
    )
    .await;
    assert!(op.is_running());
    op.kill().await;

    // Uninstalled, the release leaves the CRD and every credential in place.
    ok(
        &env,
        "helm",
        &["uninstall", release, "-n", &env.namespace],
        None,
    )
    .await;
    assert!(crds.get_opt(CRD_NAME).await.unwrap().is_some());
    assert_eq!(api.list(&Default::default()).await.unwrap().items.len(), 2);
}
