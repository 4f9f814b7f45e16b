//! The merchant's refund routes: create, get (optionally refreshed), list an order's refunds; the
//! request body validated once here, with the field named, and the refund view.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wxpay::refund::{RefundAccount, RefundDesc};
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, TransactionId};

use super::{ApiError, AppState, RequestIds, path_error};
use crate::correction::{CorrectionKind, FactSource};
use crate::metadata::Metadata;
use crate::reason::Reason;
use crate::request::RefundCommand;
use crate::service::Submitted;
use crate::state::{LastError, RefundRecord, RefundStatus, UnixMillis};

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
    /// The merchant's own string keys and values (≤ 20 keys, 40 / 500 characters).
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
    /// A person must act: CHANGE (the bank refused the refund; act in the merchant platform), or
    /// the ledger had said a final status that WeChat's books contradict (see `corrections`).
    pub needs_person: bool,
    /// Every time a final status was corrected to WeChat's, oldest first.
    pub corrections: Vec<CorrectionView>,
    /// FAILED or REFUNDCLOSE: why no money left, normalized (`crate::reason`); WeChat's own code
    /// is in `last_error`.
    pub failure_reason: Option<Reason>,
    /// Not final, or CHANGE: what it waits for, normalized.
    pub pending_reason: Option<Reason>,
    /// The merchant's own data from the request (`{}` when none).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// One correction as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Serialize, Deserialize)]
pub struct OrderRefunds {
    pub out_trade_no: String,
    pub refunds: Vec<RefundView>,
}

pub(super) async fn create_refund(
    State(svc): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut ids = RequestIds::default();
    let mut resp = match create(&svc, &headers, body, &mut ids).await {
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
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    ids: &mut RequestIds,
) -> Result<(Response, RefundStatus), ApiError> {
    let req: CreateRefund = super::json_body(headers, body, "the refund request")?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetParams {
    #[serde(default)]
    refresh: bool,
}

pub(super) async fn get_refund(
    State(svc): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<GetParams>, QueryRejection>,
) -> Result<Json<RefundView>, ApiError> {
    let Path(no) = path.map_err(path_error)?;
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let no = OutRefundNo::new(no)
        .map_err(|e| ApiError::bad_request("validation_error", e.to_string()))?;
    let rec = if params.refresh {
        svc.refresh(&no).await?
    } else {
        svc.get(&no).await?
    };
    Ok(Json(RefundView::from(&rec)))
}

/// `GET /refunds?needs_person=true[&cursor=…][&limit=…]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    needs_person: Option<bool>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// One page of refunds that need a person.
#[derive(Debug, Serialize, Deserialize)]
pub struct RefundPage {
    pub refunds: Vec<RefundView>,
    /// Pass as `cursor` for the next page; `null` after the last.
    pub next_cursor: Option<String>,
}

/// The operator's list: every refund that needs a person (CHANGE, a contradiction with WeChat's
/// books, or stuck past its escalation age), by `out_refund_no`.
pub(super) async fn list_needing_person(
    State(svc): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<RefundPage>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if p.needs_person != Some(true) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "needs_person=true is required: this route lists the refunds that need a person",
        ));
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 100",
        ));
    }
    let cursor = match p.cursor {
        None => None,
        Some(c) => Some(crate::ledger::Cursor::new(
            OutRefundNo::new(c)
                .map_err(|_| ApiError::bad_request("invalid_query", "cursor is not one we gave"))?
                .as_str(),
        )),
    };
    let page = svc.needing_person(cursor, limit).await?;
    Ok(Json(RefundPage {
        refunds: page.items.iter().map(RefundView::from).collect(),
        next_cursor: page.next.map(|c| c.as_str().to_owned()),
    }))
}

/// `GET /orders/{out_trade_no}/refunds` takes no query parameters; an unknown one is refused
/// like on every other route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoParams {}

pub(super) async fn list_order_refunds(
    State(svc): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<OrderRefunds>, ApiError> {
    let Path(no) = path.map_err(path_error)?;
    params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let no = OutTradeNo::new(no)
        .map_err(|e| ApiError::bad_request("validation_error", e.to_string()))?;
    let recs = svc.list_by_order(&OrderRef::OutTradeNo(no.clone())).await?;
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
