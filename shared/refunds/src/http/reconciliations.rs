//! The reconciliation routes: `POST /reconciliations` (reconcile a bill date now and answer the
//! report), `GET /reconciliations/{bill_date}` (the stored report), and the daily schedule's
//! event, which reconciles the previous Beijing day.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use wxpay::bill::BillDate;

use super::input::{self, JsonObject, path_error};
use super::openapi::ErrorResponse;
use super::refunds::rfc3339;
use super::{ApiError, AppState, body_error};
use crate::reconcile::{Discrepancy, DiscrepancyKind, Reconciliation, ReportStatus, Resolution};
use crate::service::RefundService;
use crate::state::UnixMillis;

/// `POST /reconciliations` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReconciliation {
    /// `YYYY-MM-DD`, a Beijing date from the year 2000 (WeChat Pay's bills begin after it), not in
    /// the future (`422 bill_date_in_future`).
    #[schema(format = Date, pattern = r"^[2-9][0-9]{3}-[0-9]{2}-[0-9]{2}$")]
    pub bill_date: String,
}

impl CreateReconciliation {
    /// A `POST /reconciliations` body read field by field.
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let mut o = JsonObject::parse(body, "a reconciliation request", &["bill_date"])?;
        Ok(CreateReconciliation {
            bill_date: o.required_string("bill_date")?,
        })
    }
}

/// Refund count and amount (fen) of one side.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TotalsView {
    pub refunds: u64,
    pub refund_fee: u64,
}

/// What one side says of a refund.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SideView {
    pub status: String,
    pub refund_fee: u64,
}

/// One refund on which WeChat's bill and the ledger disagreed, and what was done.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DiscrepancyView {
    pub kind: DiscrepancyKind,
    pub out_refund_no: String,
    #[schema(required = true)]
    pub out_trade_no: Option<String>,
    #[schema(required = true)]
    pub bill: Option<SideView>,
    #[schema(required = true)]
    pub ledger: Option<SideView>,
    pub resolution: Resolution,
    pub detail: String,
}

/// A reconciliation report as the API shows it (amounts in fen, times RFC 3339).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReconciliationView {
    pub bill_date: String,
    pub status: ReportStatus,
    pub bill: TotalsView,
    pub ledger: TotalsView,
    pub discrepancies: Vec<DiscrepancyView>,
    pub started_at: String,
    pub finished_at: String,
}

impl From<&Discrepancy> for DiscrepancyView {
    fn from(d: &Discrepancy) -> Self {
        let side = |s: &crate::reconcile::Side| SideView {
            status: s.status.clone(),
            refund_fee: s.refund_fee.get(),
        };
        DiscrepancyView {
            kind: d.kind,
            out_refund_no: d.out_refund_no.to_string(),
            out_trade_no: d.out_trade_no.as_ref().map(ToString::to_string),
            bill: d.bill.as_ref().map(side),
            ledger: d.ledger.as_ref().map(side),
            resolution: d.resolution,
            detail: d.detail.clone(),
        }
    }
}

impl From<&Reconciliation> for ReconciliationView {
    fn from(r: &Reconciliation) -> Self {
        let totals = |t: &crate::reconcile::Totals| TotalsView {
            refunds: t.refunds,
            refund_fee: t.refund_fee.get(),
        };
        ReconciliationView {
            bill_date: r.bill_date.clone(),
            status: r.status,
            bill: totals(&r.bill),
            ledger: totals(&r.ledger),
            discrepancies: r.discrepancies.iter().map(DiscrepancyView::from).collect(),
            started_at: rfc3339(r.started_at),
            finished_at: rfc3339(r.finished_at),
        }
    }
}

/// The Beijing date of `now`.
fn beijing_today(now: UnixMillis) -> Result<BillDate, ApiError> {
    now.beijing_date().parse::<BillDate>().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
    })
}

