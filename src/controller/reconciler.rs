//! The interpreter of one reconcile: it reads what `decide` needs (gather), then carries
//! out the decision through `crate::refresh`, performing each effect that asks for against
//! the Kubernetes API, the token client and the process's memory. It decides nothing.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use secrecy::{ExposeSecret, SecretString};
use tracing::debug;

use crate::crd::{EagleEyeCredential, EagleEyeCredentialStatus};
use crate::decide::{Observed, decide};
use crate::intent;
use crate::outcome::Outcome;
use crate::refresh::{End, Facts, NotNow, Refresh, World};
use crate::schedule::{self, Inputs};
use crate::secrets::{self, SecretError, StoredToken, WriteBack};
use crate::spent;
use crate::target::{self, Ownership, Publication};
use crate::token::{CallSlot, ClientCredentials, TokenError, TokenGrant};

use futures::FutureExt;

use super::cache;
use super::held::Held;
use super::memory::Refusal;
use super::{
    Context, Error, FIELD_MANAGER, jitter, key, labels, login_fingerprint, other_claimant,
    validate, whole_seconds,
};

pub(super) struct Reconciler<'a> {
    pub(super) cr: &'a EagleEyeCredential,
    pub(super) ctx: &'a Context,
    pub(super) key: String,
    pub(super) secrets: Api<Secret>,
    pub(super) status: EagleEyeCredentialStatus,
    pub(super) now: Timestamp,
    /// Issue and expiry times of the access token published (read, or written this round).
    pub(super) published_token: Option<(Timestamp, Timestamp)>,
    /// A nudge of consuming pods was cut short: requeue soon to go on.
    pub(super) nudge_unfinished: bool,
    /// The read of the refresh token this round made (or took as kept), which a credential
    /// that parks (for a call slot or the census) keeps for its next reconcile.
    refresh_read: std::sync::Mutex<Option<cache::Ticket<'a>>>,
}

/// How long a due refresh waits for a token-call slot while holding its controller seat
/// before it parks: when many credentials come due at once (a cold start's census
/// completes), each park (a task, a status write, a kept read) costs more than a moment's
/// wait, and slots turn over in tens of milliseconds; short enough that credentials stuck
/// behind a silent destination cost another namespace at most this per seat they take.
const WAIT_IN_SEAT: std::time::Duration = std::time::Duration::from_millis(500);

impl<'a> Reconciler<'a> {
    pub(super) fn new(cr: &'a EagleEyeCredential, ctx: &'a Context) -> Self {
        // Invariant: the CRD is namespaced, so every object has a namespace.
        let ns = cr.namespace().unwrap_or_default();
        let mut status = cr.status.clone().unwrap_or_default();
        status.observed_generation = cr.metadata.generation;
        Reconciler {
            cr,
            ctx,
            key: key(cr),
            secrets: Api::namespaced(ctx.client.clone(), &ns),
            status,
            now: whole_seconds(ctx.settings.now()),
            published_token: None,
            nudge_unfinished: false,
            refresh_read: std::sync::Mutex::default(),
        }
    }

    /// The stored refresh token; Kubernetes API failures are errors, a missing Secret or
    /// key is a result to report. The reconcile after a park (for a call slot or the
    /// census) uses what was read before it, as long as the Secret has not changed since
    /// and the read is recent (`cache::Ticket::keep_parked`); any other reads afresh, and so
    /// does a non-rotating token's (its spend writes no intent over the version read: the
    /// credential may have been switched to `NonRotating` while it waited).
    async fn read_refresh_token(&self) -> Result<Result<StoredToken, SecretError>, Error> {
        let r = &self.cr.spec.refresh_token_secret_ref;
        let ns = self.cr.namespace().unwrap_or_default();
        let kept = self.ctx.reads.take_parked(&ns, &r.name, &self.key);
        if let Some((read, ticket)) =
            kept.filter(|_| self.rotation() != schedule::Rotation::NonRotating)
        {
            debug!("using the refresh token read before parking");
            *super::lock(&self.refresh_read) = Some(ticket);
            return Ok(secrets::refresh_token_in(read, &r.name, &r.key, self.now));
        }
        let ticket = self.ctx.reads.reading(&ns, &r.name);
        match secrets::read_refresh_token(&self.secrets, &r.name, &r.key, self.now).await {
            Err(e @ SecretError::Api { .. }) => Err(e.into()),
            other => {
                *super::lock(&self.refresh_read) = Some(ticket);
                Ok(other)
            }
        }
    }

