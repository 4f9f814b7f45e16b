//! Reconciliation against WeChat's refund bill: the report and the pure rules that decide, for
//! each refund, whether the bill and the ledger agree and what must be done when they do not.
//! No I/O; `service::reconcile` carries the decisions out.
//!
//! WeChat's bill is not signed: it is a lead, never a fact. Every disagreement is settled by a
//! refund query (signed), whose answer goes through the usual rules (`crate::decide`,
//! `crate::correction`); a disagreement the query cannot settle flags the refund for a person.
//!
//! WeChat bills a refund on the day it *accepted* it (Beijing time) with its status at billing
//! time (~10:00 the next day), and the bill is not updated afterwards ("出账后退款状态不会更新"):
//! a bill row still PROCESSING while the ledger has a final status is the normal case, not a
//! disagreement.

use serde::{Deserialize, Serialize};
use wxpay::{Fen, OutRefundNo, OutTradeNo, TransactionId};

use crate::state::{RefundRecord, RefundStatus, UnixMillis};

/// One refund as a day's refund bill lists it (the fields reconciliation compares).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BilledRefund {
    pub out_refund_no: OutRefundNo,
    pub out_trade_no: Option<OutTradeNo>,
    pub transaction_id: Option<TransactionId>,
    /// WeChat's v2 `refund_fee`: the requested amount, coupon part included.
    pub refund_fee: Fen,
    /// The status at billing time; `None` for a value that is no refund status we know (old
    /// bills say `FAIL`): the query says what it is.
    pub status: Option<RefundStatus>,
    /// The status as the bill writes it.
    pub status_written: String,
    /// 退款申请时间, when WeChat accepted it.
    pub applied_at: Option<UnixMillis>,
}

impl From<&wxpay::bill::RefundBillRow> for BilledRefund {
    fn from(row: &wxpay::bill::RefundBillRow) -> Self {
        use wxpay::bill::BilledRefundStatus as B;
        let status = match &row.refund_status {
            B::Success => Some(RefundStatus::Success),
            B::Processing => Some(RefundStatus::Processing),
            B::RefundClose => Some(RefundStatus::RefundClose),
            B::Change => Some(RefundStatus::Change),
            B::Fail | B::Other(_) => None,
        };
        BilledRefund {
            out_refund_no: row.out_refund_no.clone(),
            out_trade_no: Some(row.out_trade_no.clone()),
            transaction_id: Some(row.transaction_id.clone()),
            refund_fee: row.refund_fee,
            status,
            status_written: row.refund_status.as_str().to_owned(),
            applied_at: UnixMillis::from_beijing_time(&row.apply_time),
        }
    }
}

/// What a report says of the whole day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReportStatus {
    /// The bill and the ledger agree on every refund (after the queries this run made).
    Matched,
    /// At least one discrepancy was found; each says how it was resolved.
    Mismatched,
    /// WeChat has no refund bill for the day ("No Bill Exist") and the ledger accepted nothing
    /// that day.
    NoBill,
    /// WeChat is still generating the bill ("Bill Creating"): run again later.
    NotReady,
}

impl ReportStatus {
    /// The wire name (same as serde's).
    pub const fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Matched => "MATCHED",
            ReportStatus::Mismatched => "MISMATCHED",
            ReportStatus::NoBill => "NO_BILL",
            ReportStatus::NotReady => "NOT_READY",
        }
    }
}

/// What kind of disagreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscrepancyKind {
    /// WeChat billed a refund the ledger did not have (made in the merchant platform, by
    /// another system, or lost in a restore).
    MissingInLedger,
    /// The ledger says WeChat accepted the refund that day; the day's bill does not list it.
    MissingInBill,
    /// The bill's amount differs from the ledger's.
    AmountMismatch,
    /// The bill's status says something the ledger's does not (beyond the bill being older).
    StatusMismatch,
}

impl DiscrepancyKind {
    /// The wire name (as serialized).
    pub const fn as_str(self) -> &'static str {
        match self {
            DiscrepancyKind::MissingInLedger => "missing_in_ledger",
            DiscrepancyKind::MissingInBill => "missing_in_bill",
            DiscrepancyKind::AmountMismatch => "amount_mismatch",
            DiscrepancyKind::StatusMismatch => "status_mismatch",
        }
    }
}

