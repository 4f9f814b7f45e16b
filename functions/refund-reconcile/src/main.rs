//! Lambda function `refund-reconcile`: `POST /reconciliations`, `GET /reconciliations/{bill_date}`,
//! and the daily schedule's event (EventBridge Scheduler, a pass-through event) that reconciles
//! the previous Beijing day against WeChat's refund bill.

use wxrefund::{http, runtime};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    runtime::init_tracing();
    let svc = runtime::production_service_or_exit().await;
    http::serve_lambda(http::reconcile_router(svc)).await
}