    /// The target Secret's metadata (see `cache::trimmed`), if it exists: as last read or
    /// written when it has not changed since (its absence too).
    async fn target(&self) -> Result<Option<Secret>, SecretError> {
        let name = target::target_name(self.cr);
        let ns = self.cr.namespace().unwrap_or_default();
        let ticket = match self.ctx.reads.target(&ns, &name) {
            Ok(target) => return Ok(target.map(|t| (*t).clone())),
            Err(ticket) => ticket,
        };
        let target = self.read_whole_target().await?.map(|s| cache::trimmed(&s));
        ticket.keep_target(target.clone().map(Arc::new));
        Ok(target)
    }

    /// The target Secret as the API server has it, data included.
    async fn read_whole_target(&self) -> Result<Option<Secret>, SecretError> {
        let name = target::target_name(self.cr);
        self.secrets
            .get_opt(&name)
            .await
            .map_err(|source| SecretError::Api { name, source })
    }

    /// What `target` publishes, if it is a target this credential may write.
    fn published_in(
        &self,
        target: Option<&Secret>,
        input_of: Option<&str>,
    ) -> Option<schedule::Published> {
        match target::ownership(self.cr, target, input_of, FIELD_MANAGER) {
            Ownership::Owned | Ownership::Adopted => target.and_then(target::published),
            Ownership::Absent | Ownership::Conflict(_) => None,
        }
    }

    /// Another credential of this namespace that reads a Secret of the target's name (see
    /// `target::ownership`).
    fn input_of(&self) -> Option<String> {
        let name = target::target_name(self.cr);
        let ns = self.cr.namespace().unwrap_or_default();
        self.ctx
            .index
            .names(&ns, &name, super::role::CLIENT | super::role::REFRESH)
            .into_iter()
            .find(|c| Some(c) != self.cr.metadata.name.as_ref())
    }

    fn schedule_inputs(
        &self,
        published: Option<schedule::Published>,
        stored: &StoredToken,
        refresh_before: SignedDuration,
    ) -> Inputs {
        Inputs {
            now: self.now,
            renew: crate::renew::wanted(
                self.cr.spec.renew_request.as_deref(),
                self.status.renew.as_ref(),
            ),
            published,
            stored_fingerprint: stored.fingerprint.clone(),
            rotation: self.rotation(),
            refresh_before,
            failures: self.status.failed_refresh_attempts,
            last_failure: self.status.last_failure_time.as_ref().map(|t| t.0),
            retry_not_before: self.retry_not_before(),
            jitter: jitter(self.cr),
            refresh_token_idle_end: (self.rotation() != schedule::Rotation::NonRotating)
                .then(|| stored.chain.token_issued_at + self.ctx.settings.lifetimes.idle),
        }
    }

