//! Test support for eagle-eye-operator, never compiled into the shipped binary: a real
//! Kubernetes control plane ([`plane`]), optionally with a node that runs pods ([`node`]), and
//! a faithful stand-in for the Eagle Eye auth server ([`standin`]). Used by the integration tests, the benchmarks and the local sandbox.
#![forbid(unsafe_code)]

pub mod consumer;
pub mod delivery;
pub mod node;
pub mod plane;
pub mod standin;

pub use plane::ControlPlane;
