//! The reconcile loop: the one place where the decision core, the token client and the
//! Kubernetes API meet. Pipeline per credential:
//! validate -> read Secrets -> finish any pending write-back -> plan -> refresh ->
//! write back the rotated refresh token -> apply the target Secret -> status.
//! In code: gather -> `decide` (pure, `crate::decide`) -> act -> report: the act layer
//! ends with an `Outcome`, whose status and Events `crate::outcome` words (pure) and
//! `report.rs` applies.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::SignedDuration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tracing::{instrument, warn};

use crate::crd::{EagleEyeCredential, parse_duration};
use crate::metrics::{self, Metrics};
use crate::schedule;
use crate::secrets::{SecretError, kube_reason};
use crate::status::Lifetimes;
use crate::token::TokenClient;

mod cache;
mod census;
mod consumers;
mod held;
mod index;
mod known;
mod leadership;
mod memory;
mod parked;
mod projection;
mod reconciler;
mod report;
mod restarts;
mod revoke;
mod seats;
mod secret_news;
mod sweep;

pub use projection::{
    LeanCredential, StoredCredential, credential_event, project, stored_event, stored_ref,
};

pub use cache::Reads;
pub use census::Census;
pub use held::Held;
pub use index::{Index, role};
pub use known::Known;
pub use leadership::{Leadership, LeaseFeed};
pub use memory::Memory;
pub use memory::Refusal;
pub use secret_news::SecretNews;
pub use sweep::deleted_credentials;

use reconciler::Reconciler;

pub const FIELD_MANAGER: &str = "eagle-eye-operator";

use crate::refresh::whole_seconds;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Where a credential's `authUrl` may point (`--allowed-auth-hosts`,
    /// `--allow-insecure-http`): checked before any secret leaves the process.
    pub auth_policy: crate::token::AuthPolicy,
    pub lifetimes: Lifetimes,
    /// This process's identity (unique per process): the holder named in spend intents.
    pub identity: String,
    /// How long past the token call's own limit a spend intent binds other holders.
    pub in_flight_grace: jiff::SignedDuration,
    /// Pods of spec.consumers are nudged only with `--nudge-pods`, at this process's rate.
    pub pod_nudge: Option<Arc<crate::nudge::Limiter>>,
    /// Workloads of spec.consumers.restart are restarted only with `--restart-workloads`.
    pub workload_restart: Option<Arc<crate::nudge::Limiter>>,
    /// How long after a deletion a failed revocation (spec.revokeOnDelete) is retried.
    pub revoke_retry_for: jiff::SignedDuration,
    /// What a reconcile takes the time to be: the system clock, or a fixed one in unit tests
    /// so that the waits it asks for are exact.
    pub clock: fn() -> jiff::Timestamp,
}

impl Settings {
    /// The time a reconcile takes it to be (`clock`).
    pub fn now(&self) -> jiff::Timestamp {
        (self.clock)()
    }
}

pub struct Context {
    pub client: Client,
    /// Who publishes Events.
    pub reporter: Reporter,
    /// The Event series published, so that a repeat counts on its first object.
    pub event_series: crate::event_series::Series,
    pub tokens: TokenClient,
    pub settings: Settings,
    pub store: Store<StoredCredential>,
    /// Every controller's store (one per watched namespace, or one for all).
    pub all_stores: Vec<Store<StoredCredential>>,
    pub metrics: Arc<Metrics>,
    /// What the process remembers of each credential (answers held first of all).
    pub memory: Memory,
    /// This controller term's number, for its census of claims (see `memory`).
    term: u64,
    /// When a request last found the API server unreachable, or the process started (see
    /// `intent::verdict_after_outage`).
    pub(crate) reach: Arc<crate::api_requests::Reachability>,
    /// Whether this replica may spend a refresh token right now.
    pub leadership: Leadership,
    /// What this process last saw or wrote of each credential.
    pub known: Arc<Known>,
    /// Secrets read (or written) since they last changed, and this process's own writes.
    pub reads: Arc<Reads>,
    /// Which credentials of `store` name which Secret.
    pub index: Arc<Index>,
    /// This term's census of claims, shared by every controller of the term.
    census: Arc<Census>,