    /// Reads everything once: both Secrets, the published state, what this process holds
    /// and remembers. Kubernetes API failures are errors (retried with backoff); anything
    /// else is a fact for `decide`.
    async fn gather(&self) -> Result<Facts, Error> {
        let spec = &self.cr.spec;
        let r = &spec.refresh_token_secret_ref;
        let ns = self.cr.namespace().unwrap_or_default();
        let stored = self.read_refresh_token().await?;
        let pending = self.ctx.memory.peek_for(&self.key, &ns, &r.name, self.now);
        let validated = validate(self.cr, &self.ctx.settings);
        let c = &spec.client_secret_ref;
        let (id_key, secret_key) = (&c.client_id_key, &c.client_secret_key);
        let keys = format!("{id_key}/{secret_key}");
        let creds = match self.ctx.reads.client(&ns, &c.name, &keys) {
            Ok(creds) => Ok(creds),
            Err(ticket) => {
                match secrets::read_client_at(&self.secrets, &c.name, id_key, secret_key).await {
                    Err(e @ SecretError::Api { .. }) => return Err(e.into()),
                    Ok((creds, version)) => {
                        ticket.keep_client(&keys, creds.clone(), version.as_deref());
                        Ok(creds)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let target = self.target().await?;
        let input_of = self.input_of();
        let ownership =
            target::ownership(self.cr, target.as_ref(), input_of.as_deref(), FIELD_MANAGER);
        let target_conflict = match ownership {
            Ownership::Conflict(why) => Some(why),
            // The login must not live in another credential's target: deleting that one
            // would delete it.
            _ => stored
                .as_ref()
                .ok()
                .and_then(|s| target::controlling_credential(&s.secret.metadata))
                .map(|other| {
                    let other = &other.name;
                    format!(
                        "Secret {:?}, which holds the refresh token, is the target of EagleEyeCredential {other:?}: deleting that credential would delete this login; store the token in a Secret of its own",
                        r.name
                    )
                }),
        };
        let published = self.published_in(target.as_ref(), input_of.as_deref());
        debug!(
            target_exists = target.is_some(),
            target_version = ?target.as_ref().and_then(|t| t.metadata.resource_version.as_deref()),
            published = published.is_some(),
            "read the target Secret"
        );
        let stored_ok = stored.as_ref().ok();
        let dead = spent::known_dead(&[
            stored_ok.map_or(&[][..], |s| &s.spent),
            published
                .as_ref()
                .map_or(&[][..], |p| &p.spent_fingerprints),
            pending.as_ref().map_or(&[][..], |(_, _, spent)| spent),
        ]);
        let login = match (&validated, &creds, stored_ok) {
            (Ok((url, _)), Ok(creds), Some(stored)) => Some(login_fingerprint(
                url,
                &spec.scope,
                creds,
                stored.token.expose_secret(),
            )),
            _ => None,
        };
        let in_status = self.status.refused_login_fingerprint.as_deref();
        let remembered = |which: Refusal, in_status: Option<&str>| {
            login
                .as_ref()
                .is_some_and(|l| self.ctx.memory.is_refused(which, &self.key, l, in_status))
        };
        let refused = remembered(Refusal::Server, in_status);
        let blocked = remembered(Refusal::Config, None);
        // Every read registers the tokens this credential holds, for the census of claims.
        let claimed_elsewhere = match stored_ok {
            Some(stored) => self.claimed_elsewhere(stored).filter(|_| pending.is_none()),
            None => {
                self.ctx.memory.mark_read(&self.key, self.ctx.term);
                None
            }
        };
        let dead_copy = claimed_elsewhere.is_some()
            && stored_ok.is_some_and(|s| {
                let memory = &self.ctx.memory;
                memory.rotated_out_by(&self.key, &s.fingerprint).is_some()
            });
        let me = self.holder();
        let intent = stored_ok.map_or(intent::Verdict::Free, |s| {
            let intent = intent::read(s.secret.metadata.annotations.as_ref());
            // An expired intent's holder may have kept its answer through an outage this
            // process saw, or since it lost the Lease (cut off alone): patience from the later.
            let unreachable = self.ctx.reach.last_unreachable();
            let lapse = intent.as_ref().and_then(|i| {
                self.ctx
                    .leadership
                    .lapse_of(intent::process(&i.holder), self.now)
            });
            intent::verdict_after_outage(
                intent.as_ref(),
                &s.fingerprint,
                &me,
                self.now,
                lapse.map_or(unreachable, |at| at.max(unreachable)),
            )
        });
        // Another process's spend of this credential's token (a leader before this one) binds
        // copies elsewhere as this process's own spends do. Not this process's: its own are in
        // memory already, and one that is not has ended; nor for a second credential naming
        // the Secret, which never spends it.
        if let (intent::Verdict::HeldElsewhere { holder, until }, Some(s)) = (&intent, stored_ok)
            && intent::process(holder) != intent::process(&me)
            && other_claimant(self.ctx, self.cr).is_none()
        {
            let hold = until.duration_since(self.now).unsigned_abs();
            let memory = &self.ctx.memory;
            memory.held_elsewhere(&self.key, self.uid(), &s.fingerprint, hold);
        }
        let refresh_before = validated
            .as_ref()
            .map(|v| v.1)
            .unwrap_or(SignedDuration::ZERO);
        let plan = match stored_ok {
            Some(stored) => {
                schedule::plan(&self.schedule_inputs(published.clone(), stored, refresh_before))
            }
            None => schedule::Plan::RefreshNow(schedule::Why::NothingPublished),
        };
        // Only a live published token is worth rendering again.
        let templates_stale = published.as_ref().is_some_and(|p| p.expires_at > self.now)
            && target
                .as_ref()
                .is_some_and(|t| target::templates_stale(self.cr, t));
        let live_known = self.ctx.memory.live(&self.key, &dead).is_some();
        let (auth_url, _) = validated.as_ref().ok().cloned().unzip();
        let observed = Observed {
            now: self.now,
            suspended: spec.suspend,
            spec_problem: validated.as_ref().err().cloned(),
            claimed_elsewhere,
            dead_copy,
            target_conflict,
            client: creds.as_ref().err().map(ToString::to_string),
            stored: stored
                .as_ref()
                .map(|s| s.fingerprint.clone())
                .map_err(ToString::to_string),
            pending: pending.as_ref().map(|(_, p, _)| p.clone()),
            dead: dead.clone(),
            live_known,
            refused,
            blocked,
            intent,
            plan,
            templates_stale,
        };
        Ok(Facts {
            key: self.key.clone(),
            observed,
            stored,
            creds,
            pending_key: pending.map(|(k, _, _)| k),
            published,
            target,
            input_of,
            auth_url,
            refresh_before,
            login,
            dead,
            holder: self.holder(),
            in_flight_grace: self.ctx.settings.in_flight_grace,
            retry_not_before: self.retry_not_before(),
            publish_backoff: self
                .ctx
                .memory
                .get(&self.key, |e| e.publish_backoff())
                .flatten(),
            lifetimes: self.ctx.settings.lifetimes,
            jitter: jitter(self.cr),
        })
    }

    fn retry_not_before(&self) -> Option<Timestamp> {
        self.ctx
            .memory
            .get(&self.key, |e| e.retry_not_before())
            .flatten()
    }

    /// Why another credential owns the stored token, if one does: by Secret (same
    /// namespace, first created wins) or by the token itself (a copy in another Secret).
    /// Another namespace's names are never revealed.
    pub(super) fn claimed_elsewhere(&self, stored: &StoredToken) -> Option<String> {
        let spec = &self.cr.spec;
        let tokens = super::memory::claimed(&stored.fingerprint, &stored.spent);
        let ctx = self.ctx;
        let second = other_claimant(ctx, self.cr);
        // The second credential naming a Secret records what it read, and claims nothing.
        let owner = ctx.memory.claim(
            &self.key,
            self.uid(),
            &tokens,
            ctx.term,
            second.is_none(),
            |owner| ctx.is_alive(owner),
        );
        if let Some(other) = second {
            return Some(format!(
                "refresh-token Secret {:?} is already refreshed by EagleEyeCredential {other:?}; two credentials spending one rotating token destroy it",
                spec.refresh_token_secret_ref.name
            ));
        }
        let owner = owner?;
        let ns = self.cr.namespace().unwrap_or_default();
        let who = match owner.split_once('/') {
            Some((owner_ns, name)) if owner_ns == ns => format!("EagleEyeCredential {name:?}"),
            _ => "a credential in another namespace".to_owned(),
        };
        let name = &spec.refresh_token_secret_ref.name;
        if ctx
            .memory
            .rotated_out_by(&self.key, &stored.fingerprint)
            .is_some()
        {
            return Some(format!(
                "Secret {name:?} holds the same refresh token as {who}, which has rotated it out since: this copy is dead and is never spent; give each credential its own login (a new Phase 1 login for this one)"
            ));
        }
        Some(format!(
            "Secret {name:?} holds the same refresh token as {who}, which refreshes it already; two credentials spending one rotating token destroy it: give each credential its own login"
        ))
    }

    /// Which credential of this name it is (memory tells a recreated one apart by it).
    pub(super) fn uid(&self) -> &str {
        self.cr.metadata.uid.as_deref().unwrap_or_default()
    }

    /// This credential's name as a spender, in spend intents.
    pub(super) fn holder(&self) -> String {
        intent::holder(
            &self.ctx.settings.identity,
            self.cr.metadata.uid.as_deref().unwrap_or("-"),
        )
    }

    pub(super) async fn run(mut self) -> Result<Action, Error> {
        let facts = self.gather().await?;
        let decision = decide(&facts.observed);
        debug!(?decision, "decided");
        let mut refresh = Refresh {
            cr: self.cr,
            status: self.status.clone(),
            now: self.now,
            published_token: facts
                .published
                .as_ref()
                .map(|p| (p.issued_at, p.expires_at)),
            facts,
            world: KubeWorld {
                r: &mut self,
                slot: None,
                answered: None,
            },
        };
        let end = refresh.run(decision).await;
        let (status, now, published_token) = (refresh.status, refresh.now, refresh.published_token);
        self.status = status;
        self.now = now;
        self.published_token = published_token;
        match end {
            End::Quiet(action) => Ok(action),
            End::Report(outcome, action) => self.finish(outcome, action).await,
            End::Fail(outcome, e) => {
                if let Some(outcome) = outcome {
                    // The first error is the one to retry on, whatever the status write does.
                    let _ = self.report(&outcome).await;
                }
                Err(e)
            }
        }
    }

    /// A token-call slot for a refresh to `auth_url`: one granted while this credential was
    /// parked, or one that frees within `WAIT_IN_SEAT`. `None` parks the credential: its
    /// wait for a slot (the same place in the fair queue) goes on in a task of its own, and
    /// no controller seat is held meanwhile, so however many credentials wait behind silent
    /// destinations, every other reconcile runs; the grant wakes this credential's
    /// reconcile.
    pub(super) async fn call_slot(&self, auth_url: &url::Url) -> Option<CallSlot> {
        let ns = self.cr.namespace().unwrap_or_default();
        let me = super::stored_ref(self.cr);
        let (store, watched) = (self.ctx.store.clone(), me.clone());
        let destination = crate::token::Destination::of(auth_url);
        let claim = self
            .ctx
            .parked
            .claim_within(
                WAIT_IN_SEAT,
                &self.key,
                destination.clone(),
                me,
                || self.ctx.tokens.reserve(auth_url, &ns).boxed(),
                move || store.get(&watched).is_some(),
            )
            .await;
        match claim {
            super::parked::Claim::Slot(slot) => Some(slot),
            super::parked::Claim::Parked => {
                debug!(%destination, "every token-call slot this refresh may take is busy: parked until one is granted");
                None
            }
        }
    }

    /// The credential parks until this process wakes it (a call slot granted, the census
    /// complete): the refresh token just read is kept for that reconcile. Only a rotating
    /// token's spend is guarded by the intent written over the version read; a non-rotating
    /// one is read afresh.
    fn keep_read_while_parked(&self, read: &StoredToken) {
        let ticket = super::lock(&self.refresh_read).take();
        if let Some(ticket) = ticket
            && self.rotation() != schedule::Rotation::NonRotating
        {
            ticket.keep_parked(&self.key, &read.secret);
        }
    }

    /// A write of Secret `name` (in the credential's namespace) starts.
    fn writing(&self, name: &str) -> cache::Writing<'a> {
        let ns = self.cr.metadata.namespace.as_deref().unwrap_or_default();
        self.ctx.reads.writing(ns, name)
    }

    /// Someone else changed Secret `name` while this process wrote it: the credentials
    /// naming it look again.
    fn woken(&self, woken: bool, name: &str) {
        if woken {
            let ns = self.cr.metadata.namespace.as_deref().unwrap_or_default();
            self.ctx.wake_naming(ns, name);
        }
    }

    /// Writes the target: creates it when absent (a create, which fails rather than take
    /// over a Secret made meanwhile), else applies over the version read (409 if it
    /// changed since). Only a target created by the credential gets its owner reference.
    pub(super) async fn publish(
        &self,
        publication: &Publication<'_>,
        ownership: &Ownership,
        resource_version: Option<String>,
    ) -> Result<(), Error> {
        let owned = matches!(ownership, Ownership::Absent | Ownership::Owned);
        let mut secret = target::build(self.cr, publication, owned);
        let name = target::target_name(self.cr);
        let writing = self.writing(&name);
        let written = if *ownership == Ownership::Absent {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            self.secrets.create(&params, &secret).await
        } else {
            secret.metadata.resource_version = resource_version;
            self.secrets
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
        };
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                // A conflict means the copy in memory is out of date, whatever the watch says.
                self.woken(writing.failed(), &name);
                return Err(Error::Target(name, e));
            }
        };
        let kept = Arc::new(cache::trimmed(&written));
        self.woken(writing.wrote(&written, Some(kept)), &name);
        Ok(())
    }
}

/// The world of a reconcile in the cluster: every effect of `crate::refresh`, performed.
struct KubeWorld<'r, 'a> {
    r: &'r mut Reconciler<'a>,
    /// The call slot taken for this round's token call.
    slot: Option<CallSlot>,
    /// When the token endpoint answered this round's call.
    answered: Option<std::time::Instant>,
}

impl World for KubeWorld<'_, '_> {
    fn now(&self) -> Timestamp {
        self.r.ctx.settings.now()
    }

