//! Restart targets (issue 22): the Deployments, StatefulSets and DaemonSets of
//! spec.consumers.restart are restarted once per new access token, by the pod-template
//! annotation `kubectl rollout restart` sets, never because the operator restarted, one
//! restart for rotations within the pause; a missing workload is reported until it exists.
//! The workloads are API objects only (no kubelet): a restart shows as a new template
//! generation, which is all a rollout starts from.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::renew::request_renew;
use crate::support::operator::{
    Operator, create_credential, create_secrets, credential, events, login, stand_in,
};
use crate::support::{TestEnv, env, eventually, figure, get, series};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_operator::restart::RESTARTED_AT;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};

fn resource(kind: &str) -> ApiResource {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    match kind {
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        _ => ApiResource::erase::<DaemonSet>(&()),
    }
}

fn workloads(env: &TestEnv, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(env.client.clone(), &env.namespace, &resource(kind))
}

/// A workload of `kind` reading the target Secret into an environment variable.
async fn create_workload(env: &TestEnv, kind: &str, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let mut spec = serde_json::json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "env": [{"name": "EEN_TOKEN", "valueFrom": {"secretKeyRef": {"name": "cam-token", "key": "access_token"}}}],
            }]},
        },
    });
    if kind == "StatefulSet" {
        spec["serviceName"] = name.into();
    }
    let r = resource(kind);
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": r.api_version, "kind": kind,
        "metadata": {"name": name, "labels": labels,
            "annotations": {"eagle-eye-operator.io/restart-for": "cam,lonely"}},
        "spec": spec,
    }))
    .unwrap();
    workloads(env, kind)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