    /// Credentials waiting for a token-call slot outside the controller's seats.
    pub parked: Arc<parked::Parked>,
    /// The controller's reconcile seats, shared fairly between namespaces.
    seats: Arc<seats::Seats>,
    /// Reconciles at once that use a call slot granted while parked and take no seat
    /// (`None`: any number), beyond which such a one takes a seat as well.
    seatless: Option<Arc<tokio::sync::Semaphore>>,
    /// Turned true when the controller stops (`Context::stop`): no waiting credential is
    /// granted a seat any more, and credentials parked for a call slot give up at once, so
    /// that stopping (and storing what is held) waits only for the reconciles already seated.
    stop: tokio::sync::watch::Sender<bool>,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The reconciles `parked` wakes, for the controller to take once (`take_wakes`).
    wakes: Mutex<Option<futures::channel::mpsc::UnboundedReceiver<parked::Wake>>>,
}

/// What every controller of the process shares, across leadership terms.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub memory: Memory,
    pub leadership: Leadership,
    pub known: Arc<Known>,
    pub reads: Arc<Reads>,
    /// When a request last found the API server unreachable.
    pub reach: Arc<crate::api_requests::Reachability>,
    /// `--credential-selector`, when this process is one shard of several.
    pub shard: Option<String>,
}

impl Context {
    pub fn new(
        client: Client,
        reporter: Reporter,
        tokens: TokenClient,
        settings: Settings,
        store: Store<StoredCredential>,
        all_stores: Vec<Store<StoredCredential>>,
        shared: Shared,
    ) -> Self {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (parked, wakes) = parked::Parked::new(stopping.clone());
        let census = Arc::new(Census::default());
        census.watched_by(store.clone(), parked.clone());
        let seats = seats::Seats::new(
            DEFAULT_SEATS,
            store.clone(),
            parked.clone(),
            stopping.clone(),
        );
        Context {
            stop,
            stopping,
            parked,
            seats,
            seatless: None,
            wakes: Mutex::new(Some(wakes)),
            client,
            reporter,
            event_series: Default::default(),
            tokens,
            settings,
            store,
            all_stores,
            metrics: shared.metrics,
            term: shared.memory.term(),
            reach: shared.reach,
            census,
            memory: shared.memory,
            leadership: shared.leadership,
            known: shared.known,
            reads: shared.reads,
            index: Arc::default(),
        }
    }
}

/// How often a controller looks whether a census completed by itself (`Context::census_looks`).
const CENSUS_LOOK: Duration = Duration::from_secs(10);

/// How long after a term's first list a credential that cannot be read holds back the refreshes of the
/// others (see `Context::census_pending`).
const CENSUS_PATIENCE: Duration = Duration::from_secs(120);

/// Reconciles at once per controller, unless `Context::with_seats` says otherwise.
pub const DEFAULT_SEATS: usize = 16;

impl Context {
    /// `seats` reconciles at once, shared fairly between namespaces.
    pub fn with_seats(mut self, seats: usize) -> Self {
        self.seats = seats::Seats::new(
            seats,
            self.store.clone(),
            self.parked.clone(),
            self.stopping.clone(),
        );
        self
    }

    /// At most `seatless` reconciles at once use a call slot granted while parked without
    /// a seat (`None`: no bound).
    pub fn with_seatless(mut self, seatless: Option<usize>) -> Self {
        self.seatless = seatless.map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
        self
    }

    /// Whether credential `key` (`namespace/name`) is watched here and not being deleted.
    pub(crate) fn is_alive(&self, key: &str) -> bool {
        self.watched(key)
            .is_some_and(|c| c.metadata.deletion_timestamp.is_none())
    }

    /// Credential `key` (`namespace/name`) as a store of this term holds it.
    fn watched(&self, key: &str) -> Option<Arc<StoredCredential>> {
        let (ns, name) = key.split_once('/')?;
        let at = kube::runtime::reflector::ObjectRef::new(name).within(ns);
        self.all_stores.iter().find_map(|store| store.get(&at))
    }