/// A bill date from the merchant: a real `YYYY-MM-DD` date (else 400), not after today in Beijing
/// (else 422: the date is well formed, it is its relation to the clock that is refused).
fn bill_date(s: &str, now: UnixMillis) -> Result<BillDate, ApiError> {
    let invalid = |m: String| ApiError::bad_request("validation_error", m);
    // Only the dashed form: the schema says `YYYY-MM-DD`, so `yyyyMMdd` (which BillDate also
    // reads) is refused rather than silently accepted.
    if s.len() != 10 || s.as_bytes().get(4) != Some(&b'-') {
        return Err(invalid(format!(
            "bill_date must be a date written YYYY-MM-DD, got {:?}",
            s.chars().take(16).collect::<String>()
        )));
    }
    let day: BillDate = s.parse().map_err(|e| invalid(format!("bill_date: {e}")))?;
    if day > beijing_today(now)? {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bill_date_in_future",
            format!("bill_date: {} is in the future (Beijing time)", day.iso()),
        ));
    }
    Ok(day)
}

/// The path of one reconciliation (a schema only).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct BillDatePath {
    /// `YYYY-MM-DD`, a Beijing date.
    #[param(format = Date, pattern = r"^[2-9][0-9]{3}-[0-9]{2}-[0-9]{2}$")]
    bill_date: String,
}

/// Reconcile a Beijing day against WeChat's refund bill now, and answer the report.
#[utoipa::path(
    post,
    path = "/reconciliations",
    operation_id = "createReconciliation",
    tag = "reconciliations",
    request_body(content = CreateReconciliation, content_type = "application/json"),
    responses(
        (status = 200, description = "The report (also stored).", body = ReconciliationView),
        (status = 400, description = "`invalid_json`, `validation_error` (the message names the field), `invalid_body`, `invalid_query` (this route takes no query parameters).", body = ErrorResponse),
        (status = 413, description = "`body_too_large`.", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: send `Content-Type: application/json`.", body = ErrorResponse),
        (status = 422, description = "`bill_date_in_future` (Beijing time).", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: WeChat's rate limit refused the bill download; ask again after `Retry-After`.", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again (WeChat Pay's limits are per second)."))),
        (status = 500, description = "`internal_error`.", body = ErrorResponse),
        (status = 502, description = "`upstream_error`: WeChat's bill could not be had or does not add up.", body = ErrorResponse),
        (status = 503, description = "`ledger_unavailable`.", body = ErrorResponse),
    )
)]
pub(super) async fn create_reconciliation(
    State(svc): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ReconciliationView>, ApiError> {
    input::query(query.as_deref(), &[])?;
    let body = super::json_body(&headers, body, "the reconciliation request")?;
    let req = CreateReconciliation::from_json(&body)?;
    let day = bill_date(&req.bill_date, UnixMillis::now())?;
    let report = svc.reconcile_bill_date(&day).await?;
    Ok(Json(ReconciliationView::from(&report)))
}

/// The stored report of a day.
#[utoipa::path(
    get,
    path = "/reconciliations/{bill_date}",
    operation_id = "getReconciliation",
    tag = "reconciliations",
    params(BillDatePath),
    responses(
        (status = 200, description = "The stored report.", body = ReconciliationView),
        (status = 400, description = "`invalid_path`, `validation_error` (not a `YYYY-MM-DD` date) or `invalid_query` (this route takes no query parameters).", body = ErrorResponse),
        (status = 404, description = "`not_found`: that day has not been reconciled.", body = ErrorResponse),
        (status = 422, description = "`bill_date_in_future` (Beijing time).", body = ErrorResponse),
        (status = 500, description = "`internal_error`.", body = ErrorResponse),
        (status = 503, description = "`ledger_unavailable`.", body = ErrorResponse),
    )
)]
pub(super) async fn get_reconciliation(
    State(svc): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<ReconciliationView>, ApiError> {
    let Path(day) = path.map_err(path_error)?;
    input::query(query.as_deref(), &[])?;
    let day = bill_date(&day, UnixMillis::now())?;
    match svc.reconciliation(&day).await? {
        Some(r) => Ok(Json(ReconciliationView::from(&r))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no reconciliation of {} yet", day.iso()),
        )),
    }
}

/// What the schedule asks for.
#[derive(Debug, Deserialize)]
struct ScheduledRun {
    #[serde(default)]
    action: String,
}

