//! Applies what a reconcile reports (worded in `crate::outcome`): Events, then the status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Event;
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::outcome::{self, Next, Note, Outcome, Verdict};
use crate::schedule::Rotation;
use crate::status::{self, READY, RELOGIN_SOON};

use super::reconciler::Reconciler;
use super::{Error, FIELD_MANAGER, labels, truncate};

impl Reconciler<'_> {
    pub(super) fn rotation(&self) -> Rotation {
        crate::refresh::rotation(self.cr, &self.status)
    }

    /// Reports `outcome`, then lets the controller requeue as `action` says.
    pub(super) async fn finish(
        mut self,
        outcome: Outcome,
        action: Action,
    ) -> Result<Action, Error> {
        self.report(&outcome).await?;
        if self.nudge_unfinished {
            return Ok(Action::requeue(super::consumers::CONTINUE_AFTER));
        }
        Ok(action)
    }

    /// Applies the report of `outcome`: its Events first, so that a failed status write
    /// loses none of them, then the status.
    pub(super) async fn report(&mut self, outcome: &Outcome) -> Result<(), Error> {
        let previous = status::condition(&self.status.conditions, READY);
        let report = outcome::report(outcome, previous, self.now);
        for note in &report.events {
            self.event(note).await;
        }
        match report.next_refresh {
            Next::Keep => {}
            // The API server keeps whole seconds: a fraction here would make every status
            // differ from the one stored, and every reconcile write it again.
            Next::At(at) => self.status.next_refresh_at = Some(Time(super::whole_seconds(at))),
            Next::Unscheduled => self.status.next_refresh_at = None,
        }
        match report.ready {
            Some(verdict) => self.patch_status(verdict).await,
            None => Ok(()),
        }
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
        if let Some(note) = outcome::relogin_warning(was_soon, soon, &message) {
            self.event(&note).await;
        }
        self.nudge_unfinished = self.nudge_consumers().await;
        self.ctx
            .metrics
            .observe_status(&labels(self.cr), &self.status);
        if self.cr.status.as_ref() != Some(&self.status) {
            let api = super::projection::api(
                self.ctx.client.clone(),
                &self.cr.namespace().unwrap_or_default(),
            );
            self.ctx.known.writing(self.cr, &self.status);
            let patch = serde_json::json!({
                "apiVersion": "eagle-eye-operator.io/v1alpha1",
                "kind": "EagleEyeCredential",
                "status": self.status,
            });
            let written = api
                .patch_status(
                    &self.cr.name_any(),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
                .map_err(|e| Error::Status(self.key.clone(), e))?;
            self.ctx.known.wrote(&written.into());
        }
        // Only once the status says so may a person clear the refusal there.
        if let Some(login) = &self.status.refused_login_fingerprint {
            self.ctx.memory.refusal_in_status(&self.key, login);
        }
        Ok(())
    }

    pub(super) async fn event(&self, note: &Note) {
        let ev = Event {
            type_: note.type_,
            reason: note.reason.into(),
            note: Some(truncate(&note.note, 1000)),
            action: note.action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &self.cr.object_ref(&())).await {
            warn!(error = %e, "could not publish an event");
        }
    }
}
