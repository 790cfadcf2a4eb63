//! The `partnerhub` binary's library: [`app::Application`] starts any set of
//! services in one process (the tests start it the same way), and [`cli`] is
//! the command line around it.

pub mod app;
pub mod cli;
pub mod cluster;

pub use app::{Application, SERVICES, service_named};
