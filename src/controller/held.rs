//! Rotated refresh tokens received but not yet stored, and stored tokens whose access token
//! is not yet published. One map per process, shared by every controller term, so that a
//! lost Lease, a restarted controller or a deleted credential never silently drops one:
//! a held token is the only live copy of the login. Beside them, the last live token of
//! each credential, to undo a revert of its Secret to a dead one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use secrecy::{ExposeSecret, SecretString};
use tracing::{error, info, warn};

use super::lock;
use crate::secrets;
use crate::target::fingerprint;
use crate::token::TokenGrant;

#[derive(Clone, Default)]
pub struct HeldTokens {
    held: Arc<Mutex<HashMap<String, Held>>>,
    /// The live refresh token per credential, as last stored or confirmed: the copy that
    /// puts a login back when something overwrites its Secret with a rotated-out token.
    live: Arc<Mutex<HashMap<String, SecretString>>>,
}

pub(crate) struct Held {
    pub spent_fingerprint: String,
    /// The new refresh token; `None` when the server did not rotate.
    pub new_token: Option<SecretString>,
    /// The whole answer when it was usable: its access token is published once stored.
    pub grant: Option<TokenGrant>,
    /// When the answer arrived (whole seconds): the access token's life counts from here.
    pub received_at: Timestamp,
    /// The spent list beside the refresh token: as read, then as written with the new one.
    pub spent: Vec<String>,
    pub namespace: String,
    pub secret: String,
    pub key: String,
    pub credential: String,
}

impl Held {
    /// Fingerprint of the refresh token that is current once this is stored.
    pub fn new_fingerprint(&self) -> String {
        self.new_token
            .as_ref()
            .map(|t| fingerprint(t.expose_secret()))
            .unwrap_or_else(|| self.spent_fingerprint.clone())
    }
}

impl HeldTokens {
    pub(crate) fn take(&self, key: &str) -> Option<Held> {
        lock(&self.held).remove(key)
    }

    pub(crate) fn put(&self, key: &str, held: Held) {
        lock(&self.held).insert(key.to_owned(), held);
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.held).is_empty()
    }

    /// Remembers `token` as the credential's live refresh token.
    pub(crate) fn remember_live(&self, key: &str, token: &SecretString) {
        lock(&self.live).insert(key.to_owned(), token.clone());
    }

    /// The live refresh token remembered for the credential, unless it is among `dead`.
    pub(crate) fn live(&self, key: &str, dead: &[String]) -> Option<SecretString> {
        lock(&self.live)
            .get(key)
            .filter(|t| !dead.contains(&fingerprint(t.expose_secret())))
            .cloned()
    }

    pub(crate) fn forget_live(&self, key: &str) {
        lock(&self.live).remove(key);
    }

    /// Stores every held refresh token, retrying until `limit`; used when no reconcile will
    /// come to do it (shutdown, a lost Lease, a deleted credential). Publishing is left to
    /// the next reconcile: once stored, the token is safe. Returns how many are still held.
    pub async fn flush(&self, client: &Client, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let keys: Vec<String> = lock(&self.held).keys().cloned().collect();
            for k in keys {
                if let Some(held) = self.take(&k) {
                    self.store_or_keep(client, &k, held).await;
                }
            }
            let left = lock(&self.held).len();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stores `held`, or puts it back: also when this future is dropped half-way (a
    /// follower's retry cancelled by shutdown or by leading again).
    pub(crate) async fn store_or_keep(&self, client: &Client, key: &str, held: Held) {
        let mut keep = PutBack {
            tokens: self,
            key,
            held: Some(held),
        };
        let Some(held) = keep.held.as_ref() else {
            return;
        };
        match store(client, held).await {
            Ok(()) => {
                keep.held = None;
                info!(credential = %key, "stored a held refresh token");
            }
            Err(e) => {
                warn!(credential = %key, error = %e, "could not store a held refresh token yet")
            }
        }
    }

    /// Logs, loudly, every token still held when the process exits.
    pub fn report_lost(&self) {
        for k in lock(&self.held).keys() {
            error!(credential = %k, "exiting with a rotated refresh token that could not be stored: the login is lost and needs a new Phase 1 login");
        }
    }
}

/// Puts a held token back into its map unless taken out of the guard.
struct PutBack<'a> {
    tokens: &'a HeldTokens,
    key: &'a str,
    held: Option<Held>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.tokens.put(self.key, held);
        }
    }
}

/// Stores `held` unless the Secret already holds it or a person replaced the spent token.
/// A Secret that is gone or emptied keeps the token waiting, as a reconcile does.
async fn store(client: &Client, held: &Held) -> Result<(), String> {
    let Some(new) = &held.new_token else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &held.namespace);
    let stored = secrets::read_refresh_token(&api, &held.secret, &held.key, held.received_at)
        .await
        .map_err(|e| e.to_string())?;
    // A person's new login wins; a token this operator rotated out, put back meanwhile,
    // is written over.
    let reverted =
        stored.spent.contains(&stored.fingerprint) || held.spent.contains(&stored.fingerprint);
    if stored.fingerprint != held.spent_fingerprint && !reverted {
        return Ok(());
    }
    secrets::write_back(
        &api,
        &stored,
        &held.key,
        new,
        &held.credential,
        held.received_at,
    )
    .await
    .map(|_| ())
    .map_err(|e| secrets::kube_reason(&e))
}
