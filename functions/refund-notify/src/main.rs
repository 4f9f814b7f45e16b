//! Lambda function `refund-notify`: `POST /wxpay/refund-notify`, WeChat's refund notification
//! (public route; authenticated by decryption, confirmed by query).

use wxrefund::{http, runtime};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    runtime::init_tracing();
    let svc = runtime::production_service_or_exit().await;
    http::serve_lambda(http::notify_router(svc)).await
}
