//! The command-line tools on top of the server: `sluice bench` (the
//! contenders, the load, the report), `sluice replay` (a trace through the
//! model) and `sluice gen` (synthetic traces). Kept apart so that the load
//! generator, plotters and hdrhistogram are not dependencies of the server.

#![deny(unreachable_pub)]

pub mod bench;
pub mod generate;
pub mod replay;
pub mod tool;
pub mod trace;

// The engine's modules under the paths the tools have always used.
use sluice_server::{clock, model, predict, resolve, rng, store};
