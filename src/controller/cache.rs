//! What reconciles read from Secrets that change rarely, as last read or written: client
//! credentials, and the target Secret's metadata (or that it does not exist); and the
//! versions of this process's own Secret writes. Every change of such a Secret that is not
//! this process's own write (a watch event), and every re-list of the Secret watch (a
//! Secret deleted while the watch was down shows no event), drops what was read from it, so
//! a reconcile reads it again only after a change; the echo of an own write drops nothing
//! and wakes nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock: the simulator runs the operator on paused time, and a kept read must age
// with it.
use tokio::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

use super::lock;
use crate::token::ClientCredentials;

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

/// A Secret as `namespace/name` (no namespace holds a `/`): one allocation, and a third of
/// the map's slot that a pair of strings takes.
type SecretKey = Box<str>;

/// Own versions remembered per Secret until their echoes come: a refresh writes one Secret
/// twice (the spend intent, the write-back) and a slow watch may deliver both echoes late.
const OWN_VERSIONS: usize = 4;

/// Secrets with an entry at most (three per credential at 30,000 credentials and then some):
/// past it, every entry with nothing in flight goes, and is read again when needed. A tenant
/// naming ever new Secrets (absent targets are kept as absent) cannot grow memory without
/// bound.
const MAX_SECRETS: usize = 100_000;

/// How long the read of a reconcile parked (for a call slot or the census) stands in for a
/// fresh read (`Ticket::keep_parked`), counted from the moment the read was sent, however
/// often it parks. A granted slot wakes its reconcile within a second or so; a census of
/// 1,000 credentials completes within a few seconds, a longer one finds only the reads of its
/// last 15 s kept. A read older than this is not trusted whatever the watch says (it may have
/// been silent), and is dropped.
const PARKED_READ_FOR: Duration = Duration::from_secs(15);

/// The largest refresh-token Secret kept for a parked credential (as JSON; an Eagle Eye
/// token with the operator's annotations is about 2 KiB): a tenant's padded Secret is read
/// again instead, so parked credentials hold no more than this each.
const PARKED_READ_MAX_BYTES: usize = 8 * 1024;

/// A kept target (`trimmed`) as its JSON: a parsed Secret takes about three times the
/// memory (maps of a few entries, managedFields as a tree of JSON maps), and a reconcile
/// parses it back in microseconds, outside the lock. One per credential, so it sets much
/// of what a credential costs between refreshes.
#[derive(Clone)]
struct KeptTarget(Arc<[u8]>);

/// The largest target kept (as JSON; the operator's own is about 1 KiB with a full spent
/// list): whoever may write the target may pad it with key names and annotations under the
/// operator's prefix, and such a target is read afresh by each reconcile instead.
const KEPT_TARGET_MAX_BYTES: usize = 16 * 1024;

impl KeptTarget {
    fn new(target: &Secret) -> Option<Self> {
        serde_json::to_vec(target)
            .ok()
            .filter(|json| json.len() <= KEPT_TARGET_MAX_BYTES)
            .map(|json| KeptTarget(json.into()))
    }

    fn secret(&self) -> Option<Secret> {
        serde_json::from_slice(&self.0).ok()
    }
}

/// A refresh-token Secret as a reconcile read it before parking (for a call slot or the
/// census), as its JSON: about half the memory of a parsed Secret, and every credential of
/// a cold start parks at once.
struct ParkedRead {
    credential: String,
    json: Box<[u8]>,
    /// When the read was sent.
    at: Instant,
}

/// What is known of one Secret that a reconcile reads or this process writes.
#[derive(Default)]
struct Slot {
    /// The newest resourceVersion known here (read or written): its event is no change.
    version: Option<Box<str>>,
    /// Versions this process wrote whose watch events have not come yet.
    own: Vec<String>,
    /// Client credentials read from it, by the keys read.
    clients: Vec<(String, ClientCredentials)>,
    /// The target's metadata (`trimmed`), or `Some(None)`: known not to exist.
    target: Option<Option<KeptTarget>>,
    /// Changes seen (events that were not this process's writes, and this process's own
    /// writes): a read that one overtook is not kept.
    changes: u64,
    /// Reads and writes in flight, which keep the slot.
    reading: u32,
    writing: u32,
    /// An event that came while a write was in flight: the write's own echo when it
    /// carries the version the write returns, else someone else's change (`None`: deleted).
    held: Vec<Option<String>>,
    /// `version` was learned from a read and its event has not come yet: that event is
    /// still news to the other credentials naming the Secret (it drops nothing).
    read_ahead: bool,
    /// The refresh token read by a reconcile that parked (for a call slot or the census):
    /// any event of the Secret, any write of it, a re-list drop it.
    parked: Option<Box<ParkedRead>>,
}

