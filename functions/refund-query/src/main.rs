//! Lambda function `refund-query`: `GET /refunds/{out_refund_no}`, `GET /orders/{out_trade_no}/refunds`,
//! and the scheduled poll (EventBridge Scheduler), which arrives as a pass-through event.

use std::time::Duration;

use wxrefund::{http, runtime};

/// Time one poll invocation may spend; below the poller function's 60 s timeout.
const DEFAULT_POLL_BUDGET_SECS: u64 = 45;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    runtime::init_tracing();
    let budget = std::env::var("POLL_BUDGET_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_POLL_BUDGET_SECS);
    let svc = runtime::production_service_or_exit().await;
    http::serve_lambda(http::router_with_poller(svc, Duration::from_secs(budget))).await
}
