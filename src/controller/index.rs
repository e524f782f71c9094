//! Which credentials name which Secret, kept from the credential watch: a Secret's event,
//! and every question of who else reads or owns a Secret, is answered by a lookup, not by
//! a walk of every credential (10,000 credentials made such walks the cold start's largest
//! cost). Fed by [`Index::on_event`] from the same stream that fills the store, before the
//! store hands the credential to a reconcile.
//!
//! One entry per credential and per Secret named, each name allocated once and shared
//! between the two maps: the index costs about half a kilobyte per credential
//! (docs/scale.md, sixth round).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::StoredCredential;
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

/// An object of a namespace as `namespace/name`: neither a namespace nor a Secret's or a
/// credential's name may hold a `/`, and the namespace ends at the first one whatever.
type Key = Arc<str>;

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// The name part of a [`Key`].
fn name_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(_, name)| name)
}

/// The credentials naming one Secret, and how: nearly always one.
enum Namers {
    One(Key, u8),
    Many(Vec<(Key, u8)>),
}

impl Namers {
    fn iter(&self) -> impl Iterator<Item = (&Key, u8)> {
        let (one, many) = match self {
            Namers::One(c, roles) => (Some((c, *roles)), &[][..]),
            Namers::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().map(|(c, r)| (c, *r)))
    }

    fn push(&mut self, credential: Key, roles: u8) {
        match self {
            Namers::One(c, r) => *self = Namers::Many(vec![(c.clone(), *r), (credential, roles)]),
            Namers::Many(v) => v.push((credential, roles)),
        }
    }

    /// Drops `credential`; true when none is left.
    fn remove(&mut self, credential: &str) -> bool {
        let Namers::Many(v) = self else {
            return self.iter().all(|(c, _)| &**c == credential);
        };
        v.retain(|(c, _)| &**c != credential);
        if let [(c, r)] = &v[..] {
            let one = Namers::One(c.clone(), *r);
            *self = one;
            return false;
        }
        v.is_empty()
    }
}

#[derive(Default)]
struct Inner {
    /// Per Secret, the credentials (in the Secret's namespace) naming it and how.
    by_secret: HashMap<Key, Namers>,
    /// Per credential, the Secrets it names (the keys of `by_secret`) and how, as indexed.
    by_credential: HashMap<Key, Box<[(Key, u8)]>>,
    /// During a re-list: the credentials listed so far (the others went meanwhile).
    relisting: Option<HashSet<Key>>,
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
    fn remove(&mut self, credential: &str) {
        let Some(secrets) = self.by_credential.remove(credential) else {
            return;
        };
        for (secret, _) in &secrets {
            if let Some(namers) = self.by_secret.get_mut(&**secret)
                && namers.remove(credential)
            {
                self.by_secret.remove(&**secret);
            }
        }
    }

    fn apply(&mut self, cr: &EagleEyeCredential) {
        let (Some(ns), Some(name)) = (&cr.metadata.namespace, &cr.metadata.name) else {
            return;
        };
        let names = named(cr);
        let credential = key(ns, name);
        let indexed = self.by_credential.get_key_value(credential.as_str());
        let unchanged = indexed.is_some_and(|(_, secrets)| {
            secrets.len() == names.len()
                && secrets
                    .iter()
                    .zip(&names)
                    .all(|((secret, roles), (n, r))| name_of(secret) == n && roles == r)
        });
        let credential: Key = indexed.map_or_else(|| credential.into(), |(k, _)| k.clone());
        if let Some(relisting) = &mut self.relisting {
            relisting.insert(credential.clone());
        }
        if unchanged {
            return;
        }
        self.remove(&credential);
        let mut secrets = Vec::with_capacity(names.len());
        for (secret, roles) in names {
            let secret = key(ns, &secret);
            let secret = match self.by_secret.get_key_value(secret.as_str()) {
                Some((shared, _)) => shared.clone(),
                None => Key::from(secret),
            };
            match self.by_secret.get_mut(&secret) {
                Some(namers) => namers.push(credential.clone(), roles),
                None => {
                    let one = Namers::One(credential.clone(), roles);
                    self.by_secret.insert(secret.clone(), one);
                }
            }
            secrets.push((secret, roles));
        }
        self.by_credential.insert(credential, secrets.into());
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
                    inner.remove(&key(ns, name));
                }
            }
            watcher::Event::Init => inner.relisting = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let Some(listed) = inner.relisting.take() else {
                    return;
                };
                let gone: Vec<Key> = inner
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
    pub fn naming(&self, ns: &str, name: &str, roles: u8) -> Vec<ObjectRef<StoredCredential>> {
        self.names(ns, name, roles)
            .into_iter()
            .map(|c| ObjectRef::new(&c).within(ns))
            .collect()
    }

    /// The names of the credentials (in `ns`) naming Secret `name` in any of `roles`.
    pub fn names(&self, ns: &str, name: &str, roles: u8) -> Vec<String> {
        lock(&self.0)
            .by_secret
            .get(key(ns, name).as_str())
            .map(|namers| {
                namers
                    .iter()
                    .filter(|(_, r)| r & roles != 0)
                    .map(|(c, _)| name_of(c).to_owned())
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