impl Slot {
    fn is_idle(&self) -> bool {
        self.reading == 0
            && self.writing == 0
            && self.own.is_empty()
            && self.clients.is_empty()
            && self.target.is_none()
            && self.parked.is_none()
    }

    /// Someone else changed the Secret (or deleted it): nothing read from it stays.
    fn changed(&mut self) {
        self.read_ahead = false;
        self.version = None;
        self.own.clear();
        self.clients.clear();
        self.target = None;
        self.parked = None;
        self.changes += 1;
    }
}

#[derive(Default)]
struct State {
    slots: HashMap<SecretKey, Slot>,
    /// Bumped by every `clear`: a read or write begun before belongs to another list.
    epoch: u64,
    /// Parked reads in the order they were sent, to drop each once too old to be used.
    parked: VecDeque<(Instant, SecretKey)>,
}

impl State {
    /// Drops the parked reads too old to be used.
    fn expire_parked(&mut self, now: Instant) {
        while let Some((at, _)) = self.parked.front()
            && now.saturating_duration_since(*at) > PARKED_READ_FOR
        {
            let Some((at, key)) = self.parked.pop_front() else {
                break;
            };
            if let Some(slot) = self.slots.get_mut(&key)
                && slot.parked.as_ref().is_some_and(|p| p.at == at)
            {
                slot.parked = None;
                if slot.is_idle() {
                    self.slots.remove(&key);
                }
            }
        }
    }
}

/// What reconciles read from Secrets that change rarely, and this process's own writes to
/// Secrets, per Secret and by resourceVersion: the watch event of this process's own write
/// is recognised whether it comes before or after the write's answer, and changes to other
/// Secrets never touch this one. Only Secrets a reconcile read or this process wrote have
/// an entry, and an entry goes once nothing is kept or in flight for it.
#[derive(Default)]
pub struct Reads(Mutex<State>);

/// A read begun when nothing was kept (see [`Reads::client`], [`Reads::target`]): what it
/// returns is kept only if nothing changed the Secret meanwhile.
pub struct Ticket<'a> {
    reads: &'a Reads,
    key: SecretKey,
    epoch: u64,
    changes: u64,
    begun: Instant,
}

/// A write of this process in flight (see [`Reads::writing`]).
pub struct Writing<'a> {
    reads: &'a Reads,
    key: SecretKey,
    done: bool,
}

/// Before an entry for `key` is made: at [`MAX_SECRETS`], the entries with nothing in
/// flight go (what they kept is read again; an echo they would have recognised wakes a
/// reconcile that finds nothing to do).
fn make_room(state: &mut State, key: &SecretKey) {
    if state.slots.len() >= MAX_SECRETS && !state.slots.contains_key(key) {
        state
            .slots
            .retain(|_, slot| slot.reading > 0 || slot.writing > 0);
    }
}

fn secret_key(ns: &str, name: &str) -> SecretKey {
    format!("{ns}/{name}").into()
}

