//! `wxrefund-local bench`: the load command of issue 7. It starts the same stack as the default run
//! (sandbox, embedded ledger, axum routes, poller) in-process on free loopback ports, creates paid
//! orders in the sandbox, fires `POST /refunds` over real HTTP at a paced rate, waits until every
//! accepted refund is final, and checks the sandbox's books against the ledger.
//!
//! Pacing is open-loop: request `i` is due at `start + i / rate` whatever happened to the ones
//! before it, and its latency is counted from that due time as well as from the actual send. A
//! closed loop (send the next one when a worker is free) would slow down with the server and hide
//! exactly the queueing a saturated server causes ("coordinated omission").
//!
//! One concept per file: `cli` (flags and entry point), `config` (one run's parameters), `run`
//! (load generation and settling), `check` (the books check), `report` (percentiles and the
//! Markdown report) and `sweep` (the saturation search).

mod check;
mod cli;
mod config;
mod report;
mod run;
mod sweep;

pub use check::BooksCheck;
pub use cli::{BenchArgs, init_tracing, main};
pub use config::BenchConfig;
pub use report::{BenchReport, Percentiles, render};
pub use run::run_bench;
pub use sweep::{SweepStep, render_sweep, run_sweep, saturation_point};
