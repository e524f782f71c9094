//! Restarting the workloads of spec.consumers.restart: which to restart, when, and with
//! what. Pure apart from the flags; `controller::restarts` reads and patches.
//!
//! A restart is tied to a durable record, never to an event: status.revision counts the
//! access tokens published, and status.restarts holds, per workload, the revision it was
//! last restarted for. A workload behind the revision is restarted; one level with it is
//! not, however often the operator restarts or re-reads its state. A workload seen for the
//! first time is recorded at the current revision without a restart: it started with the
//! token published then. Rotations closer together than spec.consumers.restartPause cause
//! one restart: the first at once, the next when the pause since the last restart is over.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{WorkloadKind, WorkloadRestart};

/// The pod-template annotation `kubectl rollout restart` sets: any change of the template
/// rolls the workload out.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Workloads one credential restarts at most (status.restarts holds no more).
pub const MAX_WORKLOADS: usize = 64;

/// The operator's flags for workload restarts.
#[derive(clap::Args, Debug, Clone)]
pub struct RestartArgs {
    /// Restart the Deployments, StatefulSets and DaemonSets a credential names in
    /// spec.consumers.restart after each new access token. Needs get, list and patch on
    /// them where credentials are watched (chart value `workloadRestart.enabled`); without
    /// this flag such credentials report `WorkloadsRestarted=False` `RestartDisabled`.
    #[arg(long, env = "EAGLE_EYE_RESTART_WORKLOADS")]
    pub restart_workloads: bool,
    /// Workload restarts per second at most, by the whole process: many credentials rotating
    /// at once never start a restart storm.
    #[arg(
        long,
        env = "EAGLE_EYE_WORKLOAD_RESTARTS_PER_SECOND",
        default_value_t = 5
    )]
    pub workload_restarts_per_second: u32,
}

impl RestartArgs {
    /// The process's restart rate, when restarts are on.
    pub fn limiter(&self) -> Option<Arc<crate::nudge::Limiter>> {
        self.restart_workloads.then(|| {
            Arc::new(crate::nudge::Limiter::new(
                self.workload_restarts_per_second,
            ))
        })
    }
}

/// A workload found for a restart target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

/// Set on a workload by someone who may change it, naming the credentials (comma-separated)
/// whose rotations may restart it: a tenant who may create credentials but not patch
/// workloads can never make the operator restart one (as `target::ADOPT` guards Secrets).
pub const RESTART_FOR: &str = "eagle-eye-operator.io/restart-for";

/// Whether a workload with `annotations` lets credential `name` restart it.
pub fn opted_in(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    name: &str,
) -> bool {
    annotations
        .and_then(|a| a.get(RESTART_FOR))
        .is_some_and(|v| v.split(',').any(|c| c.trim() == name))
}

/// What to do now, and the records to keep.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// status.restarts as it stands before any restart of this round.
    pub records: Vec<WorkloadRestart>,
    /// Workloads to restart now.
    pub restart: Vec<Workload>,
    /// The earliest end of a pause a workload waits out.
    pub wait_until: Option<Timestamp>,
}

/// What to do with the workloads `found` (each once), given their `records` and the
/// current `revision`; a workload without a record counts as seen at `revision`.
pub fn plan(
    found: &[Workload],
    records: &[WorkloadRestart],
    revision: u64,
    now: Timestamp,
    pause: SignedDuration,
) -> Plan {
    plan_from(found, records, revision, revision, now, pause)
}

/// As [`plan`], a workload without a record counting as seen at `first_seen`: the revision
/// before the reconcile that found it (one that rotated the token and saw the workload for
/// the first time restarts it: its pods hold the token that rotation ended).
pub fn plan_from(
    found: &[Workload],
    records: &[WorkloadRestart],
    first_seen: u64,
    revision: u64,
    now: Timestamp,
    pause: SignedDuration,
) -> Plan {
    let mut plan = Plan {
        records: Vec::new(),
        restart: Vec::new(),
        wait_until: None,
    };
    for w in found.iter().take(MAX_WORKLOADS) {
        let record = records
            .iter()
            .find(|r| r.kind == w.kind && r.name == w.name)
            .cloned()
            .unwrap_or_else(|| WorkloadRestart {
                kind: w.kind,
                name: w.name.clone(),
                revision: first_seen.min(revision),
                restarted_at: None,
                problem: None,
            });
        if record.revision < revision {
            let free_at = record
                .restarted_at
                .as_ref()
                .and_then(|t| t.0.checked_add(pause).ok());
            match free_at {
                Some(at) if at > now => {
                    plan.wait_until = Some(plan.wait_until.map_or(at, |w| w.min(at)));
                }
                _ => plan.restart.push(w.clone()),
            }
        }
        plan.records.push(record);
    }
    plan
}

