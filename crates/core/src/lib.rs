//! Sluice's core: the decisions and the records, with no async runtime,
//! database driver or HTTP crate beneath them.
//!
//! The server (`sluice-server`) drives these from its stages; the tools
//! (`sluice-tools`) replay and measure them. See `ARCHITECTURE.md`.

#![deny(unreachable_pub)]

pub mod clock;
pub mod control;
pub mod guard;
pub mod invariant;
pub mod model;
pub mod partition;
pub mod predict;
pub mod queue;
pub mod resolve;
pub mod rng;
