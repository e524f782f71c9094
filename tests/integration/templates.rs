//! Output templates (issue 22): spec.target.template adds keys rendered from the token's
//! fields; a template naming an unknown field is reported by key and field, never with a
//! value, left out while the rest is published, and recovers once fixed, without a refresh.

use std::time::Duration;

use crate::support::operator::{
    Operator, all_events, api_accepts, create_credential, create_secrets, login, secret_data,
    stand_in, wait_for_reason,
};
use crate::support::{env, eventually};
use eagle_eye_operator::crd::EagleEyeCredential;
use kube::api::{Patch, PatchParams};

fn templates_condition(cr: &EagleEyeCredential) -> Option<(String, String, String)> {
    crate::support::operator::condition(cr, "TemplatesRendered")
}

#[tokio::test]
async fn templates_render_ready_to_use_keys_and_an_unknown_field_is_reported_without_values() {
    let env = env().await;
    let si = stand_in(Duration::from_secs(3600)).await;
    let l = login(&si, "template-a", true).await;
    create_secrets(&env, "cam", &l).await;
    let spec = serde_json::json!({"target": {"template": {
        "Authorization": "{{ .tokenType }} {{ .accessToken }}",
        "een.env": "EEN_TOKEN={{ .accessToken }}\nEEN_BASE_URL={{ .baseUrl }}\n",
        "een.json": "{\"baseUrl\": \"{{ .baseUrl }}\", \"host\": \"{{ .hostname }}\", \"port\": {{ .port }}, \"expiresAt\": \"{{ .expiresAt }}\"}",
        "typo": "Bearer {{ .acessToken }}",
        "access_token": "{{ .baseUrl }}",
    }}});
    create_credential(&env, "cam", &si, spec).await;
    let _op = Operator::start(&env, &si, &[]).await;
    let cr = wait_for_reason(&env, "cam", "TokenRefreshed", Duration::from_secs(60)).await;

    let data = secret_data(&env, "cam-token").await.unwrap();
    let token = &data["access_token"];
    assert_eq!(data["Authorization"], format!("Bearer {token}"));
    assert_eq!(
        data["een.env"],
        format!("EEN_TOKEN={token}\nEEN_BASE_URL={}\n", data["base_url"])
    );
    let json: serde_json::Value = serde_json::from_str(&data["een.json"]).unwrap();
    assert_eq!(json["baseUrl"], data["base_url"].as_str());
    assert_eq!(json["port"].to_string(), data["port"]);
    // The header value works against the API as it is.
    let header_token = data["Authorization"].strip_prefix("Bearer ").unwrap();
    assert!(api_accepts(&si, &data["base_url"], header_token).await);
    // The broken template is left out, and the operator's own key is not overwritten.
    assert!(!data.contains_key("typo"));
    assert!(si.access_token_is_live(token));

    let (status, reason, message) = templates_condition(&cr).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidTemplate")
    );
    assert!(
        message.contains("\"typo\"") && message.contains(".acessToken"),
        "{message}"
    );
    assert!(
        message.contains("\"access_token\"") && message.contains("spec.target.keys"),
        "{message}"
    );
    let notes: Vec<String> = all_events(&env)
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    assert!(notes.iter().any(|n| n.contains(".acessToken")));
    for shown in notes.iter().chain([&message]) {
        for secret in [
            token,
            &l.grant.refresh_token,
            &l.client_secret,
            &data["base_url"],
        ] {
            assert!(!shown.contains(secret.as_str()), "a value in {shown:?}");
        }
    }

    // Fixed, the condition recovers by itself, and the next token carries the key.
    let fix = serde_json::json!({"spec": {"target": {"template": {
        "Authorization": "{{ .tokenType }} {{ .accessToken }}",
        "typo": "Bearer {{ .accessToken }}",
        "access_token": null, "een.env": null, "een.json": null,
    }}}});
    env.api::<EagleEyeCredential>()
        .patch("cam", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    eventually(
        "TemplatesRendered to turn True",
        Duration::from_secs(30),
        || async {
            let cr = env.api::<EagleEyeCredential>().get("cam").await.ok()?;
            (templates_condition(&cr)?.0 == "True").then_some(())
        },
    )
    .await;
    // Rendered again at once, for the same token: no refresh is spent for it.
    let refreshes = si.counters().refreshes;
    let data = eventually(
        "the fixed key to be published",
        Duration::from_secs(30),
        || async {
            let data = secret_data(&env, "cam-token").await?;
            data.contains_key("typo").then_some(data)
        },
    )
    .await;
    assert_eq!(&data["access_token"], token);
    assert_eq!(si.counters().refreshes, refreshes);
    assert_eq!(data["typo"], format!("Bearer {}", data["access_token"]));
}
