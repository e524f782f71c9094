//! The integration tests: one binary, one real control plane (etcd, kube-apiserver,
//! kube-controller-manager) shared by every test, each test in a namespace of its own. Tests
//! that stop kube-apiserver live in `tests/outages`, and the memory benchmark in
//! `tests/memory.rs`: both would disturb the tests running beside them.

#[path = "../support/mod.rs"]
mod support;

mod auth_hosts;
mod authorize;
mod consumers;
mod control_plane_script;
mod controller;
mod crd_drift;
mod ha;
mod helm;
mod revoke;
mod sharding;
mod spec_fields;
mod standin;
mod status_cli;
mod tenancy;
mod testbed;
mod token_client;
mod token_safety;
mod token_safety_b;
