//! Pods that consume a credential's target Secret the three ways a workload can, for the node
//! ([`crate::node`]): each reads the access token and base URL every 100 ms and calls the API
//! with them, naming itself in `X-Consumer` so that the stand-in's record of API calls tells
//! them apart. Each logs a line when what it holds changes: the token's fingerprint (never
//! the token) and whether the API accepted it.

use k8s_openapi::api::core::v1::Pod;

/// How a consuming pod gets the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Delivery {
    /// A Secret volume, on a pod the credential's `spec.consumers.podSelector` selects.
    VolumeNudged,
    /// A Secret volume, on a pod no credential nudges: rewritten at the kubelet's own sync.
    Volume,
    /// Environment variables from the Secret: read once, when the container starts.
    EnvVar,
}

impl Delivery {
    pub const ALL: [Delivery; 3] = [Delivery::VolumeNudged, Delivery::Volume, Delivery::EnvVar];

    /// The pod's name suffix and its `X-Consumer` header.
    pub fn name(self) -> &'static str {
        match self {
            Delivery::VolumeNudged => "volume-nudged",
            Delivery::Volume => "volume",
            Delivery::EnvVar => "env-var",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Delivery::VolumeNudged => "Secret volume, pod nudged",
            Delivery::Volume => "Secret volume, no nudge",
            Delivery::EnvVar => "environment variable",
        }
    }
}

/// The label a credential's `spec.consumers.podSelector` should match to nudge exactly the
/// [`Delivery::VolumeNudged`] pods.
pub const NUDGE_LABEL: (&str, &str) = ("eagle-eye-testbed/nudge", "true");

const MOUNT: &str = "/var/run/secrets/eagle-eye";

/// Reads, calls, logs changes, sleeps 100 ms; a busybox shell, as small a workload as can be.
const SCRIPT: &str = r#"last=""
while true; do
  if [ -n "$TOKEN_DIR" ]; then t=$(cat "$TOKEN_DIR/access_token"); b=$(cat "$TOKEN_DIR/base_url")
  else t=$ACCESS_TOKEN; b=$BASE_URL; fi
  if wget -q -O /dev/null --no-check-certificate --header "Authorization: Bearer $t" \
       --header "X-Consumer: $CONSUMER" "$b/api/v3.0/users/self" 2>/dev/null
  then s=accepted; else s=refused; fi
  f=$(printf %s "$t" | sha256sum | cut -c1-12)
  if [ "$f $s" != "$last" ]; then echo "$(date -u +%H:%M:%S) token sha256:$f $s"; last="$f $s"; fi
  sleep 0.1
done"#;

/// A pod named `<prefix>-<delivery>` consuming Secret `secret` with `image` (busybox).
pub fn pod(prefix: &str, delivery: Delivery, secret: &str, image: &str) -> Pod {
    let name = format!("{prefix}-{}", delivery.name());
    let mut labels = serde_json::json!({ "app": prefix, "delivery": delivery.name() });
    if delivery == Delivery::VolumeNudged {
        labels[NUDGE_LABEL.0] = NUDGE_LABEL.1.into();
    }
    let from_secret = |key: &str| serde_json::json!({"secretKeyRef": {"name": secret, "key": key}});
    let mut env = vec![serde_json::json!({"name": "CONSUMER", "value": delivery.name()})];
    let (mounts, volumes) = if delivery == Delivery::EnvVar {
        env.push(
            serde_json::json!({"name": "ACCESS_TOKEN", "valueFrom": from_secret("access_token")}),
        );
        env.push(serde_json::json!({"name": "BASE_URL", "valueFrom": from_secret("base_url")}));
        (serde_json::json!([]), serde_json::json!([]))
    } else {
        env.push(serde_json::json!({"name": "TOKEN_DIR", "value": MOUNT}));
        (
            serde_json::json!([{"name": "token", "mountPath": MOUNT, "readOnly": true}]),
            serde_json::json!([{"name": "token", "secret": {"secretName": secret}}]),
        )
    };
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "containers": [{
                "name": "consumer",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", SCRIPT],
                "env": env,
                "volumeMounts": mounts,
                "securityContext": {
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}
                }
            }],
            "volumes": volumes
        }
    });
    // Invariant: the literal above is a valid Pod.
    serde_json::from_value(pod).expect("consumer pod literal is a Pod")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_nudged_consumer_carries_the_nudge_label() {
        for delivery in Delivery::ALL {
            let pod = pod("c", delivery, "s", "img");
            let labels = pod.metadata.labels.unwrap_or_default();
            assert_eq!(
                labels.contains_key(NUDGE_LABEL.0),
                delivery == Delivery::VolumeNudged,
                "{delivery:?}"
            );
        }
    }

    #[test]
    fn the_env_var_consumer_mounts_nothing_and_the_volume_consumers_mount_the_secret() {
        let env = pod("c", Delivery::EnvVar, "s", "img");
        assert!(
            env.spec
                .as_ref()
                .unwrap()
                .volumes
                .as_ref()
                .unwrap()
                .is_empty()
        );
        let volume = pod("c", Delivery::Volume, "s", "img");
        let volumes = volume.spec.unwrap().volumes.unwrap();
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("s")
        );
    }
}
