//! eagle-eye-operator: keeps Eagle Eye Networks Video API v3 OAuth2 credentials alive
//! for the workloads of a Kubernetes cluster.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api_requests;
pub mod authorize;
pub mod cli;
pub mod content;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod event_series;
mod fair;
#[cfg(test)]
mod fixtures;
pub mod history;
pub mod intent;
pub mod kubectl;
pub mod logging;
pub mod metrics;
pub mod metrics_auth;
pub mod metrics_server;
pub mod nudge;
pub mod operator;
pub mod outcome;
pub mod refresh;
pub mod renew;
pub mod renew_cli;
pub mod restart;
pub mod schedule;
pub mod secrets;
pub mod served_schema;
pub mod shard;
pub mod spent;
pub mod status;
pub mod status_cli;
pub mod target;
pub mod template;
pub mod token;

/// Locks `m` even when a holder panicked: a poisoned lock only means a task panicked
/// (a reconcile, a request), and what it guards is intact.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
