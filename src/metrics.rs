//! Prometheus metrics, in the style of cert-manager's expiry gauges. Labels are namespace and
//! credential names (and a failure reason): never a token or secret.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::EagleEyeCredentialStatus;
use crate::status::{self, READY};

/// A credential's labels. Its series share one copy of each name (`Metrics::track`): four
/// series and the set of credentials cost two small allocations, not ten.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Credential {
    pub namespace: Arc<str>,
    pub credential: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Failure {
    pub namespace: Arc<str>,
    pub credential: Arc<str>,
    pub reason: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

// Each metric's name as scraped, defined here only: registration and tests use these, and
// the chart's PrometheusRule and the README quote them. OpenMetrics appends `_total` to the
// counters' names.
pub const CREDENTIAL_READY: &str = "eagle_eye_credential_ready";
pub const ACCESS_TOKEN_EXPIRY: &str = "eagle_eye_credential_access_token_expiry_seconds";
pub const REFRESH_TOKEN_DEADLINE: &str = "eagle_eye_credential_refresh_token_deadline_seconds";
pub const REFRESH_ATTEMPTS: &str = "eagle_eye_refresh_attempts";
pub const REFRESH_FAILURES: &str = "eagle_eye_refresh_failures";
pub const REFRESH_DURATION: &str = "eagle_eye_refresh_duration_seconds";
pub const RECONCILES: &str = "eagle_eye_reconciles";
pub const RECONCILE_ERRORS: &str = "eagle_eye_reconcile_errors";
pub const LEADER: &str = "eagle_eye_leader";

pub struct Metrics {
    registry: Registry,
    ready: Family<Credential, Gauge>,
    access_token_expiry: Family<Credential, FloatGauge>,
    refresh_token_deadline: Family<Credential, FloatGauge>,
    refresh_attempts: Family<Credential, Counter>,
    refresh_failures: Family<Failure, Counter>,
    /// The failure series created, so that `forget` can find them (a Family cannot be listed).
    failure_series: std::sync::Mutex<std::collections::HashSet<Failure>>,
    /// Every credential with series, so that deleted ones can be found and dropped.
    credentials: std::sync::Mutex<std::collections::HashSet<Credential>>,
    refresh_duration: Histogram,
    reconciles: Counter,
    reconcile_errors: Counter,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            ready: Family::default(),
            access_token_expiry: Family::default(),
            refresh_token_deadline: Family::default(),
            refresh_attempts: Family::default(),
            refresh_failures: Family::default(),
            failure_series: Default::default(),
            credentials: Default::default(),
            refresh_duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            leader: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            CREDENTIAL_READY,
            "1 when the credential's target Secret holds a valid access token",
            m.ready.clone(),
        );
        r.register(
            ACCESS_TOKEN_EXPIRY,
            "When the published access token expires (Unix time)",
            m.access_token_expiry.clone(),
        );
        r.register(
            REFRESH_TOKEN_DEADLINE,
            "When the refresh token dies and a person must log in again (Unix time)",
            m.refresh_token_deadline.clone(),
        );
        r.register(
            REFRESH_ATTEMPTS,
            "Refresh attempts against the token endpoint",
            m.refresh_attempts.clone(),
        );
        r.register(
            REFRESH_FAILURES,
            "Failed refresh attempts by reason",
            m.refresh_failures.clone(),
        );
        r.register(
            REFRESH_DURATION,
            "Latency of token endpoint calls",
            m.refresh_duration.clone(),
        );
        r.register(RECONCILES, "Reconciles run", m.reconciles.clone());
        r.register(
            RECONCILE_ERRORS,
            "Reconciles that ended in an error (retried)",
            m.reconcile_errors.clone(),
        );
        r.register(
            crate::api_requests::KUBE_API_REQUESTS,
            "Requests this process sent to the Kubernetes API server, by verb and resource",
            crate::api_requests::family(),
        );
        r.register(
            LEADER,
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        m
    }
}

impl Metrics {
    /// Records that `labels` has series, and returns the copy of its labels that every
    /// series of the credential shares.
    fn track(&self, labels: &Credential) -> Credential {
        let mut known = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = known.get(labels) {
            return shared.clone();
        }
        known.insert(labels.clone());
        labels.clone()
    }

    /// Every credential with series.
    pub fn credentials(&self) -> Vec<Credential> {
        let known = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        known.iter().cloned().collect()
    }

    /// Drops every credential's series: a replica that stops leading exports none (a
    /// frozen `ready` of 1 would hide the leader's real state).
    pub fn forget_all(&self) {
        for c in self.credentials() {
            self.forget(&c);
        }
    }

