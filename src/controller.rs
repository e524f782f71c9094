//! The reconcile loop: the one place where the decision core, the token client and the
//! Kubernetes API meet. Pipeline per credential:
//! validate -> read Secrets -> finish any pending write-back -> plan -> refresh ->
//! write back the rotated refresh token -> apply the target Secret -> status.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use secrecy::ExposeSecret;
use tracing::{debug, info, instrument, warn};

use crate::crd::{EagleEyeCredential, EagleEyeCredentialStatus, RotationMode};
use crate::metrics::{self, Metrics};
use crate::schedule::{self, Inputs, Plan, Rotation};
use crate::secrets::{self, SecretError, StoredToken, WriteBack};
use crate::status::{self, Lifetimes, READY, RELOGIN_SOON, reason};
use crate::target::{self, Publication, fingerprint};
use crate::token::{ErrorClass, TokenClient, TokenError, TokenGrant};

pub const FIELD_MANAGER: &str = "eagle-eye-operator";

/// How often a credential that waits on a person (dead login, missing Secret, bad spec) is
/// looked at again even without a watch event.
const WAITING_RECHECK: Duration = Duration::from_secs(300);
/// A missing Secret is looked for again this often (its creation also triggers a look).
const MISSING_SECRET_RECHECK: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Settings {
    pub allow_http: bool,
    pub lifetimes: Lifetimes,
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub tokens: TokenClient,
    pub settings: Settings,
    pub store: Store<EagleEyeCredential>,
    pub metrics: Arc<Metrics>,
    /// Rotated refresh tokens received but not yet stored, by credential. Never spent
    /// again: the next reconcile stores them first.
    pending: Mutex<HashMap<String, Pending>>,
    /// `Retry-After` answers, by credential.
    retry_not_before: Mutex<HashMap<String, Timestamp>>,
}

