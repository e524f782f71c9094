//! What this process last knew of each credential: the parts a user changes (its "shape")
//! and its status, last seen or last written here. The operator's own status writes and
//! unchanged re-lists then trigger no reconcile, and a reconcile reads the credential from
//! the API server only when its cached copy may be older than the status written last.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use kube::Resource;

use crate::crd::{EagleEyeCredential, EagleEyeCredentialStatus};

use super::projection::StoredCredential;
use super::{key, lock};

#[derive(Default)]
pub struct Known(Mutex<HashMap<String, Entry>>);

/// Digests, not copies: 10,000 credentials' statuses twice over would be megabytes.
struct Entry {
    shape: u64,
    status: u64,
    /// The status this process is writing: its watch event may come before the answer.
    writing: Option<u64>,
}

/// A status's digest (its JSON, hashed: the types hold no float or map of unstable order).
pub(super) fn digest(status: Option<&EagleEyeCredentialStatus>) -> u64 {
    digest_json(&serde_json::to_vec(&status).unwrap_or_default())
}

/// The digest of a status serialized already (`null`: none).
pub(super) fn digest_json(json: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut h);
    h.finish()
}

/// A credential as `Known` looks at it: parsed, or as the store keeps it.
pub trait Seen: Resource {
    fn status_digest(&self) -> u64;
}

impl Seen for EagleEyeCredential {
    fn status_digest(&self) -> u64 {
        digest(self.status.as_ref())
    }
}

impl Seen for StoredCredential {
    fn status_digest(&self) -> u64 {
        self.status_digest
    }
}

/// Everything of a credential the reconcile reads, but its status and resourceVersion: a
/// change here is a user's (or a controller's) change, worth a reconcile. The spec is
/// covered by the generation.
fn shape(cr: &impl Resource) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let m = cr.meta();
    m.uid.hash(&mut h);
    m.generation.hash(&mut h);
    m.deletion_timestamp.is_some().hash(&mut h);
    // What the store keeps of metadata (`super::projection`): a write's answer, which holds
    // everything, must hash as its projected watch event does.
    super::projection::has_finalizer(cr).hash(&mut h);
    h.finish()
}

impl Known {
    /// Whether a watch event for `cr` says something this process does not know yet: a
    /// new credential, a changed shape, or a status someone else wrote. Remembers it.
    pub fn is_news(&self, cr: &impl Seen) -> bool {
        let shape = shape(cr);
        let status = cr.status_digest();
        let mut map = lock(&self.0);
        let entry = map.insert(
            key(cr),
            Entry {
                shape,
                status,
                writing: None,
            },
        );
        entry.is_none_or(|e| {
            e.shape != shape || (e.status != status && e.writing.is_none_or(|w| w != status))
        })
    }

    /// Remembers the status this process is about to write, so that the echo of that write
    /// is no news even when it comes before the API server's answer.
    pub fn writing(&self, cr: &EagleEyeCredential, status: &EagleEyeCredentialStatus) {
        if let Some(e) = lock(&self.0).get_mut(&key(cr)) {
            e.writing = Some(digest(Some(status)));
        }
    }

    /// Remembers the status the API server answered to this process's write.
    pub fn wrote(&self, cr: &EagleEyeCredential) {
        lock(&self.0).insert(
            key(cr),
            Entry {
                shape: shape(cr),
                status: digest(cr.status.as_ref()),
                writing: None,
            },
        );
    }

    /// Whether the cached `cr` holds the last status known here (seen or written): if it
    /// does, nothing newer was written by this process, and a reconcile may trust it.
    pub fn is_current(&self, cr: &impl Seen) -> bool {
        lock(&self.0)
            .get(&key(cr))
            .is_some_and(|e| e.shape == shape(cr) && e.status == cr.status_digest())
    }

    /// Forgets everything: a new leadership term reconciles every credential once.
    pub fn clear(&self) {
        lock(&self.0).clear();
    }

    /// The digest of the status last seen or written here for credential `key`.
    pub fn status_digest(&self, key: &str) -> Option<u64> {
        lock(&self.0).get(key).map(|e| e.status)
    }

    pub fn forget(&self, key: &str) {
        lock(&self.0).remove(key);
    }

