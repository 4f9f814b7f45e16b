//! The HTTP API as axum routers (the same routes on Lambda and on a local port): JSON in and out,
//! errors as `{"error", "message"}`, bodies capped, unknown JSON fields rejected. Each Lambda
//! function serves only its own routes (`refund_router`, `query_router`, `notify_router`,
//! `reconcile_router`); the local stack serves them all (`router`).

mod input;
mod local_server;
mod notify;
pub mod openapi;
mod poll;
mod reconciliations;
pub(crate) mod refunds;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use lambda_http::RequestExt;
use serde::Serialize;
use tracing::{Instrument, error, info};

use crate::service::{RefundService, ServiceError};

pub use local_server::{ServeLimits, serve_local};
pub use openapi::{ERROR_CODES, openapi, openapi_json};
pub use poll::EVENTS_PATH;
pub use reconciliations::{
    CreateReconciliation, DiscrepancyView, ReconciliationView, SideView, TotalsView,
};
pub use refunds::{CorrectionView, CreateRefund, OrderRefunds, RefundPage, RefundView};

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
    /// Sent as `Retry-After` (seconds).
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        // Every code is in the OpenAPI document's `Error` schema; the tests run debug builds.
        debug_assert!(
            ERROR_CODES.contains(&code),
            "error code {code} is not in openapi::ERROR_CODES"
        );
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
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

/// The error code of a refused request, for the log line [`observe`] writes.
#[derive(Clone, Copy, Debug)]
struct ErrorCode(&'static str);

/// The ids a handler learned from a request body, for the log line [`observe`] writes.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestIds {
    pub(crate) out_refund_no: Option<String>,
    pub(crate) out_trade_no: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response();
        resp.extensions_mut().insert(ErrorCode(self.code));
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Longest id or path put in a log line (ids are at most 64 characters; anything longer is junk).
const MAX_LOGGED: usize = 96;

fn clip(s: &str) -> String {
    s.chars().take(MAX_LOGGED).collect()
}

/// Every request runs in a span carrying the Lambda request id; a refused one (4xx) is logged at
/// INFO with the route, the error code and the ids, so an operator can see why a client failed.
/// Bodies are never logged.
async fn observe(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let path = clip(req.uri().path());
    let request_id = req
        .extensions()
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .unwrap_or_default();
    let span = tracing::info_span!("request", request_id = %request_id);
    let resp = next.run(req).instrument(span.clone()).await;
    if resp.status().is_client_error() {
        let _entered = span.enter();
        let code = resp.extensions().get::<ErrorCode>().map_or("", |c| c.0);
        let ids = resp
            .extensions()
            .get::<RequestIds>()
            .cloned()
            .unwrap_or_default();
        info!(
            %method,
            route,
            path,
            status = resp.status().as_u16(),
            error = code,
            out_refund_no = ids.out_refund_no.as_deref().unwrap_or(""),
            out_trade_no = ids.out_trade_no.as_deref().unwrap_or(""),
            "request refused"
        );
    }
    resp
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
            ServiceError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
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
        let mut api = ApiError::new(status, code, message);
        if status == StatusCode::TOO_MANY_REQUESTS {
            // WeChat's limits are per second.
            api.retry_after_secs = Some(1);
        }
        api
    }
}

/// A JSON request body: `Content-Type: application/json` (else 415), within the route's cap
/// (else 413); the caller reads its fields (`input::JsonObject`). `what` names the body in the
/// messages.
pub(crate) fn json_body(
    headers: &axum::http::HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
    what: &str,
) -> Result<axum::body::Bytes, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send {what} as JSON (Content-Type: application/json)"),
        ));
    }
    body.map_err(body_error)
}

