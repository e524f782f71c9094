//! Forgets deleted credentials. kube-runtime does not reconcile an object that is gone, so
//! a deleted credential's metric series (an `EagleEyeAccessTokenExpired` alert firing for
//! nothing) and what this process remembers of it would stay until the process exits.
//! Every few seconds, while the controllers run with their stores in sync, whatever is kept
//! for a credential no longer in any store is dropped; a rotated token still held for it is
//! stored first (it belongs in its Secret whether or not the credential exists).

use std::collections::HashSet;
use std::time::Duration;

use kube::Client;
use kube::runtime::reflector::Store;

use super::{Shared, key};
use crate::crd::EagleEyeCredential;

/// How often deleted credentials are looked for: their series go within this (plus a scrape).
pub const EVERY: Duration = Duration::from_secs(5);

/// Runs until dropped; `stores` must be in sync (every controller's, as the operator waits
/// for them before it reports ready).
pub async fn deleted_credentials(
    stores: Vec<Store<EagleEyeCredential>>,
    shared: Shared,
    client: Client,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // What is kept is read before what exists: a credential created in between is in
        // the stores by the time it is reconciled, so it is never taken for a deleted one.
        let kept = shared.held.known_keys();
        let known = shared.known.keys();
        let series = shared.metrics.credentials();
        let present: HashSet<String> = stores
            .iter()
            .flat_map(|s| s.state())
            .map(|cr| key(&cr))
            .collect();
        for k in kept.iter().filter(|k| !present.contains(*k)) {
            shared.held.forget(k);
            if let Some(held) = shared.held.take(k) {
                shared.held.store_or_keep(&client, k, held).await;
            }
        }
        for k in known.iter().filter(|k| !present.contains(*k)) {
            shared.known.forget(k);
        }
        for c in series
            .iter()
            .filter(|c| !present.contains(&format!("{}/{}", c.namespace, c.credential)))
        {
            shared.metrics.forget(c);
        }
    }
}