    /// Until every credential of this term that calls the auth server at `auth_url` has
    /// been read once (`memory`'s census), the first still unread: nothing is spent or
    /// revoked before, since a token one of them rotated out in an earlier term could
    /// otherwise pass for live (a refresh token works only at the server that issued it).
    /// The credentials to read are listed once per term, per auth server, from the stores'
    /// first list, and taken off as they are read: each look costs what was read since the
    /// last. A credential whose reconcile still fails `CENSUS_PATIENCE` after that list
    /// (its Secret refused to the operator, say) no longer holds the others back: one tenant
    /// cannot stop every refresh.
    pub(crate) async fn census_pending(&self, auth_url: &url::Url) -> Option<String> {
        let destination = crate::token::Destination::of(auth_url).to_string();
        if lock(&self.census.done).contains(&destination) {
            return None;
        }
        // (Not `Store::wait_until_ready`: its future wakes only its last poller.)
        for listed in &self.census.listed {
            // An error means the watch is gone: the controller is stopping.
            let _ = listed.clone().wait_for(|listed| *listed).await;
        }
        self.census_first_unread(&destination)
    }

    /// As [`Context::census_pending`], for credential `waiter`, which is woken when the
    /// census of that auth server completes.
    pub(crate) async fn census_pending_for(
        &self,
        auth_url: &url::Url,
        waiter: ObjectRef<StoredCredential>,
    ) -> Option<String> {
        let unread = self.census_pending(auth_url).await?;
        let destination = crate::token::Destination::of(auth_url).to_string();
        self.census
            .wait(destination, waiter, &self.parked)
            .then_some(unread)
    }

    /// At the end of every reconcile, and at the term's look: completes the census of every
    /// auth server someone waits for, if it can, and wakes those waiting, in whichever
    /// controller of the term they wait. O(what was read since the last look, times the
    /// stores); one lock when no one waits.
    pub(crate) fn census_advance(&self) {
        let destinations: Vec<String> = lock(&self.census.waiting).keys().cloned().collect();
        for destination in destinations {
            if self.census_first_unread(&destination).is_none() {
                let woken = lock(&self.census.waiting).remove(&destination);
                for (credential, parked) in woken.into_iter().flatten() {
                    parked.wake(credential);
                }
            }
        }
    }

    /// Looks at the term's census every `CENSUS_LOOK` while this context lives (end the
    /// future to stop; one per term is enough, the census being shared): a census completed
    /// with no reconcile ending after it (its last unread credential deleted before it had
    /// the finalizer or relabelled out of this shard, its patience run out, or completed
    /// within a reconcile still running) wakes its waiters within that, where they would
    /// otherwise wait for their own look-again.
    pub async fn census_looks(self: Arc<Self>) {
        let ctx = Arc::downgrade(&self);
        drop(self);
        loop {
            tokio::time::sleep(CENSUS_LOOK).await;
            match ctx.upgrade() {
                Some(ctx) => ctx.census_advance(),
                None => return,
            }
        }
    }

