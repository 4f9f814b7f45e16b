//! Lambda function `refund-query`: `GET /refunds/{out_refund_no}`, `GET /orders/{out_trade_no}/refunds`,
//! and the scheduled poll (EventBridge Scheduler), which arrives as a pass-through event.

use std::time::Duration;

use wxrefund::{http, runtime};

/// Time one poll invocation may spend; below the poller function's 60 s timeout.
const DEFAULT_POLL_BUDGET_SECS: u64 = 45;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    runtime::init_tracing();
    // A mistyped budget is a configuration error, not a reason to run with another one.
    let budget = match std::env::var("POLL_BUDGET_SECS") {
        Err(_) => DEFAULT_POLL_BUDGET_SECS,
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => secs,
            _ => {
                tracing::error!(value = %s, "cold start failed: POLL_BUDGET_SECS must be a positive number of seconds");
                std::process::exit(1);
            }
        },
    };
    let svc = runtime::production_service_or_exit().await;
    http::serve_lambda(http::query_router(svc, Duration::from_secs(budget))).await
}
