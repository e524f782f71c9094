//! Nudging consuming pods (spec.consumers): which pods to annotate after a new access token,
//! with what, and how fast. Pure apart from the rate limiter's clock.
//!
//! The kubelet rewrites a pod's Secret volumes when it syncs the pod: periodically (about a
//! minute, plus its cache), or at once when the pod object changes. One annotation carrying
//! the new token's issue time is such a change, and says nothing secret.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotation set on consuming pods: the issue time of the access token last published.
pub const ANNOTATION: &str = "eagle-eye-operator.io/token-issued-at";

/// The annotation's value for a token issued at `issued_at` (RFC 3339, whole seconds).
pub fn value(issued_at: Timestamp) -> String {
    Timestamp::from_second(issued_at.as_second())
        .unwrap_or(issued_at)
        .to_string()
}

/// What to do with one selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Being deleted: the kubelet rewrites no volume for it; not counted.
    Skip,
    /// Already carries this token's annotation.
    Current,
    /// Annotate it.
    Nudge,
}

/// What to do with a pod of this metadata (finished pods are left out by the list's
/// field selector).
pub fn choose(pod: &ObjectMeta, value: &str) -> Choice {
    if pod.deletion_timestamp.is_some() {
        return Choice::Skip;
    }
    let current = pod
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION))
        .is_some_and(|v| v == value);
    if current {
        Choice::Current
    } else {
        Choice::Nudge
    }
}

/// The merge patch that sets the annotation and nothing else.
pub fn patch(value: &str) -> serde_json::Value {
    serde_json::json!({ "metadata": { "annotations": { ANNOTATION: value } } })
}

/// At most `per_second` pod patches per second across the whole process, evenly spaced (no
/// bursts after a quiet spell), whatever the number of credentials rotating at once.
pub struct Limiter {
    per_second: u32,
    next: tokio::sync::Mutex<tokio::time::Interval>,
}

impl Limiter {
    pub fn new(per_second: u32) -> Limiter {
        // At most a million a second: the interval must stay longer than zero.
        let per_second = per_second.clamp(1, 1_000_000);
        let mut interval = tokio::time::interval(Duration::from_secs(1) / per_second);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Limiter {
            per_second,
            next: tokio::sync::Mutex::new(interval),
        }
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Waits for this process's next patch slot.
    pub async fn wait(&self) {
        self.next.lock().await.tick().await;
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Limiter({}/s)", self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotation: Option<&str>, deleting: bool) -> ObjectMeta {
        let mut p = ObjectMeta::default();
        if let Some(a) = annotation {
            p.annotations = Some([(ANNOTATION.to_owned(), a.to_owned())].into());
        }
        if deleting {
            p.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::UNIX_EPOCH,
            ));
        }
        p
    }

    #[test]
    fn only_pods_without_this_tokens_annotation_are_nudged() {
        let v = "2026-11-30T08:00:00Z";
        assert_eq!(choose(&pod(None, false), v), Choice::Nudge);
        assert_eq!(
            choose(&pod(Some("2026-11-30T07:00:00Z"), false), v),
            Choice::Nudge
        );
        assert_eq!(choose(&pod(Some(v), false), v), Choice::Current);
        assert_eq!(choose(&pod(None, true), v), Choice::Skip);
    }

    #[test]
    fn the_annotation_is_the_issue_time_to_the_second_and_the_patch_sets_only_it() {
        let t: Timestamp = "2026-11-30T08:00:00.750Z".parse().unwrap();
        assert_eq!(value(t), "2026-11-30T08:00:00Z");
        let far: Timestamp = "9999-12-30T00:00:00Z".parse().unwrap();
        assert_eq!(value(far), "9999-12-30T00:00:00Z");
        assert_eq!(
            patch("x"),
            serde_json::json!({"metadata": {"annotations": {ANNOTATION: "x"}}})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_spaces_patches_evenly_even_after_a_quiet_spell() {
        // Paused clock: time advances only as the limiter sleeps.
        let limiter = Limiter::new(50);
        let start = tokio::time::Instant::now();
        for _ in 0..101 {
            limiter.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let quiet = tokio::time::Instant::now();
        for _ in 0..11 {
            limiter.wait().await;
        }
        // No burst of the minute's missed slots: 11 patches still take 10 intervals.
        assert_eq!(quiet.elapsed(), Duration::from_millis(200));
        assert_eq!(Limiter::new(0).per_second(), 1);
    }
}
