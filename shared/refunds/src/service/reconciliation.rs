//! Reconciling a bill date: WeChat's REFUND bill of a Beijing day against the ledger. What the
//! comparison means is decided in [`crate::reconcile`]; this carries it out: every disagreement
//! is settled by a signed refund query (through the usual rules), refunds WeChat has and the
//! ledger lacks are recorded as external ones, what no query settles is flagged for a person,
//! and the report is stored.

use std::collections::{HashMap, HashSet};

use tracing::{error, info, warn};
use wxpay::OutRefundNo;
use wxpay::bill::{BillDate, BillUnavailable};

use super::{RefundService, ServiceError};
use crate::correction::{AttentionReason, FactSource};
use crate::decide::{Lookup, Trigger};
use crate::gateway::BillFailure;
use crate::ledger::{FlagWrite, TransitionOutcome};
use crate::reconcile::{
    BilledRefund, Discrepancy, DiscrepancyKind, Reconciliation, ReportStatus, Resolution, RowCheck,
    Totals, bill_side, check_row, ledger_side, status_resolution,
};
use crate::state::{RefundRecord, UnixMillis};

/// What WeChat gave for a day.
enum BillFetch {
    Bill(Vec<BilledRefund>),
    NoBill,
    NotReady,
}

/// Ledger refunds read per page of the day's `accepted` index.
const ACCEPTED_PAGE: usize = 500;

impl RefundService {
    /// Reconciles one bill date and stores the report (replacing an earlier one). Idempotent:
    /// what a run resolves (a refund recorded, a status moved on) is not found again by the next.
    /// Errors only when WeChat's bill cannot be had (unreachable, misconfigured) or the ledger
    /// fails; a refund whose query fails is reported `unresolved` instead.
    pub async fn reconcile_bill_date(
        &self,
        day: &BillDate,
    ) -> Result<Reconciliation, ServiceError> {
        let started_at = UnixMillis::now();
        let iso = day.iso();
        let report = match self.fetch_bill(*day).await? {
            BillFetch::NotReady => Reconciliation {
                bill_date: iso.clone(),
                status: ReportStatus::NotReady,
                bill: Totals::default(),
                ledger: Totals::default(),
                discrepancies: Vec::new(),
                started_at,
                finished_at: UnixMillis::now(),
            },
            BillFetch::NoBill => self.compare(&iso, Vec::new(), true, started_at).await?,
            BillFetch::Bill(rows) => self.compare(&iso, rows, false, started_at).await?,
        };
        self.ledger.save_reconciliation(&report).await?;
        for d in &report.discrepancies {
            metrics::counter!(
                crate::telemetry::RECONCILIATION_DISCREPANCIES,
                "kind" => d.kind.as_str()
            )
            .increment(1);
        }
        match report.status {
            ReportStatus::Mismatched => {
                error!(bill_date = %iso, discrepancies = report.discrepancies.len(), bill_refunds = report.bill.refunds, ledger_refunds = report.ledger.refunds, "reconciliation found discrepancies between WeChat's refund bill and the ledger");
            }
            status => {
                info!(bill_date = %iso, status = status.as_str(), bill_refunds = report.bill.refunds, "reconciliation finished");
            }
        }
        Ok(report)
    }

    /// The stored report of a bill date.
    pub async fn reconciliation(
        &self,
        day: &BillDate,
    ) -> Result<Option<Reconciliation>, ServiceError> {
        Ok(self.ledger.reconciliation(&day.iso()).await?)
    }

