//! The merchant's refund routes: create, get (optionally refreshed), list an order's refunds; the
//! request body validated once here, with the field named, and the refund view.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wxpay::refund::{RefundAccount, RefundDesc};
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, TransactionId};

use super::input::{self, JsonObject, path_error};
use super::openapi::ErrorResponse;
use super::{ApiError, AppState, RequestIds};
use crate::correction::{CorrectionKind, FactSource};
use crate::metadata::Metadata;
use crate::reason::Reason;
use crate::request::RefundCommand;
use crate::service::Submitted;
use crate::state::{LastError, RefundRecord, RefundStatus, UnixMillis};

/// `POST /refunds` body. Amounts are integer fen; `refund_fee` over `total_fee` is answered
/// `422 refund_exceeds_order`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    /// Your refund number: the idempotency key.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[0-9A-Za-z_\-|*@]+$")]
    pub out_refund_no: String,
    /// The order, by your order number (the only way accepted: refunds are limited per order).
    #[schema(value_type = String, required = true, min_length = 6, max_length = 32,
        pattern = r"^[0-9A-Za-z_\-|*]+$")]
    pub out_trade_no: Option<String>,
    /// Refused: an order named by WeChat's number would get a refund limit of its own.
    #[schema(ignore)]
    pub transaction_id: Option<String>,
    /// The order's total, in fen.
    #[schema(minimum = 1, maximum = 100_000_000_000_u64)]
    pub total_fee: u64,
    /// The amount to refund, in fen; at most `total_fee`.
    #[schema(minimum = 1, maximum = 100_000_000_000_u64)]
    pub refund_fee: u64,
    /// Shown to the buyer: at most 80 characters, no emoji (characters above U+FFFF) or control
    /// characters, and never `]]>`.
    #[schema(
        max_length = 80,
        pattern = r"^(?:[\x20-\x5c\x5e-\x7e\xa0-\ud7ff\ue000-\uffff]|\][\x20-\x5c\x5e-\x7e\xa0-\ud7ff\ue000-\uffff]|\]\]+[\x20-\x3d\x3f-\x5c\x5e-\x7e\xa0-\ud7ff\ue000-\uffff])*\]*$"
    )]
    pub refund_desc: Option<String>,
    /// Which funds pay the refund (WeChat's default when absent).
    #[schema(value_type = Option<RefundAccountSchema>)]
    pub refund_account: Option<String>,
    /// The merchant's own string keys and values (≤ 20 keys, 40 / 500 characters).
    #[schema(schema_with = super::openapi::metadata_schema)]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// The `refund_account` values WeChat knows.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = RefundAccount)]
#[allow(dead_code, clippy::enum_variant_names)] // a schema only: the string is parsed by wxpay
pub(super) enum RefundAccountSchema {
    RefundSourceUnsettledFunds,
    RefundSourceRechargeFunds,
}

/// The fields a refund request may have (`transaction_id` is refused with its reason).
const CREATE_REFUND_FIELDS: &[&str] = &[
    "out_refund_no",
    "out_trade_no",
    "total_fee",
    "refund_fee",
    "refund_desc",
    "refund_account",
    "metadata",
];

impl CreateRefund {
    /// A `POST /refunds` body read field by field, each refusal naming its field.
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let mut o = JsonObject::parse_refusing(
            body,
            "a refund request",
            CREATE_REFUND_FIELDS,
            &[(
                "transaction_id",
                "transaction_id is not accepted: name the order by out_trade_no (refunds are limited per out_trade_no)",
            )],
        )?;
        Ok(CreateRefund {
            out_refund_no: o.required_string("out_refund_no")?,
            out_trade_no: Some(o.required_string("out_trade_no")?),
            transaction_id: None,
            total_fee: o.fen("total_fee")?,
            refund_fee: o.fen("refund_fee")?,
            refund_desc: o.string("refund_desc")?,
            refund_account: o.string("refund_account")?,
            metadata: o.string_map("metadata")?,
        })
    }

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
        // Two fields together: a valid-looking request refused on its meaning (422), like the
        // ledger's own over-refund refusal.
        if refund_fee > total_fee {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refund_exceeds_order",
                format!("refund_fee ({refund_fee}) must not exceed total_fee ({total_fee})"),
            ));
        }
        let refund_account = self
            .refund_account
            .map(|a| a.parse::<RefundAccount>())
            .transpose()
            .map_err(|e| invalid(&format!("refund_account: {e}")))?;
        let refund_desc = self
            .refund_desc
            .map(RefundDesc::new)
            .transpose()
            .map_err(|e| invalid(&format!("refund_desc: {e}")))?;
        let metadata = Metadata::new(self.metadata.unwrap_or_default())
            .map_err(|e| invalid(&format!("metadata: {e}")))?;
        Ok(RefundCommand {
            out_refund_no,
            order,
            total_fee,
            refund_fee,
            refund_desc,
            refund_account,
            metadata,
        })
    }
}

