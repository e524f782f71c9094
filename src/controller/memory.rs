//! What this process remembers of each credential, in one entry per credential: a rotated
//! answer held until it is stored and published, the live token (to undo a revert), the
//! logins never to send again, the tokens it claims, its `Retry-After`, its Kubernetes API
//! failures and its revocation. One map for the process, shared by every controller term, so
//! that a lost Lease, a restarted controller or a deleted credential never silently drops a
//! held answer: it may be the only live copy of the login.
//!
//! A reconcile reads a snapshot of its entry (`Memory::entry`) and changes it one fact at a
//! time; the sweep (`retain`) drops the entries of credentials that are gone. Beside the
//! entries, one index answers "whose is this token?" for every credential at once: the
//! first credential to claim a live token, and who rotated out each dead one. A deleted
//! credential's dead tokens stay known (bounded, [`BURIED`]) so that a copy is never spent.
//!
//! **Claims after a restart.** The index is built from what reconciles read, so a new process
//! (or a new term) knows nothing at first: a credential holding a copy of a token another
//! rotated out in an earlier term would pass for its owner. So in each term, nothing is spent
//! and nothing revoked until every credential the term watches has been read once
//! (`Memory::census_complete`): by then every spent list is in the index.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};

use super::held::Held;
use super::lock;
use crate::decide::PendingAnswer;
use crate::secrets::fingerprint;

#[derive(Clone, Default)]
pub struct Memory {
    inner: Arc<Mutex<Inner>>,
    /// The number of the current controller term (see `Memory::new_term`).
    terms: Arc<AtomicU64>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Which credential first claimed each token still current (by fingerprint).
    current: HashMap<Fp, Arc<str>>,
    /// Which credential rotated out each token known dead (by fingerprint): up to 65 per
    /// credential, so as numbers and one shared name, not strings (a credential's share of
    /// the index is about 2 KiB at the most, not 12).
    dead: HashMap<Fp, Arc<str>>,
    /// Deleted credentials whose rotated-out tokens stay known dead, oldest first, with
    /// their uids (see `recognise`).
    buried: VecDeque<(Arc<str>, Uid, Vec<Fp>)>,
    /// The credentials with an answer held (so that finding one is not a walk of all).
    holding: BTreeSet<String>,
    /// The credentials last refused a token another claims or rotated out (copies), so that
    /// finding the copies of a token is not a walk of all.
    copies: HashSet<Arc<str>>,
    /// Tokens being spent (by fingerprint): by whom, and until when an answer may still
    /// come (the spend intent's bound). They bind whoever else holds a copy, even once the
    /// spender is deleted (see `Memory::intend`).
    intents: Intents,
}

/// A token's fingerprint as the index keeps it: the 16 hex digits of
/// `secrets::fingerprint` as the number they spell (anything else, hashed).
type Fp = u64;

fn fp(fingerprint: &str) -> Fp {
    if fingerprint.len() == 16
        // Lowercase only, as `secrets::fingerprint` writes them: the spent lists are compared
        // as strings elsewhere, so "ABCD…" must stay another token than "abcd…".
        && fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && let Ok(n) = u64::from_str_radix(fingerprint, 16)
    {
        return n;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fingerprint.hash(&mut h);
    h.finish()
}

/// How many deleted credentials' rotated-out tokens stay known dead (at most 65
/// fingerprints each): a copy of one is never spent, yet churn cannot grow memory forever.
const BURIED: usize = 1024;

/// A credential's uid, hashed (0: not known).
type Uid = u64;

fn uid(uid: &str) -> Uid {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut h);
    h.finish().max(1)
}

/// Spends registered in memory (see `Memory::intend`): by whom (which credential of that
/// name), and until when.
type Intents = HashMap<Fp, (Arc<str>, Uid, tokio::time::Instant)>;

/// What a deleted credential named `key` owns goes under this name, so that a new
/// credential of the same name is another.
fn ghost(key: &str) -> Arc<str> {
    Arc::from(format!("{key} (deleted)"))
}

/// Registers credential `key`'s (uid `me`) spend of token `t`, binding until `until`. Only
/// calls in flight and those whose answer was lost are kept (a few): the expired go.
fn register(
    entries: &HashMap<String, Entry>,
    intents: &mut Intents,
    key: &str,
    me: Uid,
    t: Fp,
    until: tokio::time::Instant,
) {
    let name = entries
        .get(key)
        .and_then(|e| e.name.clone())
        .unwrap_or_else(|| Arc::from(key));
    let now = tokio::time::Instant::now();
    intents.retain(|_, (_, _, u)| *u > now);
    // A spend of its own still binding (an earlier call whose answer may come) is never
    // cut short by a later one.
    let until = match intents.get(&t) {
        Some((o, u, earlier)) if **o == *key && *u == me => until.max(*earlier),
        _ => until,
    };
    intents.insert(t, (name, me, until));
}

/// Ends `key`'s spend of token `t`, if it has one (whichever credential of that name: only
/// the one spending `t` ends a spend of it).
fn end_intent(intents: &mut Intents, t: &Fp, key: &str) {
    if intents.get(t).is_some_and(|(o, _, _)| &**o == key) {
        intents.remove(t);
    }
}

/// Before a claim of credential `key`, which is the one of uid `me`: when a credential of
/// that name was deleted and this is a new one, what the old one claimed or rotated out
/// becomes a deleted credential's (owned by "`key` (deleted)"; its spends are told apart by
/// uid), so that the new one, reading a copy of the old one's token (a Secret re-applied
/// from an old manifest, say), finds it dead like any other credential would.
fn recognise(inner: &mut Inner, key: &str, me: Uid) {
    let Inner {
        entries,
        current,
        dead,
        buried,
        copies,
        ..
    } = inner;
    let mut theirs = Vec::new();
    // Deleted and recreated before this process saw it gone (an entry with claims and no
    // uid is not known to be this one either).
    if let Some(e) = entries.get_mut(key)
        && e.uid != me
        && (e.uid != 0 || !e.tokens.is_empty())
    {
        theirs = std::mem::take(&mut e.tokens);
        e.live = None;
    }
    while let Some(i) = buried.iter().position(|(k, u, _)| &**k == key && *u != me) {
        if let Some((_, _, tokens)) = buried.remove(i) {
            theirs.extend(tokens);
        }
    }
    if theirs.is_empty() {
        return;
    }
    let ghost = ghost(key);
    let mut dead_ones = Vec::new();
    for t in theirs {
        if current.get(&t).is_some_and(|o| &**o == key) {
            current.remove(&t);
        }
        if dead.get(&t).is_some_and(|o| &**o == key) {
            dead.insert(t, ghost.clone());
            dead_ones.push(t);
        }
    }
    copies.remove(key);
    if !dead_ones.is_empty() {
        bury(buried, dead, ghost, 0, dead_ones);
    }
}

