//! End-to-end tests live in `tests/`; the shared harness is `tests/common/mod.rs`.