/// A refund as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RefundView {
    pub out_refund_no: String,
    #[schema(required = true)]
    pub out_trade_no: Option<String>,
    #[schema(required = true)]
    pub transaction_id: Option<String>,
    #[schema(required = true)]
    pub refund_id: Option<String>,
    pub total_fee: u64,
    pub refund_fee: u64,
    pub status: RefundStatus,
    pub attempts: u32,
    #[schema(required = true)]
    pub last_error: Option<LastError>,
    #[schema(required = true)]
    pub refund_recv_account: Option<String>,
    #[schema(required = true)]
    pub success_time: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Made outside this API (merchant platform) and learned from WeChat.
    pub external: bool,
    /// A person must act: CHANGE (the bank refused the refund; act in the merchant platform), or
    /// the ledger had said a final status that WeChat's books contradict (see `corrections`).
    pub needs_person: bool,
    /// Every time a final status was corrected to WeChat's, oldest first.
    pub corrections: Vec<CorrectionView>,
    /// FAILED or REFUNDCLOSE: why no money left, in one small vocabulary; WeChat's own code
    /// is in `last_error`.
    #[schema(required = true)]
    pub failure_reason: Option<Reason>,
    /// Not final, or CHANGE: what it waits for, normalized.
    #[schema(required = true)]
    pub pending_reason: Option<Reason>,
    /// The merchant's own data from the request (`{}` when none).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// One correction as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CorrectionView {
    /// What the ledger said.
    pub from: RefundStatus,
    /// What WeChat's signed books say.
    pub to: RefundStatus,
    /// `contradiction` or `resolution` (a CHANGE refund resolved in the merchant platform).
    pub kind: CorrectionKind,
    /// `query`, `notification`, `order_listing` or `bill`.
    pub source: FactSource,
    pub at: String,
}

pub(crate) fn rfc3339(t: UnixMillis) -> String {
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
            needs_person: r.needs_person(),
            corrections: r
                .corrections
                .iter()
                .map(|c| CorrectionView {
                    from: c.from,
                    to: c.to,
                    kind: c.kind,
                    source: c.source,
                    at: rfc3339(c.at),
                })
                .collect(),
            failure_reason: crate::reason::failure_reason(r),
            pending_reason: crate::reason::pending_reason(r),
            metadata: r.metadata.as_map().clone(),
        }
    }
}

/// `GET /orders/{out_trade_no}/refunds` reply.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderRefunds {
    pub out_trade_no: String,
    pub refunds: Vec<RefundView>,
}

/// Submit a refund. WeChat is called before the answer; a refund still moving is `202`, a final
/// one (refused for good at once, or a replay of a finished one) `200`.
#[utoipa::path(
    post,
    path = "/refunds",
    operation_id = "createRefund",
    tag = "refunds",
    request_body(content = CreateRefund, content_type = "application/json"),
    responses(
        (status = 200, description = "Final: refused for good at once, or a replay of a finished refund.", body = RefundView),
        (status = 202, description = "Recorded and still moving (poll `GET /refunds/{out_refund_no}`).", body = RefundView),
        (status = 400, description = "`invalid_json`, `validation_error` (the message names the field), `invalid_body`, `invalid_query` (this route takes no query parameters).", body = ErrorResponse),
        (status = 409, description = "`idempotency_key_reused` (the same `out_refund_no` with a different request) or `in_progress`.", body = ErrorResponse),
        (status = 413, description = "`body_too_large`.", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: send `Content-Type: application/json`.", body = ErrorResponse),
        (status = 422, description = "`refund_exceeds_order` (`refund_fee` over `total_fee`, or over what the order has left), `too_many_refunds` (50 per order), `total_fee_mismatch`; WeChat is not called.", body = ErrorResponse),
        (status = 500, description = "`internal_error`.", body = ErrorResponse),
        (status = 503, description = "`ledger_unavailable`: retry the same request.", body = ErrorResponse),
    )
)]
pub(super) async fn create_refund(
    State(svc): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut ids = RequestIds::default();
    let mut resp = match create(&svc, query.as_deref(), &headers, body, &mut ids).await {
        Ok((resp, status)) => {
            metrics::counter!(crate::telemetry::REFUND_REQUESTS, "result" => status.as_str())
                .increment(1);
            resp
        }
        Err(e) => {
            metrics::counter!(crate::telemetry::REFUND_REQUESTS, "result" => e.code).increment(1);
            e.into_response()
        }
    };
    resp.extensions_mut().insert(ids);
    resp
}

