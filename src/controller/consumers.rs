//! Nudging the pods of spec.consumers (see `crate::nudge`), and the `PodsNudged` condition.
//!
//! Level-based: whenever a status is written while a live access token is published, the
//! pods are nudged for it unless status.consumers already says they were (a rotation, a
//! nudge cut short by its time budget or a restart, nudging just enabled, a failure since
//! fixed). Each round lasts at most `ROUND_BUDGET`, so a credential with thousands of pods
//! delays neither its own status nor its next refresh for long; the rest follows in the
//! next rounds, a second apart.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::events::EventType;
use tracing::{debug, info};

use crate::crd::ConsumersStatus;
use crate::nudge::{self, Choice};
use crate::secrets::kube_reason;
use crate::status::{self, PODS_NUDGED, pods_reason as reason};

use super::FIELD_MANAGER;
use super::reconciler::Reconciler;

/// Pod metadata listed per page.
const PAGE: u32 = 100;
/// Longest nudge round in one reconcile, waits for the process's rate included.
const ROUND_BUDGET: Duration = Duration::from_secs(10);
/// How soon a round cut short by its budget goes on.
pub(super) const CONTINUE_AFTER: Duration = Duration::from_secs(1);

/// How a nudge round ended.
struct Round {
    status: ConsumersStatus,
    /// Why some or all pods were not nudged.
    problem: Option<String>,
    /// Cut short by the budget: more pods to nudge in the next round.
    unfinished: bool,
}

impl Reconciler<'_> {
    /// `PodsNudged` and status.consumers as the spec, the operator's flags and the published
    /// token stand; called before every status write. Returns whether a round was cut short.
    pub(super) async fn nudge_consumers(&mut self) -> bool {
        let Some(pod_selector) = self
            .cr
            .spec
            .consumers
            .as_ref()
            .and_then(|c| c.pod_selector.clone())
        else {
            self.status.consumers = None;
            self.status.conditions.retain(|c| c.type_ != PODS_NUDGED);
            return false;
        };
        let Some(limiter) = self.ctx.settings.pod_nudge.clone() else {
            self.set_pods_condition(
                false,
                reason::POD_NUDGE_DISABLED,
                "spec.consumers is set, but this operator runs without --nudge-pods (chart value podNudge.enabled, which also grants list and patch on pods): no pod is nudged; workloads see a new token at the kubelet's next periodic sync".into(),
            )
            .await;
            return false;
        };
        let selector = match Selector::try_from(pod_selector) {
            Ok(s) => s,
            Err(e) => {
                self.set_pods_condition(
                    false,
                    reason::POD_NUDGE_FAILED,
                    format!("spec.consumers.podSelector is not a valid label selector: {e}"),
                )
                .await;
                return false;
            }
        };
        // Only a live token is worth nudging for.
        let Some(issued_at) = self
            .published_token
            .filter(|(_, expires)| *expires > self.now)
            .map(|(issued, _)| issued)
        else {
            return false;
        };
        let done_for_it = self
            .status
            .consumers
            .as_ref()
            .is_some_and(|c| c.token_issued_at.as_ref().map(|t| t.0) == Some(issued_at))
            && status::condition(&self.status.conditions, PODS_NUDGED).is_some_and(|c| {
                c.reason == reason::PODS_NUDGED || c.reason == reason::NO_PODS_SELECTED
            });
        if done_for_it {
            return false;
        }
        let started = Instant::now();
        let round = self.nudge_round(&selector, issued_at, &limiter).await;
        info!(
            selected = round.status.selected_pods,
            nudged = round.status.nudged_pods,
            failed = round.status.failed_pods,
            unfinished = round.unfinished,
            took_ms = started.elapsed().as_millis() as u64,
            "nudged consuming pods"
        );
        let value = nudge::value(issued_at);
        let (ok, why, message) = match (&round.problem, round.unfinished) {
            (Some(problem), _) => (false, reason::POD_NUDGE_FAILED, problem.clone()),
            (None, true) => (
                false,
                reason::NUDGE_IN_PROGRESS,
                format!(
                    "{} pods carry {} = {value} so far; the rest follow at the operator's rate",
                    round.status.nudged_pods,
                    nudge::ANNOTATION
                ),
            ),
            (None, false) if round.status.selected_pods == 0 => (
                false,
                reason::NO_PODS_SELECTED,
                "spec.consumers.podSelector selects no running or pending pod in this namespace"
                    .into(),
            ),
            (None, false) => (
                true,
                reason::PODS_NUDGED,
                format!(
                    "all {} selected pods carry {} = {value}, the access token's issue time",
                    round.status.selected_pods,
                    nudge::ANNOTATION
                ),
            ),
        };
        self.status.consumers = Some(round.status);
        self.set_pods_condition(ok, why, message).await;
        round.unfinished
    }

    async fn nudge_round(
        &self,
        selector: &Selector,
        issued_at: Timestamp,
        limiter: &nudge::Limiter,
    ) -> Round {
        let started = Instant::now();
        let value = nudge::value(issued_at);
        let mut status = ConsumersStatus {
            token_issued_at: Some(Time(issued_at)),
            ..ConsumersStatus::default()
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
        let mut unfinished = false;
        // Metadata only, finished pods left out by the API server: a page stays small
        // whatever the pods carry.
        let mut list = ListParams::default()
            .labels_from(selector)
            .fields("status.phase!=Succeeded,status.phase!=Failed")
            .limit(PAGE);
        'pages: loop {
            let page = match pods.list_metadata(&list).await {
                Ok(page) => page,
                Err(e) => {
                    problem = Some(format!(
                        "listing the pods selected by spec.consumers.podSelector: {}{}",
                        kube_reason(&e),
                        rbac_hint(&e)
                    ));
                    break;
                }
            };
            for pod in &page.items {
                match nudge::choose(&pod.metadata, &value) {
                    Choice::Skip => continue,
                    Choice::Current => {
                        status.selected_pods += 1;
                        status.nudged_pods += 1;
                        continue;
                    }
                    Choice::Nudge => {}
                }
                // Past the budget, or stopping (SIGTERM): the next round, or the next
                // leader, goes on from here.
                if started.elapsed() > ROUND_BUDGET || self.ctx.tokens.is_closed() {
                    unfinished = true;
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
                                "patching pod {:?}: {}{}",
                                pod.name_any(),
                                kube_reason(&e),
                                rbac_hint(&e)
                            )
                        });
                    }
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => list = list.continue_token(&token),
                None => break 'pages,
            }
        }
        status.last_nudge_time = Some(Time(super::whole_seconds(Timestamp::now())));
        if let Some(p) = &mut problem
            && status.failed_pods > 0
        {
            *p = format!(
                "{} of {} selected pods could not be nudged, first: {p}",
                status.failed_pods, status.selected_pods
            );
        }
        Round {
            status,
            problem,
            unfinished,
        }
    }

    /// Sets `PodsNudged`, with one Event when its status or reason changes.
    async fn set_pods_condition(&mut self, ok: bool, why: &'static str, message: String) {
        // Progress is no news.
        let event = (why != reason::NUDGE_IN_PROGRESS).then_some(
            if ok || why == reason::NO_PODS_SELECTED {
                EventType::Normal
            } else {
                EventType::Warning
            },
        );
        self.set_side_condition(PODS_NUDGED, (ok, why, message), "NudgePods", event)
            .await;
    }
}

/// What to grant, when the API server refused for want of it.
fn rbac_hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            "; the operator needs list and patch on pods here (chart value podNudge.enabled)"
        }
        _ => "",
    }
}
