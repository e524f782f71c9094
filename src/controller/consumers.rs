//! Nudging the pods of spec.consumers after a new access token (see `crate::nudge`), and the
//! `PodsNudged` condition.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::events::EventType;
use tracing::{debug, info};

use crate::crd::ConsumersStatus;
use crate::nudge::{self, Choice};
use crate::outcome::Note;
use crate::secrets::kube_reason;
use crate::status::{self, PODS_NUDGED, pods_reason as reason};

use super::FIELD_MANAGER;
use super::reconciler::Reconciler;

/// Pods listed per page: a credential with thousands of pods is read in bounded pieces.
const PAGE: u32 = 500;

/// How a nudge round ended, for the condition.
struct Round {
    status: ConsumersStatus,
    /// Why some or all pods were not nudged.
    problem: Option<String>,
}

impl Reconciler<'_> {
    /// After a new access token is published: annotates every selected pod that does not
    /// carry this token's issue time yet, at the process's rate. Never fails the reconcile:
    /// the token is published whatever happens to the pods.
    pub(super) async fn nudge_consumers(&mut self, issued_at: Timestamp) {
        let Some(consumers) = self.cr.spec.consumers.clone() else {
            return;
        };
        let Some(limiter) = self.ctx.settings.pod_nudge.clone() else {
            return; // `consumers_condition` reports it.
        };
        let started = std::time::Instant::now();
        let round = self
            .nudge_round(&consumers.pod_selector, issued_at, &limiter)
            .await;
        info!(
            selected = round.status.selected_pods,
            nudged = round.status.nudged_pods,
            failed = round.status.failed_pods,
            took_ms = started.elapsed().as_millis() as u64,
            "nudged consuming pods"
        );
        let (ok, why, message) = match &round.problem {
            None => (
                true,
                reason::PODS_NUDGED,
                format!(
                    "{} of {} selected pods carry the annotation {} for the access token issued at {}",
                    round.status.nudged_pods,
                    round.status.selected_pods,
                    nudge::ANNOTATION,
                    nudge::value(issued_at)
                ),
            ),
            Some(problem) => (false, reason::POD_NUDGE_FAILED, problem.clone()),
        };
        self.status.consumers = Some(round.status);
        self.set_pods_condition(ok, why, message).await;
    }

    async fn nudge_round(
        &self,
        selector: &LabelSelector,
        issued_at: Timestamp,
        limiter: &nudge::Limiter,
    ) -> Round {
        let value = nudge::value(issued_at);
        let mut status = ConsumersStatus {
            token_issued_at: Some(Time(issued_at)),
            ..ConsumersStatus::default()
        };
        let selector = match Selector::try_from(selector.clone()) {
            Ok(s) => s,
            Err(e) => {
                status.last_nudge_time = Some(Time(Timestamp::now()));
                return Round {
                    status,
                    problem: Some(format!(
                        "spec.consumers.podSelector is not a valid label selector: {e}"
                    )),
                };
            }
        };
        let pods: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            &self.cr.namespace().unwrap_or_default(),
        );
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let body = nudge::patch(&value);
        let mut problem = None;
        let mut list = ListParams::default().labels_from(&selector).limit(PAGE);
        'pages: loop {
            let page = match pods.list(&list).await {
                Ok(page) => page,
                Err(e) => {
                    problem = Some(format!(
                        "listing the pods selected by spec.consumers.podSelector: {}; the operator needs list and patch on pods here (chart value podNudge.enabled)",
                        kube_reason(&e)
                    ));
                    break;
                }
            };
            for pod in &page.items {
                match nudge::choose(pod, &value) {
                    Choice::Skip => continue,
                    Choice::Current => {
                        status.selected_pods += 1;
                        status.nudged_pods += 1;
                        continue;
                    }
                    Choice::Nudge => {}
                }
                // From SIGTERM on, the next replica takes over; the kubelet's own sync
                // reaches the pods left.
                if self.ctx.tokens.is_closed() {
                    problem.get_or_insert_with(|| "the operator stopped during the nudge".into());
                    break 'pages;
                }
                limiter.wait().await;
                match pods
                    .patch(&pod.name_any(), &params, &Patch::Merge(&body))
                    .await
                {
                    Ok(_) => {
                        status.selected_pods += 1;
                        status.nudged_pods += 1;
                    }
                    // Deleted meanwhile: not a consumer any more.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        status.selected_pods += 1;
                        status.failed_pods += 1;
                        debug!(pod = %pod.name_any(), error = %kube_reason(&e), "could not nudge a pod");
                        problem.get_or_insert_with(|| {
                            format!(
                                "patching pod {:?}: {}; the operator needs patch on pods here (chart value podNudge.enabled)",
                                pod.name_any(),
                                kube_reason(&e)
                            )
                        });
                    }
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => list = list.continue_token(&token),
                None => break,
            }
        }
        status.last_nudge_time = Some(Time(Timestamp::now()));
        if let Some(p) = &mut problem
            && status.failed_pods > 0
        {
            *p = format!(
                "{} of {} selected pods could not be nudged, first: {p}",
                status.failed_pods, status.selected_pods
            );
        }
        Round { status, problem }
    }

    /// `PodsNudged` and status.consumers as the spec and the operator's flags stand; called
    /// on every status write. Only a nudge round sets them while nudging is on.
    pub(super) async fn consumers_condition(&mut self) {
        if self.cr.spec.consumers.is_none() {
            self.status.consumers = None;
            self.status.conditions.retain(|c| c.type_ != PODS_NUDGED);
            return;
        }
        if self.ctx.settings.pod_nudge.is_none() {
            self.set_pods_condition(
                false,
                reason::POD_NUDGE_DISABLED,
                "spec.consumers is set, but this operator runs without --nudge-pods (chart value podNudge.enabled, which also grants list and patch on pods): no pod is nudged; workloads see a new token at the kubelet's next periodic sync".into(),
            )
            .await;
        }
    }

    /// Sets `PodsNudged`, with one Event when its reason changes.
    async fn set_pods_condition(&mut self, ok: bool, why: &'static str, message: String) {
        let before = status::condition(&self.status.conditions, PODS_NUDGED)
            .map(|c| (c.status.clone(), c.reason.clone()));
        let after = (if ok { "True" } else { "False" }.to_owned(), why.to_owned());
        if before.as_ref() != Some(&after) {
            let note = Note {
                type_: if ok {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: why,
                action: "NudgePods",
                note: message.clone(),
            };
            self.event(&note).await;
        }
        status::set_condition(
            &mut self.status.conditions,
            PODS_NUDGED,
            ok,
            why,
            message,
            self.cr.metadata.generation,
            self.now,
        );
    }
}
