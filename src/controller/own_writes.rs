//! The resourceVersions of this process's own Secret writes, so that their watch events
//! (the echo of a write) wake no reconcile: every write that needs a follow-up requeues on
//! its own. Anything else that changes a Secret still wakes the credentials naming it.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use super::lock;

/// Versions remembered per Secret: writes follow one another faster than their echoes only
/// by a few.
const PER_SECRET: usize = 8;
/// Secrets remembered at most; past it the oldest knowledge goes (an echo then merely wakes
/// one reconcile that finds nothing to do).
const SECRETS: usize = 100_000;

#[derive(Default)]
pub struct OwnWrites(Mutex<HashMap<(String, String), Vec<String>>>);

impl OwnWrites {
    /// Remembers the version a write of this process produced.
    pub fn wrote(&self, secret: &Secret) {
        let (Some(ns), Some(version)) = (secret.namespace(), secret.resource_version()) else {
            return;
        };
        let mut map = lock(&self.0);
        if map.len() >= SECRETS {
            map.clear();
        }
        let versions = map.entry((ns, secret.name_any())).or_default();
        if versions.len() >= PER_SECRET {
            versions.remove(0);
        }
        versions.push(version);
    }

    /// Whether this watch event is the echo of one of this process's writes (remembered
    /// once: a later event of the same version is news again).
    pub fn is_echo(&self, secret: &PartialObjectMeta<Secret>) -> bool {
        let (Some(ns), Some(version)) = (secret.namespace(), secret.resource_version()) else {
            return false;
        };
        let mut map = lock(&self.0);
        let k = (ns, secret.name_any());
        let Some(versions) = map.get_mut(&k) else {
            return false;
        };
        let Some(at) = versions.iter().position(|v| *v == version) else {
            return false;
        };
        // Older versions' echoes will not come any more.
        versions.drain(..=at);
        if versions.is_empty() {
            map.remove(&k);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(version: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "n", "resourceVersion": version}
        }))
        .unwrap()
    }

    fn event(version: &str) -> PartialObjectMeta<Secret> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "n", "resourceVersion": version}
        }))
        .unwrap()
    }

    #[test]
    fn only_the_echo_of_an_own_write_is_swallowed_and_only_once() {
        let own = OwnWrites::default();
        assert!(!own.is_echo(&event("5")), "nothing written yet");
        own.wrote(&secret("6"));
        own.wrote(&secret("8"));
        assert!(!own.is_echo(&event("7")), "someone else's write in between");
        assert!(own.is_echo(&event("6")));
        assert!(
            !own.is_echo(&event("6")),
            "a second event of that version is news"
        );
        assert!(own.is_echo(&event("8")));
        assert!(!own.is_echo(&event("9")));
        // An echo skipped by the watch (a re-list) leaves no version that could match later.
        own.wrote(&secret("10"));
        own.wrote(&secret("11"));
        assert!(own.is_echo(&event("11")));
        assert!(!own.is_echo(&event("10")));
    }
}