/// Keeps a deleted credential's dead tokens known, forgetting the oldest deleted
/// credential's beyond [`BURIED`].
fn bury(
    buried: &mut VecDeque<(Arc<str>, Uid, Vec<Fp>)>,
    dead: &mut HashMap<Fp, Arc<str>>,
    name: Arc<str>,
    uid: Uid,
    tokens: Vec<Fp>,
) {
    buried.push_back((name, uid, tokens));
    while buried.len() > BURIED {
        let Some((oldest, _, tokens)) = buried.pop_front() else {
            break;
        };
        for t in tokens {
            if dead.get(&t).is_some_and(|o| *o == oldest) {
                dead.remove(&t);
            }
        }
    }
}

/// Everything remembered of one credential.
#[derive(Default)]
pub(crate) struct Entry {
    /// An answer received but not yet seen stored and published (boxed: most entries have
    /// none, and the map's every slot is the size of an entry).
    pub held: Option<Box<Held>>,
    /// The live refresh token, as last stored or confirmed: the copy that puts a login back
    /// when something overwrites its Secret with a rotated-out token.
    pub live: Option<SecretString>,
    /// The tokens it claims: the stored one first, then those it rotated out.
    tokens: Vec<Fp>,
    /// Its key, shared by its claims in the index.
    name: Option<Arc<str>>,
    /// Consecutive Kubernetes API failures, for the error policy's backoff.
    pub api_failures: u32,
    /// What few credentials have at any time (boxed, as `held`): see [`Rare`].
    rare: Option<Box<Rare>>,
    /// The last term in which a reconcile read its Secrets (see the module's doc).
    read_in_term: u64,
    /// Which credential of this name it is (see `recognise`).
    uid: Uid,
}

/// What an entry remembers only after something went wrong, or while a credential is
/// deleted.
#[derive(Default)]
pub(crate) struct Rare {
    /// The login the server refused, never sent again until one of its parts changes. Kept
    /// here as well as in status, so that a failed status write never lets it be resent.
    refused: Option<Refused>,
    /// The login whose answer the configuration refused.
    blocked: Option<Refused>,
    /// The server's `Retry-After`: no call before then.
    pub retry_not_before: Option<Timestamp>,
    /// When its last reconcile failed for a reason of its own (`Error::is_own`), while it
    /// keeps failing.
    failed_at: Option<tokio::time::Instant>,
    /// Publishes of a held answer refused in a row because the target changed meanwhile,
    /// and when the next may be tried (see `refresh::PublishBackoff`).
    pub publish_backoff: Option<crate::refresh::PublishBackoff>,
    /// A revocation under way (spec.revokeOnDelete), for the credential of this uid.
    pub revocation: Option<(String, Revocation)>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.refused.is_none()
            && self.blocked.is_none()
            && self.retry_not_before.is_none()
            && self.failed_at.is_none()
            && self.publish_backoff.is_none()
            && self.revocation.is_none()
    }
}

/// What is remembered of a credential being deleted.
#[derive(Clone, Copy, Default)]
pub(crate) struct Revocation {
    pub attempts: u32,
    /// Revoked or given up: only the finalizer's removal is left.
    pub settled: bool,
}

/// A login never to send again, and whether the status already says so: once it does, a
/// person clearing the mark there (to make the operator try once more) clears it here too.
#[derive(Clone)]
struct Refused {
    login: String,
    in_status: bool,
}

/// Which remembered login.
#[derive(Clone, Copy)]
pub enum Refusal {
    /// The auth server refused the login.
    Server,
    /// The operator's configuration refused the answer (an API host not allowed).
    Config,
}

impl Entry {
    /// What is rarely set, to set it.
    pub fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// Drops [`Rare`] once nothing is set in it.
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_empty()) {
            self.rare = None;
        }
    }

    pub fn retry_not_before(&self) -> Option<Timestamp> {
        self.rare.as_ref()?.retry_not_before
    }

    /// A reconcile failed, now, for a reason of its own or not (an outage): the failures in
    /// a row.
    pub fn api_failed(&mut self, own: bool) -> u32 {
        self.api_failures = self.api_failures.saturating_add(1);
        if own {
            self.rare_mut().failed_at = Some(tokio::time::Instant::now());
        }
        self.api_failures
    }

    /// A reconcile ended without such a failure.
    pub fn api_succeeded(&mut self) {
        self.api_failures = 0;
        if let Some(rare) = &mut self.rare {
            rare.failed_at = None;
        }
    }

    /// When a reconcile last failed for a reason of its own, while it keeps failing.
    pub fn failed_at(&self) -> Option<tokio::time::Instant> {
        self.rare.as_ref()?.failed_at
    }

    pub fn publish_backoff(&self) -> Option<crate::refresh::PublishBackoff> {
        self.rare.as_ref()?.publish_backoff
    }

    pub fn revocation(&self) -> Option<&(String, Revocation)> {
        self.rare.as_ref()?.revocation.as_ref()
    }

    fn refusal(&mut self, which: Refusal) -> &mut Option<Refused> {
        let rare = self.rare_mut();
        match which {
            Refusal::Server => &mut rare.refused,
            Refusal::Config => &mut rare.blocked,
        }
    }

    fn is_empty(&self) -> bool {
        self.held.is_none()
            && self.live.is_none()
            && self.tokens.is_empty()
            && self.api_failures == 0
            && self.rare.as_ref().is_none_or(|r| r.is_empty())
    }
}

/// What a credential claims (`Memory::claim`): its stored token first, then those it
/// rotated out.
pub(crate) fn claimed(stored: &str, spent: &[String]) -> Vec<String> {
    std::iter::once(stored.to_owned())
        .chain(spent.iter().cloned())
        .collect()
}

