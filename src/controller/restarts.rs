//! Restarting the workloads of spec.consumers.restart (see `crate::restart`, which decides),
//! and the `WorkloadsRestarted` condition. Like the pod nudge, level-based: run before every
//! status write, it restarts what status.restarts says is behind status.revision, so the
//! status write that follows is the durable record of each restart.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::events::EventType;
use tracing::info;

use crate::crd::{RestartTarget, WorkloadKind, parse_duration};
use crate::outcome::Note;
use crate::restart::{self, Workload};
use crate::secrets::kube_reason;
use crate::status::{WORKLOADS_RESTARTED, restart_reason as reason};

use super::FIELD_MANAGER;
use super::reconciler::Reconciler;

/// A missing workload or a failed restart is looked at again this often.
const RECHECK: Duration = Duration::from_secs(30);

fn api(client: kube::Client, ns: &str, kind: WorkloadKind) -> Api<DynamicObject> {
    let resource = match kind {
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
    };
    Api::namespaced_with(client, ns, &resource)
}

/// What to grant, when the API server refused for want of it.
fn rbac_hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            "; the operator needs get, list and patch on Deployments, StatefulSets and DaemonSets here (chart value workloadRestart.enabled)"
        }
        _ => "",
    }
}

impl Reconciler<'_> {
    /// status.restarts and `WorkloadsRestarted` as the spec, the flags and status.revision
    /// stand, restarting each workload behind the revision; called before every status
    /// write. A wait (a pause, a missing workload, a failure) wakes the credential again.
    pub(super) async fn restart_workloads(&mut self) {
        let targets = self
            .cr
            .spec
            .consumers
            .as_ref()
            .map(|c| (c.restart.clone(), c.restart_pause.clone()))
            .filter(|(t, _)| !t.is_empty());
        let Some((targets, pause)) = targets else {
            self.status.restarts.clear();
            self.status
                .conditions
                .retain(|c| c.type_ != WORKLOADS_RESTARTED);
            return;
        };
        let Some(limiter) = self.ctx.settings.workload_restart.clone() else {
            self.set_restart_condition(
                false,
                reason::RESTART_DISABLED,
                "spec.consumers.restart is set, but this operator runs without --restart-workloads (chart value workloadRestart.enabled, which also grants get, list and patch on Deployments, StatefulSets and DaemonSets): no workload is restarted".into(),
            )
            .await;
            return;
        };
        let pause = parse_duration(&pause).unwrap_or(jiff::SignedDuration::ZERO);
        let (found, mut problems, missing) = self.find_workloads(&targets).await;
        let now = super::whole_seconds(self.ctx.settings.now());
        let revision = self.status.revision;
        // A workload seen first now counts as seen at the revision before this reconcile:
        // if this reconcile rotated the token, its pods hold the one that rotation ended.
        let before = self.cr.status.as_ref().map_or(revision, |s| s.revision);
        let mut plan =
            restart::plan_from(&found, &self.status.restarts, before, revision, now, pause);
        let patch = restart::patch(&restart::value(self.ctx.settings.now()));
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let ns = self.cr.namespace().unwrap_or_default();
        for w in &plan.restart {
            limiter.wait().await;
            let written = api(self.ctx.client.clone(), &ns, w.kind)
                .patch(&w.name, &params, &Patch::Merge(&patch))
                .await;
            let record = plan
                .records
                .iter_mut()
                .find(|r| r.kind == w.kind && r.name == w.name);
            let Some(record) = record else { continue };
            match written {
                Ok(_) => {
                    info!(kind = %w.kind, workload = %w.name, revision, "restarted a consuming workload");
                    *record = restart::restarted(w, revision, now);
                    let note = Note {
                        type_: EventType::Normal,
                        reason: reason::WORKLOADS_RESTARTED,
                        action: "RestartWorkload",
                        note: format!(
                            "{} {:?} restarted for access token revision {revision} ({} set)",
                            w.kind,
                            w.name,
                            restart::RESTARTED_AT
                        ),
                    };
                    self.event(&note).await;
                }
                Err(e) => {
                    let why = format!(
                        "restarting {} {:?}: {}{}",
                        w.kind,
                        w.name,
                        kube_reason(&e),
                        rbac_hint(&e)
                    );
                    record.problem = Some(super::truncate(&why, 1000));
                    problems.push(why);
                }
            }
        }
        self.status.restarts = std::mem::take(&mut plan.records);
        let (ok, why, message) = if !problems.is_empty() {
            (false, reason::RESTART_FAILED, problems.join("; "))
        } else if !missing.is_empty() {
            (
                false,
                reason::RESTART_TARGET_MISSING,
                format!("not found in this namespace: {}", missing.join(", ")),
            )
        } else if let Some(at) = plan.wait_until {
            (
                false,
                reason::RESTART_PENDING,
                format!(
                    "restarted less than spec.consumers.restartPause ago: the next restart follows at {at}"
                ),
            )
        } else {
            (
                true,
                reason::WORKLOADS_RESTARTED,
                format!(
                    "all {} workloads are restarted for access token revision {revision}, or started with it",
                    self.status.restarts.len()
                ),
            )
        };
        // Looked at again when the pause ends, and while anything is wrong.
        let pause_end = plan
            .wait_until
            .map(|at| crate::schedule::until(now, at) + Duration::from_millis(100));
        let recheck = (!ok && why != reason::RESTART_PENDING).then_some(RECHECK);
        if let Some(after) = pause_end.into_iter().chain(recheck).min() {
            let me = super::stored_ref(self.cr);
            self.ctx.parked.wake_after(&self.key, me, after);
        }
        self.set_restart_condition(ok, why, message).await;
    }

    /// The workloads the targets name, each once; what failed; and what is missing.
    async fn find_workloads(
        &self,
        targets: &[RestartTarget],
    ) -> (Vec<Workload>, Vec<String>, Vec<String>) {
        let ns = self.cr.namespace().unwrap_or_default();
        let me = self.cr.name_any();
        let (mut found, mut problems, mut missing) = (Vec::new(), Vec::new(), Vec::new());
        for t in targets {
            let api = api(self.ctx.client.clone(), &ns, t.kind);
            if let Some(name) = &t.name {
                match api.get_metadata_opt(name).await {
                    Ok(Some(m)) if !restart::opted_in(m.metadata.annotations.as_ref(), &me) => {
                        problems.push(format!(
                            "{} {name:?} does not name this credential in its {} annotation: whoever may change it must opt in",
                            t.kind,
                            restart::RESTART_FOR
                        ))
                    }
                    Ok(Some(_)) => found.push(Workload {
                        kind: t.kind,
                        name: name.clone(),
                    }),
                    Ok(None) => missing.push(format!("{} {name:?}", t.kind)),
                    Err(e) => problems.push(format!(
                        "reading {} {name:?}: {}{}",
                        t.kind,
                        kube_reason(&e),
                        rbac_hint(&e)
                    )),
                }
                continue;
            }
            let Some(selector) = t.selector.clone() else {
                continue;
            };
            let selector = match Selector::try_from(selector) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("a {} selector is not valid: {e}", t.kind));
                    continue;
                }
            };
            let params = ListParams::default()
                .labels_from(&selector)
                .limit(restart::MAX_WORKLOADS as u32);
            match api.list_metadata(&params).await {
                Ok(list) if list.items.is_empty() => {
                    missing.push(format!("no {} matches the selector", t.kind))
                }
                Ok(list) => {
                    let (mine, others): (Vec<_>, Vec<_>) = list
                        .items
                        .iter()
                        .partition(|m| restart::opted_in(m.metadata.annotations.as_ref(), &me));
                    if mine.is_empty() {
                        problems.push(format!(
                            "{} {}s match the selector, none naming this credential in its {} annotation: whoever may change them must opt in",
                            others.len(),
                            t.kind,
                            restart::RESTART_FOR
                        ));
                    }
                    found.extend(mine.iter().map(|m| Workload {
                        kind: t.kind,
                        name: m.name_any(),
                    }))
                }
                Err(e) => problems.push(format!(
                    "listing {}s: {}{}",
                    t.kind,
                    kube_reason(&e),
                    rbac_hint(&e)
                )),
            }
        }
        found.sort();
        found.dedup();
        (found, problems, missing)
    }

    /// Sets `WorkloadsRestarted`, with one Event when its status or reason changes.
    async fn set_restart_condition(&mut self, ok: bool, why: &'static str, message: String) {
        // Each restart has its own Event; a pause is no news.
        let event = (!ok && why != reason::RESTART_PENDING).then_some(EventType::Warning);
        self.set_side_condition(
            WORKLOADS_RESTARTED,
            (ok, why, message),
            "RestartWorkload",
            event,
        )
        .await;
    }
}
