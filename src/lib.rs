//! eagle-eye-operator: keeps Eagle Eye Networks Video API v3 OAuth2 credentials alive
//! for the workloads of a Kubernetes cluster.
#![forbid(unsafe_code)]

pub mod standin;
pub mod testbed;
pub mod token;
