//! The test bed itself: a client survives a kube-apiserver restart.

use std::time::Duration;

use crate::support::{eventually, own_env};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};

#[tokio::test]
async fn client_recovers_after_kube_apiserver_restarts_mid_test() {
    let env = own_env().await;
    let maps: Api<ConfigMap> = env.api();
    let cm = |name: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    maps.create(&PostParams::default(), &cm("before"))
        .await
        .unwrap();

    env.plane.stop_apiserver().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), maps.get("before"))
        .await
        .map(|r| r.is_err())
        .unwrap_or(true);
    assert!(err, "a request while kube-apiserver is down must fail");

    env.plane.start_apiserver().await.unwrap();
    // The same client, with its pooled connections now dead, must work again.
    eventually(
        "the old client to reach the restarted apiserver",
        Duration::from_secs(30),
        || async { maps.get_opt("before").await.ok().flatten() },
    )
    .await;
    maps.create(&PostParams::default(), &cm("after"))
        .await
        .unwrap();
    assert!(maps.get_opt("after").await.unwrap().is_some());
}
