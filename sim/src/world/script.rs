//! Scripted runs: a fixed sequence of events instead of the seeded driver's choices, for
//! the named regression tests (issue 19's findings, the old model's counterexamples).
//! Nothing fails by chance (`Config::faults` and `people` are off); what happens is what
//! the script says, and between its events everything that can happen at once does
//! (`Ev::Quiet`): requests land, watch events arrive, due reconciles run, token calls are
//! answered, unless the script holds them. The invariants are checked after every action,
//! as in a seeded run; `Ev::Expect` adds what the scenario's user would observe.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Due, Sim, Violation, token_in};
use crate::api::{self, Key};
use crate::clock;
use crate::hub;
use crate::world::Config;

/// Actions one `Ev::Quiet` may take before the world counts as never quiet: a reconcile
/// that retries at once, forever, never lets it rest.
const QUIET_LIMIT: usize = 2_000;

/// What the script holds back or meddles with.
#[derive(Default)]
pub struct Stage {
    /// Credentials created at boot (the first n); the others wait for `Ev::Create`.
    pub(crate) created_at_boot: Option<usize>,
    /// Token calls wait at the server until `Ev::AnswerCalls`.
    hold_calls: bool,
    /// Credentials (`ns/name`) whose reconciles do not start.
    held: BTreeSet<String>,
    /// Secrets another writer writes just before each of the operator's writes to them.
    meddled: BTreeSet<Key>,
    /// Writes of a process (slot) to a Secret that wait until `ReleaseWrites`.
    held_writes: BTreeSet<(usize, Key)>,
    /// The next write of any process to each Secret fails (500) before it is applied.
    fail_next: BTreeSet<Key>,
    /// The operator's writes (PUT, PATCH, POST) to each Secret, with when they reached
    /// the API server.
    pub writes: Vec<(Key, tokio::time::Instant)>,
    /// The operator's reads (GET) of each Secret, in the order they reached it.
    pub reads: Vec<Key>,
}

