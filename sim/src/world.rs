//! The simulated cluster: the API server, the token endpoint, the people, and 1–3
//! operator processes running the production `reconcile`. The driver (`Sim::step`) does
//! one thing per step, chosen by the seeded RNG, then lets every task run until it blocks
//! on simulated I/O, then checks the invariants.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use eagle_eye_operator::controller::{
    self, Context, Leadership, LeanCredential, Memory, Settings, Shared, StoredCredential,
};
use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_operator::status::Lifetimes;
use eagle_eye_operator::token::{
    AuthPolicy, EAGLE_EYE_AUTH_HOSTS, TokenClient, TokenClientOptions, transport,
};
use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMetaExt;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::api::{self, Api, Change, Key};
use crate::clock;
use crate::eagle::{Did, Eagle};
use crate::hub::{self, Hub, Pending};

pub mod script;

/// `TokenClient::answer_limit` with the defaults (10 s connect + 300 s answer).
pub const ANSWER_LIMIT: Duration = Duration::from_secs(310);
const LEASE_SECONDS: i32 = 15;
const LEASE_NAME: &str = "eagle-eye-operator";
const AUTH_URL: &str = "https://auth.eagleeyenetworks.com";
const START: &str = "2026-11-30T10:00:00Z";
const NAMESPACES: [&str; 2] = ["alpha", "beta"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub procs: usize,
    /// Leader election with a Lease (else `--no-leader-election`, one process).
    pub lease: bool,
    pub creds: usize,
    /// The clients rotate refresh tokens (else: permanent tokens).
    pub rotating: bool,
    /// People and tools act (reverts, new logins, copies, deletes...).
    pub people: bool,
    /// Crashes, lost answers, 5xx, outages.
    pub faults: bool,
    /// RFC 9700: a reuse revokes the whole login.
    pub revoke_on_reuse: bool,
    /// Token calls in flight at once (`--max-concurrent-refreshes`), when not the default:
    /// with one, credentials due together wait for it, in their seat for a moment and then
    /// parked (`Parked::claim_within`).
    pub call_slots: Option<usize>,
}

impl Config {
    /// The configuration seed `seed` runs with (each seed its own mix).
    pub fn for_seed(seed: u64) -> Config {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_c0f1);
        let procs = rng.random_range(1..=3);
        Config {
            procs,
            lease: procs > 1 || rng.random_bool(0.5),
            creds: rng.random_range(1..=4),
            rotating: rng.random_bool(0.8),
            people: true,
            faults: true,
            revoke_on_reuse: rng.random_bool(0.5),
            // Every ninth seed: none of the regression seeds, so their traces stay theirs.
            call_slots: seed.is_multiple_of(9).then_some(1),
        }
    }
}

/// What the run counted.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub steps: u64,
    pub reconciles: u64,
    pub token_calls: u64,
    pub refreshes: u64,
    pub crashes: u64,
    pub reuses: u64,
    pub api_requests: u64,
    pub events: u64,
    pub lease_moves: u64,
    pub people: u64,
}

#[derive(Debug)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub what: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "INVARIANT VIOLATED at step {} of seed {}: {}",
            self.step, self.seed, self.what
        )?;
        writeln!(f, "last {} steps:", self.trace.len())?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        write!(
            f,
            "replay: cargo run --profile sim -p eagle-eye-sim --bin simulate -- --seed {} --steps {}",
            self.seed,
            self.step + 1
        )
    }
}

/// When a credential is next looked at by a process (kube-runtime's scheduler, done here).
#[derive(Clone, Copy, Debug)]
enum Due {
    At(tokio::time::Instant),
}

struct Done {
    key: String,
    requeue: Option<Duration>,
    panicked: bool,
}

impl Term {
    /// One event of the credential watch, into the store and the index as the operator's
    /// stream puts it.
    fn credential_event(&mut self, event: watcher::Event<EagleEyeCredential>) {
        self.index.on_event(&event);
        self.writer
            .apply_watcher_event(&controller::stored_event(event));
    }
}

/// A leadership term: the controllers of one process, from the Lease won to lost.
struct Term {
    ctx: Arc<Context>,
    writer: Writer<StoredCredential>,
    /// The credentials by the Secrets they name, fed as the operator's watch feeds it.
    index: Arc<controller::Index>,
    /// What a Secret event means, decided as the operator decides it.
    secret_news: controller::SecretNews,
    store: Store<StoredCredential>,
    due: BTreeMap<String, Due>,
    /// Reconciles running, by credential; a trigger meanwhile runs it again after.
    running: BTreeMap<String, JoinHandle<()>>,
    again: BTreeSet<String>,
    wakes: futures::stream::BoxStream<'static, ObjectRef<StoredCredential>>,
    stopping: bool,
    sweep: JoinHandle<()>,
    /// The term's look at its census (`Context::census_looks`), as the operator runs it.
    looks: JoinHandle<()>,
    /// Watch events not yet delivered, in order.
    watch: VecDeque<Change>,
    /// When each credential this term keeps memory of left its store.
    gone_since: BTreeMap<String, tokio::time::Instant>,
}

struct Proc {
    slot: usize,
    alive: bool,
    incarnation: u32,
    identity: String,
    shared: Shared,
    client: kube::Client,
    tokens: TokenClient,
    term: Option<Term>,
    lease_seen: Option<eagle_eye_operator::controller::LeaseFeed>,
    /// The follower's retry of held tokens, and the flush at a term's end.
    background: Vec<JoinHandle<()>>,
    done_tx: std::sync::mpsc::Sender<Done>,
    done_rx: std::sync::mpsc::Receiver<Done>,
    /// Believes it holds the Lease (noticed late after a move).
    leading: bool,
}

/// A credential as the people know it.
#[derive(Clone, Debug)]
struct Cred {
    ns: String,
    name: String,
    client: String,
    /// Refresh-token Secret values ever written, oldest first (for reverts).
    history: Vec<Value>,
    exists: bool,
}

pub struct Sim {
    pub seed: u64,
    pub cfg: Config,
    rng: StdRng,
    pub api: Api,
    pub eagle: Eagle,
    hub: Hub,
    procs: Vec<Proc>,
    creds: Vec<Cred>,
    outage: bool,
    lease_holder: Option<usize>,
    /// Token requests the server acted on whose answer never comes (the client times out).
    hung: Vec<tokio::sync::oneshot::Sender<Result<transport::Response, transport::Failure>>>,
    pub tally: Tally,
    trace: VecDeque<String>,
    pub hash: u64,
    /// Reuses each login may suffer without fault of the operator (a crash in its
    /// write-back window, an answer lost after the server rotated, a person's revert).
    excused: BTreeMap<usize, u32>,
    /// Logins that went through such a window: they may be lost without fault.
    windowed: BTreeSet<usize>,
    /// The credentials whose Secrets held each login.
    login_cred: BTreeMap<usize, BTreeSet<String>>,
    /// When the Lease holder died (the Lease expires `LEASE_SECONDS` later).
    holder_died: Option<tokio::time::Instant>,
    /// Logins a person replaced with a new one, or that died at the server.
    superseded: BTreeSet<usize>,
    /// Per refresh-token Secret (namespace, name): the resourceVersion of a person's last
    /// copy of another credential's token into it.
    copied: BTreeMap<(String, String), u64>,
    /// Per process incarnation and Secret: the versions it read (GETs answered), each
    /// with the API's resourceVersion then (the last few): what it can know of the token
    /// in it, and since when.
    seen: BTreeMap<SecretOfProcess, VecDeque<(u64, u64)>>,
    /// Per process incarnation: the API's resourceVersion when it started.
    born: BTreeMap<(usize, u32), u64>,
    /// Per target Secret: (uid, mint serial) of the access token last seen there.
    targets: BTreeMap<(String, String), (String, u64)>,
    minted_at: Vec<Timestamp>,
    pub violation: Option<Violation>,
    /// Scripted runs (`script.rs`): the driver does only what the script says.
    pub(crate) script: script::Stage,
}