/// How a discrepancy was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// A query confirmed the refund; it is now in the ledger as an external refund and counts
    /// against its order.
    RecordedExternal,
    /// The ledger was behind; a query moved it on to WeChat's status.
    UpdatedByQuery,
    /// The ledger said a final status WeChat denies; a query corrected it, with its history kept
    /// and the refund flagged for a person.
    CorrectedByQuery,
    /// A query agrees with the ledger: the bill was older or lists it on another day (a refund
    /// accepted within moments of midnight Beijing time can be billed on the neighbouring day).
    ConfirmedByQuery,
    /// The query could not settle it (WeChat's signed answer disagrees with the bill or with the
    /// ledger in a way no status change says): the refund is flagged for a person.
    FlaggedForPerson,
    /// WeChat's query does not know a refund its bill lists; nothing was recorded. A person
    /// should look at the bill and the merchant platform.
    NotConfirmed,
    /// The query failed (WeChat unreachable, rate limited, the refund being submitted right
    /// now): run the date again later.
    Unresolved,
}

/// One side of a discrepancy: what the bill or the ledger says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// The bill's status as written there (e.g. `FAIL` in old bills), or the ledger's.
    pub status: String,
    pub refund_fee: Fen,
}

/// One refund on which the bill and the ledger disagreed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrepancy {
    pub kind: DiscrepancyKind,
    pub out_refund_no: OutRefundNo,
    pub out_trade_no: Option<OutTradeNo>,
    /// `None` for `missing_in_bill`.
    pub bill: Option<Side>,
    /// The ledger before this run touched it; `None` for `missing_in_ledger`.
    pub ledger: Option<Side>,
    pub resolution: Resolution,
    /// What the query answered or why it could not settle it, in words.
    pub detail: String,
}

/// Refund count and amount of one side of a day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub refunds: u64,
    pub refund_fee: Fen,
}

impl Totals {
    pub fn add(&mut self, fee: Fen) {
        self.refunds += 1;
        self.refund_fee = self.refund_fee.checked_add(fee).unwrap_or(self.refund_fee);
    }
}

/// The stored result of reconciling one bill date.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// `YYYY-MM-DD`, a Beijing date.
    pub bill_date: String,
    pub status: ReportStatus,
    /// What the bill lists (its rows, their `refund_fee`).
    pub bill: Totals,
    /// What the ledger attributed to the day before this run: the refunds it accepted that day
    /// and the billed refunds it had.
    pub ledger: Totals,
    pub discrepancies: Vec<Discrepancy>,
    pub started_at: UnixMillis,
    pub finished_at: UnixMillis,
}

impl Reconciliation {
    /// The day's status from what was found.
    pub fn status_of(discrepancies: &[Discrepancy]) -> ReportStatus {
        if discrepancies.is_empty() {
            ReportStatus::Matched
        } else {
            ReportStatus::Mismatched
        }
    }
}

/// What to do about a billed refund the ledger has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowCheck {
    /// They agree (the bill may be older: PROCESSING there, final here).
    Agree,
    /// They agree that WeChat is still working on it: ask WeChat again, silently (the poller
    /// would too); no discrepancy whatever the answer.
    Refresh,
    /// A disagreement: query, then report it with what the query settled.
    Query(DiscrepancyKind),
}

/// Whether a billed refund and the ledger's record of it agree. The amount is checked first:
/// a refund whose amount differs is a mismatch whatever its status.
pub fn check_row(billed: &BilledRefund, rec: &RefundRecord) -> RowCheck {
    use RefundStatus::*;
    if billed.refund_fee != rec.refund_fee {
        return RowCheck::Query(DiscrepancyKind::AmountMismatch);
    }
    match (billed.status, rec.status) {
        // The bill is older than any final status WeChat reported since.
        (Some(Processing), Success | RefundClose | Change) => RowCheck::Agree,
        (Some(Processing), Processing) => RowCheck::Refresh,
        (Some(b), l) if b == l => RowCheck::Agree,
        // Anything else, including our own statuses (RECORDED … FAILED: the bill proves WeChat
        // holds the refund) and a status the bill writes that we do not know.
        _ => RowCheck::Query(DiscrepancyKind::StatusMismatch),
    }
}

