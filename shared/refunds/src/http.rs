//! The HTTP API as an axum router (the same routes on Lambda and on a local port): JSON in and out,
//! errors as `{"error", "message"}`, bodies capped, unknown JSON fields rejected.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::error;
use wxpay::refund::RefundAccount;
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, TransactionId};

use crate::service::{RefundCommand, RefundService, ServiceError, Submitted};
use crate::state::{LastError, RefundRecord, RefundStatus, UnixMillis};

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

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
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
            ServiceError::Invalid { .. } => (StatusCode::BAD_REQUEST, "validation_error"),
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

fn body_error(r: BytesRejection) -> ApiError {
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

/// `POST /refunds` body. Amounts are integer fen.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    pub out_refund_no: String,
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub total_fee: u64,
    pub refund_fee: u64,
    pub refund_desc: Option<String>,
    pub refund_account: Option<String>,
}

impl CreateRefund {
    /// Every check that needs no state, with a message naming the field.
    pub fn validate(self) -> Result<RefundCommand, ApiError> {
        let invalid =
            |e: &dyn std::fmt::Display| ApiError::bad_request("validation_error", e.to_string());
        let out_refund_no = OutRefundNo::new(self.out_refund_no).map_err(|e| invalid(&e))?;
        // One order must have one refund limit, and the ledger keys it by out_trade_no: a request
        // naming the order only by transaction_id would get a second, separate limit (and could
        // over-refund locally or pass the 50 cap), so it is refused.
        let order = match (self.out_trade_no, self.transaction_id) {
            (Some(o), None) => OrderRef::OutTradeNo(OutTradeNo::new(o).map_err(|e| invalid(&e))?),
            (None, Some(t)) => {
                TransactionId::new(t).map_err(|e| invalid(&e))?;
                return Err(ApiError::bad_request(
                    "validation_error",
                    "name the order by out_trade_no: refunds are limited per out_trade_no, so transaction_id alone is not accepted",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "validation_error",
                    "give exactly one of out_trade_no and transaction_id, not both",
                ));
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "validation_error",
                    "out_trade_no is required",
                ));
            }
        };
        let total_fee =
            Fen::positive(self.total_fee).map_err(|e| invalid(&format!("total_fee: {e}")))?;
        let refund_fee =
            Fen::positive(self.refund_fee).map_err(|e| invalid(&format!("refund_fee: {e}")))?;
        if refund_fee > total_fee {
            return Err(ApiError::bad_request(
                "validation_error",
                format!("refund_fee ({refund_fee}) must not exceed total_fee ({total_fee})"),
            ));
        }
        let refund_account = self
            .refund_account
            .map(|a| a.parse::<RefundAccount>())
            .transpose()
            .map_err(|e| invalid(&format!("refund_account: {e}")))?;
        Ok(RefundCommand {
            out_refund_no,
            order,
            total_fee,
            refund_fee,
            refund_desc: self.refund_desc,
            refund_account,
        })
    }
}

/// A refund as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefundView {
    pub out_refund_no: String,
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub refund_id: Option<String>,
    pub total_fee: u64,
    pub refund_fee: u64,
    pub status: RefundStatus,
    pub attempts: u32,
    pub last_error: Option<LastError>,
    pub refund_recv_account: Option<String>,
    pub success_time: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Made outside this API (merchant platform) and learned from WeChat.
    pub external: bool,
    /// CHANGE: the bank refused the refund; a person must act in the merchant platform.
    pub needs_person: bool,
}

fn rfc3339(t: UnixMillis) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.get()) * 1_000_000)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_default()
}

impl From<&RefundRecord> for RefundView {
    fn from(r: &RefundRecord) -> Self {
        RefundView {
            out_refund_no: r.out_refund_no.to_string(),
            out_trade_no: r.out_trade_no.as_ref().map(ToString::to_string),
            transaction_id: r.transaction_id.as_ref().map(ToString::to_string),
            refund_id: r.refund_id.as_ref().map(ToString::to_string),
            total_fee: r.total_fee.get(),
            refund_fee: r.refund_fee.get(),
            status: r.status,
            attempts: r.attempts,
            last_error: r.last_error.clone(),
            refund_recv_account: r.refund_recv_account.clone(),
            success_time: r.success_time.clone(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            external: r.external,
            needs_person: r.status.needs_person(),
        }
    }
}

/// `GET /orders/{out_trade_no}/refunds` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct OrderRefunds {
    pub out_trade_no: String,
    pub refunds: Vec<RefundView>,
}

type AppState = Arc<RefundService>;

