//! Sluice's server: the HTTP API, the dispatcher's stages, the stores and
//! the history, custom handlers and telemetry, on the decisions of
//! `sluice-core` (re-exported here under their old paths).
//!
//! See `ARCHITECTURE.md` for the life of a mutation and the code map.

#![deny(unreachable_pub)]

pub mod api;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
mod db;
pub mod dispatch;
pub mod history;
pub mod resolve;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use sluice_core::{guard, model, predict, queue, rng};
