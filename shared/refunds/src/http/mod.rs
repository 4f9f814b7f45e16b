//! The HTTP API as axum routers (the same routes on Lambda and on a local port): JSON in and out,
//! errors as `{"error", "message"}`, bodies capped, unknown JSON fields rejected. Each Lambda
//! function serves only its own routes (`refund_router`, `query_router`, `notify_router`); the
//! local stack serves them all (`router`).

mod notify;
mod poll;
mod refunds;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tracing::error;

use crate::service::{RefundService, ServiceError};

pub use poll::EVENTS_PATH;
pub use refunds::{CreateRefund, OrderRefunds, RefundView};

/// Largest JSON body accepted (a refund request is a few hundred bytes).
pub const MAX_JSON_BODY: usize = 16 * 1024;
/// Largest notification body accepted (WeChat's are about 1.5 KiB).
pub const MAX_NOTIFY_BODY: usize = wxpay::xml::MAX_BODY;

/// An error answered as `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let (status, code) = match &e {
            ServiceError::KeyReused(_) => (StatusCode::CONFLICT, "idempotency_key_reused"),
            ServiceError::InProgress(_) => (StatusCode::CONFLICT, "in_progress"),
            ServiceError::AmountExceeded { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "refund_exceeds_order")
            }
            ServiceError::TooManyRefunds => (StatusCode::UNPROCESSABLE_ENTITY, "too_many_refunds"),
            ServiceError::TotalFeeMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "total_fee_mismatch")
            }
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            ServiceError::Ledger(_) => (StatusCode::SERVICE_UNAVAILABLE, "ledger_unavailable"),
            ServiceError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        if status.is_server_error() {
            error!(error = %e, "request failed");
        }
        // Store and internal failures are logged in full; the caller gets no infrastructure detail.
        let message = match &e {
            ServiceError::Ledger(_) => {
                "the refund ledger is unavailable; retry the same request".into()
            }
            ServiceError::Internal(_) => "internal error; retry the same request".into(),
            _ => e.to_string(),
        };
        ApiError::new(status, code, message)
    }
}

pub(crate) fn body_error(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body is larger than the limit",
        )
    } else {
        ApiError::bad_request("invalid_body", r.body_text())
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

type AppState = Arc<RefundService>;

fn with_fallbacks(routes: Router<AppState>, svc: Arc<RefundService>) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(svc)
}

fn create_route(r: Router<AppState>) -> Router<AppState> {
    r.route(
        "/refunds",
        post(refunds::create_refund).layer(DefaultBodyLimit::max(MAX_JSON_BODY)),
    )
}

fn read_routes(r: Router<AppState>) -> Router<AppState> {
    r.route("/refunds/{out_refund_no}", get(refunds::get_refund))
        .route(
            "/orders/{out_trade_no}/refunds",
            get(refunds::list_order_refunds),
        )
}

fn notify_route(r: Router<AppState>) -> Router<AppState> {
    r.route(
        "/wxpay/refund-notify",
        post(notify::refund_notify).layer(DefaultBodyLimit::max(MAX_NOTIFY_BODY)),
    )
}

/// The `refund` function: `POST /refunds`.
pub fn refund_router(svc: Arc<RefundService>) -> Router {
    with_fallbacks(create_route(Router::new()), svc)
}

/// The `refund-query` function: `GET /refunds/{out_refund_no}`,
/// `GET /orders/{out_trade_no}/refunds`, and the scheduled poll event.
pub fn query_router(svc: Arc<RefundService>, poll_budget: Duration) -> Router {
    with_fallbacks(read_routes(Router::new()), Arc::clone(&svc))
        .merge(poll::events_router(svc, poll_budget))
}

/// The public `refund-notify` function: `POST /wxpay/refund-notify` only.
pub fn notify_router(svc: Arc<RefundService>) -> Router {
    with_fallbacks(notify_route(Router::new()), svc)
}

/// Every merchant route and WeChat's notification route on one listener (the local stack and
/// the end-to-end tests).
pub fn router(svc: Arc<RefundService>) -> Router {
    with_fallbacks(notify_route(read_routes(create_route(Router::new()))), svc)
}

/// `router` plus the scheduled-poll event.
pub fn router_with_poller(svc: Arc<RefundService>, poll_budget: Duration) -> Router {
    router(Arc::clone(&svc)).merge(poll::events_router(svc, poll_budget))
}

/// Runs the router as a Lambda function (API Gateway HTTP API events).
pub async fn serve_lambda(router: Router) -> Result<(), lambda_http::Error> {
    lambda_http::run(router).await
}

/// Runs the router on a local listener until `shutdown` resolves.
pub async fn serve_local(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