    fn take_held(&mut self, key: &str) -> Option<Held> {
        self.r.ctx.memory.take(key)
    }

    fn hold(&mut self, held: Held) {
        self.r.ctx.memory.put(&self.r.key, held);
    }

    fn remember_live(&mut self, token: &SecretString) {
        self.r.ctx.memory.remember_live(&self.r.key, token);
    }

    fn live(&self, dead: &[String]) -> Option<SecretString> {
        self.r.ctx.memory.live(&self.r.key, dead)
    }

    fn refuse(&mut self, which: Refusal, login: &str) {
        self.r.ctx.memory.refuse(which, &self.r.key, login);
    }

    fn set_retry_not_before(&mut self, at: Option<Timestamp>) {
        self.r
            .ctx
            .memory
            .with(&self.r.key, |e| e.rare_mut().retry_not_before = at);
    }

    fn set_publish_backoff(&mut self, backoff: Option<crate::refresh::PublishBackoff>) {
        self.r
            .ctx
            .memory
            .with(&self.r.key, |e| e.rare_mut().publish_backoff = backoff);
    }

    fn claimed_elsewhere(&mut self, stored: &StoredToken) -> Option<String> {
        self.r.claimed_elsewhere(stored)
    }

    fn rotated_out_elsewhere(&mut self, stored: &StoredToken) -> bool {
        let memory = &self.r.ctx.memory;
        memory
            .rotated_out_by(&self.r.key, &stored.fingerprint)
            .is_some()
    }