struct Pending {
    spent_fingerprint: String,
    grant: TokenGrant,
    received_at: Timestamp,
    /// Where it belongs, so that shutdown can store it without a reconcile.
    namespace: String,
    secret: String,
    key: String,
    credential: String,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        tokens: TokenClient,
        settings: Settings,
        store: Store<EagleEyeCredential>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Context {
            client,
            recorder,
            tokens,
            settings,
            store,
            metrics,
            pending: Mutex::default(),
            retry_not_before: Mutex::default(),
        }
    }

    /// True while some rotated token is held only in memory.
    pub fn has_pending_write_back(&self) -> bool {
        !lock(&self.pending).is_empty()
    }

    /// Stores every rotated token still held in memory, retrying until `limit`. Called at
    /// shutdown, when no reconcile will come to do it. Returns how many could not be stored.
    pub async fn flush_pending_write_backs(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let keys: Vec<String> = lock(&self.pending).keys().cloned().collect();
            for k in keys {
                let Some(p) = lock(&self.pending).remove(&k) else {
                    continue;
                };
                match self.store_pending(&p).await {
                    Ok(()) => {
                        info!(credential = %k, "stored the held refresh token before exiting")
                    }
                    Err(e) => {
                        warn!(credential = %k, error = %e, "could not store the held refresh token yet");
                        lock(&self.pending).insert(k, p);
                    }
                }
            }
            let left = lock(&self.pending).len();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                for k in lock(&self.pending).keys() {
                    tracing::error!(credential = %k, "exiting with a rotated refresh token that could not be stored: the login is lost and needs a new Phase 1 login");
                }
                return left;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn store_pending(&self, p: &Pending) -> Result<(), kube::Error> {
        let Some(new) = &p.grant.refresh_token else {
            return Ok(());
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &p.namespace);
        let stored = match secrets::read_refresh_token(&api, &p.secret, &p.key, p.received_at).await
        {
            Ok(s) => s,
            Err(SecretError::Api { source, .. }) => return Err(source),
            // The Secret is gone or emptied: nothing to protect any more.
            Err(_) => return Ok(()),
        };
        if stored.fingerprint != p.spent_fingerprint {
            return Ok(());
        }
        secrets::write_back(&api, &stored, &p.key, new, &p.credential, p.received_at)
            .await
            .map(|_| ())
    }
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("writing the status of {0}: {1}")]
    Status(String, #[source] kube::Error),
    #[error("applying target Secret {0}: {1}")]
    Target(String, #[source] kube::Error),
    #[error("storing the rotated refresh token in Secret {0}: {1}")]
    WriteBack(String, #[source] kube::Error),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// Retries Kubernetes API failures quickly: a rotated token may be waiting to be stored.
pub fn error_policy(cr: Arc<EagleEyeCredential>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(credential = %key(&cr), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[instrument(skip_all, fields(credential = %key(&cr)))]
pub async fn reconcile(cr: Arc<EagleEyeCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The cached object may predate this controller's last status write (a reconcile
    // triggered by our own Secret writes can outrun the watch). Status is rebuilt from the
    // object, so read it fresh: a stale copy would roll the status back.
    let api: Api<EagleEyeCredential> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let fresh = match api.get_opt(&cr.name_any()).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => {
            ctx.metrics.forget(&labels(&cr));
            return Ok(Action::await_change());
        }
        Err(e) => return Err(Error::Status(key(&cr), e)),
    };
    Reconciler::new(&fresh, &ctx).run().await
}

struct Reconciler<'a> {
    cr: &'a EagleEyeCredential,
    ctx: &'a Context,
    key: String,
    secrets: Api<Secret>,
    status: EagleEyeCredentialStatus,
    now: Timestamp,
    /// When the token endpoint answered this round's refresh.
    answered_at: Option<std::time::Instant>,
}

/// The outcome that `Ready` reports.
struct Verdict {
    ready: bool,
    reason: &'static str,
    message: String,
}

impl<'a> Reconciler<'a> {
    fn new(cr: &'a EagleEyeCredential, ctx: &'a Context) -> Self {
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
            now: whole_seconds(Timestamp::now()),
            answered_at: None,
        }
    }

    async fn run(mut self) -> Result<Action, Error> {
        let spec = &self.cr.spec;
        if spec.suspend {
            return self
                .finish(
                    Verdict {
                        ready: false,
                        reason: reason::SUSPENDED,
                        message: "refreshing is suspended".into(),
                    },
                    Action::await_change(),
                )
                .await;
        }
        let (auth_url, refresh_before) = match validate(self.cr, &self.ctx.settings) {
            Ok(v) => v,
            Err(message) => {
                return self
                    .fail_waiting(reason::INVALID_SPEC, message, Action::await_change())
                    .await;
            }
        };
        if let Some(other) = other_claimant(&self.ctx.store, self.cr) {
            let message = format!(
                "refresh-token Secret {:?} is already refreshed by EagleEyeCredential {other:?}; two credentials spending one rotating token destroy it",
                spec.refresh_token_secret_ref.name
            );
            return self
                .fail_waiting(
                    reason::REFRESH_TOKEN_IN_USE,
                    message,
                    Action::requeue(WAITING_RECHECK),
                )
                .await;
        }
        let c = &spec.client_secret_ref;
        let creds = match secrets::read_client(
            &self.secrets,
            &c.name,
            &c.client_id_key,
            &c.client_secret_key,
        )
        .await
        {
            Ok(creds) => creds,
            Err(e) => return self.secret_problem(e).await,
        };
        let r = &spec.refresh_token_secret_ref;
        let stored =
            match secrets::read_refresh_token(&self.secrets, &r.name, &r.key, self.now).await {
                Ok(s) => s,
                Err(e) => return self.secret_problem(e).await,
            };

        if let Some(action) = self.finish_pending_write_back(&stored).await? {
            return Ok(action);
        }

        let target_name = target::target_name(self.cr);
        let published = self
            .secrets
            .get_opt(&target_name)
            .await
            .map_err(|e| SecretError::Api {
                name: target_name.clone(),
                source: e,
            })?
            .as_ref()
            .and_then(target::published);
        let inputs = Inputs {
            now: self.now,
            published: published.clone(),
            stored_fingerprint: stored.fingerprint.clone(),
            rotation: self.rotation(),
            refresh_before,
            failures: self.status.failed_refresh_attempts,
            last_failure: self.status.last_failure_time.as_ref().map(|t| t.0),
            retry_not_before: lock(&self.ctx.retry_not_before).get(&self.key).copied(),
            jitter: jitter(self.cr),
        };
        match schedule::plan(&inputs) {
            Plan::RefreshAt(at, _) => {
                self.status.next_refresh_at = Some(Time(at));
                self.update_deadline(&stored);
                let verdict = self.current_verdict(published.as_ref().map(|p| p.expires_at));
                let action = Action::requeue(schedule::until(self.now, at));
                self.finish(verdict, action).await
            }
            Plan::RefreshNow(why) => {
                info!(?why, "refreshing");
                self.refresh(&auth_url, &creds, stored, refresh_before)
                    .await
            }
        }
    }

    async fn refresh(
        mut self,
        auth_url: &url::Url,
        creds: &crate::token::ClientCredentials,
        stored: StoredToken,
        refresh_before: SignedDuration,
    ) -> Result<Action, Error> {
        let scope = &self.cr.spec.scope;
        let started = std::time::Instant::now();
        let result = self
            .ctx
            .tokens
            .refresh(auth_url, creds, &stored.token, scope)
            .await;
        self.answered_at = Some(std::time::Instant::now());
        let labels = labels(self.cr);
        self.ctx
            .metrics
            .refresh_attempt(&labels, started.elapsed().as_secs_f64());
        match result {
            Ok(grant) => {
                lock(&self.ctx.retry_not_before).remove(&self.key);
                self.store_and_publish(&stored, grant, refresh_before).await
            }
            Err(e) => {
                self.ctx.metrics.refresh_failure(&labels, e.reason());
                self.refresh_failed(e, &stored).await
            }
        }
    }

    /// Rotated tokens are written back before anything else; only then is the access
    /// token published. A failed write keeps the token in memory for the next attempt.
    async fn store_and_publish(
        mut self,
        stored: &StoredToken,
        grant: TokenGrant,
        refresh_before: SignedDuration,
    ) -> Result<Action, Error> {
        let rotated = grant
            .refresh_token
            .as_ref()
            .is_some_and(|t| t.expose_secret() != stored.token.expose_secret());
        let refresh_fp = match (&grant.refresh_token, rotated) {
            (Some(new), true) => {
                let name = &self.cr.spec.refresh_token_secret_ref.name;
                match secrets::write_back(
                    &self.secrets,
                    stored,
                    &self.cr.spec.refresh_token_secret_ref.key,
                    new,
                    &self.cr.name_any(),
                    self.now,
                )
                .await
                {
                    Ok(WriteBack::Written) => {
                        // The window in which a crash loses the login: from the token
                        // endpoint's answer until this write is acknowledged.
                        if let Some(answered) = self.answered_at {
                            let window_ms = answered.elapsed().as_secs_f64() * 1000.0;
                            debug!(window_ms, "rotated refresh token stored");
                        }
                        fingerprint(new.expose_secret())
                    }
                    Ok(WriteBack::ReplacedByPerson) => {
                        self.event(
                            EventType::Normal,
                            "RefreshTokenReplaced",
                            "a person stored a new refresh token during a refresh; using theirs",
                        )
                        .await;
                        return Ok(Action::requeue(Duration::ZERO));
                    }
                    Err(e) => {
                        lock(&self.ctx.pending).insert(
                            self.key.clone(),
                            Pending {
                                spent_fingerprint: stored.fingerprint.clone(),
                                grant,
                                received_at: self.now,
                                namespace: self.cr.namespace().unwrap_or_default(),
                                secret: name.clone(),
                                key: self.cr.spec.refresh_token_secret_ref.key.clone(),
                                credential: self.cr.name_any(),
                            },
                        );
                        let message = format!(
                            "the rotated refresh token is held in memory until Secret {name:?} can be written: {e}"
                        );
                        self.event(EventType::Warning, reason::WRITE_BACK_PENDING, &message)
                            .await;
                        let verdict = Verdict {
                            ready: false,
                            reason: reason::WRITE_BACK_PENDING,
                            message,
                        };
                        let _ = self.patch_status(verdict).await;
                        return Err(Error::WriteBack(name.clone(), e));
                    }
                }
            }
            _ => stored.fingerprint.clone(),
        };
        let rotation = match (self.cr.spec.rotation, rotated, &grant.refresh_token) {
            (RotationMode::Auto, false, Some(_)) => RotationMode::NonRotating,
            (RotationMode::Auto, _, _) => RotationMode::Rotating,
            (explicit, _, _) => explicit,
        };
        self.publish(&grant, &refresh_fp).await?;

        let expires_at =
            self.now + SignedDuration::try_from(grant.expires_in).unwrap_or(SignedDuration::ZERO);
        let published = schedule::Published {
            issued_at: self.now,
            expires_at,
            refresh_fingerprint: refresh_fp,
        };
        self.status.rotation = Some(rotation);
        self.status.access_token_expires_at = Some(Time(expires_at));
        self.status.last_refresh_at = Some(Time(self.now));
        self.status.failed_refresh_attempts = 0;
        self.status.last_failure_time = None;
        self.status.base_url = Some(grant.api.base_url());
        self.status.target_secret_name = Some(target::target_name(self.cr));
        let mut chain = stored.chain;
        if rotated {
            chain.token_issued_at = self.now;
        }
        self.set_deadline(chain);
        let next = schedule::due_at(&published, self.rotation(), refresh_before, jitter(self.cr));
        self.status.next_refresh_at = Some(Time(next));
        let message = format!("access token refreshed; it expires at {expires_at}");
        self.event(EventType::Normal, reason::TOKEN_REFRESHED, &message)
            .await;
        let verdict = Verdict {
            ready: true,
            reason: reason::TOKEN_REFRESHED,
            message,
        };
        let action = Action::requeue(schedule::until(self.now, next));
        self.finish(verdict, action).await
    }

    async fn publish(&self, grant: &TokenGrant, refresh_fp: &str) -> Result<(), Error> {
        let expires_at =
            self.now + SignedDuration::try_from(grant.expires_in).unwrap_or(SignedDuration::ZERO);
        let base_url = grant.api.base_url();
        let secret = target::build(
            self.cr,
            &Publication {
                access_token: grant.access_token.expose_secret(),
                token_type: &grant.token_type,
                hostname: &grant.api.hostname,
                port: grant.api.port,
                base_url: &base_url,
                issued_at: self.now,
                expires_at,
                refresh_fingerprint: refresh_fp,
            },
        );
        let name = target::target_name(self.cr);
        self.secrets
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map(|_| ())
            .map_err(|e| Error::Target(name, e))
    }

    /// A rotated token from an earlier attempt that could not be stored is stored now,
    /// before anything could spend the old one.
    async fn finish_pending_write_back(
        &mut self,
        stored: &StoredToken,
    ) -> Result<Option<Action>, Error> {
        let Some(pending) = lock(&self.ctx.pending).remove(&self.key) else {
            return Ok(None);
        };
        let new_fp = pending
            .grant
            .refresh_token
            .as_ref()
            .map(|t| fingerprint(t.expose_secret()));
        if stored.fingerprint != pending.spent_fingerprint
            && Some(&stored.fingerprint) != new_fp.as_ref()
        {
            self.event(EventType::Normal, "RefreshTokenReplaced", "a person stored a new refresh token while a rotated one waited to be stored; using theirs").await;
            return Ok(None);
        }
        info!(held_for = %self.now.duration_since(pending.received_at), "storing the rotated refresh token held in memory");
        // Publishing an access token that is older than `now` is fine: its expiry was
        // measured from when it was received.
        self.now = pending.received_at;
        let refresh_before = validate(self.cr, &self.ctx.settings)
            .map(|v| v.1)
            .unwrap_or(SignedDuration::ZERO);
        let spent = StoredToken {
            token: stored.token.clone(),
            fingerprint: pending.spent_fingerprint.clone(),
            secret: stored.secret.clone(),
            chain: stored.chain,
        };
        let outcome = Box::pin(
            Reconciler {
                cr: self.cr,
                ctx: self.ctx,
                key: self.key.clone(),
                secrets: self.secrets.clone(),
                status: self.status.clone(),
                now: pending.received_at,
                answered_at: None,
            }
            .store_and_publish(&spent, pending.grant, refresh_before),
        )
        .await;
        Ok(Some(outcome?))
    }

    async fn refresh_failed(
        mut self,
        err: TokenError,
        stored: &StoredToken,
    ) -> Result<Action, Error> {
        self.status.failed_refresh_attempts = self.status.failed_refresh_attempts.saturating_add(1);
        self.status.last_failure_time = Some(Time(self.now));
        if let Some(after) = err.retry_after() {
            let at = self.now + SignedDuration::try_from(after).unwrap_or(SignedDuration::ZERO);
            lock(&self.ctx.retry_not_before).insert(self.key.clone(), at);
        }
        let r = &self.cr.spec.refresh_token_secret_ref;
        if err.class() == ErrorClass::Reauthorize {
            // Before declaring the login dead, make sure the token spent is still the one
            // stored: if it changed meanwhile, someone logged in again or rotated it.
            let again = secrets::read_refresh_token(&self.secrets, &r.name, &r.key, self.now).await;
            if again.is_ok_and(|s| s.fingerprint != stored.fingerprint) {
                return Ok(Action::requeue(Duration::ZERO));
            }
            let message = format!(
                "the auth server refused the refresh token ({err}); a person must repeat the Phase 1 login and store the new refresh token in Secret {:?}",
                r.name
            );
            self.event(
                EventType::Warning,
                reason::REAUTHORIZATION_REQUIRED,
                &message,
            )
            .await;
            self.status.next_refresh_at = None;
            return self
                .finish(
                    Verdict {
                        ready: false,
                        reason: reason::REAUTHORIZATION_REQUIRED,
                        message,
                    },
                    Action::requeue(WAITING_RECHECK),
                )
                .await;
        }
        let published = self
            .secrets
            .get_opt(&target::target_name(self.cr))
            .await
            .ok()
            .flatten()
            .as_ref()
            .and_then(target::published);
        let inputs = Inputs {
            now: self.now,
            published: published.clone(),
            stored_fingerprint: stored.fingerprint.clone(),
            rotation: self.rotation(),
            refresh_before: SignedDuration::ZERO,
            failures: self.status.failed_refresh_attempts,
            last_failure: Some(self.now),
            retry_not_before: lock(&self.ctx.retry_not_before).get(&self.key).copied(),
            jitter: jitter(self.cr),
        };
        let at = match schedule::plan(&inputs) {
            Plan::RefreshAt(at, _) => at,
            Plan::RefreshNow(_) => {
                self.now
                    + SignedDuration::try_from(schedule::MIN_BACKOFF)
                        .unwrap_or(SignedDuration::ZERO)
            }
        };
        self.status.next_refresh_at = Some(Time(at));
        let valid = published
            .map(|p| p.expires_at)
            .filter(|e| *e > self.now)
            .map(|e| format!("; the published access token stays valid until {e}"))
            .unwrap_or_else(|| "; no valid access token is published".into());
        let message = format!(
            "refresh failed ({}: {err}); attempt {} , next try at {at}{valid}",
            err.reason(),
            self.status.failed_refresh_attempts
        )
        .replace(" ,", ",");
        self.event(EventType::Warning, reason::REFRESH_FAILED, &message)
            .await;
        let action = Action::requeue(schedule::until(self.now, at));
        self.finish(
            Verdict {
                ready: false,
                reason: reason::REFRESH_FAILED,
                message,
            },
            action,
        )
        .await
    }

    async fn secret_problem(self, e: SecretError) -> Result<Action, Error> {
        let reason = match &e {
            SecretError::NotFound(_) => reason::SECRET_NOT_FOUND,
            SecretError::KeyMissing { .. } | SecretError::BadValue { .. } => {
                reason::SECRET_KEY_MISSING
            }
            SecretError::Api { .. } => return Err(e.into()),
        };
        self.fail_waiting(
            reason,
            e.to_string(),
            Action::requeue(MISSING_SECRET_RECHECK),
        )
        .await
    }

    /// A problem only a person can fix: report it once per change, then wait.
    async fn fail_waiting(
        self,
        reason: &'static str,
        message: String,
        action: Action,
    ) -> Result<Action, Error> {
        let unchanged = self
            .cr
            .status
            .as_ref()
            .and_then(|s| status::condition(&s.conditions, READY))
            .is_some_and(|c| c.reason == reason && c.message == message);
        if !unchanged {
            self.event(EventType::Warning, reason, &message).await;
        }
        self.finish(
            Verdict {
                ready: false,
                reason,
                message,
            },
            action,
        )
        .await
    }

    /// `Ready` when nothing was done this round: true while the published token is valid
    /// and the last attempt did not fail.
    fn current_verdict(&self, expires_at: Option<Timestamp>) -> Verdict {
        let old = status::condition(&self.status.conditions, READY);
        match expires_at {
            Some(e) if e > self.now && self.status.failed_refresh_attempts == 0 => Verdict {
                ready: true,
                reason: old
                    .filter(|c| c.status == "True")
                    .map(|_| reason::TOKEN_REFRESHED)
                    .unwrap_or(reason::TOKEN_VALID),
                message: format!("the published access token is valid until {e}"),
            },
            _ => match old {
                Some(c) if c.status == "False" => Verdict {
                    ready: false,
                    reason: static_reason(&c.reason),
                    message: c.message.clone(),
                },
                _ => Verdict {
                    ready: false,
                    reason: reason::REFRESH_FAILED,
                    message: "no valid access token is published".into(),
                },
            },
        }
    }

    fn rotation(&self) -> Rotation {
        match (self.cr.spec.rotation, self.status.rotation) {
            (RotationMode::Rotating, _) | (RotationMode::Auto, Some(RotationMode::Rotating)) => {
                Rotation::Rotating
            }
            (RotationMode::NonRotating, _)
            | (RotationMode::Auto, Some(RotationMode::NonRotating)) => Rotation::NonRotating,
            _ => Rotation::Unknown,
        }
    }

    fn update_deadline(&mut self, stored: &StoredToken) {
        self.set_deadline(stored.chain);
    }

    fn set_deadline(&mut self, chain: secrets::Chain) {
        if self.rotation() == Rotation::NonRotating {
            self.status.refresh_token_deadline = None;
            self.status.chain_started_at = None;
            self.status.refresh_token_deadline_is_estimate = false;
            return;
        }
        let l = &self.ctx.settings.lifetimes;
        self.status.chain_started_at = Some(Time(chain.started_at));
        self.status.refresh_token_deadline = Some(Time(status::deadline(
            l,
            chain.started_at,
            chain.token_issued_at,
        )));
        self.status.refresh_token_deadline_is_estimate = chain.estimated;
    }

    async fn finish(mut self, verdict: Verdict, action: Action) -> Result<Action, Error> {
        self.patch_status(verdict).await?;
        Ok(action)
    }

    async fn patch_status(&mut self, verdict: Verdict) -> Result<(), Error> {
        let generation = self.cr.metadata.generation;
        status::set_condition(
            &mut self.status.conditions,
            READY,
            verdict.ready,
            verdict.reason,
            verdict.message,
            generation,
            self.now,
        );
        let deadline = self.status.refresh_token_deadline.as_ref().map(|t| t.0);
        let (soon, why, message) = status::relogin(
            &self.ctx.settings.lifetimes,
            deadline,
            self.status.refresh_token_deadline_is_estimate,
            self.now,
        );
        let was_soon = self
            .cr
            .status
            .as_ref()
            .and_then(|s| status::condition(&s.conditions, RELOGIN_SOON))
            .is_some_and(|c| c.status == "True");
        status::set_condition(
            &mut self.status.conditions,
            RELOGIN_SOON,
            soon,
            why,
            message.clone(),
            generation,
            self.now,
        );
        if soon && !was_soon {
            self.event(EventType::Warning, "ReloginSoon", &message)
                .await;
        }
        self.ctx
            .metrics
            .observe_status(&labels(self.cr), &self.status);
        if self.cr.status.as_ref() == Some(&self.status) {
            return Ok(());
        }
        let api: Api<EagleEyeCredential> = Api::namespaced(
            self.ctx.client.clone(),
            &self.cr.namespace().unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "apiVersion": "eagle-eye-operator.io/v1alpha1",
            "kind": "EagleEyeCredential",
            "status": self.status,
        });
        api.patch_status(
            &self.cr.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| Error::Status(self.key.clone(), e))
    }

    async fn event(&self, type_: EventType, reason: &str, note: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: "Refresh".into(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&ev, &self.cr.object_ref(&()))
            .await
        {
            warn!(error = %e, "could not publish an event");
        }
    }
}

/// Checks what the API server cannot: the duration syntax and the operator's own policy.
fn validate(
    cr: &EagleEyeCredential,
    settings: &Settings,
) -> Result<(url::Url, SignedDuration), String> {
    let spec = &cr.spec;
    let url = url::Url::parse(&spec.auth_url)
        .map_err(|e| format!("authUrl {:?} is not a URL: {e}", spec.auth_url))?;
    match url.scheme() {
        "https" => {}
        "http" if settings.allow_http => {}
        "http" => {
            return Err(format!(
                "authUrl {:?} is plain http; the operator refuses it unless started with --allow-insecure-http",
                spec.auth_url
            ));
        }
        other => return Err(format!("authUrl scheme {other:?} is not supported")),
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

/// Durations such as `90s`, `30m`, `1h30m` (as the CEL rule accepts them) or `14d`
/// (days of 24 hours).
pub fn parse_duration(s: &str) -> Option<SignedDuration> {
    let span: jiff::Span = s.trim().parse().ok()?;
    span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .ok()
}

/// Another credential that references the same refresh-token Secret and came first (by
/// creation time, then name) owns it.
fn other_claimant(store: &Store<EagleEyeCredential>, cr: &EagleEyeCredential) -> Option<String> {
    let order = |c: &EagleEyeCredential| {
        (
            c.metadata.creation_timestamp.clone().map(|t| t.0),
            c.name_any(),
        )
    };
    store
        .state()
        .into_iter()
        .filter(|o| {
            o.namespace() == cr.namespace()
                && o.name_any() != cr.name_any()
                && o.metadata.deletion_timestamp.is_none()
        })
        .filter(|o| o.spec.refresh_token_secret_ref.name == cr.spec.refresh_token_secret_ref.name)
        .filter(|o| order(o) < order(cr))
        .map(|o| o.name_any())
        .min()
}

/// A stable number in [0, 1) per credential, so restarts do not bunch refreshes together.
fn jitter(cr: &EagleEyeCredential) -> f64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cr.metadata.uid.hash(&mut h);
    (h.finish() % 10_000) as f64 / 10_000.0
}

fn static_reason(r: &str) -> &'static str {
    [
        reason::TOKEN_REFRESHED,
        reason::TOKEN_VALID,
        reason::SECRET_NOT_FOUND,
        reason::SECRET_KEY_MISSING,
        reason::INVALID_SPEC,
        reason::REFRESH_FAILED,
        reason::REAUTHORIZATION_REQUIRED,
        reason::REFRESH_TOKEN_IN_USE,
        reason::WRITE_BACK_PENDING,
        reason::SUSPENDED,
    ]
    .into_iter()
    .find(|k| *k == r)
    .unwrap_or(reason::REFRESH_FAILED)
}

/// Kubernetes keeps times to the second; rounding down here keeps the status, the target
/// Secret and the schedule in agreement, and errs towards refreshing early.
fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn labels(cr: &EagleEyeCredential) -> metrics::Credential {
    metrics::Credential {
        namespace: cr.namespace().unwrap_or_default(),
        credential: cr.name_any(),
    }
}

fn key(cr: &EagleEyeCredential) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a reconcile panicked; the map itself is intact.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use jiff::SignedDuration;

    #[test]
    fn durations_parse_in_kubernetes_and_day_forms() {
        assert_eq!(parse_duration("30m"), Some(SignedDuration::from_mins(30)));
        assert_eq!(parse_duration("1h30m"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("90s"), Some(SignedDuration::from_secs(90)));
        assert_eq!(
            parse_duration("14d"),
            Some(SignedDuration::from_hours(14 * 24))
        );
        assert_eq!(parse_duration("0s"), Some(SignedDuration::ZERO));
        assert_eq!(parse_duration("soon"), None);
    }
}
