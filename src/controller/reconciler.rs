//! One reconcile, step by step: validate, read, plan, refresh, write back, publish.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info};

use crate::crd::{EagleEyeCredential, EagleEyeCredentialStatus, RotationMode};
use crate::decide::{Decision, Observed, decide};
use crate::intent;
use crate::outcome::{Failure, Outcome};
use crate::schedule::{self, Inputs};
use crate::secrets::{self, SecretError, StoredToken, WriteBack, kube_reason};
use crate::spent;
use crate::target::{self, Ownership, Publication};
use crate::token::{CallSlot, ErrorClass, TokenError, TokenGrant};

use futures::FutureExt;

use super::cache;
use super::held::{Held, Refusal};
use super::{
    Context, Error, FIELD_MANAGER, WAITING_RECHECK, jitter, key, labels, lock, login_fingerprint,
    other_claimant, validate, wait_until, whole_seconds,
};

/// A credential parked for a call slot is looked at again after this at the latest (it is
/// woken when the slot is granted; this only bounds a lost wake-up, and shows an expiry).
const PARKED_RECHECK: Duration = Duration::from_secs(60);

/// What `gather` read: the plain facts for `decide`, and what acting on them needs.
struct Gathered {
    observed: Observed,
    stored: Result<StoredToken, SecretError>,
    creds: Result<crate::token::ClientCredentials, SecretError>,
    /// Under which key the pending answer is held (another credential's, after a rename).
    pending_key: Option<String>,
    published: Option<schedule::Published>,
    spec: Option<(url::Url, SignedDuration)>,
    refresh_before: SignedDuration,
    login: Option<String>,
    dead: Vec<String>,
}