async fn create(
    svc: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    ids: &mut RequestIds,
) -> Result<(Response, RefundStatus), ApiError> {
    input::query(query, &[])?;
    let body = super::json_body(headers, body, "the refund request")?;
    let req = CreateRefund::from_json(&body)?;
    ids.out_refund_no = Some(super::clip(&req.out_refund_no));
    ids.out_trade_no = req.out_trade_no.as_deref().map(super::clip);
    let cmd = req.validate()?;
    let (status, rec) = match svc.submit(cmd).await? {
        // Refused for good by WeChat at once: nothing is in flight any more.
        Submitted::New(rec) if rec.status.is_final() => (StatusCode::OK, rec),
        Submitted::New(rec) => (StatusCode::ACCEPTED, rec),
        Submitted::Replay(rec) if rec.status.is_final() => (StatusCode::OK, rec),
        Submitted::Replay(rec) => (StatusCode::ACCEPTED, rec),
    };
    Ok((
        (status, Json(RefundView::from(&rec))).into_response(),
        rec.status,
    ))
}

/// The path of one refund (a schema only: the handlers read the path themselves).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct RefundPath {
    /// Your refund number.
    #[param(min_length = 1, max_length = 64, pattern = r"^[0-9A-Za-z_\-|*@]+$")]
    out_refund_no: String,
}

/// `GET /refunds/{out_refund_no}` query (a schema only).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct GetQuery {
    /// Ask WeChat Pay now instead of answering from the ledger (for a refund that is not final).
    refresh: Option<bool>,
}

/// A refund by its number, from the ledger (or from WeChat first with `refresh=true`).
#[utoipa::path(
    get,
    path = "/refunds/{out_refund_no}",
    operation_id = "getRefund",
    tag = "refunds",
    params(RefundPath, GetQuery),
    responses(
        (status = 200, description = "The refund.", body = RefundView),
        (status = 400, description = "`invalid_path`, `validation_error` (a bad number) or `invalid_query` (an unknown, repeated or malformed parameter).", body = ErrorResponse),
        (status = 404, description = "`not_found`: no refund with this number.", body = ErrorResponse),
        (status = 409, description = "`in_progress`: a refresh while the refund is being submitted.", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: WeChat's rate limit answered the refresh; ask again after `Retry-After`.", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again (WeChat Pay's limits are per second)."))),
        (status = 500, description = "`internal_error`.", body = ErrorResponse),
        (status = 502, description = "`upstream_error`: WeChat could not answer the refresh.", body = ErrorResponse),
        (status = 503, description = "`ledger_unavailable`.", body = ErrorResponse),
    )
)]
pub(super) async fn get_refund(
    State(svc): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<RefundView>, ApiError> {
    let Path(no) = path.map_err(path_error)?;
    let params = input::query(query.as_deref(), &["refresh"])?;
    let refresh = match params.get("refresh") {
        Some(v) => input::query_bool("refresh", v)?,
        None => false,
    };
    let no = OutRefundNo::new(no)
        .map_err(|e| ApiError::bad_request("validation_error", e.to_string()))?;
    let rec = if refresh {
        svc.refresh(&no).await?
    } else {
        svc.get(&no).await?
    };
    Ok(Json(RefundView::from(&rec)))
}

/// `GET /refunds` query (a schema only).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct ListQuery {
    /// Required, and only `true`: this route lists the refunds that need a person.
    #[param(required = true, schema_with = super::openapi::only_true)]
    needs_person: bool,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 64, pattern = r"^[0-9A-Za-z_\-|*@]+$")]
    cursor: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// One page of refunds that need a person.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefundPage {
    pub refunds: Vec<RefundView>,
    /// Pass as `cursor` for the next page; `null` after the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The operator's list: every refund that needs a person (CHANGE, a contradiction with WeChat's
