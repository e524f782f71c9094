//! Whether the API server serves the schema this operator reads and writes. A CRD older than
//! the operator (a chart that kept it in crds/, which Helm never upgrades; a manual install)
//! makes the API server prune every field it does not know on each write: a user's
//! spec.consumers, the operator's status.revision would vanish without an error. So the
//! operator checks at start and refuses to run against such a CRD, naming the fields.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, CustomResourceExt};
use serde_json::Value;
use tracing::{info, warn};

use crate::crd::EagleEyeCredential;

/// Every field path of a structural schema: `spec.consumers.restart[].kind`. Maps
/// (additionalProperties) are leaves: their keys are the user's.
pub fn paths(schema: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(schema, String::new(), &mut out);
    out
}

fn walk(schema: &Value, at: String, out: &mut BTreeSet<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            out.insert(path.clone());
            walk(sub, path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(items, format!("{at}[]"), out);
    }
}

/// The fields of `ours` that `served` lacks.
pub fn missing(ours: &Value, served: &Value) -> Vec<String> {
    let served = paths(served);
    paths(ours)
        .into_iter()
        .filter(|p| !served.contains(p))
        .collect()
}

/// The schema of `version` in a CRD, as JSON.
fn schema_of(crd: &CustomResourceDefinition, version: &str) -> Option<Value> {
    let v = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version && v.served)?;
    serde_json::to_value(v.schema.as_ref()?.open_api_v3_schema.as_ref()?).ok()
}

/// Refuses to run when the served CRD lacks a field the operator uses. A CRD the operator
/// may not read (RBAC) is let pass with a warning: the check is a safety net, not a gate
/// on how the cluster grants rights.
pub async fn ensure(client: &Client) -> anyhow::Result<()> {
    let ours = EagleEyeCredential::crd();
    let name = ours.metadata.name.clone().unwrap_or_default();
    let version = ours.spec.versions[0].name.clone();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut wait = std::time::Duration::from_millis(500);
    let served = loop {
        match api.get_opt(&name).await {
            Ok(Some(crd)) => break crd,
            Ok(None) => anyhow::bail!(
                "the CustomResourceDefinition {name} is not installed: install the chart (crds.install: true) or `kubectl apply -f crds/eagleeyecredentials.yaml`"
            ),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                warn!(crd = %name, "cannot read the CRD (no get on customresourcedefinitions): its schema is not checked");
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code < 500 && s.code != 429 => {
                anyhow::bail!("reading the CRD {name}: {}", s.message)
            }
            // The API server is not answering yet: /readyz says so meanwhile.
            Err(e) => {
                warn!(crd = %name, error = %crate::secrets::kube_reason(&e), ?wait, "cannot check the CRD yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(10));
            }
        }
    };
    let Some(served_schema) = schema_of(&served, &version) else {
        anyhow::bail!(
            "the CRD {name} does not serve version {version}, which this operator uses: upgrade the CRD"
        );
    };
    let ours_schema = schema_of(&ours, &version).unwrap_or_default();
    let missing = missing(&ours_schema, &served_schema);
    anyhow::ensure!(
        missing.is_empty(),
        "the CRD {name} is older than this operator: the API server would drop {} on every write. Upgrade it first (helm upgrade with crds.install: true, or kubectl apply --server-side -f crds/eagleeyecredentials.yaml of this release); fields missing: {}",
        if missing.len() == 1 {
            "this field"
        } else {
            "these fields"
        },
        missing.join(", ")
    );
    info!(crd = %name, "the served CRD has every field this operator reads and writes");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_name_nested_fields_and_list_items_and_stop_at_maps() {
        let schema = json!({"properties": {
            "spec": {"properties": {
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "restart": {"type": "array", "items": {"properties": {"kind": {"type": "string"}}}},
            }},
        }});
        let got: Vec<String> = paths(&schema).into_iter().collect();
        assert_eq!(
            got,
            ["spec", "spec.labels", "spec.restart", "spec.restart[].kind"]
        );
    }

    #[test]
    fn a_schema_older_than_the_operator_misses_its_new_fields_and_the_current_one_none() {
        let ours = EagleEyeCredential::crd();
        let current = schema_of(&ours, "v1alpha1").unwrap();
        assert!(missing(&current, &current).is_empty());
        let mut older = current.clone();
        older["properties"]["spec"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("renewRequest");
        older["properties"]["status"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("history");
        let gone = missing(&current, &older);
        assert!(gone.contains(&"spec.renewRequest".to_string()), "{gone:?}");
        assert!(
            gone.iter().any(|p| p == "status.history[].process"),
            "{gone:?}"
        );
        // A newer CRD (fields this operator does not know) is fine.
        assert!(missing(&older, &current).is_empty());
    }
}