impl Reads {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.0)
    }

    fn ticket(&self, state: &mut State, key: SecretKey) -> Ticket<'_> {
        make_room(state, &key);
        let epoch = state.epoch;
        let slot = state.slots.entry(key.clone()).or_default();
        slot.reading += 1;
        Ticket {
            reads: self,
            changes: slot.changes,
            key,
            epoch,
            begun: Instant::now(),
        }
    }

    /// Client credentials read from Secret `name` under `keys`, or a ticket to read them.
    pub fn client(
        &self,
        ns: &str,
        name: &str,
        keys: &str,
    ) -> Result<ClientCredentials, Ticket<'_>> {
        let mut state = self.lock();
        let key = secret_key(ns, name);
        let kept = state
            .slots
            .get(&key)
            .and_then(|s| s.clients.iter().find(|(k, _)| k == keys))
            .map(|(_, c)| c.clone());
        kept.ok_or_else(|| self.ticket(&mut state, key))
    }

    /// The target's metadata (`None`: it does not exist), or a ticket to read it.
    pub fn target(&self, ns: &str, name: &str) -> Result<Option<Arc<Secret>>, Ticket<'_>> {
        let mut state = self.lock();
        let key = secret_key(ns, name);
        let kept = match state.slots.get(&key).and_then(|s| s.target.clone()) {
            Some(None) => return Ok(None),
            Some(Some(kept)) => kept,
            None => return Err(self.ticket(&mut state, key)),
        };
        drop(state);
        match kept.secret() {
            Some(target) => Ok(Some(Arc::new(target))),
            None => {
                let mut state = self.lock();
                Err(self.ticket(&mut state, key))
            }
        }
    }

    /// A write of Secret `name` starts: until it answers, its watch event is held.
    pub fn writing(&self, ns: &str, name: &str) -> Writing<'_> {
        let mut state = self.lock();
        let key = secret_key(ns, name);
        make_room(&mut state, &key);
        let slot = state.slots.entry(key.clone()).or_default();
        slot.writing += 1;
        slot.parked = None;
        Writing {
            reads: self,
            key,
            done: false,
        }
    }

    /// A watch event of Secret `name` at `version` (`None`: deleted). Whether it is news:
    /// someone else's change, which drops what was read from the Secret and should wake
    /// the credentials naming it. This process's own writes are not news, whether their
    /// event comes before or after the write's answer (then `Writing::wrote` decides).
    pub fn event(&self, ns: &str, name: &str, version: Option<&str>) -> bool {
        let mut state = self.lock();
        state.expire_parked(Instant::now());
        let key = secret_key(ns, name);
        let Some(slot) = state.slots.get_mut(&key) else {
            return true;
        };
        // Even an echo: the parked read is trusted only while the Secret is quiet.
        slot.parked = None;
        if let Some(v) = version
            && let Some(at) = slot.own.iter().position(|o| o == v)
        {
            // An earlier write's echo; older versions' echoes will not come any more.
            slot.own.drain(..=at);
            return false;
        }
        if slot.writing > 0 {
            // Past a few, a deletion stands for the rest: the write's answer then finds
            // something that is not its own echo.
            if slot.held.len() < OWN_VERSIONS {
                slot.held.push(version.map(str::to_owned));
            } else {
                slot.held.push(None);
                slot.held.remove(0);
            }
            return false;
        }
        if version.is_some() && slot.version.as_deref() == version {
            return std::mem::take(&mut slot.read_ahead);
        }
        slot.changed();
        // A read in flight that returns this very version is current.
        slot.version = version.map(Into::into);
        if slot.is_idle() {
            state.slots.remove(&key);
        }
        true
    }

    /// A ticket for a read of Secret `name` that is not served from here (the refresh token,
    /// read afresh for every refresh but for the read its credential kept while parked): it
    /// lets the read be kept for a credential that parks (`Ticket::keep_parked`).
    pub fn reading(&self, ns: &str, name: &str) -> Ticket<'_> {
        let mut state = self.lock();
        self.ticket(&mut state, secret_key(ns, name))
    }

    /// The refresh-token Secret `name` as `credential`'s reconcile read it before parking,
    /// if nothing has touched it since and the read is recent; taken either way. With it
    /// comes a ticket as of the original read, which keeps it again if this reconcile
    /// parks once more (woken by the census, it may then wait for a call slot): never
    /// beyond `PARKED_READ_FOR` from the moment the read was sent.
    pub fn take_parked(
        &self,
        ns: &str,
        name: &str,
        credential: &str,
    ) -> Option<(Secret, Ticket<'_>)> {
        let mut state = self.lock();
        state.expire_parked(Instant::now());
        let key = secret_key(ns, name);
        let epoch = state.epoch;
        let slot = state.slots.get_mut(&key)?;
        let parked = slot.parked.take_if(|p| p.credential == credential)?;
        if parked.at.elapsed() > PARKED_READ_FOR {
            if slot.is_idle() {
                state.slots.remove(&key);
            }
            return None;
        }
        // Nothing changed the Secret since the read (that would have dropped it).
        slot.reading += 1;
        let ticket = Ticket {
            reads: self,
            changes: slot.changes,
            key,
            epoch,
            begun: parked.at,
        };
        drop(state);
        // Parsed outside the lock (every Secret event takes it); a JSON that does not parse
        // back (it always does) is a read to make again, the ticket let go.
        let secret = serde_json::from_slice::<Secret>(&parked.json).ok()?;
        Some((secret, ticket))
    }

    /// Drops every read kept for a parked credential: the controllers stopped (a lost
    /// Lease), and nothing would take them, nor age them out, before the next term.
    pub fn drop_parked(&self) {
        let mut state = self.lock();
        state.parked.clear();
        state.slots.retain(|_, slot| {
            slot.parked = None;
            !slot.is_idle()
        });
    }

    /// Forgets everything: the watch listed again, and a Secret deleted meanwhile shows no
    /// event.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.epoch += 1;
        state.parked.clear();
        // A write in flight keeps its slot: whatever it held, and anything the re-list hid,
        // is news at its answer.
        state.slots.retain(|_, slot| {
            if slot.writing == 0 {
                return false;
            }
            slot.changed();
            slot.reading = 0;
            slot.held.push(None);
            true
        });
    }

    /// Secrets with an entry (reads or writes in flight, or something kept).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on the ticket's slot if what the ticket read may be kept, and lets the
    /// ticket go.
    fn keep(&self, ticket: Ticket<'_>, version: Option<&str>, f: impl FnOnce(&mut Slot)) {
        let mut state = self.lock();
        let current = state.epoch == ticket.epoch;
        if let Some(slot) = state.slots.get_mut(&ticket.key).filter(|_| current) {
            // Nothing changed it since the read began, or the read returned the very
            // version of the last change seen.
            let unchanged = slot.changes == ticket.changes
                || (version.is_some() && slot.version.as_deref() == version);
            if unchanged {
                if let Some(v) = version
                    && slot.version.as_deref() != Some(v)
                {
                    slot.version = Some(v.into());
                    slot.read_ahead = true;
                }
                f(slot);
            }
        }
        drop(state);
        // The ticket's drop releases the slot.
        drop(ticket);
    }
}

