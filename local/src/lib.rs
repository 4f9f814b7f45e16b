//! `wxrefund-local` as a library: the one-process stack (sandbox, embedded ledger, HTTP routes,
//! poller) that both the binary's default run and its `bench` command build, and the load command
//! itself, so that integration tests can drive them in-process.

pub mod bench;
pub mod events;
pub mod stack;