/// A process (slot, incarnation) and a Secret (namespace, name).
type SecretOfProcess = (usize, u32, String, String);

fn key_of(cr: &impl kube::Resource) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

fn requeue_of(action: &kube::runtime::controller::Action) -> Option<Duration> {
    // Action keeps its field private; its Debug form is stable enough for a simulator.
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    let (num, unit) = inner
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .map(|i| inner.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// The store's copy: read lean and projected, as the operator's watch makes it.
fn stored_copy(object: &Value) -> Option<EagleEyeCredential> {
    let lean: LeanCredential = serde_json::from_value(object.clone()).ok()?;
    let mut cr = EagleEyeCredential::from(lean);
    controller::project(&mut cr);
    Some(cr)
}

fn token_in(secret: &Value) -> Option<String> {
    let raw = api::unb64(secret.pointer("/data/refresh_token")?.as_str()?);
    let text = String::from_utf8(raw).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

impl Sim {
    pub fn new(seed: u64, cfg: Config) -> Sim {
        let mut eagle = Eagle {
            revoke_on_reuse: cfg.revoke_on_reuse,
            ..Eagle::default()
        };
        eagle.clients.insert("acme".into(), cfg.rotating);
        eagle.clients.insert("other".into(), cfg.rotating);
        let api = Api::default();
        let hub = Hub::default();
        hub::lock(&hub).api_rv = api.shared_rv.clone();
        Sim {
            seed,
            cfg,
            rng: StdRng::seed_from_u64(seed),
            api,
            eagle,
            hub,
            procs: Vec::new(),
            creds: Vec::new(),
            outage: false,
            lease_holder: None,
            hung: Vec::new(),
            tally: Tally::default(),
            trace: VecDeque::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            excused: BTreeMap::new(),
            windowed: BTreeSet::new(),
            login_cred: BTreeMap::new(),
            holder_died: None,
            superseded: BTreeSet::new(),
            copied: BTreeMap::new(),
            seen: BTreeMap::new(),
            born: BTreeMap::new(),
            targets: BTreeMap::new(),
            minted_at: Vec::new(),
            violation: None,
            script: Default::default(),
        }
    }

    fn note(&mut self, what: String) {
        for b in what.bytes() {
            self.hash = (self.hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        if self.trace.len() == trace_len() {
            self.trace.pop_front();
        }
        self.trace.push_back(format!(
            "#{} t+{}s {what}",
            self.tally.steps,
            self.elapsed()
        ));
    }

    fn elapsed(&self) -> i64 {
        let start: Timestamp = START.parse().expect("start");
        clock::now().duration_since(start).as_secs()
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            let mut what = what;
            for (k, o) in &self.api.objects {
                if k.resource == "eagleeyecredentials" {
                    let ready = o
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                        .map(|c| format!("{} {}: {}", c["status"], c["reason"], c["message"]));
                    what.push_str(&format!(
                        "\n  {}/{} Ready: {}",
                        k.ns,
                        k.name,
                        ready.unwrap_or_default()
                    ));
                }
            }
            self.violation = Some(Violation {
                seed: self.seed,
                step: self.tally.steps,
                what,
                trace: self.trace.iter().cloned().collect(),
            });
        }
    }

    // -----------------------------------------------------------------------------------
    // Setup

    /// The cluster at the start: the client Secrets, one login per credential, the
    /// credentials, the Lease, and the processes. Call inside the paused runtime.
    pub async fn boot(&mut self) {
        clock::start(START.parse().expect("start"));
        for ns in NAMESPACES {
            for client in ["acme", "other"] {
                let secret = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": format!("een-{client}")},
                    "data": {
                        "client_id": api::b64(client.as_bytes()),
                        "client_secret": api::b64(Eagle::client_secret(client).as_bytes()),
                    },
                });
                self.api
                    .put(self.key("secrets", ns, &format!("een-{client}")), secret);
            }
        }
        for i in 0..self.cfg.creds {
            let ns = NAMESPACES[i % 2].to_owned();
            let client = if i % 3 == 2 { "other" } else { "acme" };
            self.creds.push(Cred {
                ns,
                name: format!("cam{i}"),
                client: client.into(),
                history: Vec::new(),
                exists: false,
            });
            self.new_login(i, "");
            if i < self.script.created_at_boot.unwrap_or(usize::MAX) {
                self.create_credential(i, false);
            }
        }
        if self.cfg.lease {
            self.put_lease(Some(0));
        }
        for slot in 0..self.cfg.procs {
            self.spawn_proc(slot);
        }
        self.settle().await;
    }

    fn key(&self, resource: &'static str, ns: &str, name: &str) -> Key {
        Key {
            resource,
            ns: ns.to_owned(),
            name: name.to_owned(),
        }
    }

    fn refresh_secret_name(c: &Cred) -> String {
        format!("{}-refresh", c.name)
    }

    fn create_credential(&mut self, i: usize, revoke_on_delete: bool) {
        let c = self.creds[i].clone();
        let mut spec = json!({
            "clientSecretRef": {"name": format!("een-{}", c.client)},
            "refreshTokenSecretRef": {"name": Self::refresh_secret_name(&c)},
            "authUrl": AUTH_URL,
        });
        if revoke_on_delete {
            spec["revokeOnDelete"] = json!(true);
        }
        let cr = json!({
            "apiVersion": "eagle-eye-operator.io/v1alpha1", "kind": "EagleEyeCredential",
            "metadata": {"name": c.name, "generation": 1, "creationTimestamp": api::secs(clock::now())},
            "spec": spec,
        });
        self.api
            .put(self.key("eagleeyecredentials", &c.ns, &c.name), cr);
        self.creds[i].exists = true;
    }

    /// A person's Phase 1 login stored into credential `i`'s Secret, with `ws` after it.
    fn new_login(&mut self, i: usize, ws: &str) {
        let c = self.creds[i].clone();
        let token = self.eagle.login(&c.client, clock::now());
        let name = Self::refresh_secret_name(&c);
        let key = self.key("secrets", &c.ns, &name);
        if let Some(old) = self.api.objects.get(&key).and_then(token_in)
            && let Some(l) = self.eagle.login_of(&old)
        {
            self.superseded.insert(l);
        }
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {"refresh_token": api::b64(format!("{token}{ws}").as_bytes())},
        });
        let written = self.api.put(key, secret);
        self.creds[i].history.push(written);
    }

    fn put_lease(&mut self, holder: Option<usize>) {
        self.lease_holder = holder;
        let identity = holder.map(|p| self.identity(p, self.incarnation(p)));
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME},
            "spec": {
                "holderIdentity": identity,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": clock::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            },
        });
        let written = self
            .api
            .put(self.key("leases", "default", LEASE_NAME), lease);
        // Every process's Lease watch sees it at once (the check reads it again when stale).
        let seen: Option<Lease> = serde_json::from_value(written).ok();
        for p in &self.procs {
            if p.alive
                && let Some(feed) = &p.lease_seen
            {
                feed.send(seen.clone());
            }
        }
    }

    fn incarnation(&self, p: usize) -> u32 {
        self.procs.get(p).map_or(0, |p| p.incarnation)
    }

    fn identity(&self, p: usize, incarnation: u32) -> String {
        format!("op-{p}_{incarnation:04}")
    }

    fn spawn_proc(&mut self, slot: usize) {
        let incarnation = self.procs.get(slot).map_or(0, |p| p.incarnation + 1);
        self.born.insert((slot, incarnation), self.api.rv);
        let identity = self.identity(slot, incarnation);
        let service = hub::ApiService {
            hub: self.hub.clone(),
            proc: slot,
            incarnation,
        };
        // The production layer: counts, and notes when the API server is unreachable.
        let reach = eagle_eye_operator::api_requests::Reachability::new(clock::for_slot(slot));
        let client = kube::Client::new(
            tower::Layer::layer(
                &eagle_eye_operator::api_requests::layer(reach.clone()),
                service,
            ),
            "default",
        );
        let defaults = TokenClientOptions::default();
        let tokens = TokenClient::new(TokenClientOptions {
            allowed_auth_hosts: vec![EAGLE_EYE_AUTH_HOSTS.into()],
            max_concurrent_calls: self.cfg.call_slots.unwrap_or(defaults.max_concurrent_calls),
            ..defaults
        })
        .expect("token client")
        .with_transport(Arc::new(hub::TokenTransport {
            hub: self.hub.clone(),
            proc: slot,
            incarnation,
        }));
        let current: Option<Lease> = self
            .api
            .get("leases", "default", LEASE_NAME)
            .and_then(|l| serde_json::from_value(l.clone()).ok());
        let (leadership, lease_seen) = match self.cfg.lease {
            true => {
                let (leadership, feed) = Leadership::fed(
                    kube::Api::namespaced(client.clone(), "default"),
                    LEASE_NAME,
                    &identity,
                    Duration::from_secs(2),
                    clock::for_slot(slot),
                );
                feed.send(current);
                (leadership, Some(feed))
            }
            false => (Leadership::unchecked(), None),
        };
        let shared = Shared {
            metrics: Default::default(),
            memory: Memory::default(),
            leadership,
            known: Default::default(),
            reads: Default::default(),
            reach,
            shard: None,
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let proc = Proc {
            slot,
            alive: true,
            incarnation,
            identity,
            shared,
            client,
            tokens,
            term: None,
            lease_seen,
            background: Vec::new(),
            done_tx,
            done_rx,
            leading: false,
        };
        match self.procs.get_mut(slot) {
            Some(p) => *p = proc,
            None => self.procs.push(proc),
        }
        let leads = !self.cfg.lease || self.lease_holder == Some(slot);
        if leads && self.cfg.lease {
            // Restarted as the holder's slot: it takes the Lease again under its new name.
            self.put_lease(Some(slot));
        }
        if leads {
            self.start_term(slot);
        } else {
            self.follow(slot);
        }
    }

    fn settings(&self, p: usize) -> Settings {
        Settings {
            auth_policy: AuthPolicy::new(&[EAGLE_EYE_AUTH_HOSTS], false).expect("policy"),
            lifetimes: Lifetimes {
                idle: SignedDuration::from_hours(14 * 24),
                chain: SignedDuration::from_hours(90 * 24),
                warning: SignedDuration::from_hours(7 * 24),
            },
            identity: self.procs[p].identity.clone(),
            in_flight_grace: SignedDuration::from_mins(5),
            pod_nudge: None,
            workload_restart: None,
            revoke_retry_for: SignedDuration::from_mins(5),
            clock: clock::for_slot(p),
        }
    }

    /// The process wins (or, without a Lease, starts with) its controllers: a fresh store
    /// listed from the API server, every credential looked at once.
    fn start_term(&mut self, p: usize) {
        let settings = self.settings(p);
        let proc = &mut self.procs[p];
        proc.leading = true;
        for h in proc.background.drain(..) {
            h.abort();
        }
        proc.shared.known.clear();
        proc.shared.reads.clear();
        proc.shared.memory.new_term();
        let (store, writer) = kube::runtime::reflector::store::<StoredCredential>();
        let index = Arc::new(controller::Index::default());
        let secret_news = controller::SecretNews::new(proc.shared.reads.clone(), index.clone());
        let reporter = kube::runtime::events::Reporter {
            controller: "eagle-eye-operator".into(),
            instance: Some(proc.identity.clone()),
        };
        let ctx = Arc::new(
            Context::new(
                proc.client.clone(),
                reporter,
                proc.tokens.clone(),
                settings,
                store.clone(),
                vec![store.clone()],
                proc.shared.clone(),
            )
            .with_seats(16)
            .with_index(index.clone()),
        );
        let wakes = ctx.take_wakes();
        let looks = tokio::spawn(ctx.clone().census_looks());
        let sweep = tokio::spawn(controller::deleted_credentials(
            vec![store.clone()],
            proc.shared.clone(),
            proc.client.clone(),
        ));
        proc.term = Some(Term {
            ctx,
            writer,
            index,
            secret_news,
            store,
            due: BTreeMap::new(),
            running: BTreeMap::new(),
            again: BTreeSet::new(),
            wakes,
            stopping: false,
            sweep,
            looks,
            watch: VecDeque::new(),
            gone_since: BTreeMap::new(),
        });
        self.relist(p);
    }

    /// The watch (re)lists: the store is replaced with what the API server holds now.
    fn relist(&mut self, p: usize) {
        let now = tokio::time::Instant::now();
        let objects: Vec<Value> = self
            .api
            .objects
            .iter()
            .filter(|(k, _)| k.resource == "eagleeyecredentials")
            .map(|(_, v)| v.clone())
            .collect();
        let proc = &mut self.procs[p];
        let Some(term) = proc.term.as_mut() else {
            return;
        };
        term.watch.clear();
        // A re-list shows no event for a Secret deleted meanwhile: reads start afresh.
        proc.shared.reads.clear();
        term.credential_event(watcher::Event::Init);
        let mut news = Vec::new();
        for o in &objects {
            if let Some(cr) = stored_copy(o) {
                term.credential_event(watcher::Event::InitApply(cr.clone()));
                if proc
                    .shared
                    .known
                    .is_news(&StoredCredential::new(cr.clone()))
                {
                    news.push(key_of(&cr));
                }
            }
        }
        term.credential_event(watcher::Event::InitDone);
        for k in news {
            term.due.insert(k, Due::At(now));
        }
    }

    /// A follower: retries storing any token held from its last term every 5 s.
    fn follow(&mut self, p: usize) {
        let proc = &mut self.procs[p];
        proc.leading = false;
        let (held, client) = (proc.shared.memory.clone(), proc.client.clone());
        proc.background.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if !held.is_empty() {
                    held.flush(&client, Duration::ZERO).await;
                }
            }
        }));
    }

    /// The process noticed it lost the Lease: no reconcile starts; once those running end,
    /// what is held is flushed, and it follows.
    fn end_term(&mut self, p: usize) {
        if let Some(term) = self.procs[p].term.as_mut() {
            term.stopping = true;
            term.ctx.stop();
        }
        self.procs[p].leading = false;
    }

    fn finish_stopped_terms(&mut self) {
        for p in 0..self.procs.len() {
            let done = self.procs[p]
                .term
                .as_ref()
                .is_some_and(|t| t.stopping && t.running.is_empty());
            if done {
                let term = self.procs[p].term.take().expect("term");
                term.sweep.abort();
                term.looks.abort();
                let proc = &mut self.procs[p];
                proc.shared.metrics.forget_all();
                let (held, client) = (proc.shared.memory.clone(), proc.client.clone());
                proc.background.push(tokio::spawn(async move {
                    if !held.is_empty() {
                        held.flush(&client, Duration::from_secs(20)).await;
                    }
                }));
                self.follow(p);
            }
        }
    }

    /// The process dies: every task and all its memory go; requests in flight may still
    /// land.
    fn crash(&mut self, p: usize, lands: bool) {
        self.tally.crashes += 1;
        self.kill(p, lands, true);
    }

    /// The process ends: every task and its memory go. `excuse`: it died unprepared (a
    /// crash), so what it held or had in flight may be lost or spent again once.
    pub(crate) fn kill(&mut self, p: usize, lands: bool, excuse_window: bool) {
        // Logins it may hold the only copy of, or be in the middle of spending, may be
        // lost with it: one reuse each is the documented price.
        let mut excuse: BTreeSet<usize> = BTreeSet::new();
        // The window: a rotated token it held (an answer is held in memory from the moment it
        // arrives until its write-back is acknowledged) or was writing back, when the server
        // holds it as the login's live token.
        let inc = self.procs[p].incarnation;
        let mut carried: Vec<String> = self.procs[p]
            .shared
            .memory
            .held_tokens()
            .iter()
            .map(|t| t.expose_secret().trim().to_owned())
            .collect();
        carried.extend(self.pending_tokens(Some((p, inc))));
        for t in carried {
            if let Some(l) = self.eagle.live_login(&t) {
                excuse.insert(l);
            }
        }
        let (api_reqs, token_reqs) = {
            let mut pending = hub::lock(&self.hub);
            let Pending { api, token, .. } = &mut *pending;
            let a: Vec<_> = api
                .extract_if(.., |r| r.proc == p && r.incarnation == inc)
                .collect();
            let t: Vec<_> = token
                .extract_if(.., |r| r.proc == p && r.incarnation == inc)
                .collect();
            (a, t)
        };
        for r in api_reqs {
            if lands && !self.outage {
                let _ = self.api.serve(
                    &r.method,
                    &r.path,
                    &r.query,
                    &r.content_type,
                    &r.body,
                    clock::now(),
                );
            }
        }
        for r in token_reqs {
            excuse.extend(self.form_login(&r.request.form));
            if lands {
                self.serve_token(&r, true);
            }
        }
        if excuse_window {
            for l in excuse {
                self.excuse(l);
            }
        }
        let proc = &mut self.procs[p];
        proc.alive = false;
        if let Some(term) = proc.term.take() {
            term.sweep.abort();
            term.looks.abort();
            term.ctx.stop();
            for (_, h) in term.running {
                h.abort();
            }
        }
        for h in proc.background.drain(..) {
            h.abort();
        }
        proc.tokens.close();
        proc.leading = false;
        // Memory goes with the process: a fresh Memory replaces the old (the aborted
        // tasks' clones drop as they are cancelled).
        proc.shared.memory = Memory::default();
    }

    fn form_login(&self, form: &str) -> Option<usize> {
        let token = url::form_urlencoded::parse(form.as_bytes())
            .find(|(k, _)| k == "refresh_token" || k == "token")
            .map(|(_, v)| v.into_owned())?;
        self.eagle.login_of(&token)
    }

    // -----------------------------------------------------------------------------------
    // The driver

    /// Lets every task run until it blocks on simulated I/O (paused time auto-advances to
    /// this sleep's end only once nothing else can run).
    pub async fn settle(&mut self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.collect().await;
    }

    /// Takes what the tasks reported: reconciles ended, wakes, watch changes.
    async fn collect(&mut self) {
        let mut panics = Vec::new();
        loop {
            let mut more = false;
            for p in 0..self.procs.len() {
                while let Ok(done) = self.procs[p].done_rx.try_recv() {
                    more = true;
                    self.reconciled(p, done);
                }
                if let Some(term) = self.procs[p].term.as_mut() {
                    while let Some(Some(obj)) = term.wakes.next_now() {
                        term.due.insert(
                            format!("{}/{}", obj.namespace.unwrap_or_default(), obj.name),
                            Due::At(tokio::time::Instant::now()),
                        );
                    }
                    // A reconcile task that ended without reporting panicked outside
                    // the operator's own catch.
                    let ended: Vec<String> = term
                        .running
                        .iter()
                        .filter(|(_, h)| h.is_finished())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in ended {
                        let h = term.running.remove(&k).expect("running");
                        if let Some(Err(e)) = h.now_or_never()
                            && e.is_panic()
                        {
                            panics.push(k);
                        }
                    }
                }
            }
            for k in panics.drain(..) {
                self.fail(format!("a reconcile of {k} panicked"));
            }
            if !more {
                break;
            }
        }
        let changes = std::mem::take(&mut self.api.changes);
        for proc in &mut self.procs {
            if let Some(term) = proc.term.as_mut().filter(|_| proc.alive) {
                term.watch.extend(changes.iter().cloned());
            }
        }
        self.finish_stopped_terms();
    }

    fn reconciled(&mut self, p: usize, done: Done) {
        self.tally.reconciles += 1;
        if done.panicked {
            self.fail(format!("reconciling {} panicked", done.key));
        }
        let Some(term) = self.procs[p].term.as_mut() else {
            return;
        };
        term.running.remove(&done.key);
        let now = tokio::time::Instant::now();
        if term.again.remove(&done.key) {
            term.due.insert(done.key, Due::At(now));
        } else if let Some(d) = done.requeue {
            term.due.insert(done.key, Due::At(now + d));
        } else {
            term.due.remove(&done.key);
        }
    }

    fn start_reconcile(&mut self, p: usize, key: String) {
        let proc = &mut self.procs[p];
        let Some(term) = proc.term.as_mut() else {
            return;
        };
        term.due.remove(&key);
        let Some((ns, name)) = key.split_once('/') else {
            return;
        };
        let Some(cr) = term
            .store
            .get(&ObjectRef::<StoredCredential>::new(name).within(ns))
        else {
            // kube-runtime: ObjectNotFound, nothing runs.
            return;
        };
        let ctx = term.ctx.clone();
        let tx = proc.done_tx.clone();
        let k = key.clone();
        let handle = tokio::spawn(async move {
            let (requeue, panicked) = match controller::reconcile(cr.clone(), ctx.clone()).await {
                Ok(action) => (requeue_of(&action), false),
                Err(e) => {
                    let panicked = matches!(e, controller::Error::Panicked(_));
                    (requeue_of(&controller::error_policy(cr, &e, ctx)), panicked)
                }
            };
            let _ = tx.send(Done {
                key: k,
                requeue,
                panicked,
            });
        });
        term.running.insert(key, handle);
    }

    /// Delivers the oldest undelivered watch event to process `p`.
    fn deliver(&mut self, p: usize) {
        let proc = &mut self.procs[p];
        let Some(term) = proc.term.as_mut() else {
            return;
        };
        let Some(change) = term.watch.pop_front() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut wake: Vec<String> = Vec::new();
        match change.key.resource {
            "eagleeyecredentials" => match change.object.as_ref().and_then(stored_copy) {
                Some(cr) => {
                    term.credential_event(watcher::Event::Apply(cr.clone()));
                    if proc
                        .shared
                        .known
                        .is_news(&StoredCredential::new(cr.clone()))
                    {
                        wake.push(key_of(&cr));
                    }
                }
                None => {
                    let cr: EagleEyeCredential = serde_json::from_value(json!({
                        "apiVersion": "eagle-eye-operator.io/v1alpha1", "kind": "EagleEyeCredential",
                        "metadata": {"name": change.key.name, "namespace": change.key.ns},
                        "spec": {"clientSecretRef": {"name": "x"}, "refreshTokenSecretRef": {"name": "x"}},
                    }))
                    .expect("credential");
                    term.credential_event(watcher::Event::Delete(cr));
                    term.due
                        .remove(&format!("{}/{}", change.key.ns, change.key.name));
                }
            },
            "secrets" => {
                let meta: Secret = match &change.object {
                    Some(o) => serde_json::from_value(o.clone()).unwrap_or_default(),
                    None => Secret {
                        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                            name: Some(change.key.name.clone()),
                            namespace: Some(change.key.ns.clone()),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                };
                let partial = meta.metadata.clone().into_response_partial::<Secret>();
                let event = match change.object {
                    Some(_) => watcher::Event::Apply(partial),
                    None => watcher::Event::Delete(partial),
                };
                for cr in term.secret_news.on_event(&event) {
                    wake.push(format!("{}/{}", cr.namespace.unwrap_or_default(), cr.name));
                }
            }
            _ => {}
        }
        for k in wake {
            if term.running.contains_key(&k) {
                term.again.insert(k);
            } else {
                term.due.insert(k, Due::At(now));
            }
        }
    }

    fn serve_token(&mut self, r: &hub::TokenRequest, count: bool) -> crate::eagle::Answer {
        let now = clock::now();
        // Revoking a token a live credential still uses kills that credential's login.
        if r.request.url.path().ends_with("/revoke") {
            let token = url::form_urlencoded::parse(r.request.form.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if self.eagle.is_live(&token) {
                // A copy a person made, while the Secret holds it unchanged, is excused if
                // the revoking process had not read it when it sent the revocation: made
                // after that process's last read of the Secret before the send (or, none,
                // after the process started), or after the send. No reader of Secrets can
                // know a copy it has not read (the watch tells only that the Secret
                // changed), and a copy landing between any check and the call would pass
                // every check there is.
                let unseen_copy = |c: &Cred| {
                    let secret = Self::refresh_secret_name(c);
                    let now = self.api.get("secrets", &c.ns, &secret).and_then(|o| {
                        o.pointer("/metadata/resourceVersion")?
                            .as_str()?
                            .parse()
                            .ok()
                    });
                    let Some(&copy) = self.copied.get(&(c.ns.clone(), secret.clone())) else {
                        return false;
                    };
                    let reads = self
                        .seen
                        .get(&(r.proc, r.incarnation, c.ns.clone(), secret));
                    let known = reads
                        .and_then(|reads| reads.iter().rev().find(|&&(_, at)| at <= r.sent_rv))
                        .map(|&(read, _)| read)
                        .unwrap_or_else(|| {
                            self.born
                                .get(&(r.proc, r.incarnation))
                                .copied()
                                .unwrap_or(0)
                        });
                    now == Some(copy) && known < copy
                };
                let users: Vec<String> = self
                    .creds
                    .iter()
                    .filter(|c| {
                        let cr = self.api.get("eagleeyecredentials", &c.ns, &c.name);
                        cr.is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_none())
                            && self
                                .api
                                .get("secrets", &c.ns, &Self::refresh_secret_name(c))
                                .and_then(token_in)
                                .is_some_and(|t| t == token)
                            && !unseen_copy(c)
                    })
                    .map(|c| format!("{}/{}", c.ns, c.name))
                    .collect();
                if !users.is_empty() {
                    self.fail(format!(
                        "a refresh token live credential(s) {users:?} still use was revoked"
                    ));
                }
            }
        }
        // Before the server acts: is the login this request spends already lost to every
        // client (its live token nowhere on the operator's side)? Then a reuse of it harms
        // nothing the loss did not, provided the loss was a window's.
        let lost = self.form_login(&r.request.form).filter(|&l| {
            self.eagle.logins[l]
                .live
                .as_ref()
                .is_none_or(|live| !self.client_has(live))
        });
        let (answer, did) = self.eagle.serve(
            r.request.url.path(),
            &r.request.authorization,
            &r.request.form,
            now,
        );
        if count {
            self.tally.token_calls += 1;
        }
        match did {
            Did::Reuse { login, .. } => {
                self.tally.reuses += 1;
                // Lost to every client through a window, or left behind by a person's new
                // login: nothing live can die of it.
                let lost_in_window = lost == Some(login)
                    && (self.windowed.contains(&login) || self.superseded.contains(&login));
                let budget = self.excused.entry(login).or_default();
                if lost_in_window {
                    // Already lost through a window: nothing more to lose.
                } else if *budget == 0 {
                    self.fail(format!(
                        "login {login}: a refresh token the server had replaced was sent again, with no crash, lost answer or revert to excuse it"
                    ));
                } else {
                    *budget -= 1;
                }
            }
            Did::Refreshed { .. } => {
                self.tally.refreshes += 1;
                while self.minted_at.len() < self.eagle.minted as usize {
                    self.minted_at.push(now);
                }
            }
            _ => {}
        }
        answer
    }

    /// One step: something happens.
    pub async fn step(&mut self) {
        self.tally.steps += 1;
        let (napi, ntoken) = {
            let p = hub::lock(&self.hub);
            (p.api.len(), p.token.len())
        };
        let watch: Vec<usize> = (0..self.procs.len())
            .filter(|&p| {
                self.procs[p]
                    .term
                    .as_ref()
                    .is_some_and(|t| !t.watch.is_empty())
            })
            .collect();
        let now = tokio::time::Instant::now();
        let mut due: Vec<(usize, String)> = Vec::new();
        for (p, proc) in self.procs.iter().enumerate() {
            let Some(t) = proc.term.as_ref().filter(|t| !t.stopping) else {
                continue;
            };
            for (k, Due::At(at)) in &t.due {
                if *at <= now && !t.running.contains_key(k) {
                    due.push((p, k.clone()));
                }
            }
        }
        let rare = self.rng.random_range(0..1000);
        let faults = self.cfg.faults;
        if faults && rare < 4 {
            self.random_crash().await;
        } else if faults && rare < 14 && self.procs.iter().any(|p| !p.alive) {
            let dead: Vec<usize> = (0..self.procs.len())
                .filter(|&p| !self.procs[p].alive)
                .collect();
            let p = dead[self.rng.random_range(0..dead.len())];
            self.note(format!("restart p{p}"));
            self.spawn_proc(p);
        } else if self.cfg.people && rare < 20 {
            self.person();
        } else if self.cfg.lease && self.procs.len() > 1 && rare < 23 {
            self.move_lease();
        } else if faults && rare < 25 {
            self.outage = !self.outage;
            self.note(format!(
                "API server {}",
                if self.outage { "down" } else { "up" }
            ));
        } else if rare < 27 {
            let p = self.rng.random_range(0..self.procs.len());
            if self.procs[p].term.is_some() {
                self.note(format!("p{p}'s watch re-lists"));
                self.relist(p);
            }
        } else if faults && rare < 29 && self.procs.len() > 1 {
            let p = self.rng.random_range(0..self.procs.len());
            let skew = self.rng.random_range(-120_000..=120_000);
            clock::set_skew(p, skew);
            self.note(format!("p{p}'s clock skews {skew} ms"));
        } else {
            let total = napi * 4 + ntoken * 4 + watch.len() * 3 + due.len() * 3;
            if total == 0 {
                self.advance().await;
            } else {
                let mut pick = self.rng.random_range(0..total);
                if pick < napi * 4 {
                    self.api_request(pick / 4).await;
                } else {
                    pick -= napi * 4;
                    if pick < ntoken * 4 {
                        self.token_request(pick / 4);
                    } else {
                        pick -= ntoken * 4;
                        if pick < watch.len() * 3 {
                            let p = watch[pick / 3];
                            self.note(format!("p{p} watch event"));
                            self.deliver(p);
                        } else {
                            pick -= watch.len() * 3;
                            let (p, k) = due[pick / 3].clone();
                            self.note(format!("p{p} reconciles {k}"));
                            self.start_reconcile(p, k);
                        }
                    }
                }
            }
        }
        self.settle().await;
        self.check();
    }

    /// Nothing to do now: time passes to the next thing due (and the Lease is renewed).
    async fn advance(&mut self) {
        let now = tokio::time::Instant::now();
        let next = self
            .procs
            .iter()
            .filter_map(|p| p.term.as_ref())
            .flat_map(|t| t.due.values().map(|Due::At(at)| *at))
            .min();
        let mut wait = match next {
            Some(at) if at > now => at - now,
            Some(_) => Duration::from_millis(1),
            None => Duration::from_secs(300),
        };
        // Now and then a bigger jump, but never past the Lease's renewal.
        if self.rng.random_bool(0.05) {
            wait += Duration::from_secs(self.rng.random_range(1..600));
        }
        let wait = wait.min(Duration::from_secs(3600));
        self.note(format!("time passes {}s", wait.as_secs()));
        self.pass(wait).await;
    }

    /// Time passes by `wait`, the holder renewing its Lease as it goes; token calls whose
    /// client would give up meanwhile are settled at the server first.
    async fn pass(&mut self, wait: Duration) {
        let now = tokio::time::Instant::now();
        let expiring: Vec<usize> = {
            let p = hub::lock(&self.hub);
            p.token
                .iter()
                .enumerate()
                .filter(|(_, r)| r.at + ANSWER_LIMIT <= now + wait)
                .map(|(i, _)| i)
                .collect()
        };
        for i in expiring.into_iter().rev() {
            let r = hub::lock(&self.hub).token.remove(i);
            // Latency past every timeout: the server acts on it (or never got it), and
            // the answer comes too late for the client.
            if self.rng.random_bool(0.5) {
                self.serve_token(&r, true);
                self.excused_login(&r.request.form);
                self.note(format!("p{}'s token call answered too late", r.proc));
            }
            self.hung.push(r.reply);
        }
        self.collect_garbage();
        let step = Duration::from_secs(5);
        let mut left = wait;
        while !left.is_zero() {
            let d = left.min(step);
            tokio::time::sleep(d).await;
            left -= d;
            if let Some(h) = self.lease_holder {
                let now = tokio::time::Instant::now();
                if self.procs[h].alive && !self.outage {
                    self.holder_died = None;
                    self.put_lease(Some(h));
                } else if !self.procs[h].alive {
                    let died = *self.holder_died.get_or_insert(now);
                    // The Lease expired: a live follower takes it.
                    if now - died > Duration::from_secs(LEASE_SECONDS as u64)
                        && let Some(to) = (0..self.procs.len()).find(|&p| self.procs[p].alive)
                    {
                        self.note(format!("p{to} takes the expired Lease"));
                        self.holder_died = None;
                        self.put_lease(Some(to));
                        if self.procs[to].term.is_none() {
                            self.start_term(to);
                        }
                    }
                }
            }
            self.collect().await;
        }
        self.hung.retain(|s| !s.is_closed());
    }

    /// The garbage collector: a Secret whose controlling credential is gone goes too.
    fn collect_garbage(&mut self) {
        let uids: BTreeSet<String> = self
            .api
            .objects
            .iter()
            .filter(|(k, _)| k.resource == "eagleeyecredentials")
            .filter_map(|(_, o)| Some(o.pointer("/metadata/uid")?.as_str()?.to_owned()))
            .collect();
        let orphans: Vec<Key> = self
            .api
            .objects
            .iter()
            .filter(|(k, o)| {
                k.resource == "secrets"
                    && o.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            refs.iter().any(|r| {
                                r["controller"] == json!(true)
                                    && r["uid"].as_str().is_some_and(|u| !uids.contains(u))
                            })
                        })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in orphans {
            self.api.delete(&k, clock::now());
        }
    }

    /// Refresh tokens carried by API requests still pending (all, or one incarnation's).
    fn pending_tokens(&self, of: Option<(usize, u32)>) -> Vec<String> {
        hub::lock(&self.hub)
            .api
            .iter()
            .filter(|r| of.is_none_or(|(p, inc)| r.proc == p && r.incarnation == inc))
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .filter_map(|v| token_in(&v))
            .collect()
    }

    /// Whether anything on the operator's side still has `token`: a Secret, an answer held
    /// by a live process, or a write in flight.
    fn client_has(&self, token: &str) -> bool {
        let in_secret = self
            .api
            .objects
            .iter()
            .filter(|(k, _)| k.resource == "secrets")
            .any(|(_, o)| token_in(o).as_deref() == Some(token));
        in_secret
            || self.procs.iter().filter(|p| p.alive).any(|p| {
                p.shared
                    .memory
                    .held_tokens()
                    .iter()
                    .any(|t| t.expose_secret().trim() == token)
            })
            || self.pending_tokens(None).iter().any(|t| t == token)
    }

    fn excused_login(&mut self, form: &str) {
        if let Some(l) = self.form_login(form) {
            self.excuse(l);
        }
    }

    /// Login `l` went through a window where the operator may lose it or reuse a token
    /// of it once, without fault.
    fn excuse(&mut self, l: usize) {
        *self.excused.entry(l).or_default() += 1;
        self.windowed.insert(l);
    }

    async fn random_crash(&mut self) {
        let alive: Vec<usize> = (0..self.procs.len())
            .filter(|&p| self.procs[p].alive)
            .collect();
        if alive.is_empty() {
            return;
        }
        let p = alive[self.rng.random_range(0..alive.len())];
        let lands = self.rng.random_bool(0.5);
        self.note(format!("p{p} crashes (in flight lands: {lands})"));
        self.crash(p, lands);
    }

    /// The driver's sorted view of pending requests: the order tasks made them in may
    /// depend on hash-map order inside the operator, the choice must not.
    fn sort_pending(&mut self) {
        let mut p = hub::lock(&self.hub);
        p.api.sort_by(|a, b| {
            (a.proc, a.incarnation, &a.path, a.method.as_str(), &a.body).cmp(&(
                b.proc,
                b.incarnation,
                &b.path,
                b.method.as_str(),
                &b.body,
            ))
        });
        p.token.sort_by(|a, b| {
            (a.proc, a.incarnation, &a.request.form).cmp(&(b.proc, b.incarnation, &b.request.form))
        });
    }

    async fn api_request(&mut self, i: usize) {
        self.sort_pending();
        let r = hub::lock(&self.hub).api.remove(i);
        self.tally.api_requests += 1;
        let what = format!("p{} {} {}", r.proc, r.method, r.path);
        let scripted_failure = self.script_sees(&r.method, &r.path);
        let roll = self.rng.random_range(0..1000);
        let faults = self.cfg.faults;
        if scripted_failure {
            self.note(format!("{what}: 500 before applying (scripted)"));
            let _ = r.reply.send(api::status(500, "InternalError"));
            return;
        }
        if self.outage {
            self.note(format!("{what}: 503 (outage)"));
            let _ = r.reply.send(api::status(503, "ServiceUnavailable"));
            return;
        }
        if faults && roll < 10 {
            self.note(format!("{what}: 500 before applying"));
            let _ = r.reply.send(api::status(500, "InternalError"));
            return;
        }
        if faults && roll < 16 {
            self.note(format!("{what}: crash before it lands"));
            hub::lock(&self.hub).api.push(r);
            let p = hub::lock(&self.hub).api.last().map(|r| r.proc).unwrap_or(0);
            self.crash(p, false);
            return;
        }
        let answer = self.api.serve(
            &r.method,
            &r.path,
            &r.query,
            &r.content_type,
            &r.body,
            clock::now(),
        );
        let code = answer.as_ref().map(|a| a.status().as_u16()).unwrap_or(0);
        if faults && roll < 26 {
            self.note(format!("{what}: applied ({code}), answer lost"));
            let _ = r
                .reply
                .send(Err("connection reset after the request was sent".into()));
            return;
        }
        if faults && roll < 32 {
            self.note(format!(
                "{what}: applied ({code}), then p{} crashes",
                r.proc
            ));
            let p = r.proc;
            drop(r);
            self.crash(p, false);
            return;
        }
        self.note(format!("{what}: {code}"));
        if r.method == http::Method::GET && code == 200 {
            self.saw(r.proc, r.incarnation, &r.path);
        }
        let _ = r.reply.send(answer);
    }

    /// Process `proc` (incarnation `incarnation`) read `path`: if a Secret, which version.
    fn saw(&mut self, proc: usize, incarnation: u32, path: &str) {
        let mut parts = path.trim_start_matches("/api/v1/namespaces/").split('/');
        let (Some(ns), Some("secrets"), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let rv = self.api.get("secrets", ns, name).and_then(|o| {
            o.pointer("/metadata/resourceVersion")?
                .as_str()?
                .parse::<u64>()
                .ok()
        });
        if let Some(rv) = rv {
            let at = (proc, incarnation, ns.to_owned(), name.to_owned());
            let reads = self.seen.entry(at).or_default();
            reads.push_back((rv, self.api.rv));
            if reads.len() > 8 {
                reads.pop_front();
            }
        }
    }

    /// A person wrote `written`, a copy of another credential's token, into its Secret.
    fn person_copied(&mut self, written: &Value) {
        let meta = |field: &str| {
            written
                .pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (Some(ns), Some(name), Some(rv)) = (
            meta("namespace"),
            meta("name"),
            meta("resourceVersion").and_then(|v| v.parse::<u64>().ok()),
        ) else {
            return;
        };
        self.copied.insert((ns, name), rv);
    }

    fn token_request(&mut self, i: usize) {
        self.sort_pending();
        let r = hub::lock(&self.hub).token.remove(i);
        let login = self.form_login(&r.request.form);
        let what = format!("p{} token call (login {login:?})", r.proc);
        let roll = self.rng.random_range(0..1000);
        let faults = self.cfg.faults;
        let reply = |status: u16, retry: Option<&str>, body: &str| {
            Ok(transport::Response {
                status,
                retry_after: retry.map(str::to_owned),
                body: body.as_bytes().to_vec(),
            })
        };
        if faults && roll < 30 {
            self.note(format!("{what}: refused to connect"));
            let _ = r.reply.send(Err(transport::Failure::NotSent));
        } else if faults && roll < 50 {
            self.note(format!("{what}: 503"));
            let _ = r.reply.send(reply(503, None, ""));
        } else if faults && roll < 65 {
            self.note(format!("{what}: 429 Retry-After 120"));
            let _ = r
                .reply
                .send(reply(429, Some("120"), "{\"error\":\"too_many_requests\"}"));
        } else if faults && roll < 80 {
            self.note(format!("{what}: served, answer lost"));
            self.serve_token(&r, true);
            self.excused_login(&r.request.form);
            let _ = r.reply.send(Err(transport::Failure::MaybeSent));
        } else if faults && roll < 90 {
            self.note(format!("{what}: served, answer never comes"));
            self.serve_token(&r, true);
            self.excused_login(&r.request.form);
            self.hung.push(r.reply);
        } else if faults && roll < 100 {
            self.note(format!("{what}: served, then p{} crashes", r.proc));
            self.serve_token(&r, true);
            let p = r.proc;
            drop(r.reply);
            self.excused_login(&r.request.form);
            self.crash(p, false);
        } else {
            let answer = self.serve_token(&r, true);
            self.note(format!("{what}: {}", answer.status));
            let _ = r.reply.send(Ok(transport::Response {
                status: answer.status,
                retry_after: answer.retry_after,
                body: answer.body,
            }));
        }
    }

    fn move_lease(&mut self) {
        let n = self.procs.len();
        let to = self.rng.random_range(0..n);
        if Some(to) == self.lease_holder || !self.procs[to].alive {
            return;
        }
        self.tally.lease_moves += 1;
        let from = self.lease_holder;
        self.note(format!("Lease moves {from:?} -> p{to}"));
        self.put_lease(Some(to));
        // The old holder notices at once or later (its own next renewal): either way
        // its controllers stop. The new one starts its term.
        if let Some(f) = from
            && self.procs[f].alive
            && self.procs[f].leading
        {
            self.end_term(f);
        }
        if self.procs[to].term.is_none() {
            self.start_term(to);
        }
    }

    fn person(&mut self) {
        self.tally.people += 1;
        let i = self.rng.random_range(0..self.creds.len());
        let c = self.creds[i].clone();
        let name = Self::refresh_secret_name(&c);
        let key = self.key("secrets", &c.ns, &name);
        match self.rng.random_range(0..10) {
            0 | 1 => {
                let ws = ["", "\n", "\r\n"][self.rng.random_range(0..3)];
                self.note(format!(
                    "person: new login for {}/{} ({ws:?})",
                    c.ns, c.name
                ));
                self.new_login(i, ws);
            }
            2 | 3 => {
                // A sync tool puts an earlier value back (value only), or a backup comes
                // back whole.
                let Some(current) = self.api.objects.get(&key).cloned() else {
                    return;
                };
                if c.history.is_empty() {
                    return;
                }
                let old = c.history[self.rng.random_range(0..c.history.len())].clone();
                let whole = self.rng.random_bool(0.5);
                let mut next = if whole { old.clone() } else { current.clone() };
                next["data"] = old["data"].clone();
                next["metadata"]["resourceVersion"] = Value::Null;
                if let Some(m) = next["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                if let Some(l) = token_in(&old).and_then(|t| self.eagle.login_of(&t)) {
                    self.excuse(l);
                }
                // The login overwritten is lost to the person's act unless a live process
                // still remembers it (and should put it back).
                let ckey = format!("{}/{}", c.ns, c.name);
                let remembered = self
                    .procs
                    .iter()
                    .any(|p| p.alive && p.shared.memory.known_keys().contains(&ckey));
                let restored = token_in(&old).and_then(|t| self.eagle.login_of(&t));
                if let Some(l) = token_in(&current).and_then(|t| self.eagle.login_of(&t)) {
                    // Another login's token put back passes for a person's new login; a
                    // whole backup hides the record that its token is dead (the intent's
                    // documented limits): either may cost the current login.
                    if !remembered || restored != Some(l) {
                        self.superseded.insert(l);
                    } else if whole {
                        self.excuse(l);
                    }
                }
                self.note(format!(
                    "person: {} of {}/{} restored",
                    if whole { "backup" } else { "earlier value" },
                    c.ns,
                    c.name
                ));
                self.api.put(key, next);
            }
            4 => {
                // The token copied into another credential's Secret (same client).
                let j = self.rng.random_range(0..self.creds.len());
                let d = self.creds[j].clone();
                if i == j || d.client != c.client {
                    return;
                }
                let Some(src) = self.api.objects.get(&key).cloned() else {
                    return;
                };
                let dkey = self.key("secrets", &d.ns, &Self::refresh_secret_name(&d));
                let Some(mut dst) = self.api.objects.get(&dkey).cloned() else {
                    return;
                };
                if let Some(l) = token_in(&dst).and_then(|t| self.eagle.login_of(&t)) {
                    self.superseded.insert(l);
                }
                dst["data"] = src["data"].clone();
                self.note(format!(
                    "person: copies {}/{}'s token into {}/{}",
                    c.ns, c.name, d.ns, d.name
                ));
                let written = self.api.put(dkey, dst);
                self.person_copied(&written);
                self.creds[j].history.push(written);
            }
            5 => {
                if !c.exists {
                    let rod = self.rng.random_bool(0.5);
                    self.note(format!(
                        "person: recreates {}/{} (revokeOnDelete {rod})",
                        c.ns, c.name
                    ));
                    self.create_credential(i, rod);
                    return;
                }
                self.note(format!("person: deletes {}/{}", c.ns, c.name));
                self.api.delete(
                    &self.key("eagleeyecredentials", &c.ns, &c.name),
                    clock::now(),
                );
                if self
                    .api
                    .get("eagleeyecredentials", &c.ns, &c.name)
                    .is_none()
                {
                    self.creds[i].exists = false;
                }
            }
            6 => {
                let ckey = self.key("eagleeyecredentials", &c.ns, &c.name);
                let Some(mut cr) = self.api.objects.get(&ckey).cloned() else {
                    self.creds[i].exists = false;
                    return;
                };
                if cr.pointer("/metadata/deletionTimestamp").is_some() {
                    return;
                }
                let what = ["suspend", "revokeOnDelete"][self.rng.random_range(0..2)];
                let on = !cr["spec"][what].as_bool().unwrap_or(false);
                cr["spec"][what] = json!(on);
                let g = cr["metadata"]["generation"].as_i64().unwrap_or(1);
                cr["metadata"]["generation"] = json!(g + 1);
                self.note(format!("person: {}/{} {what} = {on}", c.ns, c.name));
                self.api.put(ckey, cr);
            }
            _ => {
                // An unrelated edit: only the resourceVersion changes.
                if let Some(o) = self.api.objects.get(&key).cloned() {
                    self.note(format!("person: touches {}/{}'s Secret", c.ns, name));
                    self.api.put(key, o);
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Invariants

    fn check(&mut self) {
        // Deleted credentials that finalizers no longer hold are gone for the people too.
        for i in 0..self.creds.len() {
            let c = &self.creds[i];
            if c.exists
                && self
                    .api
                    .get("eagleeyecredentials", &c.ns, &c.name)
                    .is_none()
            {
                self.creds[i].exists = false;
            }
        }
        self.check_targets();
        self.check_logins();
        self.check_memory();
    }

    /// A target Secret never goes back to an older access token.
    fn check_targets(&mut self) {
        let targets: Vec<((String, String), String, u64)> = self
            .api
            .objects
            .iter()
            .filter(|(k, o)| {
                k.resource == "secrets" && o.pointer("/metadata/ownerReferences").is_some()
            })
            .filter_map(|(k, o)| {
                let raw = api::unb64(o.pointer("/data/access_token")?.as_str()?);
                let text = String::from_utf8(raw).ok()?;
                let serial: u64 = text.get(7..15)?.parse().ok()?;
                let uid = o.pointer("/metadata/uid")?.as_str()?.to_owned();
                Some(((k.ns.clone(), k.name.clone()), uid, serial))
            })
            .collect();
        for (key, uid, serial) in targets {
            if let Some((seen_uid, seen)) = self.targets.get(&key).cloned()
                && seen_uid == uid
                && serial < seen
            {
                let at = |s: u64| self.minted_at.get(s as usize - 1).copied();
                // Two answers of one second cannot be ordered (either may stand).
                if at(serial).map(|t| t.as_second()) != at(seen).map(|t| t.as_second()) {
                    self.fail(format!(
                        "target {}/{} went back from access token #{seen} to #{serial}",
                        key.0, key.1
                    ));
                }
            }
            self.targets.insert(key, (uid, serial));
        }
    }

    /// No login is lost outside a crash's window: its live token is in a Secret, or some
    /// live process is still at work with it.
    fn check_logins(&mut self) {
        let mut in_secrets: BTreeSet<String> = BTreeSet::new();
        for c in &self.creds {
            let Some(t) = self
                .api
                .get("secrets", &c.ns, &Self::refresh_secret_name(c))
                .and_then(token_in)
            else {
                continue;
            };
            if let Some(l) = self.eagle.login_of(&t) {
                self.login_cred
                    .entry(l)
                    .or_default()
                    .insert(format!("{}/{}", c.ns, c.name));
            }
            in_secrets.insert(t);
        }
        let busy = {
            let p = hub::lock(&self.hub);
            !p.api.is_empty() || !p.token.is_empty()
        } || self.procs.iter().any(|p| {
            p.alive
                && (!p.shared.memory.is_empty()
                    || p.term.as_ref().is_some_and(|t| !t.running.is_empty()))
        });
        if busy {
            return;
        }
        // What live processes remember (a live token, a held answer), by credential.
        let remembered: BTreeSet<String> = self
            .procs
            .iter()
            .filter(|p| p.alive)
            .flat_map(|p| p.shared.memory.known_keys())
            .collect();
        for (l, login) in self.eagle.logins.iter().enumerate() {
            let Some(live) = &login.live else { continue };
            if login.died.is_some() || self.superseded.contains(&l) || self.windowed.contains(&l) {
                continue;
            }
            let in_memory = self
                .login_cred
                .get(&l)
                .is_some_and(|creds| creds.iter().any(|k| remembered.contains(k)));
            if !in_secrets.contains(live) && !in_memory {
                self.fail(format!(
                    "login {l} is lost: its live refresh token is in no Secret and no process holds it"
                ));
                return;
            }
        }
    }

    /// Memory holds nothing for a credential gone from the store, once the sweep ran.
    fn check_memory(&mut self) {
        let now = tokio::time::Instant::now();
        let mut failed = None;
        for p in &mut self.procs {
            let Some(term) = p.term.as_mut().filter(|_| p.alive) else {
                continue;
            };
            let present: BTreeSet<String> =
                term.store.state().iter().map(|c| key_of(&**c)).collect();
            let kept = p.shared.memory.known_keys();
            term.gone_since
                .retain(|k, _| kept.contains(k) && !present.contains(k));
            for k in kept {
                if present.contains(&k) || term.running.contains_key(&k) {
                    continue;
                }
                let since = *term.gone_since.entry(k.clone()).or_insert(now);
                // The sweep runs every 5 s; a held token it cannot store yet stays.
                if now - since > Duration::from_secs(120) && p.shared.memory.is_empty() {
                    failed = Some(format!(
                        "p{} still keeps memory of {k}, gone from its store for {}s",
                        p.slot,
                        (now - since).as_secs()
                    ));
                }
            }
        }
        if let Some(f) = failed {
            self.fail(f);
        }
    }

    /// Clean stop: every process stores what it holds (`Memory::flush`).
    pub async fn stop(&mut self) {
        for p in 0..self.procs.len() {
            if self.procs[p].alive {
                self.end_term(p);
            }
        }
        self.settle().await;
    }

    pub fn events_per_credential(&self) -> f64 {
        let total: u64 = self.api.events.values().sum();
        total as f64 / self.creds.len().max(1) as f64
    }

    pub fn trace_tail(&self) -> Vec<String> {
        self.trace.iter().cloned().collect()
    }
}

trait NextNow {
    fn next_now(&mut self) -> Option<Option<ObjectRef<StoredCredential>>>;
}

impl NextNow for futures::stream::BoxStream<'static, ObjectRef<StoredCredential>> {
    /// The next item if one is ready now.
    fn next_now(&mut self) -> Option<Option<ObjectRef<StoredCredential>>> {
        use futures::StreamExt;
        self.next().now_or_never()
    }
}

/// Runs `steps` steps of seed `seed` on a fresh paused runtime on this thread.
pub fn run(seed: u64, steps: u64) -> (Tally, u64, Option<Violation>, f64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut sim = Sim::new(seed, Config::for_seed(seed));
        sim.boot().await;
        while sim.tally.steps < steps && sim.violation.is_none() {
            sim.step().await;
        }
        if sim.violation.is_none() {
            sim.stop().await;
            sim.check();
        }
        sim.tally.events = sim.api.events.values().sum();
        let epc = sim.events_per_credential();
        (sim.tally.clone(), sim.hash, sim.violation.take(), epc)
    })
}

/// Steps kept for a violation's report (`EAGLE_EYE_SIM_TRACE` to see more).
fn trace_len() -> usize {
    thread_local! {
        static LEN: usize = std::env::var("EAGLE_EYE_SIM_TRACE").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    }
    LEN.with(|l| *l)
}