/// books, or stuck past its escalation age), by `out_refund_no`.
#[utoipa::path(
    get,
    path = "/refunds",
    operation_id = "listRefundsNeedingPerson",
    tag = "refunds",
    params(ListQuery),
    responses(
        (status = 200, description = "One page, by `out_refund_no`.", body = RefundPage),
        (status = 400, description = "`invalid_query`: `needs_person=true` missing, `limit` outside 1–100, a cursor we did not give, an unknown or repeated parameter.", body = ErrorResponse),
        (status = 500, description = "`internal_error`.", body = ErrorResponse),
        (status = 503, description = "`ledger_unavailable`.", body = ErrorResponse),
    )
)]
pub(super) async fn list_needing_person(
    State(svc): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<RefundPage>, ApiError> {
    let bad = |m: &str| ApiError::bad_request("invalid_query", m);
    let p = input::query(query.as_deref(), &["needs_person", "cursor", "limit"])?;
    let needs_person = match p.get("needs_person") {
        Some(v) => input::query_bool("needs_person", v)?,
        None => false,
    };
    if !needs_person {
        return Err(bad(
            "needs_person=true is required: this route lists the refunds that need a person",
        ));
    }
    let limit = match p.get("limit") {
        None => 50,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| bad("limit must be a whole number from 1 to 100"))?,
    };
    let cursor = match p.get("cursor") {
        None => None,
        Some(c) => Some(crate::ledger::Cursor::new(
            OutRefundNo::new(c.as_str())
                .map_err(|_| bad("cursor is not one we gave"))?
                .as_str(),
        )),
    };
    let page = svc.needing_person(cursor, limit).await?;
    Ok(Json(RefundPage {
        refunds: page.items.iter().map(RefundView::from).collect(),
        next_cursor: page.next.map(|c| c.as_str().to_owned()),
    }))
}

/// The path of one order (a schema only).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct OrderPath {
    /// Your order number.
    #[param(min_length = 6, max_length = 32, pattern = r"^[0-9A-Za-z_\-|*]+$")]
    out_trade_no: String,
}

