//! One reconcile, step by step: validate, read, plan, refresh, write back, publish.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use secrecy::ExposeSecret;
use tracing::{debug, info};

use crate::crd::{EagleEyeCredential, EagleEyeCredentialStatus, RotationMode};
use crate::schedule::{self, Inputs, Plan};
use crate::secrets::{self, SecretError, StoredToken, WriteBack};
use crate::status::reason;
use crate::target::{self, Publication, fingerprint};
use crate::token::{ErrorClass, TokenError, TokenGrant};

use super::{
    Context, Error, FIELD_MANAGER, Pending, WAITING_RECHECK, jitter, key, labels, lock,
    other_claimant, validate, whole_seconds,
};

pub(super) struct Reconciler<'a> {
    pub(super) cr: &'a EagleEyeCredential,
    pub(super) ctx: &'a Context,
    pub(super) key: String,
    pub(super) secrets: Api<Secret>,
    pub(super) status: EagleEyeCredentialStatus,
    pub(super) now: Timestamp,
    /// When the token endpoint answered this round's refresh.
    pub(super) answered_at: Option<std::time::Instant>,
}

/// The outcome that `Ready` reports.
pub(super) struct Verdict {
    pub(super) ready: bool,
    pub(super) reason: &'static str,
    pub(super) message: String,
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
            now: whole_seconds(Timestamp::now()),
            answered_at: None,
        }
    }

    /// What the target Secret publishes now, if it is there and carries our annotations.
    async fn published(&self) -> Result<Option<schedule::Published>, SecretError> {
        let name = target::target_name(self.cr);
        let secret = self
            .secrets
            .get_opt(&name)
            .await
            .map_err(|source| SecretError::Api { name, source })?;
        Ok(secret.as_ref().and_then(target::published))
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
        }
    }

    pub(super) async fn run(mut self) -> Result<Action, Error> {
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

        let published = self.published().await?;
        let inputs = self.schedule_inputs(published.clone(), &stored, refresh_before);
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

    pub(super) async fn refresh(
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
    pub(super) async fn store_and_publish(
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

    pub(super) async fn publish(&self, grant: &TokenGrant, refresh_fp: &str) -> Result<(), Error> {
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
    pub(super) async fn finish_pending_write_back(
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

    pub(super) async fn refresh_failed(
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
        // Only the retry time matters here, which refreshBefore does not change.
        let published = self.published().await.unwrap_or(None);
        let inputs = self.schedule_inputs(published.clone(), stored, SignedDuration::ZERO);
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
}