    /// Mirrors a credential's status into the gauges.
    pub fn observe_status(&self, labels: &Credential, s: &EagleEyeCredentialStatus) {
        let labels = &self.track(labels);
        let ready = status::condition(&s.conditions, READY).is_some_and(|c| c.status == "True");
        self.ready.get_or_create(labels).set(i64::from(ready));
        match &s.access_token_expires_at {
            Some(t) => {
                self.access_token_expiry
                    .get_or_create(labels)
                    .set(t.0.as_second() as f64);
            }
            None => {
                self.access_token_expiry.remove(labels);
            }
        }
        match &s.refresh_token_deadline {
            Some(t) => {
                self.refresh_token_deadline
                    .get_or_create(labels)
                    .set(t.0.as_second() as f64);
            }
            None => {
                self.refresh_token_deadline.remove(labels);
            }
        }
    }

    pub fn refresh_attempt(&self, labels: &Credential, seconds: f64) {
        let labels = &self.track(labels);
        self.refresh_attempts.get_or_create(labels).inc();
        self.refresh_duration.observe(seconds);
    }

    pub fn refresh_failure(&self, labels: &Credential, reason: &str) {
        let labels = &self.track(labels);
        let f = Failure {
            namespace: labels.namespace.clone(),
            credential: labels.credential.clone(),
            reason: reason.into(),
        };
        self.refresh_failures.get_or_create(&f).inc();
        self.failure_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(f);
    }

    /// Drops the series of a deleted credential.
    pub fn forget(&self, labels: &Credential) {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(labels);
        self.ready.remove(labels);
        self.access_token_expiry.remove(labels);
        self.refresh_token_deadline.remove(labels);
        self.refresh_attempts.remove(labels);
        let mut series = self
            .failure_series
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        series.retain(|f| {
            let theirs = f.namespace == labels.namespace && f.credential == labels.credential;
            if theirs {
                self.refresh_failures.remove(f);
            }
            !theirs
        });
    }

    pub fn reconciled(&self, error: bool) {
        self.reconciles.inc();
        if error {
            self.reconcile_errors.inc();
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::set_condition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A status that says Ready, with an access token expiring at `t`.
    fn ready_until(t: jiff::Timestamp) -> EagleEyeCredentialStatus {
        let mut s = EagleEyeCredentialStatus::default();
        set_condition(
            &mut s.conditions,
            READY,
            true,
            "TokenRefreshed",
            String::new(),
            None,
            t,
        );
        s.access_token_expires_at = Some(Time(t));
        s
    }

    #[test]
    fn a_credentials_series_share_one_copy_of_its_names() {
        let m = Metrics::default();
        let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let mut s = ready_until(t);
        s.refresh_token_deadline = Some(Time(t));
        // Labels made afresh for every call, as the controller makes them.
        let labels = || Credential {
            namespace: "video".into(),
            credential: "cam".into(),
        };
        for _ in 0..3 {
            m.observe_status(&labels(), &s);
            m.refresh_attempt(&labels(), 0.1);
        }
        let [c] = &m.credentials()[..] else {
            panic!("one credential");
        };
        // The set of credentials, four series, and `c` itself.
        assert_eq!(Arc::strong_count(&c.credential), 6);
        assert_eq!(Arc::strong_count(&c.namespace), 6);
    }

    #[test]
    fn status_becomes_gauges_and_deleted_credentials_disappear() {
        let m = Metrics::default();
        let labels = Credential {
            namespace: "video".into(),
            credential: "cam".into(),
        };
        let s = ready_until(jiff::Timestamp::from_second(1_800_000_000).unwrap());
        m.observe_status(&labels, &s);
        m.refresh_failure(&labels, "ServerError");
        let text = m.encode();
        let cam = r#"{namespace="video",credential="cam""#;
        let has = |line: String| text.lines().any(|l| l == line);
        assert!(has(format!("{CREDENTIAL_READY}{cam}}} 1")), "{text}");
        assert!(
            has(format!("{ACCESS_TOKEN_EXPIRY}{cam}}} 1800000000.0")),
            "{text}"
        );
        assert!(
            has(format!(
                r#"{REFRESH_FAILURES}_total{cam},reason="ServerError"}} 1"#
            )),
            "{text}"
        );
        let other = Credential {
            namespace: "video".into(),
            credential: "door".into(),
        };
        m.refresh_failure(&other, "Timeout");
        m.forget(&labels);
        let text = m.encode();
        assert!(!text.contains(&format!("{CREDENTIAL_READY}{{")), "{text}");
        assert!(!text.contains(r#"credential="cam""#), "{text}");
        assert!(
            text.contains(r#"credential="door",reason="Timeout"} 1"#),
            "{text}"
        );
        assert_eq!(m.credentials(), [other]);
        m.forget_all();
        let text = m.encode();
        assert!(!text.contains("credential="), "{text}");
        assert!(m.credentials().is_empty());
    }
}
