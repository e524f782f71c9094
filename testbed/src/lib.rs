//! Test support for eagle-eye-operator, never compiled into the shipped binary: a real
//! Kubernetes control plane ([`plane`]) and a faithful stand-in for the Eagle Eye auth server
//! ([`standin`]). Used by the integration tests, the benchmarks and the local sandbox.
#![forbid(unsafe_code)]

pub mod plane;
pub mod standin;

pub use plane::ControlPlane;