/// WeChat's list of the order's refunds (every page) merged with the ledger's.
#[utoipa::path(
    get,
    path = "/orders/{out_trade_no}/refunds",
    operation_id = "listOrderRefunds",
    tag = "refunds",
    params(OrderPath),
    responses(
        (status = 200, description = "The order's refunds.", body = OrderRefunds),
        (status = 400, description = "`invalid_path`, `validation_error` (a bad order number) or `invalid_query` (this route takes no query parameters).", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: WeChat answered `FREQUENCY_LIMITED`; ask again after `Retry-After`.", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again (WeChat Pay's limits are per second)."))),
        (status = 500, description = "`internal_error`.", body = ErrorResponse),
        (status = 502, description = "`upstream_error`: WeChat could not answer.", body = ErrorResponse),
        (status = 503, description = "`ledger_unavailable`.", body = ErrorResponse),
    )
)]
pub(super) async fn list_order_refunds(
    State(svc): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<OrderRefunds>, ApiError> {
    let Path(no) = path.map_err(path_error)?;
    input::query(query.as_deref(), &[])?;
    let no = OutTradeNo::new(no)
        .map_err(|e| ApiError::bad_request("validation_error", e.to_string()))?;
    let recs = match svc.list_by_order(&OrderRef::OutTradeNo(no.clone())).await {
        Ok(recs) => recs,
        Err(e @ crate::service::ServiceError::RateLimited(_)) => {
            // Not the merchant's fault and not an outage: WeChat's own per-second limit. Said at
            // WARN with the order so a merchant polling too fast can be told.
            tracing::warn!(
                route = "/orders/{out_trade_no}/refunds",
                out_trade_no = %no,
                error = %e,
                "WeChat's rate limit refused the order's refund query"
            );
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Json(OrderRefunds {
        out_trade_no: no.to_string(),
        refunds: recs.iter().map(RefundView::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceError;
    use wxpay::OutRefundNo;

    fn body(json: &str) -> Result<RefundCommand, ApiError> {
        CreateRefund::from_json(json.as_bytes())?.validate()
    }

    /// A deserializer's own wording, which a merchant cannot act on.
    const SERDE_WORDS: [&str; 5] = [
        "expected u64",
        "invalid type",
        "invalid length",
        "expected struct",
        "invalid value",
    ];

    #[test]
    fn every_input_class_gets_a_clear_400_naming_the_field() {
        let ok =
            r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":10}"#;
        assert!(body(ok).is_ok());
        // GIVEN each kind of bad body WHEN read THEN a 400 whose message names the field
        for (json, code, needle) in [
            ("{", "invalid_json", "JSON"),
            ("", "invalid_json", "JSON"),
            ("[]", "validation_error", "JSON object"),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":"100","refund_fee":10}"#,
                "validation_error",
                "total_fee must be a whole number of fen",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":-1,"refund_fee":10}"#,
                "validation_error",
                "total_fee",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":1.5,"refund_fee":1}"#,
                "validation_error",
                "total_fee",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":99999999999999999999999,"refund_fee":1}"#,
                "validation_error",
                "total_fee",
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
                r#"{"out_refund_no":"R 1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "out_refund_no",
            ),
            (
                r#"{"out_refund_no":7,"out_trade_no":"ORDER1","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "out_refund_no must be a string",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORD","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "out_trade_no",
            ),
            (
                r#"{"out_refund_no":"R1","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "out_trade_no is required",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":null,"total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "out_trade_no is required",
            ),
            (
                r#"{"out_refund_no":"R1","transaction_id":"4200000001202611270000000001","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "out_trade_no",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","transaction_id":"42","total_fee":100,"refund_fee":1}"#,
                "validation_error",
                "transaction_id is not accepted",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":1,"amount":1}"#,
                "validation_error",
                "unknown field \"amount\"",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":1,"refund_account":"X"}"#,
                "validation_error",
                "refund_account",
            ),
            (
                r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":1,"metadata":[]}"#,
                "validation_error",
                "metadata",
            ),
        ] {
            let err = body(json).expect_err(json);
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{json}");
            assert_eq!(err.code, code, "{json}: {}", err.message);
            assert!(err.message.contains(needle), "{json}: {}", err.message);
            for w in SERDE_WORDS {
                assert!(!err.message.contains(w), "{json}: {}", err.message);
            }
        }
        let long = format!(
            r#"{{"out_refund_no":"{}","out_trade_no":"ORDER1","total_fee":100,"refund_fee":1}}"#,
            "R".repeat(65)
        );
        assert!(body(&long).is_err());
    }

    #[test]
    fn a_refund_over_its_total_is_a_422_not_a_400() {
        // GIVEN fields each valid alone but refund_fee over total_fee THEN 422 refund_exceeds_order
        let err = body(
            r#"{"out_refund_no":"R1","out_trade_no":"ORDER1","total_fee":100,"refund_fee":101}"#,
        )
        .expect_err("over");
        assert_eq!(
            (err.status, err.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "refund_exceeds_order")
        );
        assert!(err.message.contains("must not exceed"), "{}", err.message);
    }

    #[test]
    fn refund_desc_is_checked_at_the_edge_by_name() {
        // GIVEN descriptions the encoder or WeChat would refuse WHEN posted THEN a 400 that names
        // refund_desc, before anything is recorded
        for desc in ["a]]>b", "退款😀", "tab\there"] {
            let json = serde_json::json!({"out_refund_no": "R1", "out_trade_no": "ORDER1",
                "total_fee": 100, "refund_fee": 1, "refund_desc": desc})
            .to_string();
            let err = body(&json).expect_err(desc);
            assert_eq!(
                (err.status, err.code),
                (StatusCode::BAD_REQUEST, "validation_error")
            );
            assert!(
                err.message.starts_with("refund_desc"),
                "{desc}: {}",
                err.message
            );
        }
        let long = serde_json::json!({"out_refund_no": "R1", "out_trade_no": "ORDER1",
            "total_fee": 100, "refund_fee": 1, "refund_desc": "退".repeat(81)})
        .to_string();
        assert!(body(&long).unwrap_err().message.contains("80"));
        let ok = serde_json::json!({"out_refund_no": "R1", "out_trade_no": "ORDER1",
            "total_fee": 100, "refund_fee": 1, "refund_desc": "退".repeat(80)})
        .to_string();
        assert_eq!(
            body(&ok)
                .unwrap()
                .refund_desc
                .map(|d| d.as_str().chars().count()),
            Some(80)
        );
    }

    #[test]
    fn a_wechat_rate_limit_is_a_429_with_retry_after() {
        // GIVEN WeChat's FREQUENCY_LIMITED on a call the merchant waits for
        let refusal = wxpay::WxError {
            stage: wxpay::errors::Stage::Result,
            code: wxpay::ErrCode::FrequencyLimited,
            description: "频率限制".into(),
            return_msg: "OK".into(),
            raw: String::new(),
        };
        let e = ServiceError::from(crate::decide::CallFailure::Rejected(refusal));
        // THEN 429 rate_limited, Retry-After 1, in the JSON envelope
        let resp = ApiError::from(e).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            resp.headers()
                .get(axum::http::header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        // AND any other refusal stays a 502
        let other = ServiceError::from(crate::decide::CallFailure::NotSent("down".into()));
        assert_eq!(ApiError::from(other).status, StatusCode::BAD_GATEWAY);
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
