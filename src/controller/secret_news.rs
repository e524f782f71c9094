//! What an event of the Secret watch means to the controller: someone else's change of a
//! Secret wakes the credentials naming it and drops what was read from it; the echo of this
//! process's own write does neither (`cache::Reads`); a re-list, which shows no event for a
//! Secret deleted while the watch was down, forgets every read and wakes every credential
//! naming a listed Secret (not at the term's first list: every credential is reconciled
//! then anyway).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::StoredCredential;
use super::{Index, Reads};

pub struct SecretNews {
    reads: Arc<Reads>,
    index: Arc<Index>,
    listed_once: AtomicBool,
}

impl SecretNews {
    /// For the controller whose credentials `index` indexes.
    pub fn new(reads: Arc<Reads>, index: Arc<Index>) -> Self {
        SecretNews {
            reads,
            index,
            listed_once: AtomicBool::new(false),
        }
    }

    /// The credentials to reconcile for one event of the Secret watch.
    pub fn on_event(
        &self,
        event: &watcher::Event<PartialObjectMeta<Secret>>,
    ) -> Vec<ObjectRef<StoredCredential>> {
        let naming = |s: &PartialObjectMeta<Secret>| {
            let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) else {
                return Vec::new();
            };
            self.index.naming(ns, name, u8::MAX)
        };
        let news = |s: &PartialObjectMeta<Secret>, version: Option<&str>| {
            let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) else {
                return false;
            };
            self.reads.event(ns, name, version)
        };
        match event {
            watcher::Event::Init => {
                self.reads.clear();
                Vec::new()
            }
            // What was read after Init and changed before the list's snapshot is dropped.
            watcher::Event::InitApply(s) => {
                news(s, s.metadata.resource_version.as_deref());
                match self.listed_once.load(Ordering::Relaxed) {
                    true => naming(s),
                    false => Vec::new(),
                }
            }
            watcher::Event::InitDone => {
                // And what was read after Init of a Secret deleted before the snapshot.
                self.reads.clear();
                self.listed_once.store(true, Ordering::Relaxed);
                Vec::new()
            }
            watcher::Event::Apply(s) => {
                if news(s, s.metadata.resource_version.as_deref()) {
                    naming(s)
                } else {
                    Vec::new()
                }
            }
            watcher::Event::Delete(s) => {
                if news(s, None) {
                    naming(s)
                } else {
                    Vec::new()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, version: &str) -> PartialObjectMeta<Secret> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "n", "resourceVersion": version}
        }))
        .unwrap()
    }

    fn news() -> (SecretNews, Arc<Reads>) {
        use crate::crd::EagleEyeCredential;
        let index = Arc::new(Index::default());
        let mut cr = EagleEyeCredential::test();
        cr.metadata.name = Some("c".into());
        cr.metadata.namespace = Some("n".into());
        cr.spec.client_secret_ref.name = "client".into();
        cr.spec.refresh_token_secret_ref.name = "rt".into();
        index.on_event(&watcher::Event::Apply(cr));
        let reads = Arc::new(Reads::default());
        (SecretNews::new(reads.clone(), index), reads)
    }

    #[test]
    fn someone_elses_change_wakes_the_credentials_naming_the_secret_and_an_echo_does_not() {
        let (news, reads) = news();
        let woken = news.on_event(&watcher::Event::Apply(secret("rt", "5")));
        assert_eq!(woken, [ObjectRef::new("c").within("n")]);
        assert!(
            news.on_event(&watcher::Event::Apply(secret("other", "6")))
                .is_empty()
        );
        let written: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "rt", "namespace": "n", "resourceVersion": "7"}
        }))
        .unwrap();
        let writing = reads.writing("n", "rt");
        assert!(
            news.on_event(&watcher::Event::Apply(secret("rt", "7")))
                .is_empty()
        );
        assert!(!writing.wrote(&written, None));
        assert!(
            !news
                .on_event(&watcher::Event::Delete(secret("client", "8")))
                .is_empty()
        );
    }

    #[test]
    fn a_change_reported_by_a_relist_drops_a_read_kept_during_it() {
        let (news, reads) = news();
        news.on_event(&watcher::Event::Init);
        news.on_event(&watcher::Event::InitDone);
        news.on_event(&watcher::Event::Init);
        let creds = crate::token::ClientCredentials {
            id: "old".into(),
            secret: secrecy::SecretString::from("s"),
        };
        let ticket = reads.client("n", "client", "id/secret").unwrap_err();
        ticket.keep_client("id/secret", creds, Some("10"));
        let woken = news.on_event(&watcher::Event::InitApply(secret("client", "11")));
        assert_eq!(woken.len(), 1);
        assert!(
            reads.client("n", "client", "id/secret").is_err(),
            "served 10"
        );
    }

    #[test]
    fn a_read_ahead_of_the_watch_does_not_swallow_the_wake_of_the_others() {
        let (news, reads) = news();
        let creds = crate::token::ClientCredentials {
            id: "new".into(),
            secret: secrecy::SecretString::from("s"),
        };
        let ticket = reads.client("n", "client", "id/secret").unwrap_err();
        ticket.keep_client("id/secret", creds, Some("21"));
        let woken = news.on_event(&watcher::Event::Apply(secret("client", "21")));
        assert_eq!(woken, [ObjectRef::new("c").within("n")]);
        assert!(
            reads.client("n", "client", "id/secret").is_ok(),
            "nothing dropped"
        );
    }

    #[test]
    fn only_a_relist_after_the_first_wakes_the_credentials_naming_listed_secrets() {
        let (news, _) = news();
        for _ in 0..2 {
            assert!(news.on_event(&watcher::Event::Init).is_empty());
            let first = news.on_event(&watcher::Event::InitApply(secret("client", "1")));
            news.on_event(&watcher::Event::InitDone);
            if first.is_empty() {
                continue;
            }
            assert_eq!(first, [ObjectRef::new("c").within("n")]);
            return;
        }
        panic!("the second list woke nothing");
    }
}
