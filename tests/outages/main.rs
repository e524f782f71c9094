//! Tests that stop the control plane's kube-apiserver. Their own binary, so that an outage
//! disturbs no other test; within it, one outage at a time (see [`OUTAGE`]).

#[path = "../support/mod.rs"]
mod support;

mod apiserver_restart;
mod held_on_sigterm;
mod lease_outage;
mod write_back;

/// Every test here stops the shared kube-apiserver: one at a time.
static OUTAGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