impl Ticket<'_> {
    /// Keeps `secret`, the refresh-token Secret this ticket's read returned, for the next
    /// reconcile of `credential`, parked now until this process wakes it (a call slot
    /// granted, or the census complete: `Reads::take_parked`): the Secret is read once per
    /// refresh, not once before parking and again after. Kept only if nothing changed the
    /// Secret since the read was sent and no write of it is in flight; dropped by any later
    /// event of the Secret (an echo too), a write of it, a re-list, or age. Safe beyond that
    /// because the spend intent is written over the version read: a change the watch has
    /// not shown yet fails that write (409) and nothing is spent.
    pub fn keep_parked(self, credential: &str, secret: &Secret) {
        // Without managedFields, about half the JSON: the spend intent's update then leaves
        // them to the API server, which keeps the live object's when an update has none.
        let mut kept = secret.clone();
        kept.metadata.managed_fields = None;
        let Some(json) = serde_json::to_vec(&kept)
            .ok()
            .filter(|j| j.len() <= PARKED_READ_MAX_BYTES)
        else {
            return;
        };
        let (reads, at, key) = (self.reads, self.begun, self.key.clone());
        let version = secret.metadata.resource_version.clone();
        let mut kept = false;
        reads.keep(self, version.as_deref(), |slot| {
            if slot.writing == 0 {
                slot.parked = Some(Box::new(ParkedRead {
                    credential: credential.to_owned(),
                    json: json.into_boxed_slice(),
                    at,
                }));
                kept = true;
            }
        });
        if kept {
            let mut state = reads.lock();
            state.parked.push_back((at, key));
            state.expire_parked(Instant::now());
        }
    }

    /// Keeps client credentials read at the Secret's `version`.
    pub fn keep_client(self, keys: &str, creds: ClientCredentials, version: Option<&str>) {
        let keys = keys.to_owned();
        self.reads.keep(self, version, |slot| {
            slot.clients.retain(|(k, _)| *k != keys);
            slot.clients.push((keys, creds));
        });
    }

    /// Keeps the target's metadata as read (`None`: it does not exist).
    pub fn keep_target(self, target: Option<Arc<Secret>>) {
        let version = target
            .as_ref()
            .and_then(|t| t.metadata.resource_version.clone());
        let kept = match target {
            Some(t) => match KeptTarget::new(&t) {
                Some(kept) => Some(kept),
                None => return,
            },
            None => None,
        };
        self.reads
            .keep(self, version.as_deref(), |slot| slot.target = Some(kept));
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut state = self.reads.lock();
        if state.epoch != self.epoch {
            return;
        }
        if let Some(slot) = state.slots.get_mut(&self.key) {
            slot.reading -= 1;
            if slot.is_idle() {
                state.slots.remove(&self.key);
            }
        }
    }
}

