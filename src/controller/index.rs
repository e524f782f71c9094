//! Which credentials name which Secret, kept from the credential watch: a Secret's event,
//! and every question of who else reads or owns a Secret, is answered by a lookup, not by
//! a walk of every credential (10,000 credentials made such walks the cold start's largest
//! cost). Fed by [`Index::on_event`] from the same stream that fills the store, before the
//! store hands the credential to a reconcile.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::lock;
use crate::crd::EagleEyeCredential;

/// What a credential does with a Secret it names.
pub mod role {
    /// Reads its client credentials.
    pub const CLIENT: u8 = 1;
    /// Reads and writes back its refresh token.
    pub const REFRESH: u8 = 2;
    /// Publishes the access token in it.
    pub const TARGET: u8 = 4;
}

/// A Secret: namespace and name.
type SecretKey = (String, String);

#[derive(Default)]
struct Inner {
    /// Per Secret, the credentials (names, in the Secret's namespace) naming it and how.
    by_secret: HashMap<SecretKey, Vec<(String, u8)>>,
    /// Per credential (namespace, name), the Secrets it names and how, as indexed.
    by_credential: HashMap<SecretKey, Vec<(String, u8)>>,
    /// During a re-list: the credentials listed so far (the others went meanwhile).
    relisting: Option<HashSet<SecretKey>>,
}

#[derive(Default)]
pub struct Index(Mutex<Inner>);

/// The Secrets `cr` names and how, one entry per Secret.
fn named(cr: &EagleEyeCredential) -> Vec<(String, u8)> {
    let spec = &cr.spec;
    let mut names: Vec<(String, u8)> = Vec::with_capacity(3);
    for (name, role) in [
        (spec.client_secret_ref.name.clone(), role::CLIENT),
        (spec.refresh_token_secret_ref.name.clone(), role::REFRESH),
        (crate::target::target_name(cr), role::TARGET),
    ] {
        match names.iter_mut().find(|(n, _)| *n == name) {
            Some((_, roles)) => *roles |= role,
            None => names.push((name, role)),
        }
    }
    names
}

impl Inner {
    fn remove(&mut self, credential: &SecretKey) {
        let Some(names) = self.by_credential.remove(credential) else {
            return;
        };
        for (secret, _) in names {
            let key = (credential.0.clone(), secret);
            if let Some(namers) = self.by_secret.get_mut(&key) {
                namers.retain(|(c, _)| *c != credential.1);
                if namers.is_empty() {
                    self.by_secret.remove(&key);
                }
            }
        }
    }

    fn apply(&mut self, cr: &EagleEyeCredential) {
        let (Some(ns), Some(name)) = (&cr.metadata.namespace, &cr.metadata.name) else {
            return;
        };
        let credential = (ns.clone(), name.clone());
        if let Some(relisting) = &mut self.relisting {
            relisting.insert(credential.clone());
        }
        let names = named(cr);
        if self.by_credential.get(&credential) == Some(&names) {
            return;
        }
        self.remove(&credential);
        for (secret, roles) in &names {
            self.by_secret
                .entry((ns.clone(), secret.clone()))
                .or_default()
                .push((name.clone(), *roles));
        }
        self.by_credential.insert(credential, names);
    }
}

impl Index {
    /// Keeps the index in step with one event of the credential watch.
    pub fn on_event(&self, event: &watcher::Event<EagleEyeCredential>) {
        let mut inner = lock(&self.0);
        match event {
            watcher::Event::Apply(cr) | watcher::Event::InitApply(cr) => inner.apply(cr),
            watcher::Event::Delete(cr) => {
                if let (Some(ns), Some(name)) = (&cr.metadata.namespace, &cr.metadata.name) {
                    inner.remove(&(ns.clone(), name.clone()));
                }
            }
            watcher::Event::Init => inner.relisting = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let Some(listed) = inner.relisting.take() else {
                    return;
                };
                let gone: Vec<SecretKey> = inner
                    .by_credential
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for credential in gone {
                    inner.remove(&credential);
                }
            }
        }
    }

    /// The credentials naming Secret `name` of `ns` in any of `roles`.
    pub fn naming(&self, ns: &str, name: &str, roles: u8) -> Vec<ObjectRef<EagleEyeCredential>> {
        self.names(ns, name, roles)
            .into_iter()
            .map(|c| ObjectRef::new(&c).within(ns))
            .collect()
    }

    /// The names of the credentials (in `ns`) naming Secret `name` in any of `roles`.
    pub fn names(&self, ns: &str, name: &str, roles: u8) -> Vec<String> {
        lock(&self.0)
            .by_secret
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|namers| {
                namers
                    .iter()
                    .filter(|(_, r)| r & roles != 0)
                    .map(|(c, _)| c.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Credentials indexed.
    pub fn len(&self) -> usize {
        lock(&self.0).by_credential.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cr(name: &str, client: &str, refresh: &str, target: Option<&str>) -> EagleEyeCredential {
        let mut cr = EagleEyeCredential::test();
        cr.metadata.name = Some(name.into());
        cr.metadata.namespace = Some("n".into());
        cr.spec.client_secret_ref.name = client.into();
        cr.spec.refresh_token_secret_ref.name = refresh.into();
        cr.spec.target.name = target.map(Into::into);
        cr
    }

    #[test]
    fn a_secret_finds_every_credential_naming_it_and_how() {
        let index = Index::default();
        index.on_event(&watcher::Event::Apply(cr("a", "shared", "a-rt", None)));
        index.on_event(&watcher::Event::Apply(cr(
            "b",
            "shared",
            "b-rt",
            Some("a-rt"),
        )));
        assert_eq!(index.names("n", "shared", role::CLIENT), ["a", "b"]);
        assert_eq!(index.names("n", "a-token", role::TARGET), ["a"]);
        assert_eq!(index.names("n", "a-rt", role::REFRESH), ["a"]);
        assert_eq!(index.names("n", "a-rt", role::TARGET), ["b"]);
        assert!(
            index.names("m", "shared", role::CLIENT).is_empty(),
            "namespaced"
        );
        // A changed spec moves its entries.
        index.on_event(&watcher::Event::Apply(cr("b", "own", "b-rt", None)));
        assert_eq!(index.names("n", "shared", role::CLIENT), ["a"]);
        assert!(index.names("n", "a-rt", role::TARGET).is_empty());
        index.on_event(&watcher::Event::Delete(cr("a", "shared", "a-rt", None)));
        assert!(index.names("n", "shared", u8::MAX).is_empty());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn one_secret_in_every_role_is_one_entry() {
        let index = Index::default();
        index.on_event(&watcher::Event::Apply(cr("a", "all", "all", Some("all"))));
        assert_eq!(index.naming("n", "all", role::TARGET).len(), 1);
        assert_eq!(index.names("n", "all", u8::MAX), ["a"]);
    }

    #[test]
    fn a_relist_forgets_credentials_deleted_while_the_watch_was_down() {
        let index = Index::default();
        index.on_event(&watcher::Event::Apply(cr("a", "ca", "ra", None)));
        index.on_event(&watcher::Event::Apply(cr("b", "cb", "rb", None)));
        index.on_event(&watcher::Event::Init);
        index.on_event(&watcher::Event::InitApply(cr("b", "cb", "rb", None)));
        index.on_event(&watcher::Event::InitDone);
        assert!(index.names("n", "ca", u8::MAX).is_empty());
        assert_eq!(index.names("n", "cb", u8::MAX), ["b"]);
        assert_eq!(index.len(), 1);
    }
}