impl Memory {
    /// Runs `f` on the entry of `key` (made if missing).
    pub(crate) fn with<T>(&self, key: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut inner = lock(&self.inner);
        let entry = inner.entries.entry(key.to_owned()).or_default();
        let result = f(entry);
        entry.tidy();
        result
    }

    /// Runs `f` on the entry of `key`, if there is one.
    pub(crate) fn get<T>(&self, key: &str, f: impl FnOnce(&Entry) -> T) -> Option<T> {
        lock(&self.inner).entries.get(key).map(f)
    }

    pub(crate) fn take(&self, key: &str) -> Option<Held> {
        let mut inner = lock(&self.inner);
        inner.holding.remove(key);
        inner.entries.get_mut(key)?.held.take().map(|h| *h)
    }

    /// Takes the answer held under `key` out of memory if `f` says it is the one.
    pub(crate) fn take_if(&self, key: &str, f: impl FnOnce(&Held) -> bool) -> Option<Held> {
        let mut inner = lock(&self.inner);
        let entry = inner.entries.get_mut(key)?;
        if !entry.held.as_deref().is_some_and(f) {
            return None;
        }
        let held = entry.held.take();
        inner.holding.remove(key);
        held.map(|h| *h)
    }

    pub(crate) fn put(&self, key: &str, held: Held) {
        let mut inner = lock(&self.inner);
        inner.holding.insert(key.to_owned());
        inner.entries.entry(key.to_owned()).or_default().held = Some(Box::new(held));
    }

    /// What `decide` needs to know of the held answer for this credential's Secret, with
    /// the key it is held under (another credential's, after a rename) and its spent list.
    pub(crate) fn peek_for(
        &self,
        key: &str,
        namespace: &str,
        secret: &str,
        now: Timestamp,
    ) -> Option<(String, PendingAnswer, Vec<String>)> {
        let inner = lock(&self.inner);
        let own = inner
            .entries
            .get_key_value(key)
            .and_then(|(k, e)| Some((k, e.held.as_deref()?)));
        let (k, h) = own.or_else(|| {
            inner.holding.iter().find_map(|k| {
                inner
                    .entries
                    .get_key_value(k)?
                    .1
                    .held
                    .as_deref()
                    .filter(|h| h.namespace == namespace && h.secret == secret)
                    .map(|h| (k, h))
            })
        })?;
        let pending = PendingAnswer {
            spent: h.spent_fingerprint.clone(),
            new: h.new_fingerprint(),
            publishable: h.publishable(now),
        };
        Some((k.clone(), pending, h.spent.clone()))
    }

    /// Whether no answer is held for any credential.
    pub fn is_empty(&self) -> bool {
        lock(&self.inner).holding.is_empty()
    }

    /// The keys of the credentials with an answer held.
    pub(crate) fn held_keys(&self) -> Vec<String> {
        lock(&self.inner).holding.iter().cloned().collect()
    }

    /// Remembers `token` as the credential's live refresh token.
    pub(crate) fn remember_live(&self, key: &str, token: &SecretString) {
        self.with(key, |e| e.live = Some(token.clone()));
    }

    /// The live refresh token remembered for the credential, unless it is among `dead`.
    pub(crate) fn live(&self, key: &str, dead: &[String]) -> Option<SecretString> {
        self.get(key, |e| {
            e.live
                .as_ref()
                .filter(|t| !dead.contains(&fingerprint(t.expose_secret())))
                .cloned()
        })
        .flatten()
    }

    pub(crate) fn forget_live(&self, key: &str) {
        self.with(key, |e| e.live = None);
    }

    pub(crate) fn refuse(&self, which: Refusal, key: &str, login: &str) {
        self.with(key, |e| {
            let r = e.refusal(which);
            if r.as_ref().is_none_or(|r| r.login != login) {
                *r = Some(Refused {
                    login: login.to_owned(),
                    in_status: false,
                });
            }
        });
    }

    /// The status now records the server's refusal of `login`.
    pub(crate) fn refusal_in_status(&self, key: &str, login: &str) {
        self.with(key, |e| {
            if let Some(r) = &mut e.rare_mut().refused
                && r.login == login
            {
                r.in_status = true;
            }
        });
    }

    /// Whether `login` is refused, given what the status says (`in_status`: the status's
    /// refused-login mark). A refusal the status once recorded and no longer does was
    /// cleared by a person: it is forgotten.
    pub(crate) fn is_refused(
        &self,
        which: Refusal,
        key: &str,
        login: &str,
        in_status: Option<&str>,
    ) -> bool {
        if in_status == Some(login) {
            return true;
        }
        self.with(key, |e| {
            let r = e.refusal(which);
            match r {
                Some(x) if x.in_status && in_status.is_none() => {
                    *r = None;
                    false
                }
                Some(x) => x.login == login,
                None => false,
            }
        })
    }

