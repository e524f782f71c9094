//! What reconciles read from Secrets that change rarely, as last read or written: client
//! credentials, and the target Secret's metadata. Every change of such a Secret that is not
//! this process's own write (a watch event), and every re-list of the Secret watch (a
//! Secret deleted while the watch was down shows no event), drops what was read from it, so
//! a reconcile reads it again only after a change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

use super::lock;
use crate::token::ClientCredentials;

/// Every Secret read a reconcile may take from memory.
#[derive(Default)]
pub struct Reads {
    /// Client credentials, by the keys read.
    pub clients: SecretCache<ClientCredentials>,
    /// Target Secrets' metadata (`trimmed`): whose they are and what they publish.
    pub targets: SecretCache<Arc<Secret>>,
}

impl Reads {
    /// Secret `name` of `ns` changed, went, or may have while the watch was down.
    pub fn changed(&self, ns: &str, name: &str) {
        self.clients.changed(ns, name);
        self.targets.changed(ns, name);
    }

    pub fn clear(&self) {
        self.clients.clear();
        self.targets.clear();
    }
}

/// Annotations of a target longer than this are not the operator's (its longest, the spent
/// list, is about 1 KiB) and are not kept.
const MAX_KEPT_ANNOTATION: usize = 4 * 1024;

/// What a reconcile uses of a target Secret: its metadata, with of managedFields only who
/// wrote which data key (that decides whether an adopted Secret may be written), of its
/// annotations only the operator's own and no labels (whoever may write the Secret may pad
/// the rest: `kubectl apply` alone copies the whole Secret into an annotation), and the
/// names of its data keys, every value blanked: no access token stays in memory longer than
/// a publish takes.
pub fn trimmed(secret: &Secret) -> Secret {
    let mut metadata = secret.metadata.clone();
    metadata.labels = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.retain(|k, v| {
            k.strip_prefix(crate::crd::GROUP)
                .is_some_and(|rest| rest.starts_with('/'))
                && v.len() <= MAX_KEPT_ANNOTATION
        });
    }
    metadata.managed_fields = metadata.managed_fields.map(|entries| {
        entries
            .into_iter()
            .map(|e| ManagedFieldsEntry {
                fields_v1: e
                    .fields_v1
                    .as_ref()
                    .and_then(|f| f.0.get("f:data"))
                    .map(|data| FieldsV1(serde_json::json!({ "f:data": data }))),
                manager: e.manager,
                ..Default::default()
            })
            .collect()
    });
    Secret {
        metadata,
        data: secret.data.as_ref().map(|d| {
            d.keys()
                .map(|k| (k.clone(), k8s_openapi::ByteString(Vec::new())))
                .collect()
        }),
        ..Default::default()
    }
}

/// Per Secret (namespace, name), what was read from it (e.g. which keys) and its value.
type Entries<V> = HashMap<(String, String), HashMap<String, V>>;

/// The entries, and how many Secret changes were seen: a read that a change overtook is
/// not kept (it may hold the old values, and the change's event has passed already). One
/// count for all Secrets: under a storm of unrelated Secret changes reads are kept less
/// often (each costs a GET again), and the count never grows with the Secrets seen.
pub struct SecretCache<V>(Mutex<(Entries<V>, u64)>);

impl<V> Default for SecretCache<V> {
    fn default() -> Self {
        SecretCache(Mutex::new((HashMap::new(), 0)))
    }
}

fn secret(ns: &str, name: &str) -> (String, String) {
    (ns.into(), name.into())
}

impl<V: Clone> SecretCache<V> {
    /// The value, or the count of changes seen so far to hand to `put`.
    pub fn get(&self, ns: &str, name: &str, what: &str) -> Result<V, u64> {
        let guard = lock(&self.0);
        guard
            .0
            .get(&secret(ns, name))
            .and_then(|read| read.get(what))
            .cloned()
            .ok_or(guard.1)
    }

    /// The count of changes seen so far, for a `put` after a write.
    pub fn seen(&self) -> u64 {
        lock(&self.0).1
    }

