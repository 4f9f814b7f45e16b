//! End-to-end support. The route-level suite lives in `tests/` (harness: `tests/common/mod.rs`);
//! this library holds what the function crates' binary tests share: a Lambda Runtime API emulator
//! and the harness that runs a built function binary against moto and the sandbox.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod lambda_binary;
pub mod lambda_emulator;

// Re-exported so a function crate's tests need only this crate to reach the sandbox and the protocol.
pub use {wxpay, wxpay_sandbox, wxrefund};