    /// Claims `tokens` (the stored one first, then those rotated out) for credential `key`,
    /// and marks it read in `term`. Returns the credential that owns the stored token
    /// instead, if one does: one that rotated it out (the token is dead, even once that
    /// credential is gone), or one that claimed it first and still exists (`exists`), which
    /// may be spending it right now; the first claim wins, whatever the credentials' ages: a
    /// claim is made before the spend it guards, under one lock. Tokens it rotated out are
    /// recorded as dead whoever claimed them before: a copy of a dead token is never live.
    /// Without `claim_current` (a second credential naming the same Secret), what it holds
    /// is recorded and nothing claimed. `credential_uid` tells which credential of that name
    /// it is: one deleted and recreated under the same name is another (see `recognise`).
    pub(crate) fn claim(
        &self,
        key: &str,
        credential_uid: &str,
        tokens: &[String],
        term: u64,
        claim_current: bool,
        exists: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let me_uid = uid(credential_uid);
        let mut inner = lock(&self.inner);
        recognise(&mut inner, key, me_uid);
        let Inner {
            entries,
            current,
            dead,
            buried,
            copies,
            intents,
            ..
        } = &mut *inner;
        let entry = entries.entry(key.to_owned()).or_default();
        entry.uid = me_uid;
        entry.read_in_term = term;
        let me = entry.name.get_or_insert_with(|| Arc::from(key)).clone();
        let tokens: Vec<Fp> = tokens.iter().map(|t| fp(t)).collect();
        let mut old = std::mem::take(&mut entry.tokens);
        if let Some(i) = buried.iter().position(|(k, _, _)| &**k == key) {
            // Back under the same name (relabelled out of this shard and in again, say; one
            // recreated is another credential, whose records `recognise` took away): its
            // claims are its own again (and forgotten with its lists like any other's).
            if let Some((_, _, tokens)) = buried.remove(i) {
                old.extend(tokens);
            }
        }
        let (stored, spent) = tokens.split_first()?;
        // A Secret set back to a token already rotated out (a backup, a sync tool) shows an
        // older list: what the newer one held stays known until a write-back replaces it.
        let reverted = dead.contains_key(stored);
        let mut kept = tokens.to_vec();
        if reverted {
            kept.extend(old.iter().filter(|t| !tokens.contains(t)).cloned());
            old.clear();
        }
        // Recorded even when another owns the stored token: a revocation asks who else
        // holds the same login.
        entry.tokens = kept;
        for t in spent {
            dead.entry(*t).or_insert_with(|| me.clone());
            if current.get(t).is_some_and(|o| &**o != key) {
                current.remove(t);
            }
            // Its spend is answered and stored: the token is dead, which binds for good.
            end_intent(intents, t, key);
        }
        // What fell off its lists (the Secret keeps the last 64 rotated out) is forgotten
        // here too: the index stays as large as the lists, however long the process runs.
        // But while an answer is held for it, its Secret may not list what that answer
        // rotated out (a person's new login there, a Secret recreated by hand): that token,
        // and the list the answer is to be stored with, stay dead and claimed until the
        // answer is stored or dropped. Only those: a tenant rewriting the Secret's list
        // meanwhile grows nothing.
        let held_dead: Vec<Fp> = entry.held.as_deref().map_or_else(Vec::new, |h| {
            std::iter::once(&h.spent_fingerprint)
                .chain(&h.spent)
                .map(|t| fp(t))
                .collect()
        });
        for t in old.iter().filter(|t| !tokens.contains(t)) {
            if current.get(t).is_some_and(|o| &**o == key) {
                current.remove(t);
            }
            if dead.get(t).is_some_and(|o| &**o == key) {
                match held_dead.contains(t) {
                    true if entry.tokens.contains(t) => {}
                    true => entry.tokens.push(*t),
                    false => drop(dead.remove(t)),
                }
            }
        }
        if !claim_current {
            return None;
        }
        if let Some(owner) = dead.get(stored).filter(|o| &***o != key) {
            copies.insert(me);
            return Some(owner.to_string());
        }
        // Being spent by another, deleted since or not: its answer may still come.
        if let Some((owner, u, until)) = intents.get(stored)
            && (&**owner != key || *u != me_uid)
        {
            if *until > tokio::time::Instant::now() {
                let owner = match &**owner == key {
                    true => ghost(key).to_string(),
                    false => owner.to_string(),
                };
                copies.insert(me);
                return Some(owner);
            }
            intents.remove(stored);
        }
        if let Some(owner) = current.get(stored).filter(|o| &***o != key)
            && exists(owner)
        {
            copies.insert(me);
            return Some(owner.to_string());
        }
        copies.remove(&me);
        current.insert(*stored, me);
        None
    }

    /// The credentials refused `token` (by fingerprint) as a copy of another's, as their
    /// last claim found them (see `Memory::claim`): the copies its rotation kills.
    pub(crate) fn copies_of(&self, token: &str) -> Vec<String> {
        let token = fp(token);
        let inner = lock(&self.inner);
        inner
            .copies
            .iter()
            .filter(|k| {
                inner
                    .entries
                    .get(&***k)
                    .is_some_and(|e| e.tokens.first() == Some(&token))
            })
            .map(|k| k.to_string())
            .collect()
    }

    /// Credential `key` is about to spend `token` (by fingerprint), and an answer may come
    /// for `hold` from now (its spend intent's bound): unless another credential has
    /// claimed it since (this one being deleted, say) or rotated it out, it is this one's to
    /// spend, and no one else may claim it until the answer rotates it out (`rotated`), the
    /// call ends with none (`withdraw`) or `hold` has passed, even once `key` is deleted (a
    /// claim alone is released when its credential is deleted, so that a copy may take the
    /// login over: not while a call may still rotate it). Returns whether it may be spent.
    /// Made before the intent is written to the Secret, under the lock every claim takes:
    /// a copy claims the token first, or finds it being spent.
    pub(crate) fn intend(
        &self,
        key: &str,
        credential_uid: &str,
        token: &str,
        hold: std::time::Duration,
        exists: impl Fn(&str) -> bool,
    ) -> bool {
        let now = tokio::time::Instant::now();
        let (t, me) = (fp(token), uid(credential_uid));
        let mut inner = lock(&self.inner);
        let Inner {
            entries,
            current,
            dead,
            intents,
            ..
        } = &mut *inner;
        let others = |o: &Arc<str>| &**o != key;
        // A claim binds while its credential exists (as in `claim`); a spend, while its
        // call may be answered.
        if dead.get(&t).is_some_and(others)
            || current.get(&t).is_some_and(|o| others(o) && exists(o))
            || intents
                .get(&t)
                .is_some_and(|(o, u, until)| (others(o) || *u != me) && *until > now)
        {
            return false;
        }
        register(entries, intents, key, me, t, now + hold);
        true
    }

    /// Another holder (a process that led before this one, say) may still receive an answer
    /// for `token`, credential `key`'s, for `hold` from now (its spend intent, read from the
    /// Secret): copies elsewhere wait for it as for this process's own spends. Another
    /// credential's spend already registered here stands; this one's is extended.
    pub(crate) fn held_elsewhere(
        &self,
        key: &str,
        credential_uid: &str,
        token: &str,
        hold: std::time::Duration,
    ) {
        let now = tokio::time::Instant::now();
        let (t, me) = (fp(token), uid(credential_uid));
        let mut inner = lock(&self.inner);
        if let Some((owner, u, until)) = inner.intents.get_mut(&t)
            && *until > now
        {
            if &**owner == key && *u == me {
                *until = (*until).max(now + hold);
            }
            return;
        }
        let Inner {
            entries, intents, ..
        } = &mut *inner;
        register(entries, intents, key, me, t, now + hold);
    }

