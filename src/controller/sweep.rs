//! Forgets deleted credentials. kube-runtime does not reconcile an object that is gone, so
//! a deleted credential's metric series (an `EagleEyeAccessTokenExpired` alert firing for
//! nothing) and what this process remembers of it would stay until the process exits.
//! Every few seconds, while the controllers run with their stores in sync, whatever is kept
//! for a credential no longer in any store is dropped; a rotated token still held for it is
//! stored first (it belongs in its Secret whether or not the credential exists).
//!
//! In a shard (`--credential-selector`), a credential gone from the store may still exist,
//! relabelled out of the shard: its status then says `NotSelected`, rather than keep this
//! shard's last word (`Ready=True`) while nothing refreshes it. A shard that selects it
//! writes its own status over that one.

use std::collections::HashSet;
use std::time::Duration;

use kube::Client;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use tracing::warn;

use super::StoredCredential;
use super::{FIELD_MANAGER, Shared, key};
use crate::outcome::{self, Outcome};
use crate::secrets::kube_reason;
use crate::status;

/// How often deleted credentials are looked for: their series go within this (plus a scrape).
pub const EVERY: Duration = Duration::from_secs(5);

/// Runs until dropped; `stores` must be in sync (every controller's, as the operator waits
/// for them before it reports ready).
pub async fn deleted_credentials(
    stores: Vec<Store<StoredCredential>>,
    shared: Shared,
    client: Client,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // What is kept is read before what exists: a credential created in between is in
        // the stores by the time it is reconciled, so it is never taken for a deleted one.
        let known = shared.known.keys();
        let series = shared.metrics.credentials();
        let present: HashSet<String> = stores
            .iter()
            .flat_map(|s| s.state())
            .map(|cr| key(&*cr))
            .collect();
        for k in shared.memory.retain(|k| present.contains(k)) {
            if let Some(held) = shared.memory.take(&k) {
                shared.memory.store_or_keep(&client, &k, held).await;
            }
        }
        for k in known.iter().filter(|k| !present.contains(*k)) {
            let last_known = shared.known.status_digest(k);
            shared.known.forget(k);
            if let (Some(selector), Some(last_known)) = (&shared.shard, last_known) {
                left_the_shard(&client, k, selector, last_known).await;
            }
        }
        for c in series
            .iter()
            .filter(|c| !present.contains(&format!("{}/{}", c.namespace, c.credential)))
        {
            shared.metrics.forget(c);
        }
    }
}

/// Says in the status of credential `key` (`namespace/name`), if it still exists, that this
/// shard no longer refreshes it; only while its status is still the one this shard last
/// knew (`last_known`, a digest): a shard that selects it now has written its own, which
/// stands. The whole status is applied, with only `Ready` changed (every shard writes as one
/// field manager), over the version read, so a status written meanwhile stands too.
async fn left_the_shard(client: &Client, key: &str, selector: &str, last_known: u64) {
    let Some((ns, name)) = key.split_once('/') else {
        return;
    };
    let api = super::projection::api(client.clone(), ns);
    let Ok(Some(cr)) = api.get_opt(name).await else {
        return;
    };
    if cr.metadata.deletion_timestamp.is_some()
        || super::known::digest(cr.status.as_ref()) != last_known
    {
        return;
    }
    let mut status = cr.status.clone().unwrap_or_default();
    let now = super::whole_seconds(jiff::Timestamp::now());
    let previous = status::condition(&status.conditions, status::READY).cloned();
    let report = outcome::report(
        &Outcome::NotSelected(selector.to_owned()),
        previous.as_ref(),
        now,
    );
    let Some(verdict) = report.ready else {
        return;
    };
    status::set_condition(
        &mut status.conditions,
        status::READY,
        verdict.ready,
        verdict.reason,
        verdict.message,
        cr.metadata.generation,
        now,
    );
    status.next_refresh_at = None;
    let patch = serde_json::json!({
        "apiVersion": "eagle-eye-operator.io/v1alpha1",
        "kind": "EagleEyeCredential",
        "metadata": {"resourceVersion": cr.metadata.resource_version},
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => {}
        // Written meanwhile by the shard that selects it now: its word stands.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            warn!(credential = %key, error = %kube_reason(&e), "could not mark a credential that left this shard")
        }
    }
}
