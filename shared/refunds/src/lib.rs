//! `wxrefund`: the product core shared by the Lambda functions and the local stack.

pub mod correction;
pub mod decide;
pub mod events;
pub mod gateway;
pub mod http;
pub mod ledger;
pub mod metadata;
pub mod publish;
pub mod reason;
pub mod reconcile;
pub mod request;
pub mod runtime;
pub mod secrets;
pub mod service;
pub mod state;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
