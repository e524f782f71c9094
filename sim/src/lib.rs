//! A deterministic simulator of the eagle-eye-operator (issue 19): the production
//! `controller::reconcile`, `error_policy`, sweep and `Memory::flush` run on one thread
//! with paused tokio time, against an in-process Kubernetes API server and Eagle Eye
//! token endpoint whose every request the seeded driver holds, answers, fails, loses or
//! crashes the process at. See docs/simulation.md.

pub mod api;
pub mod cli;
pub mod clock;
pub mod eagle;
pub mod hub;
pub mod world;

pub use world::script::{self, Ev, World, play};
pub use world::{Config, Sim, Tally, Violation, run};