async fn create_refund(
    State(svc): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let req: CreateRefund = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}")))?;
    let cmd = req.validate()?;
    let (status, rec) = match svc.submit(cmd).await? {
        // Refused for good by WeChat at once: nothing is in flight any more.
        Submitted::New(rec) if rec.status.is_final() => (StatusCode::OK, rec),
        Submitted::New(rec) => (StatusCode::ACCEPTED, rec),
        Submitted::Replay(rec) if rec.status.is_final() => (StatusCode::OK, rec),
        Submitted::Replay(rec) => (StatusCode::ACCEPTED, rec),
    };
    Ok((status, Json(RefundView::from(&rec))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    refresh: bool,
}

async fn get_refund(
    State(svc): State<AppState>,
    Path(no): Path<String>,
    params: Result<Query<GetParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RefundView>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let no = OutRefundNo::new(no)
        .map_err(|e| ApiError::bad_request("validation_error", e.to_string()))?;
    let rec = svc.get(&no, params.refresh).await?;
    Ok(Json(RefundView::from(&rec)))
}

async fn list_order_refunds(
    State(svc): State<AppState>,
    Path(no): Path<String>,
) -> Result<Json<OrderRefunds>, ApiError> {
    let no = OutTradeNo::new(no)
        .map_err(|e| ApiError::bad_request("validation_error", e.to_string()))?;
    let recs = svc.list_by_order(&OrderRef::OutTradeNo(no.clone())).await?;
    Ok(Json(OrderRefunds {
        out_trade_no: no.to_string(),
        refunds: recs.iter().map(RefundView::from).collect(),
    }))
}

async fn refund_notify(
    State(svc): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let reply = match body {
        Ok(body) => svc.apply_notification(&body).await,
        Err(r) => wxpay::notify::fail_reply(&r.body_text()),
    };
    let mut resp = (StatusCode::OK, reply).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    resp
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

/// The merchant routes (`POST /refunds`, `GET /refunds/{out_refund_no}`,
/// `GET /orders/{out_trade_no}/refunds`) and WeChat's notification route.
pub fn router(svc: Arc<RefundService>) -> Router {
    Router::new()
        .route(
            "/refunds",
            post(create_refund).layer(DefaultBodyLimit::max(MAX_JSON_BODY)),
        )
        .route("/refunds/{out_refund_no}", get(get_refund))
        .route("/orders/{out_trade_no}/refunds", get(list_order_refunds))
        .route(
            "/wxpay/refund-notify",
            post(refund_notify).layer(DefaultBodyLimit::max(MAX_NOTIFY_BODY)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(svc)
}

/// The scheduled poll. lambda_http hands a non-HTTP event (the EventBridge Scheduler payload) to the
/// router as `POST /events` with the event as the JSON body; API Gateway never routes that path.
pub const EVENTS_PATH: &str = "/events";

#[derive(Clone)]
struct PollState {
    svc: Arc<RefundService>,
    budget: std::time::Duration,
}

async fn poll_event(
    State(st): State<PollState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::service::PollReport>, ApiError> {
    let body = body.map_err(body_error)?;
    // Any JSON object is a trigger (`{"action":"poll"}` from our schedule, or the scheduler's own
    // envelope); logged so an unexpected shape can be seen.
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let source = event.get("source").and_then(|s| s.as_str()).unwrap_or("");
    let action = event.get("action").and_then(|s| s.as_str()).unwrap_or("");
    tracing::info!(source, action, "poll triggered");
    Ok(Json(st.svc.poll(st.budget).await?))
}

/// `router` plus the scheduled-poll event, for the refund-query function.
pub fn router_with_poller(svc: Arc<RefundService>, budget: std::time::Duration) -> Router {
    let events = Router::new()
        .route(EVENTS_PATH, post(poll_event))
        .with_state(PollState {
            svc: Arc::clone(&svc),
            budget,
        });
    router(svc).merge(events)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<RefundCommand, ApiError> {
        let req: CreateRefund = serde_json::from_str(json)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
        req.validate()
    }

    #[test]
    fn every_input_class_gets_a_clear_400() {
        let ok =
            r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":10}"#;
        assert!(body(ok).is_ok());
        for (json, code, needle) in [
            ("{", "invalid_json", "EOF"),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":"100","refund_fee":10}"#,
                "invalid_json",
                "invalid type",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":-1,"refund_fee":10}"#,
                "invalid_json",
                "invalid value",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":1.5,"refund_fee":1}"#,
                "invalid_json",
                "invalid type",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":99999999999999999999999,"refund_fee":1}"#,
                "invalid_json",
                "",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":0}"#,
                "validation_error",
                "refund_fee",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100000000001,"refund_fee":1}"#,
                "validation_error",
                "total_fee",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":101}"#,
                "validation_error",
                "must not exceed",
            ),
            (
                r#"{"out_refund_no":"R 1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "out_refund_no",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORD","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "out_trade_no",
            ),
            (
                r#"{"out_refund_no":"R1","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "required",
            ),
            (
                r#"{"out_refund_no":"R1","transaction_id":"4200000001202611270000000001","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "out_trade_no",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","transaction_id":"42","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "not both",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":1,"amount":1}"#,
                "invalid_json",
                "unknown field",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":1,"refund_account":"X"}"#,
                "validation_error",
                "refund_account",
            ),
        ] {
            let err = body(json).expect_err(json);
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{json}");
            assert_eq!(err.code, code, "{json}: {}", err.message);
            assert!(err.message.contains(needle), "{json}: {}", err.message);
        }
        let long = format!(
            r#"{{"out_refund_no":"{}","out_trade_no":"ORDER1","total_fee":100,"refund_fee":1}}"#,
            "R".repeat(65)
        );
        assert!(body(&long).is_err());
    }

    #[test]
    fn service_errors_map_to_statuses() {
        let no: OutRefundNo = "R1".parse().unwrap();
        for (e, status, code) in [
            (
                ServiceError::KeyReused(no.clone()),
                409,
                "idempotency_key_reused",
            ),
            (ServiceError::InProgress(no.clone()), 409, "in_progress"),
            (ServiceError::TooManyRefunds, 422, "too_many_refunds"),
            (ServiceError::NotFound(no.clone()), 404, "not_found"),
            (ServiceError::Upstream("x".into()), 502, "upstream_error"),
        ] {
            let api = ApiError::from(e);
            assert_eq!(api.status.as_u16(), status);
            assert_eq!(api.code, code);
        }
    }
}