    /// The first credential calling `destination` not read yet in this term (once the
    /// stores are listed), or `None` once every one was: the census is then complete.
    fn census_first_unread(&self, destination: &str) -> Option<String> {
        if lock(&self.census.done).contains(destination) {
            return None;
        }
        let mut census = lock(&self.census.queues);
        let queues = census.get_or_insert_with(|| {
            let mut queues: HashMap<String, VecDeque<String>> = HashMap::new();
            for c in self.all_stores.iter().flat_map(|s| s.state()) {
                let counted =
                    c.metadata.deletion_timestamp.is_none() || projection::has_finalizer(&*c);
                let Ok(url) = url::Url::parse(&c.auth_url) else {
                    continue;
                };
                if counted {
                    let to = crate::token::Destination::of(&url).to_string();
                    queues.entry(to).or_default().push_back(key(&*c));
                }
            }
            queues
        });
        let listed_at = *self.census.listed_at.get_or_init(tokio::time::Instant::now);
        let queue = queues.entry(destination.to_owned()).or_default();
        while let Some(first) = queue.front() {
            // Read, gone, or deleted without this operator's finalizer (another's may keep it
            // listed for ever, and nothing of it is read any more): as when listed.
            let counted = self.watched(first).is_some_and(|c| {
                c.metadata.deletion_timestamp.is_none() || projection::has_finalizer(&*c)
            });
            if self.memory.is_read(first, self.term) || !counted {
                queue.pop_front();
                continue;
            }
            // Still failing for a reason of its own once the patience has run (its Secret
            // refused to the operator, say): it no longer holds the others back. One merely
            // not reached yet (a slow cold start) still does, and so does one whose failures
            // were the API server's (an outage, throttling) or came before the patience ran
            // (a process paused): it is read again at the end of its backoff (30 s at most).
            let stuck = self
                .memory
                .get(first, |e| e.failed_at())
                .flatten()
                .is_some_and(|at| at >= listed_at + CENSUS_PATIENCE);
            if stuck {
                warn!(unread = %first, %destination, "a credential that cannot be read no longer holds back refreshes: a copy of a token it rotated out would not be recognised");
                queue.pop_front();
                continue;
            }
            return Some(first.clone());
        }
        lock(&self.census.done).insert(destination.to_owned());
        None
    }

    /// The index of `store`'s credentials by the Secrets they name, kept by the watch that
    /// fills the store (without it, no credential names any Secret).
    pub fn with_index(mut self, index: Arc<Index>) -> Self {
        self.index = index;
        self
    }

    /// Reconciles every credential naming Secret `name` of `ns` (someone else changed it).
    pub(crate) fn wake_naming(&self, ns: &str, name: &str) {
        for credential in self.index.naming(ns, name, u8::MAX) {
            self.parked.wake(credential);
        }
    }

    /// The term's census, shared with the term's other controllers (without it, this
    /// controller's own, with the stores taken as listed).
    pub fn with_census(mut self, census: Arc<Census>) -> Self {
        census.watched_by(self.store.clone(), self.parked.clone());
        self.census = census;
        self
    }

    /// Reconciles credential `key` (`namespace/name`), whichever controller of the term
    /// watches it.
    pub(crate) fn wake_credential(&self, key: &str) {
        let Some((ns, name)) = key.split_once('/') else {
            return;
        };
        let credential = kube::runtime::reflector::ObjectRef::new(name).within(ns);
        if let Some(parked) = self.census.parked_for(&credential) {
            parked.wake(credential);
        }
    }

    /// The controller stops: see `Context::stop`'s field.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The reconciles woken by granted call slots (`Controller::reconcile_on`); once.
    pub fn take_wakes(
        &self,
    ) -> futures::stream::BoxStream<'static, kube::runtime::reflector::ObjectRef<StoredCredential>>
    {
        use futures::StreamExt;
        match lock(&self.wakes).take() {
            Some(wakes) => wakes.boxed(),
            None => futures::stream::empty().boxed(),
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    // Kubernetes errors show as `kube_reason`: the requests behind these carried tokens.
    #[error("writing the status of {0}: {reason}", reason = kube_reason(.1))]
    Status(String, kube::Error),
    #[error("applying target Secret {0}: {reason}", reason = kube_reason(.1))]
    Target(String, kube::Error),
    #[error("storing the rotated refresh token in Secret {0}: {reason}", reason = kube_reason(.1))]
    WriteBack(String, kube::Error),
    #[error("removing the revoke-on-delete finalizer of {0}: {reason}", reason = kube_reason(.1))]
    Finalizer(String, kube::Error),
    #[error("recording the spend intent on Secret {0} (so nothing was spent): {reason}", reason = kube_reason(.1))]
    Intent(String, kube::Error),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("reconciling {0} panicked (a bug: please report it)")]
    Panicked(String),
}

impl Error {
    /// The Kubernetes API failure behind it, if there is one.
    fn kube(&self) -> Option<&kube::Error> {
        match self {
            Error::Status(_, e)
            | Error::Target(_, e)
            | Error::WriteBack(_, e)
            | Error::Finalizer(_, e)
            | Error::Intent(_, e) => Some(e),
            Error::Secret(SecretError::Api { source, .. }) => Some(source),
            Error::Secret(_) | Error::Panicked(_) => None,
        }
    }