    /// Keeps what a read (or write) that started when `get` or `seen` answered `seen`
    /// returned, unless a change came in between. Then what was kept of the Secret goes as
    /// well: it is older than what this read or write saw (a write's own result, above all,
    /// must never leave the version before it in place), and changes to any Secret anywhere
    /// count, so another namespace's busy Secrets would otherwise leave it there.
    pub fn put(&self, ns: &str, name: &str, what: &str, value: V, seen: u64) {
        let mut guard = lock(&self.0);
        let key = secret(ns, name);
        if guard.1 == seen {
            guard.0.entry(key).or_default().insert(what.into(), value);
        } else {
            guard.0.remove(&key);
        }
    }

    /// Secret `name` of `ns` changed or went: whatever was read from it goes.
    pub fn changed(&self, ns: &str, name: &str) {
        let mut guard = lock(&self.0);
        guard.1 = guard.1.wrapping_add(1);
        guard.0.remove(&secret(ns, name));
    }

    pub fn clear(&self) {
        let mut guard = lock(&self.0);
        guard.1 = guard.1.wrapping_add(1);
        guard.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_target_has_its_owners_key_names_and_the_operators_annotations_only() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "t",
                "annotations": {"eagle-eye-operator.io/issued-at": "b",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"data\": ...}"},
                "labels": {"l": "v"},
                "managedFields": [{"manager": "app", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:password": {}},
                    "f:metadata": {"f:annotations": {"f:a": {}}}}}],
            },
            "data": {"password": "c2VjcmV0", "access_token": "dG9rZW4="},
        }))
        .unwrap();
        let kept = trimmed(&secret);
        let annotations = kept.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["eagle-eye-operator.io/issued-at"]
        );
        assert!(kept.metadata.labels.is_none());
        let owners = kept.metadata.managed_fields.unwrap();
        assert_eq!(owners[0].manager.as_deref(), Some("app"));
        assert_eq!(
            owners[0].fields_v1.as_ref().unwrap().0,
            serde_json::json!({"f:data": {"f:password": {}}})
        );
        let data = kept.data.unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["access_token", "password"]
        );
        assert!(data.values().all(|v| v.0.is_empty()));
    }

    #[test]
    fn a_change_of_the_secret_drops_what_was_read_from_it_and_nothing_else() {
        let cache = SecretCache::<String>::default();
        let creds = |id: &str| id.to_owned();
        let seen = cache.get("n", "a", "id/secret").unwrap_err();
        cache.put("n", "a", "id/secret", creds("1"), seen);
        cache.put("n", "b", "id/secret", creds("2"), seen);
        cache.put("m", "a", "id/secret", creds("3"), seen);
        cache.changed("n", "a");
        let seen = cache.get("n", "a", "id/secret").unwrap_err();
        assert_eq!(cache.get("n", "b", "id/secret").unwrap(), "2");
        assert_eq!(cache.get("m", "a", "id/secret").unwrap(), "3");
        assert!(cache.get("n", "b", "other/secret").is_err(), "other keys");
        // A read overtaken by a change is not kept: its event has passed already.
        cache.changed("x", "y");
        cache.put("n", "a", "id/secret", creds("old"), seen);
        assert!(cache.get("n", "a", "id/secret").is_err());
    }

    #[test]
    fn a_write_overtaken_by_a_change_elsewhere_leaves_no_older_copy_behind() {
        // A target read at one version, then written: another Secret's change between the
        // write's start and its answer refuses the write's result, and the copy read before
        // the write must not stay (it once made a second refresh seconds after the first).
        let cache = SecretCache::<String>::default();
        let seen = cache.get("n", "target", "").unwrap_err();
        cache.put("n", "target", "", "version 1".to_owned(), seen);
        let before_write = cache.seen();
        cache.changed("other-namespace", "churned");
        cache.put("n", "target", "", "version 2".to_owned(), before_write);
        assert!(cache.get("n", "target", "").is_err());
    }
}