impl Writing<'_> {
    /// The write returned `written`; a target's metadata to keep comes with it. Whether
    /// someone else changed the Secret while the write was in flight (its event held
    /// here): then nothing is kept, and the credentials naming the Secret should be woken.
    pub fn wrote(mut self, written: &Secret, target: Option<Arc<Secret>>) -> bool {
        let version = written.metadata.resource_version.clone();
        // `Some(None)`: a target came that cannot be kept (padded): none is kept.
        let target = target.map(|t| KeptTarget::new(&t));
        self.finish(|slot, held| {
            let echoed = held.contains(&version);
            let foreign = held.iter().any(|h| *h != version);
            match version {
                Some(version) if !foreign => {
                    if !echoed {
                        if slot.own.len() >= OWN_VERSIONS {
                            slot.own.remove(0);
                        }
                        slot.own.push(version.clone());
                    }
                    slot.version = Some(version.into());
                    slot.read_ahead = false;
                    match target {
                        Some(Some(t)) => slot.target = Some(Some(t)),
                        Some(None) => slot.target = None,
                        None => {}
                    }
                    // A read begun before this write may hold the version before it.
                    slot.changes += 1;
                }
                _ => slot.changed(),
            }
            foreign
        })
    }

    /// The write failed: what is kept may be out of date (a conflict says so). Whether an
    /// event came meanwhile (wake the credentials naming the Secret).
    pub fn failed(mut self) -> bool {
        self.finish(|slot, held| {
            slot.changed();
            !held.is_empty()
        })
    }

    /// Nothing was written after all (nothing needed it): an event held meanwhile was
    /// someone else's, and is news now.
    pub fn unwritten(mut self) -> bool {
        self.finish(|slot, held| {
            if !held.is_empty() {
                slot.changed();
            }
            !held.is_empty()
        })
    }

    /// Ends the write: `f` gets the slot and the events held meanwhile, and says whether
    /// the credentials naming the Secret should be woken.
    fn finish(&mut self, f: impl FnOnce(&mut Slot, Vec<Option<String>>) -> bool) -> bool {
        self.done = true;
        let mut state = self.reads.lock();
        let Some(slot) = state.slots.get_mut(&self.key) else {
            return false;
        };
        slot.writing -= 1;
        let held = std::mem::take(&mut slot.held);
        let woken = f(slot, held);
        if slot.is_idle() {
            state.slots.remove(&self.key);
        }
        woken
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        // Cancelled: as a failure, whoever holds an event learns of it from the next one.
        if !self.done {
            self.finish(|slot, _| {
                slot.changed();
                false
            });
        }
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

    fn creds(id: &str) -> ClientCredentials {
        ClientCredentials {
            id: id.into(),
            secret: secrecy::SecretString::from("s"),
        }
    }

    fn at(version: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.resource_version = Some(version.into());
        s
    }

    fn id(reads: &Reads, ns: &str, name: &str) -> Option<String> {
        reads.client(ns, name, "id/secret").ok().map(|c| c.id)
    }

    #[test]
    fn a_change_of_a_secret_drops_what_was_read_from_it_and_nothing_else() {
        let reads = Reads::default();
        for (ns, name, v) in [("n", "a", "1"), ("n", "b", "2"), ("m", "a", "3")] {
            let ticket = reads.client(ns, name, "id/secret").unwrap_err();
            ticket.keep_client("id/secret", creds(v), Some(v));
        }
        assert!(
            reads.event("n", "a", Some("9")),
            "someone else's change is news"
        );
        assert_eq!(id(&reads, "n", "a"), None);
        assert_eq!(id(&reads, "n", "b").as_deref(), Some("2"));
        assert_eq!(id(&reads, "m", "a").as_deref(), Some("3"));
        assert!(reads.client("n", "b", "other/keys").is_err(), "other keys");
        // The event of the version read drops nothing, but is news to the others (once).
        assert!(reads.event("n", "b", Some("2")));
        assert!(!reads.event("n", "b", Some("2")));
        assert_eq!(id(&reads, "n", "b").as_deref(), Some("2"));
    }

    #[test]
    fn a_read_overtaken_by_a_change_of_its_secret_is_not_kept_but_one_of_another_is() {
        let reads = Reads::default();
        let ticket = reads.client("n", "a", "id/secret").unwrap_err();
        let other = reads.client("n", "b", "id/secret").unwrap_err();
        reads.event("n", "a", Some("5"));
        ticket.keep_client("id/secret", creds("old"), Some("4"));
        other.keep_client("id/secret", creds("b"), Some("7"));
        assert_eq!(id(&reads, "n", "a"), None);
        assert_eq!(id(&reads, "n", "b").as_deref(), Some("b"));
        // A read that returned the very version of the change is current.
        let ticket = reads.client("n", "c", "id/secret").unwrap_err();
        reads.event("n", "c", Some("8"));
        ticket.keep_client("id/secret", creds("new"), Some("8"));
        assert_eq!(id(&reads, "n", "c").as_deref(), Some("new"));
    }

    #[test]
    fn the_echo_of_an_own_write_before_its_answer_is_no_news_and_the_result_is_kept() {
        let reads = Reads::default();
        let write = reads.writing("n", "t");
        assert!(
            !reads.event("n", "t", Some("11")),
            "held while the write is out"
        );
        let kept = Arc::new(at("11"));
        assert!(!write.wrote(&at("11"), Some(kept)), "it was the echo");
        let target = reads.target("n", "t").ok().flatten().unwrap();
        assert_eq!(target.metadata.resource_version.as_deref(), Some("11"));
        assert!(!reads.event("n", "t", Some("11")), "nor a re-delivery");
    }

    #[test]
    fn echoes_after_the_answers_are_no_news_even_two_writes_late() {
        let reads = Reads::default();
        reads.writing("n", "r").wrote(&at("20"), None);
        reads.writing("n", "r").wrote(&at("21"), None);
        assert!(!reads.event("n", "r", Some("20")));
        assert!(!reads.event("n", "r", Some("21")));
        assert!(
            reads.event("n", "r", Some("22")),
            "a later version is someone else's"
        );
    }

    #[test]
    fn the_late_echo_of_an_earlier_write_during_the_next_write_is_no_news() {
        // The spend intent's echo comes while the write-back is out.
        let reads = Reads::default();
        reads.writing("n", "r").wrote(&at("50"), None);
        let write_back = reads.writing("n", "r");
        assert!(!reads.event("n", "r", Some("50")));
        assert!(!reads.event("n", "r", Some("51")));
        assert!(!write_back.wrote(&at("51"), None), "both were its own");
    }

    #[test]
    fn a_change_by_someone_else_during_a_write_is_news_at_the_answer_and_nothing_is_kept() {
        let reads = Reads::default();
        let write = reads.writing("n", "t");
        assert!(!reads.event("n", "t", Some("30")));
        assert!(!reads.event("n", "t", Some("31")));
        assert!(write.wrote(&at("30"), Some(Arc::new(at("30")))));
        assert!(reads.target("n", "t").is_err());
        // A failed write with an event meanwhile: news too.
        let write = reads.writing("n", "t");
        reads.event("n", "t", None);
        assert!(write.failed());
    }

    #[test]
    fn a_read_begun_before_an_own_write_never_leaves_the_older_version_in_place() {
        let reads = Reads::default();
        let ticket = reads.target("n", "t").unwrap_err();
        reads
            .writing("n", "t")
            .wrote(&at("41"), Some(Arc::new(at("41"))));
        ticket.keep_target(Some(Arc::new(at("40"))));
        let target = reads.target("n", "t").ok().flatten().unwrap();
        assert_eq!(target.metadata.resource_version.as_deref(), Some("41"));
    }

    #[test]
    fn a_kept_target_reads_back_as_it_was_kept_and_a_padded_one_is_not_kept() {
        let reads = Reads::default();
        let mut target = at("7");
        target.metadata.annotations =
            Some([("eagle-eye-operator.io/spent".to_owned(), "a b c".to_owned())].into());
        target.data = Some([("access_token".to_owned(), Default::default())].into());
        let target = trimmed(&target);
        reads
            .target("n", "t")
            .unwrap_err()
            .keep_target(Some(Arc::new(target.clone())));
        assert_eq!(*reads.target("n", "t").ok().flatten().unwrap(), target);
        // Padded with key names by whoever may write it: read afresh each time.
        let mut padded = at("8");
        padded.data = Some(
            (0..2000)
                .map(|i| (format!("key-{i}"), Default::default()))
                .collect(),
        );
        reads
            .writing("n", "t")
            .wrote(&padded, Some(Arc::new(trimmed(&padded))));
        assert!(
            reads.target("n", "t").is_err(),
            "the older one is dropped too"
        );
        reads
            .target("n", "u")
            .unwrap_err()
            .keep_target(Some(Arc::new(trimmed(&padded))));
        assert!(reads.target("n", "u").is_err());
    }

    #[test]
    fn a_target_known_absent_is_read_again_once_it_appears_or_after_a_relist() {
        let reads = Reads::default();
        reads.target("n", "t").unwrap_err().keep_target(None);
        assert!(matches!(reads.target("n", "t"), Ok(None)));
        assert!(reads.event("n", "t", Some("1")), "created by someone");
        assert!(reads.target("n", "t").is_err());
        reads.target("n", "u").unwrap_err().keep_target(None);
        reads.clear();
        assert!(reads.target("n", "u").is_err());
    }

    #[test]
    fn a_deleted_secret_drops_what_was_kept() {
        let reads = Reads::default();
        reads
            .target("n", "t")
            .unwrap_err()
            .keep_target(Some(Arc::new(at("3"))));
        assert!(reads.event("n", "t", None));
        assert!(reads.target("n", "t").is_err());
    }

    #[test]
    fn a_relist_during_a_write_makes_a_held_deletion_news_at_the_answer() {
        let reads = Reads::default();
        let write = reads.writing("b", "t");
        assert!(!reads.event("b", "t", None), "held");
        reads.clear();
        assert!(write.wrote(&at("30"), Some(Arc::new(at("30")))));
    }

    #[test]
    fn a_tenant_naming_ever_new_absent_secrets_cannot_grow_the_cache_past_its_bound() {
        let reads = Reads::default();
        for i in 0..MAX_SECRETS + 10 {
            reads
                .target("n", &format!("nothing-{i}"))
                .unwrap_err()
                .keep_target(None);
        }
        assert!(reads.len() <= MAX_SECRETS, "{} entries", reads.len());
        // A read in flight survives the clean-up.
        let ticket = reads.target("n", "in-flight").unwrap_err();
        for i in 0..MAX_SECRETS {
            reads
                .target("m", &format!("more-{i}"))
                .unwrap_err()
                .keep_target(None);
        }
        ticket.keep_target(None);
        assert!(matches!(reads.target("n", "in-flight"), Ok(None)));
    }

    #[test]
    fn nothing_stays_for_reads_that_kept_nothing_nor_for_echoed_writes() {
        let reads = Reads::default();
        for i in 0..100 {
            drop(
                reads
                    .client("n", &format!("missing-{i}"), "id/secret")
                    .unwrap_err(),
            );
        }
        let w = reads.writing("n", "r");
        reads.event("n", "r", Some("5"));
        w.wrote(&at("5"), None);
        drop(reads.writing("n", "cancelled"));
        assert!(reads.is_empty(), "{} entries", reads.len());
    }

    fn named(name: &str, version: &str) -> Secret {
        let mut s = at(version);
        s.metadata.name = Some(name.into());
        s
    }

    fn version(s: Option<Secret>) -> Option<String> {
        s.and_then(|s| s.metadata.resource_version)
    }

    /// What `credential`'s next reconcile finds kept of Secret `rt` in `ns` (the ticket let go).
    fn taken(reads: &Reads, ns: &str, name: &str, credential: &str) -> Option<Secret> {
        reads
            .take_parked(ns, name, credential)
            .map(|(secret, _)| secret)
    }

    /// `credential` reads Secret `rt` at `v` and parks.
    fn park(reads: &Reads, credential: &str, v: &str) {
        reads
            .reading("n", "rt")
            .keep_parked(credential, &named("rt", v));
    }

    #[test]
    fn a_parked_read_serves_its_credential_once_and_only_while_the_secret_is_quiet() {
        let reads = Reads::default();
        park(&reads, "n/a", "4");
        assert_eq!(taken(&reads, "n", "rt", "n/b"), None, "another's");
        assert_eq!(taken(&reads, "m", "rt", "n/a"), None, "another namespace");
        assert_eq!(
            version(taken(&reads, "n", "rt", "n/a")).as_deref(),
            Some("4")
        );
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "taken once");
        assert!(reads.is_empty(), "{} entries", reads.len());

        // Any event of the Secret drops it, even one that is no news (an echo of a write).
        park(&reads, "n/a", "4");
        reads.event("n", "rt", Some("4"));
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "after an event");
        let write = reads.writing("n", "rt");
        write.wrote(&at("5"), None);
        park(&reads, "n/a", "5");
        assert!(!reads.event("n", "rt", Some("5")), "the echo is no news");
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "after an echo");

        // A write of it, a re-list, or a read made while a write is out: none is kept.
        park(&reads, "n/a", "6");
        drop(reads.writing("n", "rt"));
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "after a write");
        park(&reads, "n/a", "6");
        reads.clear();
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "after a re-list");
        let write = reads.writing("n", "rt");
        park(&reads, "n/a", "6");
        write.failed();
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "during a write");
    }

    #[test]
    fn a_read_overtaken_by_a_change_or_padded_is_not_kept_for_a_parked_credential() {
        let reads = Reads::default();
        // The Secret changed after the read was sent and before the credential parked.
        let ticket = reads.reading("n", "rt");
        assert!(reads.event("n", "rt", Some("8")));
        ticket.keep_parked("n/a", &named("rt", "7"));
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "overtaken");
        // The change's own event, come late: the read returned that very version.
        let ticket = reads.reading("n", "rt");
        reads.event("n", "rt", Some("9"));
        ticket.keep_parked("n/a", &named("rt", "9"));
        assert!(taken(&reads, "n", "rt", "n/a").is_some(), "current");
        // A tenant's padded Secret is read again rather than held while parked.
        let mut padded = named("rt", "10");
        padded.metadata.annotations = Some([("pad".into(), "x".repeat(64 * 1024))].into());
        reads.reading("n", "rt").keep_parked("n/a", &padded);
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "padded");
        assert!(reads.is_empty(), "{} entries", reads.len());
    }

    #[test]
    fn a_parked_read_is_dropped_once_too_old_to_serve() {
        let reads = Reads::default();
        park(&reads, "n/a", "4");
        let later = Instant::now() + PARKED_READ_FOR + Duration::from_secs(1);
        reads.lock().expire_parked(later);
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None);
        assert!(reads.is_empty(), "{} entries", reads.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_kept_through_the_census_is_kept_again_for_a_call_slot_but_never_past_its_first_15_s()
     {
        let reads = Reads::default();
        let mut read = named("rt", "4");
        read.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            ..Default::default()
        }]);
        reads.reading("n", "rt").keep_parked("n/a", &read);
        // Woken by the census, it parks again for a call slot: the same read serves, less
        // its managedFields (the update that spends it leaves them to the API server).
        let (secret, ticket) = reads.take_parked("n", "rt", "n/a").expect("kept");
        read.metadata.managed_fields = None;
        assert_eq!(secret, read);
        ticket.keep_parked("n/a", &secret);
        let (secret, ticket) = reads.take_parked("n", "rt", "n/a").expect("kept again");
        assert_eq!(version(Some(secret.clone())).as_deref(), Some("4"));
        // An event between the take and the second park: not kept again.
        reads.event("n", "rt", Some("5"));
        ticket.keep_parked("n/a", &secret);
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "changed since");
        // Kept again, it still ages from the moment it was first sent.
        park(&reads, "n/a", "6");
        tokio::time::advance(PARKED_READ_FOR - Duration::from_secs(5)).await;
        let (secret, ticket) = reads.take_parked("n", "rt", "n/a").expect("kept");
        ticket.keep_parked("n/a", &secret);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None, "too old");
        assert!(reads.is_empty(), "{} entries", reads.len());
    }

    #[test]
    fn a_term_that_ends_drops_every_kept_read_and_keeps_what_is_in_flight() {
        let reads = Reads::default();
        park(&reads, "n/a", "4");
        let write = reads.writing("n", "other");
        reads.drop_parked();
        assert_eq!(taken(&reads, "n", "rt", "n/a"), None);
        assert_eq!(reads.len(), 1, "the write in flight keeps its entry");
        assert!(
            !write.wrote(&named("other", "9"), None),
            "its answer is still its own"
        );
    }
}