pub(crate) fn body_error(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body is larger than the limit",
        )
    } else {
        tracing::debug!(rejection = %r.body_text(), "body refused");
        ApiError::bad_request("invalid_body", "the request body could not be read")
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    info!(%method, path = clip(uri.path()), status = 404, error = "not_found", "request refused");
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    info!(%method, path = clip(uri.path()), status = 405, error = "method_not_allowed", "request refused");
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

type AppState = Arc<RefundService>;

fn with_fallbacks(routes: Router<AppState>, svc: Arc<RefundService>) -> Router {
    routes
        .route_layer(middleware::from_fn(observe))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(svc)
}

/// One route: its method and path next to its handler, so the list of routes ([`routes`]) is
/// the router itself and the OpenAPI test can hold the document to every one of them.
struct Route {
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Self {
        Route {
            method: Method::GET,
            path,
            handler: get(h),
        }
    }

    fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Self {
        Route {
            method: Method::POST,
            path,
            handler: post(h),
        }
    }

    fn body_limit(mut self, max: usize) -> Self {
        self.handler = self.handler.layer(DefaultBodyLimit::max(max));
        self
    }
}

fn create_routes() -> Vec<Route> {
    vec![Route::post("/refunds", refunds::create_refund).body_limit(MAX_JSON_BODY)]
}

fn read_routes() -> Vec<Route> {
    vec![
        Route::get("/refunds", refunds::list_needing_person),
        Route::get("/refunds/{out_refund_no}", refunds::get_refund),
        Route::get(
            "/orders/{out_trade_no}/refunds",
            refunds::list_order_refunds,
        ),
    ]
}

fn reconcile_routes() -> Vec<Route> {
    vec![
        Route::post("/reconciliations", reconciliations::create_reconciliation)
            .body_limit(MAX_JSON_BODY),
        Route::get(
            "/reconciliations/{bill_date}",
            reconciliations::get_reconciliation,
        ),
    ]
}

fn notify_routes() -> Vec<Route> {
    vec![Route::post("/wxpay/refund-notify", notify::refund_notify).body_limit(MAX_NOTIFY_BODY)]
}

fn all_routes() -> Vec<Route> {
    [
        create_routes(),
        read_routes(),
        notify_routes(),
        reconcile_routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Method and path of every route [`router`] serves (the OpenAPI document must list each).
pub fn routes() -> Vec<(Method, &'static str)> {
    all_routes()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect()
}

fn build(routes: Vec<Route>, svc: Arc<RefundService>) -> Router {
    let r = routes
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.handler));
    with_fallbacks(r, svc)
}

/// The `refund` function: `POST /refunds`.
pub fn refund_router(svc: Arc<RefundService>) -> Router {
    build(create_routes(), svc)
}

/// The `refund-query` function: `GET /refunds/{out_refund_no}`,
/// `GET /orders/{out_trade_no}/refunds`, and the scheduled poll event.
pub fn query_router(svc: Arc<RefundService>, poll_budget: Duration) -> Router {
    build(read_routes(), Arc::clone(&svc)).merge(poll::events_router(svc, poll_budget))
}

/// The public `refund-notify` function: `POST /wxpay/refund-notify` only.
pub fn notify_router(svc: Arc<RefundService>) -> Router {
    build(notify_routes(), svc)
}

/// The `refund-reconcile` function: `POST /reconciliations`, `GET /reconciliations/{bill_date}`,
/// and the daily schedule's event.
pub fn reconcile_router(svc: Arc<RefundService>) -> Router {
    build(reconcile_routes(), Arc::clone(&svc)).merge(reconciliations::events_router(svc))
}

/// Every merchant route and WeChat's notification route on one listener (the local stack and
/// the end-to-end tests).
pub fn router(svc: Arc<RefundService>) -> Router {
    build(all_routes(), svc)
}

/// `router` plus the scheduled-poll event.
pub fn router_with_poller(svc: Arc<RefundService>, poll_budget: Duration) -> Router {
    router(Arc::clone(&svc)).merge(poll::events_router(svc, poll_budget))
}

/// Runs the router as a Lambda function (API Gateway HTTP API events).
pub async fn serve_lambda(router: Router) -> Result<(), lambda_http::Error> {
    // One EMF document per invocation, written as it ends (crate::telemetry).
    let router = router.layer(middleware::map_response(|r: Response| async move {
        crate::telemetry::flush();
        r
    }));
    lambda_http::run(router).await
}
