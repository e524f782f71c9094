//! Client credentials as last read, per Secret and keys: they change rarely, and every
//! change of that Secret (a watch event) drops them, so a reconcile reads them again only
//! after a change.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::token::ClientCredentials;

use super::lock;

type Key = (String, String, String, String);

/// The entries, and how many Secret changes were seen: a read that a change overtook is
/// not kept (it may hold the old values, and the change's event has passed already).
#[derive(Default)]
pub struct ClientCache(Mutex<(HashMap<Key, ClientCredentials>, u64)>);

fn key(ns: &str, name: &str, id_key: &str, secret_key: &str) -> Key {
    (ns.into(), name.into(), id_key.into(), secret_key.into())
}

impl ClientCache {
    /// The credentials, or the count of changes seen so far to hand to `put`.
    pub fn get(
        &self,
        ns: &str,
        name: &str,
        id_key: &str,
        secret_key: &str,
    ) -> Result<ClientCredentials, u64> {
        let guard = lock(&self.0);
        guard
            .0
            .get(&key(ns, name, id_key, secret_key))
            .cloned()
            .ok_or(guard.1)
    }

    /// Keeps what a read that started when `get` answered `seen` returned, unless a change
    /// came in between.
    pub fn put(
        &self,
        ns: &str,
        name: &str,
        id_key: &str,
        secret_key: &str,
        creds: ClientCredentials,
        seen: u64,
    ) {
        let mut guard = lock(&self.0);
        if guard.1 == seen {
            guard.0.insert(key(ns, name, id_key, secret_key), creds);
        }
    }

    /// Secret `name` of `ns` changed or went: whatever was read from it goes.
    pub fn changed(&self, ns: &str, name: &str) {
        let mut guard = lock(&self.0);
        guard.1 = guard.1.wrapping_add(1);
        guard.0.retain(|(n, s, _, _), _| !(n == ns && s == name));
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
    fn a_change_of_the_secret_drops_what_was_read_from_it_and_nothing_else() {
        let cache = ClientCache::default();
        let creds = |id: &str| ClientCredentials {
            id: id.into(),
            secret: "s".to_owned().into(),
        };
        let seen = cache.get("n", "a", "id", "secret").unwrap_err();
        cache.put("n", "a", "id", "secret", creds("1"), seen);
        cache.put("n", "b", "id", "secret", creds("2"), seen);
        cache.put("m", "a", "id", "secret", creds("3"), seen);
        cache.changed("n", "a");
        let seen = cache.get("n", "a", "id", "secret").unwrap_err();
        assert_eq!(cache.get("n", "b", "id", "secret").unwrap().id, "2");
        assert_eq!(cache.get("m", "a", "id", "secret").unwrap().id, "3");
        assert!(
            cache.get("n", "b", "other", "secret").is_err(),
            "other keys"
        );
        // A read overtaken by a change is not kept: its event has passed already.
        cache.changed("x", "y");
        cache.put("n", "a", "id", "secret", creds("old"), seen);
        assert!(cache.get("n", "a", "id", "secret").is_err());
    }
}
