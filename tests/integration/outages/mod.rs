//! Tests that stop kube-apiserver. Each runs on a control plane of its own
//! (`support::own_env`), so that an outage disturbs no other test and they run side by side
//! with the rest.

mod apiserver_restart;
mod held_on_sigterm;
mod lease_outage;
mod write_back;