    /// Whether the failure is the credential's own (a Secret refused to the operator, say),
    /// not the API server's: an answer 4xx but a conflict or throttling, or no request at all.
    /// An outage, a timeout or a 429 would fail every credential alike.
    pub fn is_own(&self) -> bool {
        match self.kube() {
            Some(kube::Error::Api(s)) => {
                (400..500).contains(&s.code) && ![409, 429].contains(&s.code)
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Whether the API server refused a write over a version that changed (409).
    pub fn is_conflict(&self) -> bool {
        matches!(self.kube(), Some(kube::Error::Api(s)) if s.code == 409)
    }

    /// What went wrong, in words safe to show (see `secrets::kube_reason`).
    pub fn reason(&self) -> String {
        self.kube().map_or_else(|| self.to_string(), kube_reason)
    }
}

/// Kubernetes API failures back off from 1 s to at most 30 s: a rotated token may be
/// waiting to be stored, so the retry must not wait long.
pub fn error_policy(cr: Arc<StoredCredential>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.memory.with(&key(&*cr), |e| e.api_failed(err.is_own()));
    let wait = schedule::backoff(failures, jitter(&*cr)).min(MAX_API_RETRY);
    warn!(credential = %key(&*cr), error = %err, attempt = failures, retry_in = ?wait, "reconcile failed; retrying");
    Action::requeue(wait)
}

const MAX_API_RETRY: Duration = Duration::from_secs(30);

/// Reconciles `cr` once it holds one of the controller's seats. Seats are shared fairly
/// between namespaces (`crate::fair`): a freed seat goes to the waiting namespace holding
/// the fewest, so a namespace with a thousand credentials due at once, or reconciles that
/// take long, delays another namespace's next reconcile by one reconcile at most (one that
/// may wait up to half a second for a call slot in its seat), not by its whole backlog.
/// A reconcile with no seat for it ends at once, its credential keeping a place in the
/// queue; it is woken when the queue grants it a seat (`seats`). Waiting holds nothing
/// read and no task.
pub async fn reconcile(cr: Arc<StoredCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    // One woken to use a call slot granted to it skips the queue: it holds a slot others
    // wait for. Past the call its reconcile goes on (storing, publishing, nudging) and
    // the slot goes to the next: `seatless` bounds such reconciles, so that they never
    // take every place kube-runtime runs (`operator`); past it, one waits for a seat too.
    let key = key(&*cr);
    let _seat = match seatless(ctx.parked.has_grant(&key), ctx.seatless.as_ref()) {
        Some(permit) => (None, permit),
        None => match ctx.seats.take(&key, &cr.namespace().unwrap_or_default()) {
            Some(seat) => (Some(seat), None),
            None => return Ok(Action::await_change()),
        },
    };
    let result = Box::pin(reconcile_seated(cr, ctx.clone())).await;
    // A slot granted to it and not used (not due after all, an API error) goes back now.
    ctx.parked.release(&key);
    // However it ended (deleted, being deleted, failed), this credential may have been the
    // last one a census waited for.
    ctx.census_advance();
    result
}

/// Whether a reconcile goes without a seat: it was granted a call slot (`granted`) and
/// the `bound` of such reconciles has room, whose permit it then holds.
fn seatless(
    granted: bool,
    bound: Option<&Arc<tokio::sync::Semaphore>>,
) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
    match (granted, bound) {
        (false, _) => None,
        (true, None) => Some(None),
        (true, Some(bound)) => bound.clone().try_acquire_owned().ok().map(Some),
    }
}

#[instrument(skip_all, fields(credential = %key(&*cr)))]
async fn reconcile_seated(cr: Arc<StoredCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The cached object may predate this process's last status write (a reconcile
    // triggered by a Secret's change can outrun the watch). Status is rebuilt from the
    // object, so a stale copy would roll the status back: read it fresh unless the cache
    // holds the status last written or seen here.
    // A copy trimmed in the store (padded target metadata), or whose spec or status was
    // too large to keep, is read whole as well (though lean: no metadata beyond what the
    // store keeps). The copy kube-runtime handed over is the store's when the reconcile was
    // queued, maybe long before: the store's copy now is the one to judge (none: deleted,
    // or left this shard).
    let latest = ctx
        .store
        .get(&ObjectRef::from_obj(&*cr))
        .filter(|copy| ctx.known.is_current(&**copy) && !projection::is_trimmed(&**copy))
        .and_then(|copy| copy.credential());
    let fresh = if let Some(latest) = latest {
        Ok(Some(latest))
    } else {
        projection::api(ctx.client.clone(), &cr.namespace().unwrap_or_default())
            .get_opt(&cr.name_any())
            .await
            .map(|read| read.map(EagleEyeCredential::from))
    };
    let fresh = match fresh {
        Ok(Some(fresh)) => fresh,
        Ok(None) => {
            ctx.metrics.forget(&labels(&*cr));
            ctx.memory.forget(&key(&*cr));
            // Deleted while parked: the read kept for it goes.
            let ns = cr.namespace().unwrap_or_default();
            ctx.reads.take_parked(&ns, &cr.refresh_secret, &key(&*cr));
            // A token held for a deleted credential still belongs in its Secret.
            if let Some(held) = ctx.memory.take(&key(&*cr)) {
                ctx.memory
                    .store_or_keep(&ctx.client, &key(&*cr), held)
                    .await;
            }
            return Ok(Action::await_change());
        }
        Err(e) => return Err(Error::Status(key(&*cr), e)),
    };
    if fresh.metadata.deletion_timestamp.is_some() {
        return Reconciler::new(&fresh, &ctx).on_deletion().await;
    }
    let fresh = revoke::keep_finalizer(fresh, &ctx).await;
    // Nothing a user writes may end the process: a panic (a bug) fails this reconcile only.
    // A held answer stays in the held map until it is stored; one received in this very
    // reconcile lives on its stack until `store_rotated`, where no user input is parsed.
    let run = std::panic::AssertUnwindSafe(Reconciler::new(&fresh, &ctx).run());
    let result = match futures::FutureExt::catch_unwind(run).await {
        Ok(result) => result,
        Err(_) => {
            tracing::error!(credential = %key(&*cr), "reconcile panicked; retrying with backoff");
            Err(Error::Panicked(key(&*cr)))
        }
    };
    if result.is_ok() {
        ctx.memory.with(&key(&*cr), |e| e.api_succeeded());
    }
    result
}

/// Checks what the API server cannot: the duration syntax and the operator's own policy
/// (`--allowed-auth-hosts`, `--allow-insecure-http`), before any secret is read for sending.
fn validate(
    cr: &EagleEyeCredential,
    settings: &Settings,
) -> Result<(url::Url, SignedDuration), String> {
    validate_with(cr, &settings.auth_policy)
}

fn validate_with(
    cr: &EagleEyeCredential,
    policy: &crate::token::AuthPolicy,
) -> Result<(url::Url, SignedDuration), String> {
    let spec = &cr.spec;
    // The same check, in the same words, as authorize's and the token client's; it never
    // quotes a URL that could carry a password.
    let url = crate::token::AuthUrl::parse(&spec.auth_url, policy)
        .map_err(|e| e.to_string())?
        .into_url();
    let target = crate::target::target_name(cr);
    for (field, name) in [
        ("clientSecretRef.name", &spec.client_secret_ref.name),
        (
            "refreshTokenSecretRef.name",
            &spec.refresh_token_secret_ref.name,
        ),
        ("the target Secret's name", &target),
    ] {
        if !is_secret_name(name) {
            return Err(format!(
                "{field} {name:?} is not a Secret name (lowercase letters, digits, '-' and '.', at most 253)"
            ));
        }
    }
    let refresh_before: SignedDuration = parse_duration(&spec.refresh_before).ok_or_else(|| {
        format!(
            "refreshBefore {:?} is not a duration such as 30m or 1h",
            spec.refresh_before
        )
    })?;
    if refresh_before.is_negative() {
        return Err("refreshBefore must not be negative".into());
    }
    Ok((url, refresh_before))
}

/// A DNS-1123 subdomain, as Secret names are: the API paths the operator builds from a
/// name must name that Secret and no other.
fn is_secret_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

/// Another credential that references the same refresh-token Secret and came first (by
/// creation time, then name) owns it.
fn other_claimant(ctx: &Context, cr: &EagleEyeCredential) -> Option<String> {
    let order = |c: &ObjectMeta| (c.creation_timestamp.as_ref().map(|t| t.0), c.name.clone());
    let ns = cr.namespace().unwrap_or_default();
    let wanted = &cr.spec.refresh_token_secret_ref.name;
    ctx.index
        .names(&ns, wanted, role::REFRESH)
        .into_iter()
        .filter(|name| Some(name) != cr.metadata.name.as_ref())
        .filter_map(|name| ctx.store.get(&ObjectRef::new(&name).within(&ns)))
        .filter(|o| {
            o.metadata.deletion_timestamp.is_none()
                // The index may be a step ahead of or behind the object read here.
                && *o.refresh_secret == **wanted
                && order(&o.metadata) < order(&cr.metadata)
        })
        .map(|o| o.name_any())
        .min()
}

/// A stable number in [0, 1) per credential, so restarts do not bunch refreshes together.
pub(crate) fn jitter(cr: &impl Resource) -> f64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cr.meta().uid.hash(&mut h);
    (h.finish() % 10_000) as f64 / 10_000.0
}

/// A one-way fingerprint of everything a refresh sends, so that a login the server refused
/// is not sent again until some part of it changes.
pub(crate) fn login_fingerprint(
    auth_url: &url::Url,
    scope: &str,
    creds: &crate::token::ClientCredentials,
    refresh_token: &str,
) -> String {
    use secrecy::ExposeSecret;
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        auth_url.as_str(),
        scope,
        &creds.id,
        creds.secret.expose_secret(),
        refresh_token,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn labels(cr: &impl Resource) -> metrics::Credential {
    metrics::Credential {
        namespace: cr.namespace().unwrap_or_default().into(),
        credential: cr.name_any().into(),
    }
}

fn key(cr: &impl Resource) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

use crate::lock;

#[cfg(test)]
mod tests {
    use super::{is_secret_name, login_fingerprint, validate_with};

    #[test]
    fn only_a_refusal_of_the_credentials_own_counts_as_its_failure_not_the_api_servers() {
        let answered = |code: u16| {
            let status = kube::core::Status::failure("no", "Reason").with_code(code);
            let source = kube::Error::Api(status.boxed());
            super::Error::Secret(crate::secrets::SecretError::Api {
                name: "s".into(),
                source,
            })
        };
        for own in [400, 403, 404, 422] {
            assert!(answered(own).is_own(), "{own}");
        }
        for servers in [409, 429, 500, 503, 504] {
            assert!(!answered(servers).is_own(), "{servers}");
        }
        let unreachable = kube::Error::Service("connection refused".into());
        assert!(!super::Error::Status("c".into(), unreachable).is_own());
        assert!(super::Error::Panicked("c".into()).is_own());
    }

    #[test]
    fn secret_names_are_dns_subdomains_so_no_path_names_another_secret() {
        for ok in ["een-token", "a", "a.b-c", "x0"] {
            assert!(is_secret_name(ok), "{ok}");
        }
        for bad in [
            "", "refresh?", "a/b", "..", "a..b", "-a", "a-", "A", "a b", "a%2fb",
        ] {
            assert!(!is_secret_name(bad), "{bad}");
        }
        assert!(!is_secret_name(&"a".repeat(254)));
    }
    use crate::crd::EagleEyeCredential;
    use crate::token::{AuthPolicy, EAGLE_EYE_AUTH_HOSTS};

    #[test]
    fn reconciles_using_a_granted_call_slot_go_seatless_only_up_to_their_bound() {
        use std::sync::Arc;
        let bound = Arc::new(tokio::sync::Semaphore::new(1));
        assert!(
            super::seatless(false, Some(&bound)).is_none(),
            "no grant: a seat"
        );
        let first = super::seatless(true, Some(&bound)).expect("room: no seat");
        assert!(first.is_some(), "holds the bound's permit");
        assert!(
            super::seatless(true, Some(&bound)).is_none(),
            "past the bound: a seat as well"
        );
        drop(first);
        assert!(super::seatless(true, Some(&bound)).is_some());
        assert!(
            matches!(super::seatless(true, None), Some(None)),
            "no bound"
        );
    }

    fn with_auth_url(url: &str) -> EagleEyeCredential {
        let mut cr = EagleEyeCredential::test();
        cr.spec.auth_url = url.into();
        cr
    }

    #[test]
    fn an_auth_host_outside_the_allow_list_is_an_invalid_spec_naming_the_flag() {
        let policy = AuthPolicy::new(&[EAGLE_EYE_AUTH_HOSTS], false).unwrap();
        assert!(
            validate_with(&with_auth_url("https://auth.eagleeyenetworks.com"), &policy).is_ok()
        );
        let err =
            validate_with(&with_auth_url("https://evil.example:8443/x"), &policy).unwrap_err();
        assert!(
            err.contains("--allowed-auth-hosts") && err.contains("evil.example"),
            "{err}"
        );
    }

    #[test]
    fn an_allowed_auth_host_on_another_port_is_an_invalid_spec_naming_the_flag_and_port() {
        let policy = AuthPolicy::new(&[EAGLE_EYE_AUTH_HOSTS], false).unwrap();
        let url = "https://auth.eagleeyenetworks.com:8443";
        let err = validate_with(&with_auth_url(url), &policy).unwrap_err();
        assert!(
            err.contains("--allowed-auth-hosts") && err.contains("auth.eagleeyenetworks.com:8443"),
            "{err}"
        );
    }

    #[test]
    fn what_the_token_client_would_refuse_is_an_invalid_spec() {
        let policy = AuthPolicy::any_host(true);
        for (url, words) in [
            ("https://h/?x=1", "query"),
            ("https://h/#f", "fragment"),
            ("https://u:hunter2@h", "user name or password"),
            ("http://auth.example.com", "loopback"),
        ] {
            let err = validate_with(&with_auth_url(url), &policy).unwrap_err();
            assert!(
                err.starts_with("auth URL ") && err.contains(words),
                "{url}: {err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
        }
        let strict = AuthPolicy::any_host(false);
        let err = validate_with(&with_auth_url("http://127.0.0.1:9"), &strict).unwrap_err();
        assert!(err.contains("--allow-insecure-http"), "{err}");
        assert!(validate_with(&with_auth_url("http://127.0.0.1:9"), &policy).is_ok());
    }

    #[test]
    fn a_refused_login_counts_as_new_once_any_part_of_it_changes() {
        let fp = |url: &str, scope: &str, id: &str, secret: &str, token: &str| {
            let creds = crate::token::ClientCredentials {
                id: id.into(),
                secret: secret.to_owned().into(),
            };
            login_fingerprint(&url.parse().unwrap(), scope, &creds, token)
        };
        let base = fp("https://auth.example", "vms.all", "id", "secret", "rt");
        assert_eq!(
            base,
            fp("https://auth.example", "vms.all", "id", "secret", "rt")
        );
        for other in [
            fp("https://auth2.example", "vms.all", "id", "secret", "rt"),
            fp("https://auth.example", "vms.read", "id", "secret", "rt"),
            fp("https://auth.example", "vms.all", "id2", "secret", "rt"),
            fp("https://auth.example", "vms.all", "id", "secret2", "rt"),
            fp("https://auth.example", "vms.all", "id", "secret", "rt2"),
            // Parts are length-prefixed: moving a character between them is a change.
            fp("https://auth.example", "vms.all", "i", "dsecret", "rt"),
        ] {
            assert_ne!(base, other);
        }
        assert!(!base.contains("secret") && base.len() == 16);
    }
}