    async fn list_as_spent(&mut self, stored: &StoredToken) -> bool {
        let name = &self.r.cr.spec.refresh_token_secret_ref.name;
        let writing = self.r.writing(name);
        let listed = secrets::list_as_spent(&self.r.secrets, stored).await;
        let woken = match &listed {
            Ok(Some(written)) => writing.wrote(written, None),
            Ok(None) => writing.unwritten(),
            Err(_) => writing.failed(),
        };
        self.r.woken(woken, name);
        match listed {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %secrets::kube_reason(&err), secret = %name, "could not list a refresh token another credential rotated out as spent on its Secret; trying again within 30 s");
                false
            }
        }
    }

    async fn census_pending(&mut self, auth_url: &url::Url, read: &StoredToken) -> Option<String> {
        let me = super::stored_ref(self.r.cr);
        let unread = self.r.ctx.census_pending_for(auth_url, me).await?;
        self.r.keep_read_while_parked(read);
        Some(unread)
    }

    async fn call_slot(
        &mut self,
        auth_url: &url::Url,
        read: &StoredToken,
    ) -> Option<SignedDuration> {
        let Some(slot) = self.r.call_slot(auth_url).await else {
            self.r.keep_read_while_parked(read);
            return None;
        };
        let left = SignedDuration::try_from(slot.remaining()).unwrap_or(SignedDuration::MAX);
        self.slot = Some(slot);
        Some(left)
    }

    async fn may_start(&mut self) -> Result<(), NotNow> {
        let ctx = self.r.ctx;
        // The process is stopping: the reconciles queued for a slot (many, under a slow auth
        // server) start nothing, so that it stops once the calls in flight are answered.
        if ctx.tokens.is_closed() {
            return Err(NotNow::Stopping);
        }
        // Gone from the watch meanwhile (relabelled out of this shard, or deleted): the
        // process that watches it now decides.
        let watched = super::stored_ref(self.r.cr);
        if ctx.store.get(&watched).is_none() {
            return Err(NotNow::NotWatched);
        }
        // Checked once the slot is granted: the wait for it may have outlasted the Lease.
        match ctx.leadership.not_safe_to_spend().await {
            Some(wait) => Err(NotNow::Lease(wait)),
            None => Ok(()),
        }
    }

    async fn read_refresh_token(&mut self) -> Result<StoredToken, SecretError> {
        let r = &self.r.cr.spec.refresh_token_secret_ref;
        secrets::read_refresh_token(&self.r.secrets, &r.name, &r.key, self.r.now).await
    }

    async fn record_intent(
        &mut self,
        stored: &StoredToken,
        intent: &intent::Intent,
    ) -> Result<Option<StoredToken>, Error> {
        // Copies elsewhere are bound as long as the intent on this Secret binds, from before
        // it is written: a copy looking meanwhile must not take the token over.
        let ctx = self.r.ctx;
        let hold = intent.until.duration_since(self.now()).unsigned_abs();
        if !ctx
            .memory
            .intend(&self.r.key, self.r.uid(), &stored.fingerprint, hold, |k| {
                ctx.is_alive(k)
            })
        {
            // Claimed by another since it was read (this one is being deleted): read again.
            return Ok(None);
        }
        let name = &self.r.cr.spec.refresh_token_secret_ref.name;
        let writing = self.r.writing(name);
        let recorded = secrets::record_intent(&self.r.secrets, stored, intent).await;
        let woken = match &recorded {
            Ok(Some(stored)) => writing.wrote(&stored.secret, None),
            _ => writing.failed(),
        };
        if !matches!(recorded, Ok(Some(_))) {
            ctx.memory.withdraw(&self.r.key, &stored.fingerprint);
        }
        self.r.woken(woken, name);
        recorded.map_err(|e| Error::Intent(name.clone(), e))
    }

    async fn withdraw_intent(&mut self, stored: &StoredToken) {
        let holder = self.r.holder();
        let name = &self.r.cr.spec.refresh_token_secret_ref.name;
        let writing = self.r.writing(name);
        self.r.ctx.memory.withdraw(&self.r.key, &stored.fingerprint);
        let withdrawn = secrets::withdraw_intent(&self.r.secrets, stored, &holder).await;
        let woken = match &withdrawn {
            Ok(Some(written)) => writing.wrote(written, None),
            Ok(None) => writing.unwritten(),
            Err(_) => writing.failed(),
        };
        self.r.woken(woken, name);
        if let Err(err) = withdrawn {
            debug!(error = %secrets::kube_reason(&err), "the spend intent stays until it runs out")
        }
    }

    async fn call(
        &mut self,
        auth_url: &url::Url,
        creds: &ClientCredentials,
        stored: &StoredToken,
    ) -> (Result<TokenGrant, TokenError>, Timestamp) {
        let ctx = self.r.ctx;
        let slot = match self.slot.take() {
            Some(slot) => slot,
            None => {
                let ns = self.r.cr.namespace().unwrap_or_default();
                ctx.tokens.reserve(auth_url, &ns).await
            }
        };
        let started = std::time::Instant::now();
        let scope = &self.r.cr.spec.scope;
        let result = ctx
            .tokens
            .refresh_with(slot, auth_url, creds, &stored.token, scope)
            .await;
        let labels = labels(self.r.cr);
        ctx.metrics
            .refresh_attempt(&labels, started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            ctx.metrics.refresh_failure(&labels, e.reason());
        }
        // An answer that carries another refresh token, usable or not, rotated the one sent
        // out: dead from now on, stored or not (see `Memory::rotated`).
        let new = match &result {
            Ok(grant) => grant.refresh_token.as_ref(),
            Err(e) => e.refresh_token(),
        };
        if new.is_some_and(|t| t.expose_secret() != stored.token.expose_secret()) {
            ctx.memory
                .rotated(&self.r.key, self.r.uid(), &stored.fingerprint);
        }
        self.answered = Some(std::time::Instant::now());
        (result, whole_seconds(ctx.settings.now()))
    }

    async fn write_back(
        &mut self,
        stored: &StoredToken,
        traded: &str,
        new: &SecretString,
        received_at: Timestamp,
    ) -> Result<WriteBack, Error> {
        let r = &self.r.cr.spec.refresh_token_secret_ref;
        let writing = self.r.writing(&r.name);
        let written = secrets::write_back(
            &self.r.secrets,
            stored,
            traded,
            &r.key,
            new,
            &self.r.cr.name_any(),
            received_at,
        )
        .await;
        let woken = match &written {
            Ok(WriteBack::Written(_, Some(secret))) => writing.wrote(secret, None),
            Ok(_) => writing.unwritten(),
            Err(_) => writing.failed(),
        };
        self.r.woken(woken, &r.name);
        let written = written.map_err(|e| Error::WriteBack(r.name.clone(), e))?;
        if let WriteBack::Written(spent, _) = &written {
            // The window in which a crash loses the login: from the token endpoint's answer
            // until this write is acknowledged.
            if let Some(answered) = self.answered {
                let window_ms = answered.elapsed().as_secs_f64() * 1000.0;
                debug!(window_ms, "rotated refresh token stored");
            }
            // The new token is this credential's from now on, not from its next read: a copy
            // made meanwhile must find it claimed.
            let ctx = self.r.ctx;
            let new = secrets::fingerprint(new.expose_secret());
            let tokens = super::memory::claimed(&new, spent);
            let uid = self.r.uid();
            ctx.memory
                .claim(&self.r.key, uid, &tokens, ctx.term, true, |k| {
                    ctx.is_alive(k)
                });
            // A copy of the token just rotated out died with it: its credential looks at once
            // and lists it spent on its own Secret (`Refresh::list_dead_copy`), not at its next
            // look. Only copies are looked among, not every credential.
            for copy in ctx.memory.copies_of(traded) {
                ctx.wake_credential(&copy);
            }
        }
        Ok(written)
    }

    async fn read_target(&mut self) -> Result<Option<Secret>, Error> {
        Ok(self.r.target().await?)
    }

    async fn read_published_token(&mut self) -> Result<Option<SecretString>, Error> {
        let key = &self.r.cr.spec.target.keys.access_token;
        Ok(self
            .r
            .read_whole_target()
            .await?
            .and_then(|s| s.data?.remove(key))
            .and_then(|v| String::from_utf8(v.0).ok())
            .map(SecretString::from))
    }

    async fn publish(
        &mut self,
        grant: &TokenGrant,
        (issued_at, expires_at): (Timestamp, Timestamp),
        refresh_fingerprint: &str,
        spent: &[String],
        ownership: &Ownership,
        resource_version: Option<String>,
    ) -> Result<(), Error> {
        let publication = Publication {
            access_token: grant.access_token.expose_secret(),
            token_type: &grant.token_type,
            hostname: &grant.api.hostname,
            port: grant.api.port,
            base_url: &grant.api.base_url(),
            issued_at,
            expires_at,
            refresh_fingerprint,
            spent_fingerprints: spent,
        };
        self.r
            .publish(&publication, ownership, resource_version)
            .await
    }

    async fn report(
        &mut self,
        outcome: &Outcome,
        status: &EagleEyeCredentialStatus,
        now: Timestamp,
    ) -> Result<(), Error> {
        self.r.status = status.clone();
        self.r.now = now;
        self.r.report(outcome).await
    }
}
