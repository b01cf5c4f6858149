//! The integration suite: real servers on ephemeral ports, real SQLite files
//! and a real PostgreSQL (started by `scripts/test`).

mod accepts;
mod api;
mod auth;
mod batch;
mod bench;
mod chaining;
mod cluster;
mod concurrency;
mod conformance;
mod dashboard;
mod engine;
mod failover;
mod handlers;
mod hostile;
mod isolation;
mod jwt;
mod laws;
mod leases;
mod locking;
mod members;
mod newcomer;
mod observe;
mod openapi;
mod outages;
mod predict;
mod quarantine;
mod replay;
mod shadow;
mod simulate;
mod simulation;
mod staging;
mod support;
mod tls;
mod walkthrough;