    /// The call credential `key` made with `token` ended with no answer to come.
    pub(crate) fn withdraw(&self, key: &str, token: &str) {
        let mut inner = lock(&self.inner);
        let t = fp(token);
        end_intent(&mut inner.intents, &t, key);
    }

    /// The auth server answered credential `key`'s spend of `token` with another: `token`
    /// is dead from now on, whether or not its Secret ever says so (the credential may be
    /// deleted before its answer is stored, and a copy elsewhere must never be spent).
    pub(crate) fn rotated(&self, key: &str, credential_uid: &str, token: &str) {
        let (t, me) = (fp(token), uid(credential_uid));
        let mut inner = lock(&self.inner);
        let Inner {
            entries,
            dead,
            buried,
            intents,
            ..
        } = &mut *inner;
        end_intent(intents, &t, key);
        // Known dead as long as the credential's other dead tokens: among its claims while
        // it exists, among the buried once it is deleted.
        match entries
            .get_mut(key)
            .filter(|e| !e.tokens.is_empty() && e.uid == me)
        {
            Some(entry) => {
                let name = entry.name.get_or_insert_with(|| Arc::from(key)).clone();
                if !entry.tokens[1..].contains(&t) {
                    entry.tokens.push(t);
                }
                dead.entry(t).or_insert(name);
            }
            None => match buried
                .iter_mut()
                .rev()
                .find(|(k, u, _)| &**k == key && *u == me)
            {
                Some((name, _, tokens)) => {
                    tokens.push(t);
                    dead.entry(t).or_insert_with(|| name.clone());
                }
                None => {
                    let name: Arc<str> = Arc::from(key);
                    dead.entry(t).or_insert_with(|| name.clone());
                    bury(buried, dead, name, me, vec![t]);
                }
            },
        }
    }

    /// The other credentials (among those `exists` says are alive) whose stored token is
    /// `token`: a login they share.
    pub(crate) fn holders_of(
        &self,
        key: &str,
        token: &str,
        exists: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let token = fp(token);
        let inner = lock(&self.inner);
        let mut holders: Vec<String> = inner
            .entries
            .iter()
            .filter(|(k, e)| *k != key && e.tokens.first() == Some(&token) && exists(k))
            .map(|(k, _)| k.clone())
            .collect();
        holders.sort();
        holders
    }

    /// Starts a term (every controller of the process, when it takes the Lease): its census
    /// begins empty.
    pub fn new_term(&self) -> u64 {
        self.terms.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The current term's number (1 before the first `new_term`: no entry is read in it
    /// before it starts).
    pub fn term(&self) -> u64 {
        self.terms.load(Ordering::Relaxed).max(1)
    }

    /// Which other credential rotated `token` out, if one did.
    pub(crate) fn rotated_out_by(&self, key: &str, token: &str) -> Option<String> {
        lock(&self.inner)
            .dead
            .get(&fp(token))
            .filter(|o| &***o != key)
            .map(|o| o.to_string())
    }

    /// Whether credential `key` has been read in `term`.
    pub(crate) fn is_read(&self, key: &str, term: u64) -> bool {
        self.get(key, |e| e.read_in_term == term).unwrap_or(false)
    }

    /// Marks credential `key` read in `term` without claiming anything (its Secret holds no
    /// token to claim).
    pub(crate) fn mark_read(&self, key: &str, term: u64) {
        self.with(key, |e| e.read_in_term = term);
    }

    /// Forgets a deleted credential but its held answer, which still belongs in its Secret
    /// (the sweep stores it). The tokens it rotated out stay known dead, among the last
    /// [`BURIED`] deleted credentials'; its current token is released (a copy elsewhere may
    /// spend it).
    pub(crate) fn forget(&self, key: &str) {
        let mut inner = lock(&self.inner);
        let Inner {
            entries,
            current,
            dead,
            buried,
            copies,
            ..
        } = &mut *inner;
        let Some(mut entry) = entries.remove(key) else {
            return;
        };
        copies.remove(key);
        // (`holding` is unchanged: a held answer stays, in an entry of its own.)
        if let Some(held) = entry.held.take() {
            entries.insert(
                key.to_owned(),
                Entry {
                    held: Some(held),
                    ..Entry::default()
                },
            );
        }
        let tokens = std::mem::take(&mut entry.tokens);
        let Some((stored, spent)) = tokens.split_first() else {
            return;
        };
        if current.get(stored).is_some_and(|o| &**o == key) {
            current.remove(stored);
        }
        let mine: Vec<Fp> = spent
            .iter()
            .filter(|t| dead.get(*t).is_some_and(|o| &**o == key))
            .copied()
            .collect();
        // (Nothing to keep: no place taken, so that churn of credentials that never rotated
        // anything pushes no one's dead tokens out.)
        if !mine.is_empty() {
            let name = entry.name.take().unwrap_or_else(|| Arc::from(key));
            bury(buried, dead, name, entry.uid, mine);
        }
    }

    /// Keeps only the credentials `keep` says are present; returns the keys of those gone
    /// with an answer still held (to store: it belongs in its Secret either way).
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let gone: Vec<String> = lock(&self.inner)
            .entries
            .keys()
            .filter(|k| !keep(k))
            .cloned()
            .collect();
        for k in &gone {
            self.forget(k);
        }
        let mut inner = lock(&self.inner);
        inner.entries.retain(|_, e| !e.is_empty());
        gone.into_iter()
            .filter(|k| inner.entries.get(k).is_some_and(|e| e.held.is_some()))
            .collect()
    }

