//! The integration tests: one binary, one real control plane (etcd, kube-apiserver,
//! kube-controller-manager) shared by every test, each test in a namespace of its own, many
//! at a time (`RUST_TEST_THREADS` in `.cargo/config.toml`). The few that would disturb the
//! tests beside them (those in `outages`, which stop kube-apiserver, and `memory`, which
//! watches every namespace) run on control planes of their own (`support::own_env`).

#[path = "../support/mod.rs"]
mod support;

mod api_cost;
mod auth_hosts;
mod authorize;
mod consumers;
mod control_plane_script;
mod controller;
mod core_findings;
mod crd_drift;
mod fair_calls;
mod flags_and_events;
mod ha;
mod helm;
mod hostile;
mod memory;
mod metrics_access;
mod outages;
mod renew;
mod restart_targets;
mod revoke;
mod sharding;
mod spec_fields;
mod standin;
mod status_cli;
mod templates;
mod tenancy;
mod testbed;
mod token_client;
mod token_safety;
mod token_safety_b;
