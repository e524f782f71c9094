//! Applies what a reconcile reports (worded in `crate::outcome`): Events (a repeat counted
//! on the Event it repeats, see `crate::event_series`), then the status.

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::crd::RenewStatus;
use crate::event_series::{self, Publish};
use crate::outcome::{self, Next, Note, Outcome, Verdict};
use crate::renew;
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
        self.record_renew(outcome).await;
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
        self.restart_workloads().await;
        self.check_templates().await;
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

    /// Records in status.renew (with an Event) how the unhandled renew request, if any,
    /// ended with `outcome`.
    async fn record_renew(&mut self, outcome: &Outcome) {
        let Some(request) = renew::unhandled(
            self.cr.spec.renew_request.as_deref(),
            self.status.renew.as_ref(),
        ) else {
            return;
        };
        let Some((how, mut message)) = renew::result(outcome) else {
            return;
        };
        if how == renew::RENEWED && self.rotation() == Rotation::NonRotating {
            // Such a server may hand back the access token it issued before.
            message = renew::NON_ROTATING.to_owned();
        }
        let note = Note {
            type_: if how == renew::RENEWED {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: match how {
                renew::RENEWED => "Renewed",
                renew::FAILED => "RenewFailed",
                _ => "RenewRefused",
            },
            action: "Renew",
            note: format!("renew request {request:?}: {message}"),
        };
        self.event(&note).await;
        self.status.renew = Some(RenewStatus {
            request: request.to_owned(),
            outcome: how.to_owned(),
            message,
            handled_at: Time(super::whole_seconds(self.now)),
        });
    }

    /// `TemplatesRendered` as spec.target.template stands, with an Event when it changes.
    async fn check_templates(&mut self) {
        if self.cr.spec.target.template.is_empty() {
            self.status
                .conditions
                .retain(|c| c.type_ != status::TEMPLATES_RENDERED);
            return;
        }
        let problems = crate::template::problems(self.cr);
        let (ok, why, message) = if problems.is_empty() {
            (
                true,
                status::template_reason::TEMPLATES_RENDERED,
                format!(
                    "all {} keys of spec.target.template are rendered into the target Secret",
                    self.cr.spec.target.template.len()
                ),
            )
        } else {
            (
                false,
                status::template_reason::INVALID_TEMPLATE,
                format!(
                    "left out of the target Secret until fixed: {}",
                    problems.join("; ")
                ),
            )
        };
        let event = (!ok).then_some(EventType::Warning);
        self.set_side_condition(
            status::TEMPLATES_RENDERED,
            (ok, why, message),
            "RenderTemplates",
            event,
        )
        .await;
    }

    /// Sets condition `type_` (one beside Ready, about a side feature) to `ok`, `why` and
    /// `message`, with an Event of `event`'s type, for `action`, when its status or reason
    /// changes (none when `event` is `None`: progress is no news).
    pub(super) async fn set_side_condition(
        &mut self,
        type_: &str,
        (ok, why, message): (bool, &'static str, String),
        action: &'static str,
        event: Option<EventType>,
    ) {
        let before = status::condition(&self.status.conditions, type_)
            .map(|c| (c.status == "True", c.reason.clone()));
        if let Some(type_) = event
            && before != Some((ok, why.to_owned()))
        {
            let note = Note {
                type_,
                reason: why,
                action,
                note: message.clone(),
            };
            self.event(&note).await;
        }
        status::set_condition(
            &mut self.status.conditions,
            type_,
            ok,
            why,
            message,
            self.cr.metadata.generation,
            self.now,
        );
    }

    /// Publishes `note` about the credential: a new Event, or one more occurrence of the
    /// same Event published before (see `crate::event_series`). A failure is logged, never
    /// fatal: the status says what the Event would have.
    pub(super) async fn event(&self, note: &Note) {
        let text = truncate(&note.note, 1000);
        let uid = self.cr.metadata.uid.as_deref().unwrap_or_default();
        let key = event_series::Key::new(uid, note.type_, note.reason, note.action, &text);
        let now = self.ctx.settings.now();
        let series = &self.ctx.event_series;
        let api: Api<K8sEvent> = Api::namespaced(
            self.ctx.client.clone(),
            &self.cr.namespace().unwrap_or_default(),
        );
        let written = match series.next(&key, now) {
            Publish::Repeat { created, count } => {
                let name = event_series::name(&self.cr.name_any(), created);
                let patch = serde_json::json!({
                    "series": {"count": count, "lastObservedTime": MicroTime(now)},
                });
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok((created, count)),
                    // Expired (kube-apiserver's --event-ttl) or deleted: start a new one.
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        series.forget(&key);
                        self.create_event(&api, note, text, now).await
                    }
                    Err(e) => Err(e),
                }
            }
            Publish::Create => self.create_event(&api, note, text, now).await,
        };
        match written {
            Ok((created, count)) => series.published(key, created, count, now),
            Err(e) => warn!(error = %e, reason = note.reason, "could not publish an event"),
        }
    }

    /// Creates a new Event about the credential, made at `now`: its time and count (1).
    async fn create_event(
        &self,
        api: &Api<K8sEvent>,
        note: &Note,
        text: String,
        now: Timestamp,
    ) -> Result<(Timestamp, i32), kube::Error> {
        let reporter = &self.ctx.reporter;
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(event_series::name(&self.cr.name_any(), now)),
                namespace: self.cr.namespace(),
                ..Default::default()
            },
            action: Some(note.action.into()),
            reason: Some(note.reason.into()),
            note: Some(text),
            type_: Some(
                match note.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(self.cr.object_ref(&())),
            reporting_controller: Some(reporter.controller.clone()),
            reporting_instance: Some(
                reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| reporter.controller.clone()),
            ),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        Ok((now, 1))
    }
}