/// One scripted event. Credentials are named by their index `i` (`cam{i}`, in namespace
/// `alpha` for even `i`, `beta` for odd; client `other` when `i % 3 == 2`, else `acme`).
#[derive(Clone, Debug)]
pub enum Ev {
    /// Everything that can happen without time passing happens, until nothing can.
    Quiet,
    /// `secs` seconds pass, everything due meanwhile happening when due (and the Lease
    /// renewed by its holder).
    Pass(u64),
    /// Token calls from now on wait at the server, and time passes until one does (at
    /// most `secs` seconds).
    HoldCallsUntilOne(u64),
    /// Token calls from now on wait at the server.
    HoldCalls,
    /// Token calls held are answered, and no longer held; then `Quiet`.
    AnswerCalls,
    /// Credential `i` is not reconciled until `Release(i)` (another is, first).
    Hold(usize),
    Release(usize),
    /// Credential `i` is created (`revokeOnDelete`, an explicit target name).
    Create {
        i: usize,
        revoke_on_delete: bool,
        target: Option<&'static str>,
    },
    Delete(usize),
    /// A person sets credential `i`'s `spec.suspend`.
    Suspend(usize, bool),
    /// kube-apiserver answers every request 503 (true) or again as usual (false).
    Outage(bool),
    /// The token endpoint's answers rotate but carry no access token (true), or are whole
    /// again (false).
    Malformed(bool),
    /// A person copies the token credential `from`'s Secret holds now into `to`'s.
    Copy {
        from: usize,
        to: usize,
    },
    /// A person copies the first token stored in `from`'s Secret (rotated out since, if
    /// `from` refreshed) into `to`'s.
    CopyFirst {
        from: usize,
        to: usize,
    },
    /// A person stores a new login in credential `i`'s Secret.
    NewLogin(usize),
    /// An application's Secret `name` in credential `i`'s namespace, opted in to `i` as
    /// its target (the adopt annotation), with data of its own.
    AppSecret(usize, &'static str),
    /// A person deletes Secret `name` of credential `i`'s namespace.
    DeleteSecret(usize, &'static str),
    /// While on, another writer writes Secret `name` (credential `i`'s namespace) just
    /// before each of the operator's writes to it reaches the API server.
    Meddle(usize, &'static str, bool),
    /// The next write of the operator to Secret `name` (credential `i`'s namespace) fails
    /// before it is applied (a 500).
    FailNextWrite(usize, &'static str),
    /// Process `p`'s writes to Secret `name` (credential `i`'s namespace) wait in flight.
    HoldWrites(usize, usize, &'static str),
    /// ... and land, in order; then `Quiet`.
    ReleaseWrites(usize, usize, &'static str),
    /// A sync tool puts back, value only, the token of serial `serial` of the login
    /// credential `i`'s Secret holds (0: the person's first; rotated out since).
    PutBack {
        i: usize,
        serial: u32,
    },
    /// The Lease moves to process `p` (the old holder notices at once).
    LeaseTo(usize),
    /// Process `p`'s clock runs `ms` milliseconds ahead (negative: behind).
    Skew(usize, i64),
    /// Process `p` stops cleanly (as on a rolling update: its term ends, what it holds is
    /// stored) and is gone.
    Stop(usize),
    /// Process `p` crashes: memory and requests in flight lost.
    Crash(usize),
    /// Process `p` starts afresh (with empty memory).
    Start(usize),
    /// What the scenario's user observes; a violation (with its words) if not.
    Expect(&'static str, fn(&Sim) -> bool),
}

impl Ev {
    /// Credential `i` created with nothing special.
    pub fn create(i: usize) -> Ev {
        Ev::Create {
            i,
            revoke_on_delete: false,
            target: None,
        }
    }
}

/// A scripted world: `creds` credentials each with its own login, the first `created` of
/// them created at boot, `procs` processes (a Lease when more than one), clients that
/// rotate their refresh tokens or not.
#[derive(Clone, Copy, Debug)]
pub struct World {
    pub creds: usize,
    pub created: usize,
    pub procs: usize,
    pub rotating: bool,
    pub revoke_on_reuse: bool,
}

impl World {
    pub fn of(creds: usize) -> World {
        World {
            creds,
            created: creds,
            procs: 1,
            rotating: true,
            revoke_on_reuse: true,
        }
    }
}

/// Runs `script` in `world`; the first violation (an invariant, or an `Expect`), if any.
pub fn play(world: World, script: &[Ev]) -> Result<Sim, Violation> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let cfg = Config {
        procs: world.procs,
        lease: world.procs > 1,
        creds: world.creds,
        rotating: world.rotating,
        people: false,
        faults: false,
        revoke_on_reuse: world.revoke_on_reuse,
        call_slots: None,
    };
    let mut sim = runtime.block_on(async move {
        let mut sim = Sim::new(0, cfg);
        sim.script.created_at_boot = Some(world.created);
        sim.api.record = true;
        sim.boot().await;
        sim.quiet().await;
        for ev in script {
            if sim.violation.is_some() {
                break;
            }
            sim.tally.steps += 1;
            sim.note(format!("script: {ev:?}"));
            sim.play(ev).await;
            sim.check();
        }
        sim
    });
    drop(runtime);
    match sim.violation.take() {
        Some(v) => Err(v),
        None => Ok(sim),
    }
}

impl Sim {
    async fn play(&mut self, ev: &Ev) {
        match ev {
            Ev::Quiet => self.quiet().await,
            Ev::Pass(secs) => self.pass_scripted(Duration::from_secs(*secs), None).await,
            Ev::HoldCalls => self.script.hold_calls = true,
            Ev::HoldCallsUntilOne(secs) => {
                self.script.hold_calls = true;
                let waiting: fn(&Sim) -> bool = |s| s.calls_waiting() > 0;
                self.pass_scripted(Duration::from_secs(*secs), Some(waiting))
                    .await;
                if !waiting(self) {
                    self.fail(format!("script: no token call within {secs} s"));
                }
            }
            Ev::AnswerCalls => {
                self.script.hold_calls = false;
                self.quiet().await;
            }
            Ev::Hold(i) => {
                let k = self.cred_key(*i);
                self.script.held.insert(k);
            }
            Ev::Release(i) => {
                let k = self.cred_key(*i);
                self.script.held.remove(&k);
                self.quiet().await;
            }
            Ev::Create {
                i,
                revoke_on_delete,
                target,
            } => {
                self.create_credential(*i, *revoke_on_delete);
                if let Some(name) = target {
                    let c = self.creds[*i].clone();
                    let key = self.key("eagleeyecredentials", &c.ns, &c.name);
                    let mut cr = self.api.objects[&key].clone();
                    cr["spec"]["target"] = json!({"name": name});
                    self.api.put(key, cr);
                }
                self.quiet().await;
            }
            Ev::Delete(i) => {
                let c = self.creds[*i].clone();
                let key = self.key("eagleeyecredentials", &c.ns, &c.name);
                self.api.delete(&key, clock::now());
                self.quiet().await;
            }
            Ev::Outage(on) => {
                self.outage = *on;
                self.quiet().await;
            }
            Ev::Malformed(on) => self.eagle.malformed = *on,
            Ev::Suspend(i, on) => {
                let c = self.creds[*i].clone();
                let key = self.key("eagleeyecredentials", &c.ns, &c.name);
                if let Some(mut cr) = self.api.objects.get(&key).cloned() {
                    cr["spec"]["suspend"] = json!(on);
                    let g = cr["metadata"]["generation"].as_i64().unwrap_or(1);
                    cr["metadata"]["generation"] = json!(g + 1);
                    self.api.put(key, cr);
                }
                self.quiet().await;
            }
            Ev::Copy { from, to } => {
                let src = self.api.objects.get(&self.refresh_key(*from)).cloned();
                self.copy_data(src, *to);
                self.quiet().await;
            }
            Ev::CopyFirst { from, to } => {
                let src = self.creds[*from].history.first().cloned();
                self.copy_data(src, *to);
                self.quiet().await;
            }
            Ev::NewLogin(i) => {
                self.new_login(*i, "");
                self.quiet().await;
            }
            Ev::AppSecret(i, name) => {
                let c = self.creds[*i].clone();
                let secret = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {
                        "name": name,
                        "annotations": {eagle_eye_operator::target::ADOPT: c.name},
                    },
                    "data": {"password": api::b64(b"hunter2")},
                });
                self.api.put(self.key("secrets", &c.ns, name), secret);
                self.quiet().await;
            }
            Ev::DeleteSecret(i, name) => {
                let ns = self.creds[*i].ns.clone();
                self.api
                    .delete(&self.key("secrets", &ns, name), clock::now());
                self.quiet().await;
            }
            Ev::Meddle(i, name, on) => {
                let key = self.key("secrets", &self.creds[*i].ns.clone(), name);
                match on {
                    true => self.script.meddled.insert(key),
                    false => self.script.meddled.remove(&key),
                };
            }
            Ev::FailNextWrite(i, name) => {
                let key = self.key("secrets", &self.creds[*i].ns.clone(), name);
                self.script.fail_next.insert(key);
            }
            Ev::HoldWrites(p, i, name) => {
                let key = self.key("secrets", &self.creds[*i].ns.clone(), name);
                self.script.held_writes.insert((*p, key));
            }
            Ev::ReleaseWrites(p, i, name) => {
                let key = self.key("secrets", &self.creds[*i].ns.clone(), name);
                self.script.held_writes.remove(&(*p, key));
                self.quiet().await;
            }
            Ev::PutBack { i, serial } => {
                let key = self.refresh_key(*i);
                let token = self.login_stored(*i).and_then(|l| {
                    self.eagle
                        .tokens
                        .iter()
                        .find(|(_, t)| t.login == l && t.serial == *serial)
                        .map(|(k, _)| k.clone())
                });
                let (Some(token), Some(mut secret)) = (token, self.api.objects.get(&key).cloned())
                else {
                    self.fail("script: nothing to put back".into());
                    return;
                };
                secret["data"]["refresh_token"] = json!(api::b64(token.as_bytes()));
                self.api.put(key, secret);
                self.quiet().await;
            }
            Ev::LeaseTo(to) => {
                let from = self.lease_holder;
                self.put_lease(Some(*to));
                if let Some(f) = from.filter(|f| f != to && self.procs[*f].alive) {
                    self.end_term(f);
                }
                if self.procs[*to].term.is_none() {
                    self.start_term(*to);
                }
                self.quiet().await;
            }
            Ev::Skew(p, ms) => clock::set_skew(*p, *ms),
            Ev::Stop(p) => {
                self.end_term(*p);
                self.quiet().await;
                self.kill(*p, false, false);
            }
            Ev::Crash(p) => self.crash(*p, false),
            Ev::Start(p) => {
                self.spawn_proc(*p);
                self.quiet().await;
            }
            Ev::Expect(what, observed) => {
                if !observed(self) {
                    self.fail(format!("expected: {what}"));
                }
            }
        }
    }

    /// Everything that can happen now happens, one action at a time, invariants checked
    /// after each.
    pub(crate) async fn quiet(&mut self) {
        self.settle().await;
        for _ in 0..QUIET_LIMIT {
            if self.violation.is_some() {
                return;
            }
            if !self.quiet_action().await {
                return;
            }
            self.settle().await;
            self.check();
        }
        self.fail(format!(
            "never quiet: {QUIET_LIMIT} actions without rest, time not passing"
        ));
    }

    /// One thing that can happen now, in a fixed order of preference; false if none can.
    async fn quiet_action(&mut self) -> bool {
        self.tally.steps += 1;
        let (napi, ntoken) = {
            let p = hub::lock(&self.hub);
            (p.api.len(), p.token.len())
        };
        if napi > 0 {
            self.sort_pending();
            let next = {
                let pending = hub::lock(&self.hub);
                pending.api.iter().position(|r| {
                    !(is_write(&r.method)
                        && secret_key(&r.path)
                            .is_some_and(|k| self.script.held_writes.contains(&(r.proc, k))))
                })
            };
            if let Some(i) = next {
                self.api_request(i).await;
                return true;
            }
        }
        if ntoken > 0 && !self.script.hold_calls {
            self.sort_pending();
            let gone = hub::lock(&self.hub).token[0].reply.is_closed();
            if gone {
                // Its client gave up at its deadline: the server is taken to act on a
                // request, if at all, before then (the seeded driver decides there).
                let r = hub::lock(&self.hub).token.remove(0);
                self.note(format!("p{}'s token call: its client is gone", r.proc));
            } else {
                self.token_request(0);
            }
            return true;
        }
        if let Some(p) = (0..self.procs.len()).find(|&p| {
            self.procs[p]
                .term
                .as_ref()
                .is_some_and(|t| !t.watch.is_empty())
        }) {
            self.note(format!("p{p} watch event"));
            self.deliver(p);
            return true;
        }
        let now = tokio::time::Instant::now();
        let due = self.procs.iter().enumerate().find_map(|(p, proc)| {
            let t = proc.term.as_ref().filter(|t| !t.stopping)?;
            t.due.iter().find_map(|(k, Due::At(at))| {
                (*at <= now && !t.running.contains_key(k) && !self.script.held.contains(k))
                    .then(|| (p, k.clone()))
            })
        });
        if let Some((p, k)) = due {
            self.note(format!("p{p} reconciles {k}"));
            self.start_reconcile(p, k);
            return true;
        }
        self.tally.steps -= 1;
        false
    }

    /// Time passes to `wait` from now (or until `until` holds), stopping at whatever falls
    /// due meanwhile.
    async fn pass_scripted(&mut self, wait: Duration, until: Option<fn(&Sim) -> bool>) {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let now = tokio::time::Instant::now();
            if now >= end || self.violation.is_some() || until.is_some_and(|u| u(self)) {
                return;
            }
            let next = self
                .procs
                .iter()
                .filter_map(|p| p.term.as_ref())
                .flat_map(|t| {
                    t.due
                        .iter()
                        .filter(|(k, _)| !self.script.held.contains(*k))
                        .map(|(_, Due::At(at))| *at)
                })
                .filter(|at| *at > now)
                .min();
            let mut to = end.min(now + Duration::from_secs(5));
            if let Some(at) = next {
                to = to.min(at);
            }
            tokio::time::sleep_until(to).await;
            if let Some(h) = self.lease_holder
                && self.procs[h].alive
                && !self.outage
            {
                self.put_lease(Some(h));
            }
            self.collect().await;
            self.quiet().await;
        }
    }

    /// Called for every API request the driver serves: the meddler writes first, and the
    /// operator's writes to Secrets are logged.
    /// Whether the request must fail (`FailNextWrite`).
    pub(crate) fn script_sees(&mut self, method: &http::Method, path: &str) -> bool {
        let Some(key) = secret_key(path) else {
            return false;
        };
        if !is_write(method) {
            if self.api.record && *method == http::Method::GET {
                self.script.reads.push(key);
            }
            return false;
        }
        if self.script.fail_next.remove(&key) {
            return true;
        }
        if self.script.meddled.contains(&key)
            && let Some(o) = self.api.objects.get(&key).cloned()
        {
            self.note(format!("another writer writes {}/{}", key.ns, key.name));
            self.api.put(key.clone(), o);
        }
        if self.api.record {
            self.script.writes.push((key, tokio::time::Instant::now()));
        }
        false
    }

    fn copy_data(&mut self, src: Option<Value>, to: usize) {
        let dkey = self.refresh_key(to);
        let (Some(src), Some(mut dst)) = (src, self.api.objects.get(&dkey).cloned()) else {
            self.fail("script: nothing to copy".into());
            return;
        };
        if let Some(l) = token_in(&dst).and_then(|t| self.eagle.login_of(&t)) {
            self.superseded.insert(l);
        }
        dst["data"] = src["data"].clone();
        let written = self.api.put(dkey, dst);
        self.person_copied(&written);
        self.creds[to].history.push(written);
    }

    fn refresh_key(&self, i: usize) -> Key {
        let c = &self.creds[i];
        self.key("secrets", &c.ns, &Self::refresh_secret_name(c))
    }

    fn cred_key(&self, i: usize) -> String {
        format!("{}/{}", self.creds[i].ns, self.creds[i].name)
    }

    // -----------------------------------------------------------------------------------
    // What a user observes, for `Ev::Expect`.

    /// The reason of credential `i`'s `Ready` condition.
    pub fn reason(&self, i: usize) -> String {
        self.ready_field(i, "reason")
    }

    /// The message of credential `i`'s `Ready` condition.
    pub fn message(&self, i: usize) -> String {
        self.ready_field(i, "message")
    }

    /// One field of credential `i`'s `Ready` condition (empty without one).
    fn ready_field(&self, i: usize, field: &str) -> String {
        let c = &self.creds[i];
        self.api
            .get("eagleeyecredentials", &c.ns, &c.name)
            .and_then(|o| o.pointer("/status/conditions")?.as_array().cloned())
            .and_then(|cs| cs.into_iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c[field].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The refresh token in credential `i`'s Secret.
    pub fn stored(&self, i: usize) -> Option<String> {
        self.api
            .objects
            .get(&self.refresh_key(i))
            .and_then(token_in)
    }

    /// Whether the token in credential `i`'s Secret works at the server.
    pub fn works(&self, i: usize) -> bool {
        self.stored(i).is_some_and(|t| self.eagle.is_live(&t))
    }

    /// Rotated-out refresh tokens the server has seen again.
    pub fn reuses(&self) -> u64 {
        self.eagle.reuses
    }

    /// Revocations that named a refresh token the server had already replaced.
    pub fn revokes_of_replaced(&self) -> u64 {
        self.eagle.revokes_of_replaced
    }

    /// Logins revoked at `/oauth2/revoke`.
    pub fn revoked(&self) -> usize {
        self.eagle
            .logins
            .iter()
            .filter(|l| l.died == Some("revoked"))
            .count()
    }

    /// Refreshes the server served.
    pub fn refreshes(&self) -> u64 {
        self.eagle.refreshes
    }

    /// Secret `name` of credential `i`'s namespace, as the API server holds it.
    pub fn secret(&self, i: usize, name: &str) -> Option<&Value> {
        self.api.get("secrets", &self.creds[i].ns, name)
    }

    /// Whether credential `i` exists (not deleted, or held by its finalizer).
    pub fn exists(&self, i: usize) -> bool {
        let c = &self.creds[i];
        self.api
            .get("eagleeyecredentials", &c.ns, &c.name)
            .is_some()
    }

    /// The uid of credential `i`.
    pub fn uid(&self, i: usize) -> Option<String> {
        let c = &self.creds[i];
        self.api
            .get("eagleeyecredentials", &c.ns, &c.name)?
            .pointer("/metadata/uid")?
            .as_str()
            .map(str::to_owned)
    }

    /// Token calls waiting at the server.
    pub fn calls_waiting(&self) -> usize {
        hub::lock(&self.hub).token.len()
    }

    /// The login whose access token Secret `name` of credential `i`'s namespace publishes.
    pub fn published_login(&self, i: usize, name: &str) -> Option<usize> {
        let raw = api::unb64(
            self.secret(i, name)?
                .pointer("/data/access_token")?
                .as_str()?,
        );
        String::from_utf8(raw).ok()?.get(1..6)?.parse().ok()
    }

    /// The login credential `i`'s Secret holds a token of.
    pub fn login_stored(&self, i: usize) -> Option<usize> {
        self.eagle.login_of(&self.stored(i)?)
    }

    /// The most writes the operator made to Secret `name` (credential `i`'s namespace)
    /// within any one second.
    pub fn busiest_second(&self, i: usize, name: &str) -> usize {
        let writes = self.writes_to(i, name);
        (0..writes.len())
            .map(|a| {
                writes[a..]
                    .iter()
                    .take_while(|t| **t - writes[a] < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The operator's writes to Secret `name` of credential `i`'s namespace, as instants.
    pub fn writes_to(&self, i: usize, name: &str) -> Vec<tokio::time::Instant> {
        let ns = &self.creds[i].ns;
        self.script
            .writes
            .iter()
            .filter(|(k, _)| &k.ns == ns && k.name == name)
            .map(|(_, at)| *at)
            .collect()
    }

    /// The operator's reads of Secret `name` of credential `i`'s namespace.
    pub fn reads_of(&self, i: usize, name: &str) -> usize {
        let ns = &self.creds[i].ns;
        let read = |k: &&Key| &k.ns == ns && k.name == name;
        self.script.reads.iter().filter(read).count()
    }

    /// Every version of Secret `name` of credential `i`'s namespace ever written.
    pub fn versions(&self, i: usize, name: &str) -> Vec<Value> {
        let ns = &self.creds[i].ns;
        self.api
            .log
            .iter()
            .filter(|(k, _)| k.resource == "secrets" && &k.ns == ns && k.name == name)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }
}

fn is_write(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::PUT | http::Method::PATCH | http::Method::POST
    )
}

/// The Secret a request path names, if it names one.
fn secret_key(path: &str) -> Option<Key> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "secrets", name, ..] => Some(Key {
            resource: "secrets",
            ns: (*ns).to_owned(),
            name: (*name).to_owned(),
        }),
        _ => None,
    }
}
