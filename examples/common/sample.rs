//! The sample credential of the sandbox and the delivery benchmark: a client registered with
//! the stand-in, a Phase 1 login, the two Secrets the credential names, and the
//! EagleEyeCredential `sample` (target Secret `sample-token`), optionally nudging consumers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_operator::secrets::{LOGIN_TIME, opaque};
use eagle_eye_testbed::standin::{ClientRegistration, StandIn};

/// Creates everything in `ns`; `consumers` becomes `spec.consumers` when given.
pub async fn create(
    client: &Client,
    ns: &str,
    stand_in: &StandIn,
    client_id: &str,
    consumers: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let secret = format!("{client_id}-{:08x}", rand::random::<u32>());
    stand_in.register_client(ClientRegistration {
        id: client_id.into(),
        secret: secret.clone(),
        redirect_uris: vec!["http://127.0.0.1:3333".into()],
        rotating: true,
    });
    let login = stand_in.login(client_id);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &opaque(
                "sample-client",
                [("client_id", client_id), ("client_secret", secret.as_str())],
                BTreeMap::new(),
            ),
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &opaque(
                "sample-refresh-token",
                [("refresh_token", &login.refresh_token)],
                BTreeMap::from([(LOGIN_TIME.to_owned(), jiff::Timestamp::now().to_string())]),
            ),
        )
        .await?;
    let mut spec = serde_json::json!({
        "clientSecretRef": {"name": "sample-client"},
        "refreshTokenSecretRef": {"name": "sample-refresh-token"},
        "authUrl": stand_in.url().to_string(),
    });
    if let Some(consumers) = consumers {
        spec["consumers"] = consumers;
    }
    let credential: EagleEyeCredential = serde_json::from_value(serde_json::json!({
        "apiVersion": "eagle-eye-operator.io/v1alpha1",
        "kind": "EagleEyeCredential",
        "metadata": {"name": "sample"},
        "spec": spec,
    }))?;
    let credentials: Api<EagleEyeCredential> = Api::namespaced(client.clone(), ns);
    credentials
        .create(&PostParams::default(), &credential)
        .await?;
    Ok(())
}