    pub fn keys(&self) -> Vec<String> {
        lock(&self.0).keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Known;
    use crate::crd::{EagleEyeCredential, EagleEyeCredentialStatus};

    fn cr(generation: i64, status: Option<EagleEyeCredentialStatus>) -> EagleEyeCredential {
        let mut cr = EagleEyeCredential::test();
        cr.metadata.generation = Some(generation);
        cr.metadata.uid = Some("u1".into());
        cr.status = status;
        cr
    }

    fn status(attempts: u32) -> Option<EagleEyeCredentialStatus> {
        Some(EagleEyeCredentialStatus {
            failed_refresh_attempts: attempts,
            ..Default::default()
        })
    }

    #[test]
    fn own_status_writes_and_unchanged_relists_are_not_news_but_others_changes_are() {
        let known = Known::default();
        assert!(known.is_news(&cr(1, None)), "first sight");
        assert!(!known.is_news(&cr(1, None)), "a re-list of the same object");
        // This process wrote a status: its watch event is not news, and the cache is
        // trusted only once it holds that status.
        known.wrote(&cr(1, status(1)));
        assert!(
            !known.is_current(&cr(1, None)),
            "cache older than the write"
        );
        assert!(!known.is_news(&cr(1, status(1))));
        assert!(known.is_current(&cr(1, status(1))));
        // The echo of a write may come before its answer.
        known.writing(&cr(1, status(1)), &status(2).unwrap());
        assert!(!known.is_news(&cr(1, status(2))));
        known.wrote(&cr(1, status(2)));
        assert!(known.is_current(&cr(1, status(2))));
        // A person edits the status, or the spec: news.
        assert!(known.is_news(&cr(1, status(0))));
        assert!(known.is_news(&cr(2, status(0))));
        let mut recreated = cr(2, status(0));
        recreated.metadata.uid = Some("u2".into());
        assert!(known.is_news(&recreated), "same name, new object");
        let mut deleting = recreated.clone();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert!(known.is_news(&deleting));
        known.forget(&super::key(&deleting));
        assert!(!known.is_current(&deleting));
    }

    #[test]
    fn the_stores_copy_of_a_status_this_process_wrote_is_current_and_its_echo_no_news() {
        use crate::controller::StoredCredential;
        let stored = |cr: &EagleEyeCredential| StoredCredential::from(cr.clone());
        // A status with every kind of field: the store's JSON must digest as the answer.
        let mut full: EagleEyeCredentialStatus = serde_json::from_value(serde_json::json!({
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "TokenRefreshed",
                "message": "valid until 2026-12-08T03:48:23Z", "observedGeneration": 1,
                "lastTransitionTime": "2026-12-08T02:48:23Z"}],
            "accessTokenExpiresAt": "2026-12-08T03:48:23Z",
            "refreshTokenDeadline": "9999-12-30T00:00:00Z",
            "baseUrl": "https://api.c001.eagleeyenetworks.com",
            "history": [{"time": "2026-12-08T02:48:23Z", "process": "p", "outcome": "Refreshed",
                "refreshTokenFingerprint": "a21f6828", "revision": 1, "attempts": 1}],
            "revision": 1
        }))
        .unwrap();
        let known = Known::default();
        let answer = cr(1, Some(full.clone()));
        assert!(known.is_news(&stored(&cr(1, None))), "first sight");
        known.wrote(&answer);
        assert!(
            !known.is_current(&stored(&cr(1, None))),
            "older than the write"
        );
        assert!(known.is_current(&stored(&answer)));
        assert!(!known.is_news(&stored(&answer)), "the write's echo");
        full.revision = 2;
        known.writing(&answer, &full);
        assert!(
            !known.is_news(&stored(&cr(1, Some(full.clone())))),
            "an echo before the answer"
        );
        full.revision = 3;
        assert!(
            known.is_news(&stored(&cr(1, Some(full.clone())))),
            "someone else's status"
        );

        // A status too large for the store to keep is judged by all of it just the same.
        let record = full.history[0].clone();
        full.history = vec![record; 100];
        let answer = cr(1, Some(full.clone()));
        known.wrote(&answer);
        assert!(
            stored(&answer).credential().is_none(),
            "not kept: read afresh"
        );
        assert!(known.is_current(&stored(&answer)));
        assert!(!known.is_news(&stored(&answer)), "the write's echo");
        full.history.pop();
        assert!(
            known.is_news(&stored(&cr(1, Some(full)))),
            "someone else's status"
        );
    }
}
