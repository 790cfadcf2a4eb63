//! The one integration-test binary. Every test that touches storage runs on
//! SQLite and on PostgreSQL (see `on_both_databases!`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should fail loudly

mod account;
mod authentication;
mod authorization;
mod boundary;
mod cluster;
mod contract;
mod fixtures;
mod grpc_web;
mod identity;
mod log;
mod outage;
mod partner_change_access;
mod peers;
mod permissions;
mod process;
mod races;
mod recovery;
mod refusals;
mod retention;
mod saga;
mod schedule;
mod stream;
mod telemetry;
mod tls;
mod transfer;
mod validation;
mod webhooks;
mod workflow;