/// The schedule's event (`POST /events`, see [`super::EVENTS_PATH`]): `{"action":"reconcile"}`
/// reconciles the previous Beijing day and asks again about the CHANGE refunds of the last 30
/// days; `{"action":"reconcile_retry"}` reconciles only while that day has no report, one that
/// is NOT_READY (WeChat was still generating the bill), or one with `unresolved` discrepancies.
async fn scheduled(
    State(svc): State<Arc<RefundService>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body.map_err(body_error)?;
    let run: ScheduledRun = serde_json::from_slice(&body).unwrap_or(ScheduledRun {
        action: String::new(),
    });
    let now = UnixMillis::now();
    // Beijing has no daylight saving: a day ago is always the previous Beijing day.
    let yesterday = beijing_today(UnixMillis(now.get().saturating_sub(86_400_000)))?;
    tracing::info!(action = %run.action, bill_date = %yesterday.iso(), "scheduled reconciliation");
    if run.action == "reconcile_retry"
        && let Some(done) = svc.reconciliation(&yesterday).await?
        && !needs_another_run(&done)
    {
        return Ok(Json(serde_json::json!({
            "bill_date": yesterday.iso(),
            "status": done.status,
            "skipped": true,
        })));
    }
    let report = svc.reconcile_bill_date(&yesterday).await?;
    // Once a day (not on the retries): CHANGE refunds a person may have resolved meanwhile.
    let changes = if run.action == "reconcile_retry" {
        None
    } else {
        Some(svc.recheck_changes(now).await?)
    };
    Ok(Json(serde_json::json!({
        "bill_date": report.bill_date,
        "status": report.status,
        "discrepancies": report.discrepancies.len(),
        "change_rechecked": changes,
    })))
}

/// A retry runs the day again while WeChat had no bill ready or a query could not be made.
fn needs_another_run(report: &Reconciliation) -> bool {
    report.status == ReportStatus::NotReady
        || report
            .discrepancies
            .iter()
            .any(|d| d.resolution == Resolution::Unresolved)
}

/// The schedule's event route.
pub(super) fn events_router(svc: Arc<RefundService>) -> axum::Router {
    axum::Router::new()
        .route(super::EVENTS_PATH, axum::routing::post(scheduled))
        .with_state(svc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_runs_again_only_for_a_bill_not_ready_or_an_unresolved_discrepancy() {
        use crate::reconcile::{Discrepancy, Totals};
        let report = |status, resolutions: &[Resolution]| Reconciliation {
            bill_date: "2027-01-14".into(),
            status,
            bill: Totals::default(),
            ledger: Totals::default(),
            discrepancies: resolutions
                .iter()
                .map(|r| Discrepancy {
                    kind: DiscrepancyKind::StatusMismatch,
                    out_refund_no: "R-1".parse().unwrap(),
                    out_trade_no: None,
                    bill: None,
                    ledger: None,
                    resolution: *r,
                    detail: String::new(),
                })
                .collect(),
            started_at: UnixMillis(1),
            finished_at: UnixMillis(2),
        };
        assert!(needs_another_run(&report(ReportStatus::NotReady, &[])));
        assert!(!needs_another_run(&report(ReportStatus::Matched, &[])));
        assert!(!needs_another_run(&report(ReportStatus::NoBill, &[])));
        assert!(!needs_another_run(&report(
            ReportStatus::Mismatched,
            &[Resolution::RecordedExternal, Resolution::FlaggedForPerson]
        )));
        assert!(needs_another_run(&report(
            ReportStatus::Mismatched,
            &[Resolution::RecordedExternal, Resolution::Unresolved]
        )));
    }

    #[test]
    fn bill_dates_must_be_real_and_not_in_the_future() {
        // 2027-01-15 08:00 UTC = 16:00 in Beijing
        let now = UnixMillis(1_800_000_000_000);
        assert_eq!(bill_date("2027-01-15", now).unwrap().iso(), "2027-01-15");
        assert_eq!(bill_date("2027-01-14", now).unwrap().iso(), "2027-01-14");
        let e = bill_date("2027-01-16", now).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "bill_date_in_future")
        );
        for bad in ["2027-02-30", "20270115x", "20270115", "", "yesterday"] {
            let e = bill_date(bad, now).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.starts_with("bill_date"), "{bad}: {}", e.message);
        }
        // 16:00 UTC is midnight in Beijing: the next day is today there
        let midnight = UnixMillis(1_800_000_000_000 + 8 * 3_600_000);
        assert_eq!(
            bill_date("2027-01-16", midnight).unwrap().iso(),
            "2027-01-16"
        );
    }
}
