//! How AWS SDK failures become [`LedgerError`]s.

use std::fmt::Display;

use aws_sdk_dynamodb::error::DisplayErrorContext;

use crate::ledger::LedgerError;

/// A request the SDK refused to build: our own mistake, not the store's.
pub(super) fn config(e: impl Display) -> LedgerError {
    LedgerError::Config(e.to_string())
}

/// The store could not be reached or refused the request. `DisplayErrorContext` keeps the whole
/// source chain (the bare `Display` of an SDK error is only "service error").
pub(super) fn unavailable<E>(e: E) -> LedgerError
where
    E: std::error::Error + 'static,
{
    LedgerError::Unavailable(DisplayErrorContext(&e).to_string())
}
