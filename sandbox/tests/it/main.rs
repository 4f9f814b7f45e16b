//! Integration tests: the sandbox driven over real HTTPS (rustls, mutual TLS) with reqwest.
//! One test binary (modules below) to keep link time down on small machines.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod apply;
mod bill;
mod common;
mod config;
mod coupons;
mod faults;
mod files_tls;
mod notify;
mod persistence;
mod platform;
mod query;
mod rate_limits;
