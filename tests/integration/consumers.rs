//! The consumer nudge (issue 12): after each new access token, the pods a credential names in
//! spec.consumers carry the token's issue time as an annotation (which makes the kubelet
//! rewrite their Secret volumes at once), and no other pod is touched. Pods exist here as API
//! objects only (no kubelet runs them), which is all the operator ever sees of them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::operator::{
    Operator, create_credential, create_secrets, events, login, secret_data, stand_in,
    wait_for_reason,
};
use crate::support::{TestEnv, env, eventually, figure};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_operator::nudge::ANNOTATION;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};

/// A pod as a Deployment would make it: labelled, mounting the target Secret.
async fn create_pod(env: &TestEnv, name: &str, labels: &[(&str, &str)], target: &str) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "volumeMounts": [{"name": "een", "mountPath": "/var/run/een", "readOnly": true}],
            }],
            "volumes": [{"name": "een", "secret": {"secretName": target}}],
        },
    }))
    .unwrap();
    env.api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

/// Each pod's nudge annotation, by name.
async fn annotations(env: &TestEnv) -> BTreeMap<String, Option<String>> {
    env.api::<Pod>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| {
            let value = p
                .metadata
                .annotations
                .and_then(|a| a.get(ANNOTATION).cloned());
            (p.metadata.name.unwrap(), value)
        })
        .collect()
}

/// status.lastRefreshAt as the API server shows it, once status.consumers describes the
/// nudge for that very token.
async fn nudged_token(
    env: &TestEnv,
    name: &str,
    after: Option<&str>,
) -> (String, EagleEyeCredential) {
    eventually(
        &format!("{name} to report a nudge for a token newer than {after:?}"),
        Duration::from_secs(60),
        || async {
            let cr = env.api::<EagleEyeCredential>().get(name).await.ok()?;
            let status = cr.status.as_ref()?;
            let refreshed = serde_json::to_value(status.last_refresh_at.as_ref()?).ok()?;
            let refreshed = refreshed.as_str()?.to_owned();
            let nudged =
                serde_json::to_value(status.consumers.as_ref()?.token_issued_at.as_ref()?).ok()?;
            let done = pods_condition(&cr).is_some_and(|(_, reason, _)| reason == "PodsNudged");
            (done && nudged.as_str() == Some(&refreshed) && Some(refreshed.as_str()) != after)
                .then_some((refreshed, cr))
        },
    )
    .await
}

fn pods_condition(cr: &EagleEyeCredential) -> Option<(String, String, String)> {
    crate::support::operator::condition(cr, "PodsNudged")
}

#[tokio::test]
async fn after_each_rotation_exactly_the_selected_pods_carry_the_new_tokens_issue_time() {
    let env = env().await;
    let elsewhere = crate::support::env().await;
    // Short tokens: a rotation every few seconds.
    let stand_in = stand_in(Duration::from_secs(9)).await;
    for (name, client) in [("cam", "nudge-a"), ("plain", "nudge-b")] {
        let l = login(&stand_in, client, true).await;
        create_secrets(&env, name, &l).await;
    }
    for i in 0..3 {
        create_pod(
            &env,
            &format!("vms-{i}"),
            &[("app", "vms"), ("tier", "web")],
            "cam-token",
        )
        .await;
    }
    // Not selected: another label value, a label subset, and the same labels elsewhere.
    create_pod(&env, "other", &[("app", "other")], "plain-token").await;
    create_pod(&env, "web-only", &[("tier", "web")], "cam-token").await;
    create_pod(
        &elsewhere,
        "vms-0",
        &[("app", "vms"), ("tier", "web")],
        "cam-token",
    )
    .await;
    let selector = serde_json::json!({"consumers": {"podSelector": {
        "matchLabels": {"app": "vms"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}],
    }}});
    create_credential(&env, "cam", &stand_in, selector).await;
    // The opt-in is per credential: this one names no consumers.
    create_credential(&env, "plain", &stand_in, serde_json::json!({})).await;
    let _op = Operator::start(
        &env,
        &stand_in,
        &["--nudge-pods", "--pod-nudges-per-second", "50"],
    )
    .await;

    let mut last: Option<String> = None;
    for round in 0..3 {
        let (issued, cr) = nudged_token(&env, "cam", last.as_deref()).await;
        let nudge = cr.status.as_ref().unwrap().consumers.clone().unwrap();
        assert_eq!(
            (nudge.selected_pods, nudge.nudged_pods, nudge.failed_pods),
            (3, 3, 0),
            "round {round}: {nudge:?}"
        );
        let (status, reason, message) = pods_condition(&cr).unwrap();
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "PodsNudged"),
            "{message}"
        );
        let seen = annotations(&env).await;
        for i in 0..3 {
            // A later rotation may already have nudged again: never an older value.
            let value = seen[&format!("vms-{i}")].clone().unwrap();
            assert!(value >= issued, "vms-{i}: {value} < {issued}");
        }
        for untouched in ["other", "web-only"] {
            assert_eq!(seen[untouched], None, "{untouched} was nudged");
        }
        last = Some(issued);
    }
    assert_eq!(annotations(&elsewhere).await["vms-0"], None);
    // The value is a time, and nothing of the tokens reached a pod or the status.
    let cr = env.api::<EagleEyeCredential>().get("cam").await.unwrap();
    let everything = format!(
        "{}{:?}",
        serde_json::to_string(&cr.status).unwrap(),
        annotations(&env).await
    );
    let refresh = secret_data(&env, "cam-refresh").await.unwrap()["refresh_token"].clone();
    let access = secret_data(&env, "cam-token").await.unwrap()["access_token"].clone();
    assert!(!everything.contains(&refresh) && !everything.contains(&access));
    // One Normal Event when nudging started working, not one per rotation.
    assert_eq!(events(&env, "cam", "PodsNudged").await.len(), 1);
    let plain = env.api::<EagleEyeCredential>().get("plain").await.unwrap();
    assert!(pods_condition(&plain).is_none());
    assert!(plain.status.unwrap().consumers.is_none());
}