    /// Every credential this process keeps anything about.
    pub fn known_keys(&self) -> HashSet<String> {
        lock(&self.inner)
            .entries
            .iter()
            .filter(|(_, e)| !e.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The new refresh tokens of the answers held (for the simulator's invariants).
    #[doc(hidden)]
    pub fn held_tokens(&self) -> Vec<SecretString> {
        let inner = lock(&self.inner);
        inner
            .holding
            .iter()
            .filter_map(|k| inner.entries.get(k)?.held.as_ref()?.new_token.clone())
            .collect()
    }

    /// Logs, loudly, every token still held when the process exits.
    pub fn report_lost(&self) {
        for k in self.held_keys() {
            tracing::error!(credential = %k, "exiting with a rotated refresh token that could not be stored: the login is lost and needs a new Phase 1 login");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::{ExposeSecret, SecretString};

    use super::{Memory, lock};
    use crate::secrets::fingerprint;

    const KEY: &str = "video/cam";

    fn fps(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn what_goes_wrong_is_remembered_apart_and_only_while_it_lasts() {
        let m = Memory::default();
        let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        m.with(KEY, |e| e.rare_mut().retry_not_before = Some(at));
        assert_eq!(m.get(KEY, |e| e.retry_not_before()), Some(Some(at)));
        m.with(KEY, |e| e.api_failures = 1);
        m.with(KEY, |e| e.rare_mut().retry_not_before = None);
        assert_eq!(m.get(KEY, |e| e.rare.is_none()), Some(true));
        // Asking about a refusal leaves nothing behind either.
        let refused = m.is_refused(super::Refusal::Server, KEY, "login", None);
        assert!(!refused);
        assert_eq!(m.get(KEY, |e| e.rare.is_none()), Some(true));
    }

    #[test]
    fn the_live_token_is_never_offered_once_it_is_known_dead() {
        let m = Memory::default();
        assert!(m.live(KEY, &[]).is_none());
        m.remember_live(KEY, &SecretString::from("rt-1"));
        m.remember_live(KEY, &SecretString::from("rt-2"));
        assert_eq!(m.live(KEY, &[]).unwrap().expose_secret(), "rt-2");
        assert!(m.live(KEY, &[fingerprint("rt-2")]).is_none());
        assert!(m.live("video/other", &[]).is_none());
        m.forget_live(KEY);
        assert!(m.live(KEY, &[]).is_none());
    }

    #[test]
    fn the_first_credential_to_claim_a_token_keeps_it_from_a_later_one() {
        let m = Memory::default();
        assert_eq!(m.claim("a/x", "", &fps(&["t1"]), 1, true, |_| true), None);
        assert_eq!(
            m.claim("b/y", "", &fps(&["t1"]), 1, true, |_| true),
            Some("a/x".into())
        );
        // Once the first is gone, the copy is the only holder left.
        assert_eq!(m.claim("b/y", "", &fps(&["t1"]), 1, true, |_| false), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_being_spent_binds_copies_until_its_call_can_no_longer_be_answered() {
        let m = Memory::default();
        let t1 = fingerprint("t1");
        let t1 = t1.as_str();
        assert_eq!(m.claim("a/x", "", &[t1.into()], 1, true, |_| true), None);
        assert!(m.intend("a/x", "", t1, Duration::from_secs(300), |_| true));
        // Deleted mid-call: its claim is released, its spend is not.
        m.forget("a/x");
        assert_eq!(
            m.claim("b/y", "", &[t1.into()], 1, true, |_| false),
            Some("a/x".into())
        );
        // The call ended with nothing to come: the copy is the only holder left.
        m.withdraw("a/x", t1);
        assert_eq!(m.claim("b/y", "", &[t1.into()], 1, true, |_| false), None);
        // Another spend, and no answer ever: it binds until its bound, not for ever.
        m.forget("b/y");
        assert!(m.intend("b/y", "", t1, Duration::from_secs(300), |_| true));
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(
            m.claim("c/z", "", &[t1.into()], 1, true, |_| false),
            Some("b/y".into())
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(m.claim("c/z", "", &[t1.into()], 1, true, |_| false), None);
        // A spender deleted between its claim and its spend finds the copy's claim: it
        // spends nothing.
        assert!(!m.intend("b/y", "", t1, Duration::from_secs(300), |_| true));
        assert!(m.intend("c/z", "", t1, Duration::from_secs(300), |_| true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_credential_recreated_under_the_same_name_is_another_for_what_the_old_one_rotated_or_spends()
     {
        let [t0, t1, t2, t3, t4] = ["t0", "t1", "t2", "t3", "t4"].map(fingerprint);
        let one = |t: &String| std::slice::from_ref(t).to_vec();
        let m = Memory::default();
        let deleted = Some("a/x (deleted)".to_owned());
        // The old one rotated t1 out, and is being deleted while spending t2.
        m.claim("a/x", "uid-1", &[t2.clone(), t1.clone()], 1, true, |_| true);
        assert!(m.intend("a/x", "uid-1", &t2, Duration::from_secs(300), |_| true));
        m.forget("a/x");
        // A new one of its name, its Secret holding copies of either: refused, as any copy.
        for token in [&t1, &t2] {
            assert_eq!(
                m.claim("a/x", "uid-2", &one(token), 1, true, |_| true),
                deleted
            );
            assert!(!m.intend("a/x", "uid-2", token, Duration::from_secs(300), |_| true));
        }
        // Its own login is its own.
        assert_eq!(m.claim("a/x", "uid-2", &one(&t0), 1, true, |_| true), None);
        assert!(m.intend("a/x", "uid-2", &t0, Duration::from_secs(300), |_| true));
        // Deleted and recreated before this process saw it gone: the same.
        m.rotated("a/x", "uid-2", &t0);
        assert_eq!(
            m.claim("a/x", "uid-3", &one(&t0), 1, true, |_| true),
            deleted
        );
        // The deleted one's answer stored after it was forgotten and the new one was read
        // (its write-back claims what it rotated out): still not the new one's.
        m.claim("a/x", "uid-4", &one(&t3), 1, true, |_| true);
        assert!(m.intend("a/x", "uid-4", &t3, Duration::from_secs(300), |_| true));
        m.forget("a/x");
        m.rotated("a/x", "uid-4", &t3);
        m.claim("a/x", "uid-4", &[t4.clone(), t3.clone()], 1, true, |_| true);
        assert_eq!(
            m.claim("a/x", "uid-5", &one(&t3), 1, true, |_| true),
            deleted
        );
        // One that left (relabelled out of this shard) and came back is the same one: what
        // it rotated out is its own (a revert of its Secret, not another's token).
        let t5 = fingerprint("t5");
        m.claim("a/x", "uid-5", &[t5.clone(), t4.clone()], 1, true, |_| true);
        m.forget("a/x");
        assert_eq!(m.claim("a/x", "uid-5", &one(&t4), 1, true, |_| true), None);
    }

    #[tokio::test(start_paused = true)]
    async fn another_processs_spend_binds_copies_for_its_bound_and_never_displaces_one_registered()
    {
        let m = Memory::default();
        let t1 = fingerprint("t1");
        let one = || std::slice::from_ref(&t1).to_vec();
        let min = |n: u64| Duration::from_secs(60 * n);
        // B, a copy, was read first in this term and claimed the token.
        assert_eq!(m.claim("b/y", "", &one(), 1, true, |_| true), None);
        // A's Secret says a leader before this one is spending it.
        m.held_elsewhere("a/x", "", &t1, min(5));
        m.held_elsewhere("a/x", "", &t1, min(10));
        assert!(!m.intend("b/y", "", &t1, min(5), |_| true));
        tokio::time::advance(min(9)).await;
        assert_eq!(
            m.claim("b/y", "", &one(), 1, true, |_| true),
            Some("a/x".into())
        );
        // Another credential's registration (two credentials naming one Secret) stands.
        m.held_elsewhere("c/z", "", &t1, min(30));
        tokio::time::advance(min(2)).await;
        assert_eq!(m.claim("b/y", "", &one(), 1, true, |_| true), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_answered_with_another_is_dead_before_it_is_stored_even_once_its_spender_is_deleted()
     {
        let m = Memory::default();
        let (t1, t2) = (fingerprint("t1"), fingerprint("t2"));
        for spender in ["a/x", "b/y"] {
            m.claim(spender, "", std::slice::from_ref(&t1), 1, true, |_| true);
        }
        assert!(m.intend("a/x", "", &t1, Duration::from_secs(300), |_| true));
        // Alive when the answer comes; deleted when it comes: both bury the token dead.
        m.rotated("a/x", "", &t1);
        m.forget("a/x");
        m.forget("b/y");
        let refused = |token: &String, spender: &str| {
            assert_eq!(
                m.claim("c/z", "", std::slice::from_ref(token), 1, true, |_| false),
                Some(spender.into())
            );
            assert_eq!(m.rotated_out_by("c/z", token), Some(spender.into()));
        };
        tokio::time::advance(Duration::from_secs(3600)).await;
        refused(&t1, "a/x");
        m.claim("b/y", "", std::slice::from_ref(&t2), 1, true, |_| true);
        assert!(m.intend("b/y", "", &t2, Duration::from_secs(300), |_| true));
        m.forget("b/y");
        // Meanwhile a tenant churns more credentials, each with a dead token, than deleted
        // ones' are kept: the answer's token is known dead all the same.
        for i in 0..super::BURIED + 10 {
            let (new, old) = (fingerprint(&format!("n{i}")), fingerprint(&format!("o{i}")));
            m.claim(&format!("churn/c{i}"), "", &[new, old], 1, true, |_| true);
            m.forget(&format!("churn/c{i}"));
        }
        m.rotated("b/y", "", &t2);
        tokio::time::advance(Duration::from_secs(3600)).await;
        refused(&t2, "b/y");
        assert!(lock(&m.inner).intents.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_spend_never_cuts_an_earlier_one_short_and_a_gone_claimant_binds_nothing() {
        let m = Memory::default();
        let t1 = fingerprint("t1");
        m.claim("a/x", "u1", std::slice::from_ref(&t1), 1, true, |_| true);
        // A revocation (or refresh) whose answer may come for 10 minutes, then another
        // attempt bounded by 1 minute: copies stay bound for the 10, though A is being
        // deleted (its claim alone binds no more).
        assert!(m.intend("a/x", "u1", &t1, Duration::from_secs(600), |_| true));
        assert!(m.intend("a/x", "u1", &t1, Duration::from_secs(60), |_| true));
        tokio::time::advance(Duration::from_secs(300)).await;
        let a_deleted = |k: &str| k != "a/x";
        assert_eq!(
            m.claim("b/y", "", std::slice::from_ref(&t1), 1, true, a_deleted),
            Some("a/x".into())
        );
        tokio::time::advance(Duration::from_secs(301)).await;
        m.withdraw("a/x", &t1);
        // A's claim binds only while it exists.
        assert!(!m.intend("c/z", "", &t1, Duration::from_secs(60), |_| true));
        assert!(m.intend("c/z", "", &t1, Duration::from_secs(60), a_deleted));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_a_held_answer_rotated_stays_dead_when_the_secret_no_longer_lists_it_until_the_answer_goes()
     {
        let m = Memory::default();
        let (t1, n1) = (fingerprint("t1"), fingerprint("n1"));
        m.claim("a/x", "", std::slice::from_ref(&t1), 1, true, |_| true);
        assert!(m.intend("a/x", "", &t1, Duration::from_secs(300), |_| true));
        m.rotated("a/x", "", &t1);
        m.put(
            "a/x",
            super::super::held::Held {
                spent_fingerprint: t1.clone(),
                new_token: Some(SecretString::from("t2")),
                grant: None,
                received_at: jiff::Timestamp::now(),
                spent: Vec::new(),
                namespace: "a".into(),
                secret: "x-refresh".into(),
                key: "refresh_token".into(),
                credential: "x".into(),
            },
        );
        // A person logs in again into A's Secret before the answer is stored: its next read
        // lists only the new login, and B holds a copy of t1.
        assert_eq!(
            m.claim("a/x", "", std::slice::from_ref(&n1), 1, true, |_| true),
            None
        );
        tokio::time::advance(Duration::from_secs(3600)).await;
        let copy = |m: &Memory| m.claim("b/y", "", std::slice::from_ref(&t1), 1, true, |_| true);
        assert_eq!(copy(&m), Some("a/x".into()), "t1 is dead while t2 is held");
        assert_eq!(copy(&m), Some("a/x".into()), "and stays so at each read");
        assert_eq!(
            m.claim("a/x", "", std::slice::from_ref(&n1), 1, true, |_| true),
            None
        );
        assert_eq!(copy(&m), Some("a/x".into()), "A read again: still dead");
        // Meanwhile the tenant rewrites the Secret's list with made-up fingerprints, again
        // and again: only the held answer's own stay, so nothing grows.
        for round in 0..3 {
            let list: Vec<String> = std::iter::once(n1.clone())
                .chain((0..64).map(|i| fingerprint(&format!("fake{round}-{i}"))))
                .collect();
            assert_eq!(m.claim("a/x", "", &list, 1, true, |_| true), None);
        }
        assert_eq!(lock(&m.inner).entries["a/x"].tokens.len(), 1 + 64 + 1);
        assert_eq!(m.rotated_out_by("b/y", &fingerprint("fake0-0")), None);
        assert_eq!(copy(&m), Some("a/x".into()));
        // The held answer goes (dropped for the new login): nobody holds t1's chain, and
        // the index forgets it with A's next read.
        assert!(m.take_if("a/x", |_| true).is_some());
        m.claim("a/x", "", std::slice::from_ref(&n1), 1, true, |_| true);
        assert_eq!(m.rotated_out_by("b/y", &t1), None);
    }

    #[test]
    fn a_token_one_credential_rotated_out_is_never_spent_by_another_whoever_was_read_first() {
        let m = Memory::default();
        // After a restart the copy's credential is read first and claims the dead token...
        assert_eq!(m.claim("b/y", "", &fps(&["t1"]), 1, true, |_| true), None);
        // ...then the credential that rotated it out is read: the token is dead.
        assert_eq!(
            m.claim("a/x", "", &fps(&["t2", "t1"]), 1, true, |_| true),
            None
        );
        assert_eq!(
            m.claim("b/y", "", &fps(&["t1"]), 1, true, |_| true),
            Some("a/x".into())
        );
        // Even once that credential is gone.
        m.forget("a/x");
        assert_eq!(
            m.claim("b/y", "", &fps(&["t1"]), 1, true, |_| false),
            Some("a/x".into())
        );
    }

    #[test]
    fn the_index_forgets_what_falls_off_a_credentials_spent_list() {
        let m = Memory::default();
        m.claim("a/x", "", &fps(&["t2", "t1"]), 1, true, |_| true);
        m.claim("a/x", "", &fps(&["t3", "t2"]), 1, true, |_| true);
        // t1 is no longer on A's list: nobody knows it dead any more, by design.
        assert_eq!(m.claim("b/y", "", &fps(&["t1"]), 1, true, |_| true), None);
        assert_eq!(
            m.claim("c/z", "", &fps(&["t2"]), 1, true, |_| true),
            Some("a/x".into())
        );
        let inner = super::lock(&m.inner);
        assert_eq!(inner.dead.len(), 1);
    }

    #[test]
    fn a_secret_set_back_to_a_dead_token_keeps_what_its_newer_list_held() {
        let m = Memory::default();
        m.claim("a/x", "", &fps(&["t3", "t2", "t1"]), 1, true, |_| true);
        // A backup from before t2 and t3: the copy of t2 elsewhere is still dead.
        m.claim("a/x", "", &fps(&["t1"]), 1, true, |_| true);
        assert_eq!(
            m.claim("c/z", "", &fps(&["t2"]), 1, true, |_| true),
            Some("a/x".into())
        );
    }

    #[test]
    fn a_credential_back_under_its_name_forgets_its_old_lists_like_any_other() {
        let m = Memory::default();
        m.claim("a/x", "", &fps(&["t2", "t1"]), 1, true, |_| true);
        m.forget("a/x");
        m.claim("a/x", "", &fps(&["u1"]), 1, true, |_| true);
        assert!(super::lock(&m.inner).dead.is_empty());
    }

    #[test]
    fn the_copies_of_a_token_are_the_credentials_refused_it_while_they_hold_it() {
        let m = Memory::default();
        assert_eq!(m.claim("a/x", "", &fps(&["t1"]), 1, true, |_| true), None);
        assert_eq!(
            m.claim("b/y", "", &fps(&["t1"]), 1, true, |_| true)
                .as_deref(),
            Some("a/x")
        );
        assert_eq!(m.copies_of(&fps(&["t1"])[0]), ["b/y"]);
        // b gets a login of its own: no longer a copy of t1.
        assert_eq!(m.claim("b/y", "", &fps(&["t9"]), 1, true, |_| true), None);
        assert!(m.copies_of(&fps(&["t1"])[0]).is_empty());
        assert_eq!(
            m.claim("c/z", "", &fps(&["t1"]), 1, true, |_| true)
                .as_deref(),
            Some("a/x")
        );
        m.forget("c/z");
        assert!(m.copies_of(&fps(&["t1"])[0]).is_empty());
    }

    #[test]
    fn every_holder_of_a_stored_token_is_known_whoever_claimed_it() {
        let m = Memory::default();
        m.claim("a/x", "", &fps(&["t2", "t1"]), 1, true, |_| true);
        m.claim("b/y", "", &fps(&["t2"]), 1, true, |_| true);
        assert_eq!(m.holders_of("a/x", "t2", |_| true), ["b/y"]);
        assert_eq!(m.holders_of("b/y", "t2", |_| true), ["a/x"]);
        assert!(m.holders_of("a/x", "t2", |k| k != "b/y").is_empty());
    }

    #[test]
    fn a_term_knows_a_credential_only_once_read_in_that_term() {
        let m = Memory::default();
        let first = m.new_term();
        m.claim("a/x", "", &fps(&["t1"]), first, true, |_| true);
        assert!(m.is_read("a/x", first) && !m.is_read("b/y", first));
        m.mark_read("b/y", first);
        assert!(m.is_read("b/y", first));
        let second = m.new_term();
        assert!(!m.is_read("a/x", second));
    }

    #[test]
    fn the_sweep_keeps_nothing_of_a_gone_credential_but_its_held_answer() {
        let m = Memory::default();
        m.remember_live(KEY, &SecretString::from("rt-1"));
        m.with(KEY, |e| e.api_failures = 3);
        m.with("video/lobby", |e| e.api_failures = 1);
        assert!(m.retain(|k| k == "video/lobby").is_empty());
        assert_eq!(
            m.known_keys().into_iter().collect::<Vec<_>>(),
            ["video/lobby"]
        );
    }
}