/// How a queried status disagreement ended, from the record before and after the query.
pub fn status_resolution(before: &RefundRecord, after: &RefundRecord) -> Resolution {
    if after.corrections.len() > before.corrections.len() {
        Resolution::CorrectedByQuery
    } else if after.status != before.status {
        Resolution::UpdatedByQuery
    } else if after.status.reported_by_wechat() {
        Resolution::ConfirmedByQuery
    } else {
        // Still one of our own statuses: the query did not find it or could not be made.
        Resolution::Unresolved
    }
}

/// The bill side of a discrepancy, the status in the bill's words.
pub fn bill_side(billed: &BilledRefund) -> Side {
    Side {
        status: billed.status_written.clone(),
        refund_fee: billed.refund_fee,
    }
}

pub fn ledger_side(rec: &RefundRecord) -> Side {
    Side {
        status: rec.status.as_str().to_owned(),
        refund_fee: rec.refund_fee,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_discrepancy_kind_names_itself_as_it_is_serialized() {
        for k in [
            super::DiscrepancyKind::MissingInLedger,
            super::DiscrepancyKind::MissingInBill,
            super::DiscrepancyKind::AmountMismatch,
            super::DiscrepancyKind::StatusMismatch,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    use super::*;
    use RefundStatus::*;
    use wxpay::OrderRef;

    fn fen(n: u64) -> Fen {
        Fen::new(n).unwrap()
    }

    fn rec(status: RefundStatus, fee: u64) -> RefundRecord {
        RefundRecord {
            out_refund_no: OutRefundNo::new("R1").unwrap(),
            order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
            out_trade_no: Some(OutTradeNo::new("ORDER-1").unwrap()),
            transaction_id: None,
            refund_id: None,
            total_fee: fen(1000),
            refund_fee: fen(fee),
            refund_desc: None,
            refund_account: None,
            status,
            attempts: 1,
            last_error: None,
            refund_recv_account: None,
            success_time: None,
            created_at: UnixMillis(1),
            updated_at: UnixMillis(1),
            request_hash: "h".into(),
            version: 3,
            lease: None,
            next_check_at: None,
            external: false,
            attention: None,
            corrections: vec![],
            accepted_at: Some(UnixMillis(2)),
            metadata: Default::default(),
            outbox: Vec::new(),
        }
    }

    fn billed(status: Option<RefundStatus>, fee: u64) -> BilledRefund {
        BilledRefund {
            out_refund_no: OutRefundNo::new("R1").unwrap(),
            out_trade_no: Some(OutTradeNo::new("ORDER-1").unwrap()),
            transaction_id: None,
            refund_fee: fen(fee),
            status,
            status_written: status.map_or("FAIL", RefundStatus::as_str).into(),
            applied_at: Some(UnixMillis(2)),
        }
    }

    /// `check_row` for equal amounts as the module documents it, written out cell by cell:
    /// `A` = agree, `R` = refresh, `Q` = query (status mismatch). Rows are what the bill writes
    /// (`None`: a status we do not know, e.g. `FAIL`), columns the ledger's status in
    /// `RefundStatus::ALL` order.
    const ROWS: [(Option<RefundStatus>, &str); 5] = [
        //                           REC SUB PRO UNK RTW SUC RCL CHG FAI
        (
            Some(Processing),
            /*  */ "Q   Q   R   Q   Q   A   A   A   Q",
        ),
        (
            Some(Success),
            /*     */ "Q   Q   Q   Q   Q   A   Q   Q   Q",
        ),
        (
            Some(RefundClose),
            /* */ "Q   Q   Q   Q   Q   Q   A   Q   Q",
        ),
        (
            Some(Change),
            /*      */ "Q   Q   Q   Q   Q   Q   Q   A   Q",
        ),
        (
            None,
            /*              */ "Q   Q   Q   Q   Q   Q   Q   Q   Q",
        ),
    ];

    #[test]
    fn every_bill_status_against_every_ledger_status() {
        // GIVEN a billed refund in each status WeChat bills (and one we do not know) and the
        // ledger in each of its statuses, same amount
        for (b, row) in ROWS {
            let cells: Vec<char> = row.chars().filter(|c| !c.is_whitespace()).collect();
            assert_eq!(cells.len(), RefundStatus::ALL.len(), "row {b:?} of ROWS");
            for (l, cell) in RefundStatus::ALL.into_iter().zip(cells) {
                let want = match cell {
                    'A' => RowCheck::Agree,
                    'R' => RowCheck::Refresh,
                    'Q' => RowCheck::Query(DiscrepancyKind::StatusMismatch),
                    other => panic!("bad cell {other:?} in row {b:?} of ROWS"),
                };
                // THEN only an equal status, or a bill older than a final one, agrees; both
                // PROCESSING is a silent refresh; our own statuses (RECORDED … FAILED: the bill
                // proves WeChat holds the refund) and an unknown bill status are queried
                assert_eq!(
                    check_row(&billed(b, 100), &rec(l, 100)),
                    want,
                    "{b:?} vs {l}"
                );
            }
        }
    }

    #[test]
    fn a_different_amount_is_a_mismatch_whatever_the_status() {
        // GIVEN statuses that agree WHEN the amounts differ by one fen either way
        for (b, l) in [
            (Success, Success),
            (Processing, Success),
            (Processing, Processing),
        ] {
            // THEN it is an amount mismatch
            for fee in [99, 101] {
                assert_eq!(
                    check_row(&billed(Some(b), fee), &rec(l, 100)),
                    RowCheck::Query(DiscrepancyKind::AmountMismatch)
                );
            }
        }
    }

    fn bill_row(status: wxpay::bill::BilledRefundStatus) -> wxpay::bill::RefundBillRow {
        wxpay::bill::RefundBillRow {
            line: 2,
            trade_time: "2026-11-30 09:00:00".into(),
            appid: Some("wx2421b1c4370ec43b".into()),
            mch_id: Some("10000100".into()),
            sub_mch_id: None,
            device_info: None,
            transaction_id: TransactionId::new("4200000001").unwrap(),
            out_trade_no: OutTradeNo::new("ORDER-1").unwrap(),
            trade_type: Some("JSAPI".into()),
            trade_state: Some("REFUND".into()),
            bank_type: None,
            fee_type: Some("CNY".into()),
            total_fee: fen(1000),
            settlement_total_fee: fen(1000),
            coupon_fee: None,
            apply_time: "2026-12-01 10:00:00".into(),
            success_time: None,
            refund_id: wxpay::RefundId::new("50000000382019052709732678859").unwrap(),
            out_refund_no: OutRefundNo::new("R1").unwrap(),
            refund_fee: fen(100),
            settlement_refund_fee: fen(90),
            coupon_refund_fee: fen(10),
            refund_type: "ORIGINAL".into(),
            refund_status: status,
            body: None,
            attach: None,
            service_fee: None,
            rate: None,
            rate_note: None,
            extra: vec![],
        }
    }

    #[test]
    fn a_bill_row_as_reconciliation_compares_it() {
        use wxpay::bill::BilledRefundStatus as B;
        // GIVEN a bill row in each status a bill writes: WeChat's four, FAIL (old bills) and one
        // nobody knows
        for (status, want, written) in [
            (B::Success, Some(Success), "SUCCESS"),
            (B::Processing, Some(Processing), "PROCESSING"),
            (B::RefundClose, Some(RefundClose), "REFUNDCLOSE"),
            (B::Change, Some(Change), "CHANGE"),
            (B::Fail, None, "FAIL"),
            (B::Other("REFUNDING".into()), None, "REFUNDING"),
        ] {
            // WHEN read for reconciliation
            let got = BilledRefund::from(&bill_row(status));
            // THEN WeChat's statuses are ours and the others are left to the query, the bill's
            // words kept; the amount is the refund asked for (coupon part included, not the
            // settlement refund); accepted at the apply time (Beijing), not the trade time
            assert_eq!(
                got,
                BilledRefund {
                    out_refund_no: OutRefundNo::new("R1").unwrap(),
                    out_trade_no: Some(OutTradeNo::new("ORDER-1").unwrap()),
                    transaction_id: Some(TransactionId::new("4200000001").unwrap()),
                    refund_fee: fen(100),
                    status: want,
                    status_written: written.into(),
                    // 2026-12-01 10:00:00 Beijing = 02:00:00 UTC
                    applied_at: Some(UnixMillis(1_796_090_400_000)),
                },
                "{written}"
            );
        }
    }

    #[test]
    fn the_two_sides_of_a_discrepancy() {
        // GIVEN a bill row written FAIL and a ledger record THEN each side says its own status
        // in its own words, with its own amount
        assert_eq!(
            bill_side(&billed(None, 5)),
            Side {
                status: "FAIL".into(),
                refund_fee: fen(5)
            }
        );
        assert_eq!(
            ledger_side(&rec(RefundClose, 7)),
            Side {
                status: "REFUNDCLOSE".into(),
                refund_fee: fen(7)
            }
        );
    }

    #[test]
    fn what_a_query_settled() {
        let before = rec(Unknown, 100);
        // GIVEN the ledger moved on by the query THEN updated
        assert_eq!(
            status_resolution(&before, &rec(Processing, 100)),
            Resolution::UpdatedByQuery
        );
        // GIVEN a correction was added THEN corrected (even if the status were the same)
        let mut corrected = rec(Success, 100);
        corrected.corrections.push(crate::correction::Correction {
            from: Failed,
            to: Success,
            kind: crate::correction::CorrectionKind::Contradiction,
            source: crate::correction::FactSource::Bill,
            at: UnixMillis(9),
        });
        assert_eq!(
            status_resolution(&rec(Failed, 100), &corrected),
            Resolution::CorrectedByQuery
        );
        assert_eq!(
            status_resolution(&rec(Success, 100), &corrected),
            Resolution::CorrectedByQuery
        );
        // GIVEN nothing moved and WeChat holds it THEN confirmed
        assert_eq!(
            status_resolution(&rec(Success, 100), &rec(Success, 100)),
            Resolution::ConfirmedByQuery
        );
        // GIVEN nothing moved and it is still one of our statuses THEN unresolved
        assert_eq!(
            status_resolution(&before, &rec(Unknown, 100)),
            Resolution::Unresolved
        );
    }

    #[test]
    fn a_day_matches_only_without_discrepancies() {
        assert_eq!(Reconciliation::status_of(&[]), ReportStatus::Matched);
        let d = Discrepancy {
            kind: DiscrepancyKind::MissingInLedger,
            out_refund_no: OutRefundNo::new("R1").unwrap(),
            out_trade_no: None,
            bill: Some(bill_side(&billed(None, 5))),
            ledger: None,
            resolution: Resolution::RecordedExternal,
            detail: String::new(),
        };
        assert_eq!(d.bill.as_ref().unwrap().status, "FAIL");
        assert_eq!(Reconciliation::status_of(&[d]), ReportStatus::Mismatched);
    }

    #[test]
    fn totals_count_and_add() {
        // GIVEN two refunds WHEN added THEN counted and summed
        let mut t = Totals::default();
        t.add(fen(5));
        t.add(fen(7));
        assert_eq!(
            t,
            Totals {
                refunds: 2,
                refund_fee: fen(12)
            }
        );
        // GIVEN a day already at the largest amount WHEN one more refund is added THEN it is
        // counted and the amount stays (it never wraps or starts again)
        let max = Fen::new(wxpay::money::MAX_FEN).unwrap();
        let mut t = Totals::default();
        t.add(max);
        t.add(fen(1));
        assert_eq!(
            t,
            Totals {
                refunds: 2,
                refund_fee: max
            }
        );
    }

    #[test]
    fn the_report_serialises_with_the_documented_names() {
        let r = Reconciliation {
            bill_date: "2026-12-01".into(),
            status: ReportStatus::NotReady,
            bill: Totals::default(),
            ledger: Totals::default(),
            discrepancies: vec![],
            started_at: UnixMillis(1),
            finished_at: UnixMillis(2),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "NOT_READY");
        for st in [
            ReportStatus::Matched,
            ReportStatus::Mismatched,
            ReportStatus::NoBill,
            ReportStatus::NotReady,
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        assert_eq!(v["bill"]["refunds"], 0);
        assert_eq!(v["ledger"]["refund_fee"], 0);
        assert_eq!(
            serde_json::to_value(DiscrepancyKind::MissingInLedger).unwrap(),
            "missing_in_ledger"
        );
        assert_eq!(
            serde_json::to_value(Resolution::RecordedExternal).unwrap(),
            "recorded_external"
        );
        let back: Reconciliation = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
