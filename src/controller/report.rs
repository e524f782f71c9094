//! What a reconcile reports: the Ready verdict, the status write and Events.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::crd::{EagleEyeCredential, RotationMode};
use crate::schedule::Rotation;
use crate::secrets::{self, SecretError};
use crate::status::{self, READY, RELOGIN_SOON, reason};

use super::reconciler::{Reconciler, Verdict};
use super::{Error, FIELD_MANAGER, MISSING_SECRET_RECHECK, labels, static_reason, truncate};

impl Reconciler<'_> {
    pub(super) async fn secret_problem(self, e: SecretError) -> Result<Action, Error> {
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
    pub(super) async fn fail_waiting(
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
    pub(super) fn current_verdict(&self, expires_at: Option<Timestamp>) -> Verdict {
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

    pub(super) fn rotation(&self) -> Rotation {
        match (self.cr.spec.rotation, self.status.rotation) {
            (RotationMode::Rotating, _) | (RotationMode::Auto, Some(RotationMode::Rotating)) => {
                Rotation::Rotating
            }
            (RotationMode::NonRotating, _)
            | (RotationMode::Auto, Some(RotationMode::NonRotating)) => Rotation::NonRotating,
            _ => Rotation::Unknown,
        }
    }

    pub(super) fn set_deadline(&mut self, chain: secrets::Chain) {
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

    pub(super) async fn finish(
        mut self,
        verdict: Verdict,
        action: Action,
    ) -> Result<Action, Error> {
        self.patch_status(verdict).await?;
        Ok(action)
    }

    pub(super) async fn patch_status(&mut self, verdict: Verdict) -> Result<(), Error> {
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
        if self.cr.status.as_ref() != Some(&self.status) {
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
            .map_err(|e| Error::Status(self.key.clone(), e))?;
        }
        // Only once the status says so may a person clear the refusal there.
        if let Some(login) = &self.status.refused_login_fingerprint {
            self.ctx.held.refusal_in_status(&self.key, login);
        }
        Ok(())
    }

    pub(super) async fn event(&self, type_: EventType, reason: &str, note: &str) {
        self.event_for(type_, reason, "Refresh", note).await
    }

    /// Kubernetes folds an Event that repeats reason and action into a series that keeps
    /// the first note, so a note must stay true for every repeat: what varies between
    /// repeats belongs in `action` (or in the status, not the Event).
    pub(super) async fn event_for(&self, type_: EventType, reason: &str, action: &str, note: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: action.into(),
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