#[tokio::test]
async fn without_the_operators_flag_the_field_is_refused_with_a_reason_and_pods_stay_untouched() {
    let env = env().await;
    let stand_in = stand_in(Duration::from_secs(9)).await;
    let l = login(&stand_in, "nudge-off", true).await;
    create_secrets(&env, "cam", &l).await;
    create_pod(&env, "vms-0", &[("app", "vms")], "cam-token").await;
    let selector =
        serde_json::json!({"consumers": {"podSelector": {"matchLabels": {"app": "vms"}}}});
    create_credential(&env, "cam", &stand_in, selector).await;
    let mut op = Operator::start(&env, &stand_in, &[]).await;

    // The token is published all the same; the nudge alone is refused, saying how to enable it.
    let cr = wait_for_reason(&env, "cam", "TokenRefreshed", Duration::from_secs(30)).await;
    let first = cr.status.as_ref().unwrap().last_refresh_at.clone();
    let cr = eventually(
        "a rotation after the first",
        Duration::from_secs(30),
        || async {
            let cr = env.api::<EagleEyeCredential>().get("cam").await.ok()?;
            (cr.status.as_ref()?.last_refresh_at != first).then_some(cr)
        },
    )
    .await;
    let (status, reason, message) = pods_condition(&cr).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "PodNudgeDisabled")
    );
    assert!(
        message.contains("--nudge-pods") && message.contains("podNudge.enabled"),
        "{message}"
    );
    assert!(cr.status.unwrap().consumers.is_none());
    assert_eq!(annotations(&env).await["vms-0"], None);
    assert_eq!(
        events(&env, "cam", "PodNudgeDisabled").await.len(),
        1,
        "one Warning per change"
    );

    // Fixed by the platform team: the next rotation nudges, with no change to the credential.
    op.terminate().await;
    op.set_args(|a| a.push("--nudge-pods".into())).await;
    let (issued, cr) = nudged_token(&env, "cam", None).await;
    assert_eq!(pods_condition(&cr).unwrap().1, "PodsNudged");
    let value = annotations(&env).await["vms-0"].clone().unwrap();
    assert!(value >= issued);
}

#[tokio::test]
async fn five_hundred_pods_are_nudged_no_faster_than_the_rate_bound() {
    const PODS: usize = 500;
    const RATE: usize = 50;
    let env = env().await;
    // One rotation in the whole test.
    let stand_in = stand_in(Duration::from_secs(3600)).await;
    let l = login(&stand_in, "nudge-many", true).await;
    create_secrets(&env, "cam", &l).await;
    futures::stream::iter(0..PODS)
        .for_each_concurrent(16, |i| {
            let env = &env;
            async move { create_pod(env, &format!("p-{i:03}"), &[("app", "many")], "cam-token").await }
        })
        .await;
    let selector =
        serde_json::json!({"consumers": {"podSelector": {"matchLabels": {"app": "many"}}}});
    create_credential(&env, "cam", &stand_in, selector).await;
    let rate = RATE.to_string();
    let _op = Operator::start(
        &env,
        &stand_in,
        &["--nudge-pods", "--pod-nudges-per-second", &rate],
    )
    .await;

    let (issued, cr) = nudged_token(&env, "cam", None).await;
    let nudge = cr.status.unwrap().consumers.unwrap();
    assert_eq!(
        (nudge.selected_pods, nudge.nudged_pods),
        (PODS as u32, PODS as u32)
    );

    // When the API server recorded each pod's patch (to the second, from managedFields).
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut per_second: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        assert_eq!(
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION)),
            Some(&issued)
        );
        let by_operator = p
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .find(|m| m.manager.as_deref() == Some("eagle-eye-operator"))
            .expect("the operator's patch is recorded");
        let at = serde_json::to_value(by_operator.time.as_ref().unwrap()).unwrap();
        *per_second
            .entry(at.as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let busiest = per_second.values().copied().max().unwrap();
    let seconds = per_second.len();
    figure(format!(
        "{PODS} pods nudged at --pod-nudges-per-second {RATE}: over {seconds} distinct seconds, at most {busiest} in one second"
    ));
    // Evenly spaced slots give at most RATE + 1 patches in one clock second; the API server's
    // own stamping may move a patch by a second, hence the small allowance.
    assert!(
        busiest <= RATE + RATE / 5,
        "{busiest} patches in one second: {per_second:?}"
    );
    assert!(
        seconds >= PODS / RATE,
        "{PODS} patches over only {seconds} seconds"
    );
}
