//! Lambda function `refund`: `POST /refunds`. Builds secret, WeChat client and ledger once, then serves.

use wxrefund::{http, runtime};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    runtime::init_tracing();
    let svc = runtime::production_service_or_exit().await;
    http::serve_lambda(http::refund_router(svc)).await
}