/// The annotation's value for a restart at `now`: the time, as `kubectl rollout restart`
/// writes it, to the millisecond so that two restarts within one second still differ.
pub fn value(now: Timestamp) -> String {
    let ms = now.as_millisecond();
    Timestamp::from_millisecond(ms).unwrap_or(now).to_string()
}

/// The merge patch that sets the annotation on the pod template and nothing else.
pub fn patch(value: &str) -> serde_json::Value {
    serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: value}}}}
    })
}

/// The record of `w` after a restart for `revision` at `now`.
pub fn restarted(w: &Workload, revision: u64, now: Timestamp) -> WorkloadRestart {
    WorkloadRestart {
        kind: w.kind,
        name: w.name.clone(),
        revision,
        restarted_at: Some(Time(now)),
        problem: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn w(name: &str) -> Workload {
        Workload {
            kind: WorkloadKind::Deployment,
            name: name.into(),
        }
    }

    const PAUSE: SignedDuration = SignedDuration::from_secs(60);

    #[test]
    fn only_a_workload_that_names_the_credential_may_be_restarted_by_it() {
        let with = |v: &str| Some([(RESTART_FOR.to_owned(), v.to_owned())].into());
        assert!(opted_in(with("cam").as_ref(), "cam"));
        assert!(opted_in(with("other, cam").as_ref(), "cam"));
        assert!(!opted_in(with("camera").as_ref(), "cam"));
        assert!(!opted_in(with("*").as_ref(), "cam"));
        assert!(!opted_in(None, "cam"));
    }

    #[test]
    fn a_workload_first_seen_by_the_reconcile_that_rotated_is_restarted() {
        // The status read said revision 0; this reconcile's refresh made it 1.
        let p = plan_from(&[w("api")], &[], 0, 1, t(0), PAUSE);
        assert_eq!(p.restart, [w("api")]);
        // Seen first by a reconcile that rotated nothing: recorded, not restarted.
        let p = plan_from(&[w("api")], &[], 1, 1, t(0), PAUSE);
        assert!(p.restart.is_empty());
    }

    #[test]
    fn a_workload_seen_first_is_recorded_at_the_current_revision_and_not_restarted() {
        let p = plan(&[w("api")], &[], 3, t(0), PAUSE);
        assert!(p.restart.is_empty());
        assert_eq!(p.records[0].revision, 3);
        assert_eq!(p.records[0].restarted_at, None);
    }

    #[test]
    fn a_rotation_restarts_each_workload_behind_it_once_and_a_reread_restarts_nothing() {
        let recorded = plan(&[w("api"), w("worker")], &[], 3, t(0), PAUSE).records;
        let p = plan(&[w("api"), w("worker")], &recorded, 4, t(10), PAUSE);
        assert_eq!(p.restart, [w("api"), w("worker")]);
        // After the restarts are recorded, the same revision (an operator restart, any
        // number of reconciles) restarts nothing.
        let after: Vec<_> = p.restart.iter().map(|x| restarted(x, 4, t(10))).collect();
        for _ in 0..3 {
            let again = plan(&[w("api"), w("worker")], &after, 4, t(11), PAUSE);
            assert!(again.restart.is_empty() && again.wait_until.is_none());
        }
    }

    #[test]
    fn rotations_within_the_pause_cause_one_restart_when_it_ends() {
        let after = vec![restarted(&w("api"), 4, t(10))];
        // Two more rotations within the pause: one wait, to its end.
        let p = plan(&[w("api")], &after, 6, t(20), PAUSE);
        assert!(p.restart.is_empty());
        assert_eq!(p.wait_until, Some(t(70)));
        // At its end, one restart for both.
        let p = plan(&[w("api")], &after, 6, t(70), PAUSE);
        assert_eq!(p.restart, [w("api")]);
    }

    #[test]
    fn a_workload_no_longer_found_loses_its_record_and_the_list_is_bounded() {
        let after = vec![restarted(&w("gone"), 4, t(10))];
        let p = plan(&[w("api")], &after, 4, t(20), PAUSE);
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.records[0].name, "api");
        let many: Vec<_> = (0..100).map(|i| w(&format!("w{i}"))).collect();
        assert_eq!(
            plan(&many, &[], 1, t(0), PAUSE).records.len(),
            MAX_WORKLOADS
        );
    }

    #[test]
    fn the_value_differs_for_restarts_within_one_second_and_the_patch_sets_only_it() {
        let a = value("2026-12-06T10:00:00.100Z".parse().unwrap());
        let b = value("2026-12-06T10:00:00.900Z".parse().unwrap());
        assert_ne!(a, b);
        assert_eq!(
            patch("x"),
            serde_json::json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: "x"}}}}})
        );
    }
}