/// (generation, restartedAt annotation) of a workload.
async fn restarts_of(env: &TestEnv, kind: &str, name: &str) -> (i64, Option<String>) {
    let w = workloads(env, kind).get(name).await.unwrap();
    let at = w.data["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
        .as_str()
        .map(str::to_owned);
    (w.metadata.generation.unwrap(), at)
}

fn restart_condition(cr: &EagleEyeCredential) -> Option<(String, String, String)> {
    crate::support::operator::condition(cr, "WorkloadsRestarted")
}

/// The credential once `WorkloadsRestarted` has `reason` at status.revision `revision`.
async fn restarted_at_revision(
    env: &TestEnv,
    name: &str,
    reason: &str,
    revision: u64,
) -> EagleEyeCredential {
    eventually(
        &format!("{name} to report {reason} at revision {revision}"),
        Duration::from_secs(60),
        || async {
            let cr = env.api::<EagleEyeCredential>().get(name).await.ok()?;
            let at = cr.status.as_ref()?.revision == revision;
            (at && restart_condition(&cr)?.1 == reason).then_some(cr)
        },
    )
    .await
}

#[tokio::test]
async fn a_rotation_restarts_each_workload_once_within_seconds_and_an_operator_restart_restarts_none()
 {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let l = login(&si, "restart-a", true).await;
    create_secrets(&env, "cam", &l).await;
    create_workload(&env, "Deployment", "api", &[]).await;
    create_workload(&env, "Deployment", "reader-1", &[("reads", "een")]).await;
    create_workload(&env, "Deployment", "reader-2", &[("reads", "een")]).await;
    create_workload(&env, "StatefulSet", "db", &[]).await;
    create_workload(&env, "DaemonSet", "agent", &[]).await;
    create_workload(&env, "Deployment", "bystander", &[("reads", "other")]).await;
    let restart = serde_json::json!({"consumers": {"restart": [
        {"kind": "Deployment", "name": "api"},
        {"kind": "Deployment", "selector": {"matchLabels": {"reads": "een"}}},
        {"kind": "StatefulSet", "name": "db"},
        {"kind": "DaemonSet", "name": "agent"},
    ]}});
    create_credential(&env, "cam", &si, restart).await;
    let mut op = Operator::start(&env, &si, &["--restart-workloads"]).await;
    let all = [
        ("Deployment", "api"),
        ("Deployment", "reader-1"),
        ("Deployment", "reader-2"),
        ("StatefulSet", "db"),
        ("DaemonSet", "agent"),
    ];

    // The first token: the workloads are recorded as started with it, not restarted.
    let cr = restarted_at_revision(&env, "cam", "WorkloadsRestarted", 1).await;
    assert_eq!(cr.status.as_ref().unwrap().restarts.len(), 5);
    for (kind, name) in all {
        assert_eq!(
            restarts_of(&env, kind, name).await,
            (1, None),
            "{kind} {name}"
        );
    }

    // A rotation (at the default restartPause): each restarted once, within seconds.
    request_renew(&env, "cam", "rotate-1").await;
    let cr = restarted_at_revision(&env, "cam", "WorkloadsRestarted", 2).await;
    // The rotation's time to the second, rounded down: the delay measured errs long.
    let issued = cr
        .status
        .as_ref()
        .unwrap()
        .last_refresh_at
        .clone()
        .unwrap()
        .0;
    let mut slowest = jiff::SignedDuration::ZERO;
    for (kind, name) in all {
        let (generation, at) = restarts_of(&env, kind, name).await;
        assert_eq!(generation, 2, "{kind} {name}: one restart");
        let at: jiff::Timestamp = at.unwrap().parse().unwrap();
        slowest = slowest.max(at.duration_since(issued));
    }
    figure(format!(
        "rotation -> last of 5 workload restarts: {} ms (default settings)",
        slowest.as_millis()
    ));
    assert!(slowest < jiff::SignedDuration::from_secs(5), "{slowest:#}");
    assert_eq!(
        restarts_of(&env, "Deployment", "bystander").await,
        (1, None)
    );
    assert_eq!(events(&env, "cam", "WorkloadsRestarted").await.len(), 5);

    // An operator restart re-reads everything and restarts nothing.
    op.kill().await;
    op.restart().await;
    eventually(
        "the new process to reconcile",
        Duration::from_secs(30),
        || async {
            let text = get(op.admin_addr().await, "/metrics").await.1;
            (series(&text, "eagle_eye_reconciles_total")? >= 1.0).then_some(())
        },
    )
    .await;
    let cr = restarted_at_revision(&env, "cam", "WorkloadsRestarted", 2).await;
    assert_eq!(cr.status.unwrap().revision, 2);
    for (kind, name) in all {
        assert_eq!(restarts_of(&env, kind, name).await.0, 2, "{kind} {name}");
    }
}

#[tokio::test]
async fn rotations_within_the_pause_restart_once_and_a_missing_workload_is_reported_until_it_exists()
 {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    for (name, client) in [("cam", "restart-p"), ("lonely", "restart-m")] {
        let l = login(&si, client, true).await;
        create_secrets(&env, name, &l).await;
    }
    create_workload(&env, "Deployment", "api", &[]).await;
    // What the API server refuses outright: a name that is no workload name, a target both
    // named and selected, an empty selector.
    for bad in [
        serde_json::json!({"kind": "Deployment", "name": "api/status"}),
        serde_json::json!({"kind": "Deployment", "name": "api", "selector": {"matchLabels": {"a": "b"}}}),
        serde_json::json!({"kind": "Deployment", "selector": {}}),
    ] {
        let spec = serde_json::json!({"consumers": {"restart": [bad.clone()]}});
        let refused = env
            .api::<EagleEyeCredential>()
            .create(&PostParams::default(), &credential("bad", &si, spec))
            .await;
        assert!(refused.is_err(), "{bad} was accepted");
    }
    let paused = serde_json::json!({"consumers": {
        "restart": [{"kind": "Deployment", "name": "api"}],
        "restartPause": "10s",
    }});
    create_credential(&env, "cam", &si, paused).await;
    let missing =
        serde_json::json!({"consumers": {"restart": [{"kind": "Deployment", "name": "later"}]}});
    create_credential(&env, "lonely", &si, missing).await;
    let _op = Operator::start(&env, &si, &["--restart-workloads"]).await;

    restarted_at_revision(&env, "cam", "WorkloadsRestarted", 1).await;
    // Three rotations in quick succession: the first restarts at once, the other two
    // within the pause wait for its end and then cause one restart together.
    request_renew(&env, "cam", "r1").await;
    restarted_at_revision(&env, "cam", "WorkloadsRestarted", 2).await;
    request_renew(&env, "cam", "r2").await;
    let cr = restarted_at_revision(&env, "cam", "RestartPending", 3).await;
    assert!(restart_condition(&cr).unwrap().2.contains("restartPause"));
    request_renew(&env, "cam", "r3").await;
    restarted_at_revision(&env, "cam", "RestartPending", 4).await;
    assert_eq!(restarts_of(&env, "Deployment", "api").await.0, 2);
    let cr = restarted_at_revision(&env, "cam", "WorkloadsRestarted", 4).await;
    assert_eq!(cr.status.unwrap().restarts[0].revision, 4);
    assert_eq!(
        restarts_of(&env, "Deployment", "api").await.0,
        3,
        "three rotations, two restarts"
    );

    // A workload that does not exist: said so, in the condition and an Event.
    let cr = eventually(
        "lonely to report its missing workload",
        Duration::from_secs(60),
        || async {
            let cr = env.api::<EagleEyeCredential>().get("lonely").await.ok()?;
            (restart_condition(&cr)?.1 == "RestartTargetMissing").then_some(cr)
        },
    )
    .await;
    assert!(
        restart_condition(&cr)
            .unwrap()
            .2
            .contains("Deployment \"later\"")
    );
    assert_eq!(
        crate::support::operator::ready(&env, "lonely")
            .await
            .unwrap()
            .1,
        "TokenRefreshed",
        "a missing workload does not stop the token"
    );
    assert_eq!(
        events(&env, "lonely", "RestartTargetMissing").await.len(),
        1
    );
    // Created later, it is found by itself and recorded as started with the current token.
    create_workload(&env, "Deployment", "later", &[]).await;
    restarted_at_revision(&env, "lonely", "WorkloadsRestarted", 1).await;
    assert_eq!(restarts_of(&env, "Deployment", "later").await, (1, None));
}
