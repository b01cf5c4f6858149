//! Sluice: a data proxy for versioned JSON documents.
//!
//! See `ARCHITECTURE.md` for the life of a mutation and the code map.

pub mod api;
pub mod bench;
pub mod clock;
pub mod config;
pub mod connections;
mod db;
pub mod dispatch;
pub mod generate;
pub mod history;
pub mod model;
pub mod predict;
pub mod queue;
pub mod replay;
pub mod resolve;
pub mod rng;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tool;