pub(super) struct Reconciler<'a> {
    pub(super) cr: &'a EagleEyeCredential,
    pub(super) ctx: &'a Context,
    pub(super) key: String,
    pub(super) secrets: Api<Secret>,
    pub(super) status: EagleEyeCredentialStatus,
    pub(super) now: Timestamp,
    /// When the token endpoint answered this round's refresh.
    pub(super) answered_at: Option<std::time::Instant>,
    /// Issue and expiry times of the access token published (read, or written this round).
    pub(super) published_token: Option<(Timestamp, Timestamp)>,
    /// A nudge of consuming pods was cut short: requeue soon to go on.
    pub(super) nudge_unfinished: bool,
    /// The target Secret as this reconcile read it (or last wrote it), taken by the first
    /// publish as the version it writes over (a 409 if it changed since: read again).
    pub(super) target_seen: std::sync::Mutex<Option<Option<Secret>>>,
}

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
            answered_at: None,
            published_token: None,
            nudge_unfinished: false,
            target_seen: std::sync::Mutex::new(None),
        }
    }

    /// The stored refresh token; Kubernetes API failures are errors, a missing Secret or
    /// key is a result to report.
    async fn read_refresh_token(&self) -> Result<Result<StoredToken, SecretError>, Error> {
        let r = &self.cr.spec.refresh_token_secret_ref;
        match secrets::read_refresh_token(&self.secrets, &r.name, &r.key, self.now).await {
            Err(e @ SecretError::Api { .. }) => Err(e.into()),
            other => Ok(other),
        }
    }

    /// The target Secret's metadata (see `cache::trimmed`), if it exists: as last read or
    /// written when it has not changed since.
    async fn target(&self) -> Result<Option<Secret>, SecretError> {
        let name = target::target_name(self.cr);
        let ns = self.cr.namespace().unwrap_or_default();
        let targets = &self.ctx.reads.targets;
        let seen = match targets.get(&ns, &name, "") {
            Ok(target) => return Ok(Some((*target).clone())),
            Err(seen) => seen,
        };
        let target = self
            .secrets
            .get_opt(&name)
            .await
            .map_err(|source| SecretError::Api {
                name: name.clone(),
                source,
            })?
            .map(|s| cache::trimmed(&s));
        if let Some(t) = &target {
            targets.put(&ns, &name, "", Arc::new(t.clone()), seen);
        }
        Ok(target)
    }

    /// What the target Secret publishes now: only a target this credential may write
    /// counts (another's annotations must not steer its schedule).
    async fn published(&self) -> Result<Option<schedule::Published>, SecretError> {
        Ok(self.published_in(self.target().await?.as_ref()))
    }

    /// What `target` publishes, if it is a target this credential may write.
    fn published_in(&self, target: Option<&Secret>) -> Option<schedule::Published> {
        match self.ownership(target) {
            Ownership::Owned | Ownership::Adopted => target.and_then(target::published),
            Ownership::Absent | Ownership::Conflict(_) => None,
        }
    }

    /// Whose the target Secret is (see `target::ownership`), given the credentials of this
    /// namespace that read a Secret of its name.
    fn ownership(&self, target: Option<&Secret>) -> Ownership {
        let name = target::target_name(self.cr);
        let ns = &self.cr.metadata.namespace;
        let input_of = self.ctx.store.find(|c| {
            (c.spec.client_secret_ref.name == name || c.spec.refresh_token_secret_ref.name == name)
                && c.metadata.namespace == *ns
                && c.metadata.uid != self.cr.metadata.uid
        });
        target::ownership(
            self.cr,
            target,
            input_of.as_ref().map(|c| c.name_any()).as_deref(),
            FIELD_MANAGER,
        )
    }

    fn schedule_inputs(
        &self,
        published: Option<schedule::Published>,
        stored: &StoredToken,
        refresh_before: SignedDuration,
    ) -> Inputs {
        Inputs {
            now: self.now,
            published,
            stored_fingerprint: stored.fingerprint.clone(),
            rotation: self.rotation(),
            refresh_before,
            failures: self.status.failed_refresh_attempts,
            last_failure: self.status.last_failure_time.as_ref().map(|t| t.0),
            retry_not_before: lock(&self.ctx.retry_not_before).get(&self.key).copied(),
            jitter: jitter(self.cr),
            refresh_token_idle_end: self.idle_end(stored.chain.token_issued_at),
        }
    }

    /// Reads everything once: both Secrets, the published state, what this process holds
    /// and remembers. Kubernetes API failures are errors (retried with backoff); anything
    /// else is a fact for `decide`.
    async fn gather(&self) -> Result<Gathered, Error> {
        let spec = &self.cr.spec;
        let r = &spec.refresh_token_secret_ref;
        let ns = self.cr.namespace().unwrap_or_default();
        let stored = self.read_refresh_token().await?;
        let pending = self.ctx.held.peek_for(&self.key, &ns, &r.name, self.now);
        let validated = validate(self.cr, &self.ctx.settings);
        let c = &spec.client_secret_ref;
        let (id_key, secret_key) = (&c.client_id_key, &c.client_secret_key);
        let cache = &self.ctx.reads.clients;
        let keys = format!("{id_key}/{secret_key}");
        let creds = match cache.get(&ns, &c.name, &keys) {
            Ok(creds) => Ok(creds),
            Err(seen) => {
                match secrets::read_client(&self.secrets, &c.name, id_key, secret_key).await {
                    Err(e @ SecretError::Api { .. }) => return Err(e.into()),
                    Ok(creds) => {
                        cache.put(&ns, &c.name, &keys, creds.clone(), seen);
                        Ok(creds)
                    }
                    other => other,
                }
            }
        };
        let target = self.target().await?;
        *lock(&self.target_seen) = Some(target.clone());
        let target_conflict = match self.ownership(target.as_ref()) {
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
        let published = self.published_in(target.as_ref());
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
                .is_some_and(|l| self.ctx.held.is_refused(which, &self.key, l, in_status))
        };
        let refused = remembered(Refusal::Server, in_status);
        let blocked = remembered(Refusal::Config, None);
        let claimed_elsewhere = match (&pending, stored_ok) {
            (None, Some(stored)) => self.claimed_elsewhere(stored),
            _ => None,
        };
        let me = self.holder();
        let intent = stored_ok.map_or(intent::Verdict::Free, |s| {
            intent::verdict(
                intent::read(s.secret.metadata.annotations.as_ref()).as_ref(),
                &s.fingerprint,
                &me,
                self.now,
            )
        });
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
        let live_known = self.ctx.held.live(&self.key, &dead).is_some();
        let observed = Observed {
            now: self.now,
            suspended: spec.suspend,
            spec_problem: validated.as_ref().err().cloned(),
            claimed_elsewhere,
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
        };
        Ok(Gathered {
            observed,
            stored,
            creds,
            pending_key: pending.map(|(k, _, _)| k),
            published,
            spec: validated.ok(),
            refresh_before,
            login,
            dead,
        })
    }

    /// Why another credential owns the stored token, if one does: by Secret (same
    /// namespace, first created wins) or by the token itself (a copy in another Secret).
    /// Another namespace's names are never revealed.
    pub(super) fn claimed_elsewhere(&self, stored: &StoredToken) -> Option<String> {
        let spec = &self.cr.spec;
        if let Some(other) = other_claimant(&self.ctx.store, self.cr) {
            return Some(format!(
                "refresh-token Secret {:?} is already refreshed by EagleEyeCredential {other:?}; two credentials spending one rotating token destroy it",
                spec.refresh_token_secret_ref.name
            ));
        }
        let mut tokens = vec![stored.fingerprint.clone()];
        tokens.extend(stored.spent.iter().cloned());
        let stores = &self.ctx.all_stores;
        let owner = self.ctx.held.claim(&self.key, &tokens, |owner| {
            stores.iter().any(|store| {
                store
                    .state()
                    .iter()
                    .any(|c| key(c) == owner && c.metadata.deletion_timestamp.is_none())
            })
        })?;
        let ns = self.cr.namespace().unwrap_or_default();
        let who = match owner.split_once('/') {
            Some((owner_ns, name)) if owner_ns == ns => format!("EagleEyeCredential {name:?}"),
            _ => "a credential in another namespace".to_owned(),
        };
        Some(format!(
            "Secret {:?} holds the same refresh token as {who}, which refreshes it already; two credentials spending one rotating token destroy it: give each credential its own login",
            spec.refresh_token_secret_ref.name
        ))
    }

    /// This credential's name as a spender, in spend intents.
    pub(super) fn holder(&self) -> String {
        intent::holder(
            &self.ctx.settings.identity,
            self.cr.metadata.uid.as_deref().unwrap_or("-"),
        )
    }

    pub(super) async fn run(mut self) -> Result<Action, Error> {
        let gathered = self.gather().await?;
        self.published_token = gathered
            .published
            .as_ref()
            .map(|p| (p.issued_at, p.expires_at));
        let decision = decide(&gathered.observed);
        debug!(?decision, "decided");
        self.act(decision, gathered).await
    }

    /// Carries out one decision; decides nothing itself.
    async fn act(mut self, decision: Decision, g: Gathered) -> Result<Action, Error> {
        let chain = g.stored.as_ref().ok().map(|s| s.chain);
        match decision {
            Decision::StorePending => {
                let (Some(k), Ok(stored)) = (&g.pending_key, &g.stored) else {
                    return Ok(Action::requeue(Duration::ZERO));
                };
                let Some(held) = self.ctx.held.take(k) else {
                    return Ok(Action::requeue(Duration::ZERO));
                };
                info!(held_for = %self.now.duration_since(held.received_at), "storing the rotated refresh token held in memory");
                // After a revert the chain annotations describe the spent token, not the
                // one stored.
                let stored = StoredToken {
                    token: stored.token.clone(),
                    fingerprint: stored.fingerprint.clone(),
                    secret: stored.secret.clone(),
                    chain: secrets::chain(&stored.secret, &held.spent_fingerprint, self.now),
                    spent: g.dead.clone(),
                };
                let chain = stored.chain;
                let publishable = held.publishable(self.now);
                match self.store_rotated(&stored, held).await? {
                    Some(held) if publishable => {
                        self.publish_held(chain, held, g.refresh_before).await
                    }
                    _ => Ok(Action::requeue(Duration::ZERO)),
                }
            }
            Decision::PublishPending => {
                let (Some(k), Some(chain)) = (&g.pending_key, chain) else {
                    return Ok(Action::requeue(Duration::ZERO));
                };
                match self.ctx.held.take(k) {
                    Some(held) => self.publish_held(chain, held, g.refresh_before).await,
                    None => Ok(Action::requeue(Duration::ZERO)),
                }
            }
            Decision::ForgetPending => {
                if let Some(k) = &g.pending_key {
                    self.ctx.held.take(k);
                }
                Ok(Action::requeue(Duration::ZERO))
            }
            Decision::YieldToNewLogin => {
                if let Some(k) = &g.pending_key {
                    self.ctx.held.take(k);
                }
                self.finish(Outcome::ReplacedByPerson, Action::requeue(Duration::ZERO))
                    .await
            }
            Decision::KeepPending | Decision::RefreshSecretProblem => match g.stored {
                Err(e) => self.secret_problem(e).await,
                Ok(_) => Ok(Action::requeue(Duration::ZERO)),
            },
            Decision::Suspended => {
                self.finish(Outcome::Suspended, Action::await_change())
                    .await
            }
            Decision::InvalidSpec(message) => {
                self.finish(Outcome::InvalidSpec(message), Action::await_change())
                    .await
            }
            Decision::InUse(message) => {
                self.finish(Outcome::InUse(message), Action::requeue(WAITING_RECHECK))
                    .await
            }
            Decision::TargetConflict(message) => {
                self.finish(
                    Outcome::TargetConflict(message),
                    Action::requeue(WAITING_RECHECK),
                )
                .await
            }
            Decision::ClientSecretProblem => match g.creds {
                Err(e) => self.secret_problem(e).await,
                Ok(_) => Ok(Action::requeue(Duration::ZERO)),
            },
            Decision::WaitForLogin => {
                // Sending a refused token again cannot succeed, and servers count it as reuse.
                if let Some(login) = &g.login {
                    self.ctx.held.refuse(Refusal::Server, &self.key, login);
                }
                self.finish(Outcome::AwaitingLogin, Action::requeue(WAITING_RECHECK))
                    .await
            }
            Decision::WaitForConfig => {
                self.finish(Outcome::AwaitingConfig, Action::requeue(WAITING_RECHECK))
                    .await
            }
            Decision::RestoreLive | Decision::Reverted => match g.stored {
                Ok(stored) => self.undo_revert(stored, &g.dead).await,
                Err(_) => Ok(Action::requeue(Duration::ZERO)),
            },
            Decision::Deferred { holder, until } => {
                info!(%holder, %until, "deferring a refresh to another holder's spend intent");
                let expires = g.published.as_ref().map(|p| p.expires_at);
                let standing = self.standing(expires);
                // Looked at again when the intent lapses, or sooner when the published token
                // expires meanwhile, so that Ready says so.
                let next = expires
                    .filter(|e| *e > self.now)
                    .map_or(until, |e| e.min(until));
                let wait = wait_until(self.ctx.settings.now(), next) + Duration::from_secs(1);
                let outcome = Outcome::Deferred {
                    holder,
                    until,
                    standing,
                };
                self.finish(outcome, Action::requeue(wait)).await
            }
            Decision::WaitUntil(at) => {
                if let Some(chain) = chain {
                    self.set_deadline(chain);
                }
                if let Ok(stored) = &g.stored {
                    self.ctx.held.remember_live(&self.key, &stored.token);
                }
                let standing = self.standing(g.published.as_ref().map(|p| p.expires_at));
                let action = Action::requeue(wait_until(self.ctx.settings.now(), at));
                let outcome = Outcome::Waiting {
                    until: at,
                    standing,
                };
                self.finish(outcome, action).await
            }
            Decision::Spend(why) => {
                let (Ok(stored), Ok(creds), Some((auth_url, _)), Some(login)) =
                    (g.stored, g.creds, g.spec, g.login)
                else {
                    return Ok(Action::requeue(Duration::ZERO));
                };
                // The write-back after the call (and a follower's retry of it) must know
                // every token found dead, the target's copy of the list included.
                let stored = StoredToken {
                    spent: g.dead,
                    ..stored
                };
                self.ctx.held.remember_live(&self.key, &stored.token);
                let expires = g.published.as_ref().map(|p| p.expires_at);
                let Some(slot) = self.call_slot(&auth_url) else {
                    return self.awaiting_slot(&auth_url, expires).await;
                };
                info!(?why, "refreshing");
                self.spend(slot, &auth_url, &creds, stored, &login, g.refresh_before)
                    .await
            }
        }
    }

    /// A token-call slot for a refresh to `auth_url`: one granted while this credential was
    /// parked, or a free one now. `None` parks the credential: its wait for a slot, in the
    /// fair queue, is a task of its own, and no controller seat is held meanwhile, so
    /// however many credentials wait behind silent destinations, every other reconcile
    /// runs; the grant wakes this credential's reconcile.
    pub(super) fn call_slot(&self, auth_url: &url::Url) -> Option<CallSlot> {
        let ns = self.cr.namespace().unwrap_or_default();
        let me = kube::runtime::reflector::ObjectRef::from_obj(self.cr);
        let (store, watched) = (self.ctx.store.clone(), me.clone());
        let destination = crate::token::Destination::of(auth_url);
        let claim = self.ctx.parked.claim(
            &self.key,
            destination.clone(),
            me,
            || self.ctx.tokens.reserve(auth_url, &ns).now_or_never(),
            || self.ctx.tokens.reserve(auth_url, &ns),
            move || store.get(&watched).is_some(),
        );
        match claim {
            super::parked::Claim::Slot(slot) => Some(slot),
            super::parked::Claim::Parked => {
                debug!(%destination, "every token-call slot this refresh may take is busy: parked until one is granted");
                None
            }
        }
    }

    /// Due, parked for a call slot: nothing is written while the published token is valid;
    /// once it has expired, `Ready` says why no new one comes.
    async fn awaiting_slot(
        self,
        auth_url: &url::Url,
        expires: Option<Timestamp>,
    ) -> Result<Action, Error> {
        let standing = self.standing(expires);
        let recheck = expires
            .filter(|e| *e > self.now)
            .map_or(PARKED_RECHECK, |e| {
                wait_until(self.ctx.settings.now(), e) + Duration::from_secs(1)
            })
            .min(PARKED_RECHECK);
        let outcome = Outcome::AwaitingCallSlot {
            destination: crate::token::Destination::of(auth_url).to_string(),
            standing,
        };
        self.finish(outcome, Action::requeue(recheck)).await
    }

    /// Records the spend intent on the token's Secret (rotating tokens), then refreshes.
    /// The intent write carries the resourceVersion of the read that found the token: if
    /// anything changed since, nothing is spent and the next reconcile looks again.
    async fn spend(
        self,
        slot: CallSlot,
        auth_url: &url::Url,
        creds: &crate::token::ClientCredentials,
        stored: StoredToken,
        login: &str,
        refresh_before: SignedDuration,
    ) -> Result<Action, Error> {
        // The process is stopping: the reconciles queued for a slot (many, under a slow auth
        // server) start nothing, so that it stops once the calls in flight are answered.
        if self.ctx.tokens.is_closed() {
            info!("not refreshing: the operator is stopping");
            return Ok(Action::await_change());
        }
        // Gone from the watch meanwhile (relabelled out of this shard, or deleted): the
        // process that watches it now decides; a spend here would only race it (safely,
        // through the intent, but for nothing).
        let watched = kube::runtime::reflector::ObjectRef::from_obj(self.cr);
        if self.ctx.store.get(&watched).is_none() {
            info!("not refreshing: the credential is no longer watched by this operator");
            return Ok(Action::await_change());
        }
        // Checked once the slot is granted: the wait for it may have outlasted the Lease.
        if let Some(wait) = self.ctx.leadership.not_safe_to_spend().await {
            info!(
                ?wait,
                "not refreshing: this replica's Lease is not fresh enough"
            );
            return Ok(Action::requeue(wait));
        }
        if self.rotation() == schedule::Rotation::NonRotating {
            return self
                .refresh(slot, auth_url, creds, stored, login, refresh_before)
                .await;
        }
        // The slot's deadline bounds the whole call; the grace is time for a holder that
        // received an answer while cut off from the API server to store it once it is back,
        // before anyone else may spend the token it traded.
        let call = SignedDuration::try_from(slot.remaining()).unwrap_or(SignedDuration::MAX);
        let intent = intent::Intent {
            fingerprint: stored.fingerprint.clone(),
            holder: self.holder(),
            until: intent::until(
                self.ctx.settings.now(),
                call.saturating_add(self.ctx.settings.in_flight_grace),
            ),
        };
        let r = &self.cr.spec.refresh_token_secret_ref;
        match secrets::record_intent(&self.secrets, &stored, &intent).await {
            Ok(Some(stored)) => {
                self.ctx.own_writes.wrote(&stored.secret);
                self.refresh(slot, auth_url, creds, stored, login, refresh_before)
                    .await
            }
            // Someone wrote the Secret since it was read: read it again.
            Ok(None) => Ok(Action::requeue(Duration::ZERO)),
            Err(e) => Err(Error::Intent(r.name.clone(), e)),
        }
    }

    pub(super) async fn refresh(
        mut self,
        slot: CallSlot,
        auth_url: &url::Url,
        creds: &crate::token::ClientCredentials,
        stored: StoredToken,
        login: &str,
        refresh_before: SignedDuration,
    ) -> Result<Action, Error> {
        let scope = &self.cr.spec.scope;
        let started = std::time::Instant::now();
        let result = self
            .ctx
            .tokens
            .refresh_with(slot, auth_url, creds, &stored.token, scope)
            .await;
        self.answered_at = Some(std::time::Instant::now());
        // Times from here on count from the answer: the token's life starts there.
        self.now = whole_seconds(self.ctx.settings.now());
        let labels = labels(self.cr);
        self.ctx
            .metrics
            .refresh_attempt(&labels, started.elapsed().as_secs_f64());
        match result {
            Ok(grant) => {
                lock(&self.ctx.retry_not_before).remove(&self.key);
                let held = self.held(&stored, Some(grant), None);
                match self.store_rotated(&stored, held).await? {
                    Some(held) => self.publish_held(stored.chain, held, refresh_before).await,
                    None => Ok(Action::requeue(Duration::ZERO)),
                }
            }
            Err(e) => {
                self.ctx.metrics.refresh_failure(&labels, e.reason());
                // An unusable answer that still carried a new refresh token: the server has
                // rotated, so the new token must be stored before the failure is reported.
                let mut login = login.to_owned();
                if let Some(new) = e.refresh_token() {
                    let held = self.held(&stored, None, Some(new.clone()));
                    if held.new_token.is_some()
                        && self.store_rotated(&stored, held).await?.is_none()
                    {
                        return Ok(Action::requeue(Duration::ZERO));
                    }
                    // From here on the stored login is the one with the new token.
                    let scope = &self.cr.spec.scope;
                    login = login_fingerprint(auth_url, scope, creds, new.expose_secret());
                } else if e.class() != ErrorClass::OutcomeUnknown {
                    // The call has ended with nothing to store: no answer can still come.
                    match secrets::withdraw_intent(&self.secrets, &stored, &self.holder()).await {
                        Ok(Some(written)) => self.ctx.own_writes.wrote(&written),
                        Ok(None) => {}
                        Err(err) => {
                            debug!(error = %kube_reason(&err), "the spend intent stays until it runs out")
                        }
                    }
                }
                self.refresh_failed(e, &stored, &login).await
            }
        }
    }

    /// The Secret holds a refresh token this operator rotated out (a GitOps or secret-sync
    /// tool put its old copy back). Spending it would fail and could alarm the server, so
    /// it is never spent: the live token is written back when this process still knows
    /// it, else the credential waits for a new login.
    async fn undo_revert(self, stored: StoredToken, dead: &[String]) -> Result<Action, Error> {
        let r = &self.cr.spec.refresh_token_secret_ref;
        let (secret, key) = (r.name.clone(), r.key.clone());
        let Some(live) = self.ctx.held.live(&self.key, dead) else {
            let outcome = Outcome::Reverted { secret, key };
            return self.finish(outcome, Action::requeue(WAITING_RECHECK)).await;
        };
        // The chain annotations still describe the live token unless they were reverted too.
        let live_fp = secrets::fingerprint(live.expose_secret());
        let chain = secrets::chain(&stored.secret, &live_fp, self.now);
        let reverted = StoredToken { chain, ..stored };
        match secrets::write_back(
            &self.secrets,
            &reverted,
            &reverted.fingerprint,
            &r.key,
            &live,
            &self.cr.name_any(),
            chain.token_issued_at,
        )
        .await
        {
            Ok(WriteBack::Written(_, written)) => {
                if let Some(written) = &written {
                    self.ctx.own_writes.wrote(written);
                }
                let outcome = Outcome::Restored { secret, key };
                self.finish(outcome, Action::requeue(Duration::ZERO)).await
            }
            Ok(WriteBack::ReplacedByPerson) => Ok(Action::requeue(Duration::ZERO)),
            Err(e) => Err(Error::WriteBack(r.name.clone(), e)),
        }
    }

    /// When the current refresh token dies unused; rotating tokens only.
    fn idle_end(&self, token_issued_at: Timestamp) -> Option<Timestamp> {
        (self.rotation() != schedule::Rotation::NonRotating)
            .then(|| token_issued_at + self.ctx.settings.lifetimes.idle)
    }

    /// What to keep of an answer until it is stored and published.
    fn held(
        &self,
        stored: &StoredToken,
        grant: Option<TokenGrant>,
        token: Option<SecretString>,
    ) -> Held {
        let new = token.or_else(|| grant.as_ref().and_then(|g| g.refresh_token.clone()));
        Held {
            spent_fingerprint: stored.fingerprint.clone(),
            new_token: new.filter(|t| t.expose_secret() != stored.token.expose_secret()),
            grant,
            received_at: self.now,
            spent: stored.spent.clone(),
            namespace: self.cr.namespace().unwrap_or_default(),
            secret: self.cr.spec.refresh_token_secret_ref.name.clone(),
            key: self.cr.spec.refresh_token_secret_ref.key.clone(),
            credential: self.cr.name_any(),
        }
    }

    /// Writes a rotated refresh token back before anything else. Returns the held answer
    /// to publish, or `None` when a person stored a new login meanwhile (theirs wins). A
    /// failed write keeps everything held for the next attempt and reports it.
    async fn store_rotated(
        &mut self,
        stored: &StoredToken,
        mut held: Held,
    ) -> Result<Option<Held>, Error> {
        let Some(new) = held.new_token.clone() else {
            // Nothing to store; but a person may have stored a new login while the call was
            // out, and an answer for the old one is not published over theirs. Unread, it
            // stays held for the next reconcile to decide.
            let r = &self.cr.spec.refresh_token_secret_ref;
            return match secrets::read_refresh_token(&self.secrets, &r.name, &r.key, self.now).await
            {
                Ok(now) if now.fingerprint == held.spent_fingerprint => Ok(Some(held)),
                Ok(_) => Ok(None),
                Err(_) => {
                    self.ctx.held.put(&self.key, held);
                    Ok(None)
                }
            };
        };
        // From the answer on, the new token is the live one (the spent one is dead).
        self.ctx.held.remember_live(&self.key, &new);
        match secrets::write_back(
            &self.secrets,
            stored,
            &held.spent_fingerprint,
            &held.key,
            &new,
            &held.credential,
            held.received_at,
        )
        .await
        {
            Ok(WriteBack::Written(spent, written)) => {
                if let Some(written) = &written {
                    self.ctx.own_writes.wrote(written);
                }
                held.spent = spent;
                // The window in which a crash loses the login: from the token endpoint's
                // answer until this write is acknowledged.
                if let Some(answered) = self.answered_at {
                    let window_ms = answered.elapsed().as_secs_f64() * 1000.0;
                    debug!(window_ms, "rotated refresh token stored");
                }
                Ok(Some(held))
            }
            Ok(WriteBack::ReplacedByPerson) => {
                // An Event only: no status write that could fail.
                self.report(&Outcome::ReplacedByPerson).await?;
                Ok(None)
            }
            Err(e) => {
                let name = held.secret.clone();
                self.ctx.held.put(&self.key, held);
                let outcome = Outcome::WriteBackPending {
                    secret: name.clone(),
                    why: kube_reason(&e),
                };
                // The write-back's error is the one to retry on, whatever the status write does.
                let _ = self.report(&outcome).await;
                Err(Error::WriteBack(name, e))
            }
        }
    }

    /// Publishes a stored answer's access token, then the status. A failed publish keeps
    /// the answer held, so the next attempt publishes it instead of refreshing again.
    async fn publish_held(
        mut self,
        mut chain: secrets::Chain,
        held: Held,
        refresh_before: SignedDuration,
    ) -> Result<Action, Error> {
        let Some(grant) = held.grant.as_ref() else {
            return Ok(Action::requeue(Duration::ZERO));
        };
        let rotated = held.new_token.is_some();
        let refresh_fp = held.new_fingerprint();
        let issued_at = held.received_at;
        let expires_at =
            issued_at + SignedDuration::try_from(grant.expires_in).unwrap_or(SignedDuration::ZERO);
        // The target keeps a copy of the spent list, for tools that put back annotations
        // along with the token; the refresh-token Secret's list is the one that counts. It
        // is read once and written with its resourceVersion as a precondition, so an answer
        // held up in flight never rolls back a newer one published meanwhile.
        let name = target::target_name(self.cr);
        let attempt = async {
            // The version gather read, once; else (a second publish) a fresh read.
            let seen = lock(&self.target_seen).take();
            let current = match seen {
                Some(seen) => seen,
                None => self
                    .secrets
                    .get_opt(&name)
                    .await
                    .map_err(|e| Error::Target(name.clone(), e))?,
            };
            let ownership = self.ownership(current.as_ref());
            if let Ownership::Conflict(why) = ownership {
                return Ok(Err(why));
            }
            let copy = current.as_ref().and_then(target::published);
            if copy
                .as_ref()
                .is_some_and(|p| target::supersedes(p, issued_at, &refresh_fp))
            {
                return Ok(Ok(None));
            }
            let copy = copy.map(|p| p.spent_fingerprints).unwrap_or_default();
            let spent: Vec<String> = spent::union(&held.spent, &copy)
                .into_iter()
                .filter(|f| *f != refresh_fp)
                .collect();
            let version = current.and_then(|s| s.metadata.resource_version);
            let publication = Publication {
                access_token: grant.access_token.expose_secret(),
                token_type: &grant.token_type,
                hostname: &grant.api.hostname,
                port: grant.api.port,
                base_url: &grant.api.base_url(),
                issued_at,
                expires_at,
                refresh_fingerprint: &refresh_fp,
                spent_fingerprints: &spent,
            };
            self.publish(&publication, &ownership, version).await?;
            Ok(Ok(Some(spent)))
        };
        let spent = match attempt.await {
            Ok(Ok(Some(spent))) => spent,
            Ok(Ok(None)) => {
                info!("a newer access token is already published; this older answer is not");
                return Ok(Action::requeue(Duration::ZERO));
            }
            // The refresh token is stored; its access token cannot be published here.
            Ok(Err(why)) => {
                return self
                    .finish(
                        Outcome::TargetConflict(why),
                        Action::requeue(WAITING_RECHECK),
                    )
                    .await;
            }
            Err(Error::Target(_, kube::Error::Api(s))) if s.code == 409 => {
                // Published meanwhile: the next reconcile compares again.
                self.ctx.held.put(&self.key, held);
                return Ok(Action::requeue(Duration::ZERO));
            }
            Err(e) => {
                self.ctx.held.put(&self.key, held);
                let outcome = Outcome::PublishFailed { why: e.to_string() };
                let _ = self.report(&outcome).await;
                return Err(e);
            }
        };
        let rotation = match (self.cr.spec.rotation, rotated, &grant.refresh_token) {
            (RotationMode::Auto, false, Some(_)) => RotationMode::NonRotating,
            (RotationMode::Auto, _, _) => RotationMode::Rotating,
            (explicit, _, _) => explicit,
        };
        let published = schedule::Published {
            issued_at,
            expires_at,
            refresh_fingerprint: refresh_fp,
            spent_fingerprints: spent,
        };
        self.status.rotation = Some(rotation);
        self.status.access_token_expires_at = Some(Time(expires_at));
        self.status.last_refresh_at = Some(Time(issued_at));
        self.status.failed_refresh_attempts = 0;
        self.status.last_failure_time = None;
        self.status.refused_login_fingerprint = None;
        self.status.base_url = Some(grant.api.base_url());
        self.status.target_secret_name = Some(target::target_name(self.cr));
        if rotated {
            chain.token_issued_at = issued_at;
        }
        self.set_deadline(chain);
        let next = schedule::before_idle_end(
            schedule::due_at(&published, self.rotation(), refresh_before, jitter(self.cr)),
            chain.token_issued_at,
            self.idle_end(chain.token_issued_at),
        );
        let action = Action::requeue(wait_until(self.ctx.settings.now(), next));
        self.published_token = Some((issued_at, expires_at));
        let outcome = Outcome::Refreshed {
            expires_at,
            next_refresh: next,
        };
        self.finish(outcome, action).await
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
        let ns = self.cr.namespace().unwrap_or_default();
        let seen = self.ctx.reads.targets.seen();
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
                self.ctx.reads.targets.changed(&ns, &name);
                return Err(Error::Target(name, e));
            }
        };
        self.ctx.own_writes.wrote(&written);
        let kept = Arc::new(cache::trimmed(&written));
        self.ctx.reads.targets.put(&ns, &name, "", kept, seen);
        Ok(())
    }

    pub(super) async fn refresh_failed(
        mut self,
        err: TokenError,
        stored: &StoredToken,
        login: &str,
    ) -> Result<Action, Error> {
        // Within the bound the CRD sets, or the status write would be refused.
        self.status.failed_refresh_attempts = self
            .status
            .failed_refresh_attempts
            .saturating_add(1)
            .min(crate::crd::MAX_FAILED_ATTEMPTS);
        self.status.last_failure_time = Some(Time(self.now));
        if let Some(after) = err.retry_after() {
            // From the precise time of the answer: rounding down to the second would retry
            // up to a second before the server asked.
            let after = SignedDuration::try_from(after).unwrap_or(SignedDuration::ZERO);
            let at = self
                .ctx
                .settings
                .now()
                .checked_add(after)
                .unwrap_or(Timestamp::MAX);
            lock(&self.ctx.retry_not_before).insert(self.key.clone(), at);
        }
        let r = &self.cr.spec.refresh_token_secret_ref;
        if err.class() == ErrorClass::RefusedByConfig {
            // The server answered (and rotated: the new token was stored above), but this
            // operator may not use the answer. Spending again would only rotate for nothing:
            // wait until the configuration or the login changes.
            self.ctx.held.refuse(Refusal::Config, &self.key, login);
            let outcome = Outcome::AnswerRefused {
                failure: Failure::from(&err),
            };
            return self.finish(outcome, Action::requeue(WAITING_RECHECK)).await;
        }
        if err.class() == ErrorClass::Reauthorize {
            // Before declaring the login dead, make sure the token spent is still the one
            // stored: if it changed meanwhile, someone logged in again or rotated it.
            let again = secrets::read_refresh_token(&self.secrets, &r.name, &r.key, self.now).await;
            if again.is_ok_and(|s| s.fingerprint != stored.fingerprint) {
                return Ok(Action::requeue(Duration::ZERO));
            }
            // Sending a refused non-rotating token again is no reuse, and may work after a
            // server incident: only rotating logins are held back.
            if self.rotation() != schedule::Rotation::NonRotating {
                self.status.refused_login_fingerprint = Some(login.to_owned());
                self.ctx.held.refuse(Refusal::Server, &self.key, login);
            }
            let outcome = Outcome::ReauthorizationRequired {
                failure: Failure::from(&err),
                secret: r.name.clone(),
            };
            return self.finish(outcome, Action::requeue(WAITING_RECHECK)).await;
        }
        // Only the retry time matters here, which refreshBefore does not change.
        let published = self.published().await.unwrap_or(None);
        let inputs = self.schedule_inputs(published.clone(), stored, SignedDuration::ZERO);
        let at = match schedule::plan(&inputs) {
            schedule::Plan::RefreshAt(at, _) => at,
            schedule::Plan::RefreshNow(_) => {
                self.now
                    + SignedDuration::try_from(schedule::MIN_BACKOFF)
                        .unwrap_or(SignedDuration::ZERO)
            }
        };
        let action = Action::requeue(wait_until(self.ctx.settings.now(), at));
        let outcome = Outcome::RefreshFailed {
            failure: Failure::from(&err),
            attempt: self.status.failed_refresh_attempts,
            next_try: at,
            published_until: published.map(|p| p.expires_at),
        };
        self.finish(outcome, action).await
    }
}