    /// The day's REFUND bill, parsed and checked against its own summary.
    async fn fetch_bill(&self, day: BillDate) -> Result<BillFetch, ServiceError> {
        match self.gateway.refund_bill(day).await {
            Ok(text) => {
                let refused = |e: wxpay::bill::BillError| {
                    ServiceError::Upstream(format!("WeChat's refund bill of {day} is refused: {e}"))
                };
                // Streamed: only the fields reconciliation compares are kept of each row.
                let mut reader = wxpay::bill::BillReader::new(text.as_bytes()).map_err(refused)?;
                let rows = reader
                    .by_ref()
                    .map(|row| row.map(|r| BilledRefund::from(&r)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(refused)?;
                reader.finish().map_err(refused)?;
                Ok(BillFetch::Bill(rows))
            }
            Err(BillFailure::Unavailable(BillUnavailable::NoBill(_))) => Ok(BillFetch::NoBill),
            Err(BillFailure::Unavailable(BillUnavailable::NotReady(_))) => Ok(BillFetch::NotReady),
            // WeChat's rate limit is not an outage: the caller is told to ask again (429).
            Err(BillFailure::Unavailable(e @ BillUnavailable::RateLimited(_))) => Err(
                ServiceError::RateLimited(format!("WeChat's refund bill of {day}: {e}")),
            ),
            Err(e) => Err(ServiceError::Upstream(format!(
                "WeChat's refund bill of {day}: {e}"
            ))),
        }
    }

    async fn compare(
        &self,
        iso: &str,
        rows: Vec<BilledRefund>,
        no_bill: bool,
        started_at: UnixMillis,
    ) -> Result<Reconciliation, ServiceError> {
        let mut accepted = self.accepted_on(iso).await?;
        let mut bill = Totals::default();
        let mut ledger = Totals::default();
        let mut discrepancies = Vec::new();
        let mut billed: HashSet<OutRefundNo> = HashSet::with_capacity(rows.len());
        for row in &rows {
            bill.add(row.refund_fee);
            if !billed.insert(row.out_refund_no.clone()) {
                // WeChat lists every refund once; a second row is the bill's own fault.
                warn!(bill_date = iso, out_refund_no = %row.out_refund_no, "refund listed twice in the bill");
                continue;
            }
            let rec = match accepted.remove(&row.out_refund_no) {
                Some(r) => Some(r),
                None => self.ledger.get(&row.out_refund_no).await?,
            };
            let Some(rec) = rec else {
                discrepancies.push(self.missing_in_ledger(row).await?);
                continue;
            };
            ledger.add(rec.refund_fee);
            match check_row(row, &rec) {
                RowCheck::Agree => {}
                RowCheck::Refresh => {
                    // The poller would do the same; a failure here is the poller's to retry.
                    if let Err(e) = self.look_again(rec, Trigger::Bill).await {
                        info!(out_refund_no = %row.out_refund_no, error = %e, "billed PROCESSING refund not re-checked now");
                    }
                }
                RowCheck::Query(DiscrepancyKind::AmountMismatch) => {
                    discrepancies.push(self.amount_mismatch(row, rec).await?);
                }
                RowCheck::Query(kind) => {
                    discrepancies.push(self.status_mismatch(kind, row, rec).await?);
                }
            }
        }
        // What the ledger says WeChat accepted that day and the bill does not list.
        let mut unbilled: Vec<RefundRecord> = accepted.into_values().collect();
        unbilled.sort_by(|a, b| a.out_refund_no.cmp(&b.out_refund_no));
        for rec in unbilled {
            ledger.add(rec.refund_fee);
            discrepancies.push(self.missing_in_bill(rec).await?);
        }
        let status = match Reconciliation::status_of(&discrepancies) {
            ReportStatus::Matched if no_bill => ReportStatus::NoBill,
            s => s,
        };
        Ok(Reconciliation {
            bill_date: iso.to_owned(),
            status,
            bill,
            ledger,
            discrepancies,
            started_at,
            finished_at: UnixMillis::now(),
        })
    }

    /// Every refund the ledger says WeChat accepted on the day, by number.
    async fn accepted_on(
        &self,
        iso: &str,
    ) -> Result<HashMap<OutRefundNo, RefundRecord>, ServiceError> {
        let mut out = HashMap::new();
        let mut cursor = None;
        loop {
            let page = self.ledger.accepted_on(iso, cursor, ACCEPTED_PAGE).await?;
            out.extend(page.items.into_iter().map(|r| (r.out_refund_no.clone(), r)));
            match page.next {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// A billed refund the ledger lacks: confirmed by query, then recorded as external (it
    /// takes its place in its order's reservation).
    async fn missing_in_ledger(&self, row: &BilledRefund) -> Result<Discrepancy, ServiceError> {
        let (resolution, detail) = match self.look_up(&row.out_refund_no).await {
            Lookup::Found { refund, order } => {
                let order_ref = match (&order.out_trade_no, &order.transaction_id) {
                    (Some(n), _) => wxpay::OrderRef::OutTradeNo(n.clone()),
                    (None, Some(t)) => wxpay::OrderRef::TransactionId(t.clone()),
                    (None, None) => {
                        return Err(ServiceError::Upstream(
                            "WeChat's refund query reply names no order".into(),
                        ));
                    }
                };
                let now = UnixMillis::now();
                let mut ext = self.external(&order_ref, &refund, &order, now)?;
                ext.accepted_at = row.applied_at;
                let rec = self.record_external(ext).await?;
                (
                    Resolution::RecordedExternal,
                    format!(
                        "WeChat's query confirms it ({}, {} fen); recorded as an external refund",
                        rec.status,
                        rec.refund_fee.get()
                    ),
                )
            }
            Lookup::NotListed => (
                Resolution::NotConfirmed,
                "WeChat's query reply does not list this number".into(),
            ),
            Lookup::NotExist(_) => (
                Resolution::NotConfirmed,
                "WeChat's query answers REFUNDNOTEXIST for a number its bill lists".into(),
            ),
            Lookup::Failed(f) => (
                Resolution::Unresolved,
                format!("WeChat's query failed: {f}"),
            ),
        };
        if resolution != Resolution::RecordedExternal {
            error!(out_refund_no = %row.out_refund_no, resolution = ?resolution, "refund in WeChat's bill could not be confirmed; not recorded");
        }
        Ok(Discrepancy {
            kind: DiscrepancyKind::MissingInLedger,
            out_refund_no: row.out_refund_no.clone(),
            out_trade_no: row.out_trade_no.clone(),
            bill: Some(bill_side(row)),
            ledger: None,
            resolution,
            detail,
        })
    }

    /// The bill and the ledger disagree on the status: a query settles it through the usual
    /// rules (a contradicted final status is corrected, with its history, and flagged).
    async fn status_mismatch(
        &self,
        kind: DiscrepancyKind,
        row: &BilledRefund,
        rec: RefundRecord,
    ) -> Result<Discrepancy, ServiceError> {
        let before = rec.clone();
        let (resolution, detail) = match self.look_again(rec, Trigger::Bill).await {
            Ok(after) => {
                let resolution = status_resolution(&before, &after);
                (
                    resolution,
                    format!("after WeChat's query the ledger says {}", after.status),
                )
            }
            Err(e) => (Resolution::Unresolved, e.to_string()),
        };
        Ok(Discrepancy {
            kind,
            out_refund_no: before.out_refund_no.clone(),
            out_trade_no: row.out_trade_no.clone().or(before.out_trade_no.clone()),
            bill: Some(bill_side(row)),
            ledger: Some(ledger_side(&before)),
            resolution,
            detail,
        })
    }

    /// The bill's amount differs from the ledger's: no status says that, so a person must look.
    /// The query's amount is reported beside both.
    async fn amount_mismatch(
        &self,
        row: &BilledRefund,
        rec: RefundRecord,
    ) -> Result<Discrepancy, ServiceError> {
        let wechat = match self.look_up(&rec.out_refund_no).await {
            Lookup::Found { refund, .. } => {
                format!("WeChat's query says {} fen", refund.refund_fee.get())
            }
            Lookup::NotListed => "WeChat's query reply does not list it".into(),
            Lookup::NotExist(_) => "WeChat's query answers REFUNDNOTEXIST".into(),
            Lookup::Failed(f) => format!("WeChat's query failed: {f}"),
        };
        error!(out_refund_no = %rec.out_refund_no, ledger = rec.refund_fee.get(), bill = row.refund_fee.get(), %wechat, "refund amount in WeChat's bill differs from the ledger: flagged for a person");
        let detail = format!(
            "bill {} fen, ledger {} fen; {wechat}",
            row.refund_fee.get(),
            rec.refund_fee.get()
        );
        let resolution = self.flag_mismatch(&rec).await?;
        Ok(Discrepancy {
            kind: DiscrepancyKind::AmountMismatch,
            out_refund_no: rec.out_refund_no.clone(),
            out_trade_no: row.out_trade_no.clone().or(rec.out_trade_no.clone()),
            bill: Some(bill_side(row)),
            ledger: Some(ledger_side(&rec)),
            resolution,
            detail,
        })
    }

    /// The ledger says WeChat accepted it that day; the bill does not list it. A query says
    /// whether WeChat has it at all (then it is billed on another day, or the bill is WeChat's to
    /// mend); if WeChat denies it, a person must look.
    async fn missing_in_bill(&self, rec: RefundRecord) -> Result<Discrepancy, ServiceError> {
        let before = rec.clone();
        let lookup = self.look_up(&rec.out_refund_no).await;
        let (resolution, detail) = match &lookup {
            Lookup::NotExist(_) | Lookup::NotListed => {
                error!(out_refund_no = %rec.out_refund_no, status = %rec.status, "WeChat does not know a refund the ledger says it accepted: flagged for a person");
                (
                    self.flag_mismatch(&rec).await?,
                    "WeChat's query answers REFUNDNOTEXIST for a refund the ledger says it accepted"
                        .to_owned(),
                )
            }
            Lookup::Found { refund, .. } => {
                let detail = format!(
                    "WeChat's query has it ({}); not in this day's bill",
                    refund.refund_status.as_str()
                );
                // WeChat has it: that same answer goes through the usual rules (a no-op when it
                // agrees). The refund was accepted, so it is never SUBMITTING and needs no lease.
                let after = match self.settle(rec, lookup, None, FactSource::Bill).await {
                    Ok(after) => after,
                    Err(_) => before.clone(),
                };
                (
                    match status_resolution(&before, &after) {
                        Resolution::Unresolved => Resolution::ConfirmedByQuery,
                        r => r,
                    },
                    detail,
                )
            }
            Lookup::Failed(f) => (
                Resolution::Unresolved,
                format!("WeChat's query failed: {f}"),
            ),
        };
        Ok(Discrepancy {
            kind: DiscrepancyKind::MissingInBill,
            out_refund_no: before.out_refund_no.clone(),
            out_trade_no: before.out_trade_no.clone(),
            bill: None,
            ledger: Some(ledger_side(&before)),
            resolution,
            detail,
        })
    }

    /// Flags a refund `mismatch` (kept if it already carries a grave flag).
    async fn flag_mismatch(&self, rec: &RefundRecord) -> Result<Resolution, ServiceError> {
        let mut f = FlagWrite {
            out_refund_no: rec.out_refund_no.clone(),
            expected_version: rec.version,
            reason: AttentionReason::Mismatch,
            now: UnixMillis::now(),
            events: Vec::new(),
        };
        if let Some(after) = crate::ledger::flagged(rec, &f) {
            f.events = self.events_of(Some(rec), &after);
        }
        match self.ledger.flag(f).await? {
            TransitionOutcome::Applied(after) => {
                metrics::counter!(crate::telemetry::NEEDS_PERSON, "reason" => "mismatch")
                    .increment(1);
                self.deliver(&after).await;
                Ok(Resolution::FlaggedForPerson)
            }
            // It moved on meanwhile: the next run looks again.
            TransitionOutcome::Conflict(_) => Ok(Resolution::Unresolved),
            TransitionOutcome::NotFound => Err(ServiceError::NotFound(rec.out_refund_no.clone())),
            TransitionOutcome::Illegal { from, to } => Err(ServiceError::Internal(format!(
                "illegal flag {from} -> {to}"
            ))),
        }
    }
}

/// How long a CHANGE refund is asked about again, once a day: a person resolves it in the
/// merchant platform (re-routed to the buyer's wallet, or closed) within days, and WeChat does not
/// always notify it.
pub const CHANGE_WATCH: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// What the daily re-check of CHANGE refunds did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChangeRecheck {
    /// CHANGE refunds younger than [`CHANGE_WATCH`] asked about.
    pub checked: u64,
    /// Those WeChat now reports otherwise (taken through the correction transition).
    pub resolved: u64,
    /// Those whose query failed (asked again tomorrow).
    pub failed: u64,
}

impl RefundService {
    /// Asks WeChat again about every CHANGE refund created within [`CHANGE_WATCH`] of `now`, so
    /// one a person resolved converges (a `resolution` correction). Run once a day (the daily
    /// reconciliation); CHANGE refunds are few, and all are in the needs-person index.
    pub async fn recheck_changes(&self, now: UnixMillis) -> Result<ChangeRecheck, ServiceError> {
        let mut out = ChangeRecheck::default();
        let mut cursor = None;
        loop {
            let page = self.ledger.needing_person(cursor, 100).await?;
            for rec in page.items {
                if rec.status != crate::state::RefundStatus::Change
                    || rec.created_at.age_at(now) > CHANGE_WATCH
                {
                    continue;
                }
                out.checked += 1;
                let no = rec.out_refund_no.clone();
                match self.look_again(rec, Trigger::Refresh).await {
                    Ok(after) if after.status != crate::state::RefundStatus::Change => {
                        out.resolved += 1;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        out.failed += 1;
                        warn!(out_refund_no = %no, error = %e, "CHANGE refund not re-checked today");
                    }
                }
            }
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        info!(
            checked = out.checked,
            resolved = out.resolved,
            failed = out.failed,
            "CHANGE refunds re-checked"
        );
        Ok(out)
    }
}
