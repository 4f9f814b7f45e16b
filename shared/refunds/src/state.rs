//! The refund domain: statuses, the transition table of the refund state machine
//! (docs/ARCHITECTURE.md, "Refund state machine"), the stored refund record and the per-order
//! book of reservations.
//!
//! Nothing here does I/O; the ledger adapters enforce these rules inside their transactions.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, RefundId, TransactionId};

use crate::correction::{Attention, Correction};

/// WeChat refuses the 51st partial refund of an order (protocol doc §5.2); we refuse it first.
pub const MAX_REFUNDS_PER_ORDER: u32 = 50;

/// Beijing time is UTC+8 all year.
pub const BEIJING_OFFSET_SECS: i64 = 8 * 3600;

/// A point in time as milliseconds since the Unix epoch (UTC). One representation everywhere in the
/// ledger: integers sort, compare and serialise without a parser, and DynamoDB stores them as `N`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The wall clock. A clock before 1970 is treated as 0 rather than failing: it only delays checks.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        UnixMillis(ms)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating (a lease of "forever" must not wrap into the past).
    pub fn plus(self, d: std::time::Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixMillis(self.0.saturating_add(ms))
    }

    /// The calendar date in Beijing time (UTC+8 all year, no daylight saving), `YYYY-MM-DD`:
    /// WeChat's clock, by which its bills are cut into days.
    pub fn beijing_date(self) -> String {
        let secs = i64::try_from(self.0 / 1000).unwrap_or(i64::MAX);
        let date =
            time::OffsetDateTime::from_unix_timestamp(secs.saturating_add(BEIJING_OFFSET_SECS))
                .map(|t| t.date())
                .unwrap_or(time::Date::MAX);
        format!(
            "{:04}-{:02}-{:02}",
            date.year(),
            u8::from(date.month()),
            date.day()
        )
    }

    /// A Beijing wall-clock time as WeChat writes it (`yyyy-MM-dd HH:mm:ss`, e.g. a bill's
    /// 退款申请时间); `None` for anything else.
    pub fn from_beijing_time(s: &str) -> Option<Self> {
        let format =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        let local = time::PrimitiveDateTime::parse(s, &format).ok()?;
        let secs = local.assume_utc().unix_timestamp() - BEIJING_OFFSET_SECS;
        u64::try_from(secs).ok().map(|s| UnixMillis(s * 1000))
    }

    /// How long ago `self` was, seen from `now` (zero if `self` is in the future).
    pub fn age_at(self, now: UnixMillis) -> std::time::Duration {
        std::time::Duration::from_millis(now.0.saturating_sub(self.0))
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a refund is in its life. The wire names are the ones WeChat uses for the states it owns
/// (`PROCESSING`, `SUCCESS`, `REFUNDCLOSE`, `CHANGE`) and SCREAMING_SNAKE for ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    /// Written to the ledger, amount reserved, WeChat not called yet.
    Recorded,
    /// A caller holds the lease and is (or was) calling WeChat.
    Submitting,
    /// WeChat accepted the refund; it ends by query or notification.
    Processing,
    /// We don't know whether WeChat took the refund (timeout, 5xx, bad signature): query first.
    Unknown,
    /// WeChat said "not now" (SYSTEMERROR, BIZERR_NEED_RETRY, FREQUENCY_LIMITED, NOTENOUGH).
    RetryWait,
    Success,
    /// WeChat closed the refund: nothing was paid, so the amount is released.
    #[serde(rename = "REFUNDCLOSE")]
    RefundClose,
    /// The refund to a void/frozen card failed at the bank: a person must handle it in the merchant
    /// platform. Money may still leave, so the amount stays reserved.
    Change,
    /// WeChat refused the request for good (PARAM_ERROR, ORDERNOTEXIST, TRADE_OVERDUE, ...).
    Failed,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 9] = [
        RefundStatus::Recorded,
        RefundStatus::Submitting,
        RefundStatus::Processing,
        RefundStatus::Unknown,
        RefundStatus::RetryWait,
        RefundStatus::Success,
        RefundStatus::RefundClose,
        RefundStatus::Change,
        RefundStatus::Failed,
    ];

    /// The wire name (same as serde's).
    pub const fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Recorded => "RECORDED",
            RefundStatus::Submitting => "SUBMITTING",
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Unknown => "UNKNOWN",
            RefundStatus::RetryWait => "RETRY_WAIT",
            RefundStatus::Success => "SUCCESS",
            RefundStatus::RefundClose => "REFUNDCLOSE",
            RefundStatus::Change => "CHANGE",
            RefundStatus::Failed => "FAILED",
        }
    }

    /// The machine will not move this refund again. CHANGE counts as final: the poller can do
    /// nothing for it (a person must act), so it must not sit in the pending index forever.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            RefundStatus::Success
                | RefundStatus::RefundClose
                | RefundStatus::Change
                | RefundStatus::Failed
        )
    }

    /// A status WeChat itself reports for a refund it holds (query, notification, bill): the
    /// refund exists at WeChat. Entering one of these is when the ledger learns WeChat accepted it.
    pub const fn reported_by_wechat(self) -> bool {
        matches!(
            self,
            RefundStatus::Processing
                | RefundStatus::Success
                | RefundStatus::RefundClose
                | RefundStatus::Change
        )
    }

    /// Final, but a person must look at it (CHANGE).
    pub const fn needs_person(self) -> bool {
        matches!(self, RefundStatus::Change)
    }

    /// Entering this status gives the refund's amount back to the order: no money left and none
    /// will. SUCCESS keeps it (paid) and so does CHANGE (it may still be paid out by hand).
    pub const fn releases_reservation(self) -> bool {
        matches!(self, RefundStatus::Failed | RefundStatus::RefundClose)
    }

    /// Entering this status also gives back the refund's slot among the order's 50. Only FAILED:
    /// WeChat refused the apply, so it holds no refund record there. A REFUNDCLOSE refund exists at
    /// WeChat and (we assume, conservatively) still counts toward its 50.
    pub const fn releases_slot(self) -> bool {
        matches!(self, RefundStatus::Failed)
    }

    /// `acquire_lease` may move a refund in this status to SUBMITTING (SUBMITTING itself only when
    /// its lease has expired: a takeover).
    pub const fn is_leasable(self) -> bool {
        matches!(
            self,
            RefundStatus::Recorded | RefundStatus::RetryWait | RefundStatus::Unknown
        )
    }

    /// The transition table. It follows the DESIGN diagram, with these judgements:
    /// - RECORDED only goes to SUBMITTING: nothing is known about it until someone calls WeChat.
    /// - RETRY_WAIT and UNKNOWN may jump straight to what a refund query finds (PROCESSING or a
    ///   final state), and back to SUBMITTING (re-submit, same number).
    /// - RETRY_WAIT→FAILED: a re-check turned a transient error definitive; UNKNOWN→FAILED likewise.
    /// - UNKNOWN→RETRY_WAIT: the query said REFUNDNOTEXIST but re-submitting must wait (pacing).
    /// - Self-moves PROCESSING→PROCESSING, UNKNOWN→UNKNOWN and RETRY_WAIT→RETRY_WAIT only
    ///   reschedule the next check (the query found nothing new, or itself failed).
    /// - PROCESSING never goes back to SUBMITTING or to FAILED: WeChat owns the refund now and
    ///   ends it as SUCCESS, REFUNDCLOSE or CHANGE.
    /// - Final states go nowhere, CHANGE included: when WeChat's signed books later report another
    ///   status for a final refund (a CHANGE a person resolved, or a contradiction), the ledger
    ///   takes it through the correction transition (`crate::correction`), not through this table.
    pub const fn can_move_to(self, next: RefundStatus) -> bool {
        use RefundStatus::*;
        match self {
            Recorded => matches!(next, Submitting),
            Submitting => matches!(
                next,
                Processing | Unknown | RetryWait | Failed | Success | RefundClose | Change
            ),
            RetryWait => matches!(
                next,
                RetryWait | Submitting | Failed | Processing | Success | RefundClose | Change
            ),
            Unknown => matches!(
                next,
                Unknown
                    | Submitting
                    | Processing
                    | Success
                    | RefundClose
                    | Change
                    | RetryWait
                    | Failed
            ),
            Processing => matches!(next, Processing | Success | RefundClose | Change),
            Success | RefundClose | Change | Failed => false,
        }
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown refund status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for RefundStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RefundStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.chars().take(32).collect()))
    }
}

/// The last error seen for a refund (WeChat's `err_code` / `err_code_des`, or ours for transport).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastError {
    pub code: String,
    pub message: String,
}

/// Who is calling WeChat for a refund, and until when. Longer than the WeChat timeout, so an expired
/// lease means the holder is gone (or so slow its writes will be fenced off by the version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub expires_at: UnixMillis,
}

/// One refund as the ledger stores it. `out_refund_no` is the idempotency key and never changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub out_refund_no: OutRefundNo,
    pub order: OrderRef,
    pub out_trade_no: Option<OutTradeNo>,
    pub transaction_id: Option<TransactionId>,
    pub refund_id: Option<RefundId>,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub refund_desc: Option<String>,
    pub refund_account: Option<String>,
    pub status: RefundStatus,
    /// How many times a lease was taken to submit it (each one may call WeChat once).
    pub attempts: u32,
    pub last_error: Option<LastError>,
    pub refund_recv_account: Option<String>,
    pub success_time: Option<String>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// Hash of the canonical request fields: same number + other hash = a reused key.
    pub request_hash: String,
    /// Bumped by every write; writes are conditional on it (fencing).
    pub version: u64,
    pub lease: Option<Lease>,
    /// When the poller should look at it next; `None` once final.
    pub next_check_at: Option<UnixMillis>,
    /// A refund WeChat told us about that was not made through our API.
    pub external: bool,
    /// Set when a person must look beyond what the status says (a contradiction with WeChat).
    #[serde(default)]
    pub attention: Option<Attention>,
    /// Every correction of a final status to WeChat's, oldest first (see `crate::correction`).
    #[serde(default)]
    pub corrections: Vec<Correction>,
    /// When the ledger learnt that WeChat holds the refund: its first move into a status WeChat
    /// reports, or for an external refund found in a bill the bill's apply time. Its Beijing date
    /// says which day's refund bill must list it (`crate::reconcile`). `None` until then.
    #[serde(default)]
    pub accepted_at: Option<UnixMillis>,
    /// The merchant's own data from the request (empty when none was given).
    #[serde(default)]
    pub metadata: crate::metadata::Metadata,
    /// Events written with the facts that produced them and not yet taken by a publisher
    /// (`crate::events`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<crate::events::OutboxEvent>,
}

impl RefundRecord {
    /// A person must act: the bank refused it (CHANGE), or the ledger contradicted WeChat.
    pub fn needs_person(&self) -> bool {
        self.status.needs_person() || self.attention.is_some()
    }

    /// The refund is due for the poller at `now` (non-final and its next check has come; a
    /// SUBMITTING refund's next check is its lease expiry, so an abandoned attempt is due too).
    pub fn is_due(&self, now: UnixMillis) -> bool {
        !self.status.is_final() && self.next_check_at.is_some_and(|t| t <= now)
    }

    /// Where the refund sits in the poller's index: its next check while not final, or sooner
    /// (final or not) when an event waits for delivery. `None`: the poller has nothing to do.
    pub fn due_at(&self) -> Option<UnixMillis> {
        let check = self.next_check_at.filter(|_| !self.status.is_final());
        let redeliver = self.outbox.iter().map(|e| e.redeliver_at).min();
        match (check, redeliver) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Per order: its total, what non-released refunds reserve of it, and how many of the 50 slots are
/// taken. `refunds` lists every refund number ever recorded for the order (failed ones included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBook {
    pub order: OrderRef,
    pub total_fee: Fen,
    pub reserved: Fen,
    /// Refunds that hold or may hold a refund record at WeChat: all but FAILED ones.
    pub count: u32,
    pub refunds: Vec<OutRefundNo>,
}

impl OrderBook {
    /// What is still refundable.
    pub fn available(&self) -> Fen {
        self.total_fee.saturating_sub(self.reserved)
    }

    /// No refund reserves anything or takes a slot (all earlier ones FAILED).
    pub fn holds_nothing(&self) -> bool {
        self.reserved == Fen::ZERO && self.count == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::RefundStatus::*;
    use super::*;

    /// The transition table as the design states it (the doc comment of `can_move_to` and
    /// DESIGN-NOTES), written out cell by cell: `x` = allowed, `.` = refused. Rows are the current
    /// status, columns the target, both in `RefundStatus::ALL` order.
    const MOVES: [(RefundStatus, &str); 9] = [
        //             REC SUB PRO UNK RTW SUC RCL CHG FAI
        (Recorded, /*   */ ".   x   .   .   .   .   .   .   ."),
        (Submitting, /* */ ".   .   x   x   x   x   x   x   x"),
        (Processing, /* */ ".   .   x   .   .   x   x   x   ."),
        (Unknown, /*    */ ".   x   x   x   x   x   x   x   x"),
        (RetryWait, /*  */ ".   x   x   .   x   x   x   x   x"),
        (Success, /*    */ ".   .   .   .   .   .   .   .   ."),
        (RefundClose, /**/ ".   .   .   .   .   .   .   .   ."),
        (Change, /*     */ ".   .   .   .   .   .   .   .   ."),
        (Failed, /*     */ ".   .   .   .   .   .   .   .   ."),
    ];

    /// The expected answer of `from.can_move_to(to)`, read from [`MOVES`] (never from the code).
    pub(crate) fn allowed(from: RefundStatus, to: RefundStatus) -> bool {
        let (_, row) = MOVES.iter().find(|(f, _)| *f == from).unwrap();
        let cells: Vec<char> = row.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(cells.len(), 9, "row {from} of MOVES");
        let col = RefundStatus::ALL.iter().position(|s| *s == to).unwrap();
        match cells[col] {
            'x' => true,
            '.' => false,
            other => panic!("bad cell {other:?} in row {from} of MOVES"),
        }
    }

    #[test]
    fn transition_matrix_every_cell() {
        // GIVEN the 81 cells of the expected table WHEN each move is asked THEN the answer is the cell
        let mut allowed_moves = 0;
        for from in RefundStatus::ALL {
            for to in RefundStatus::ALL {
                let want = allowed(from, to);
                assert_eq!(from.can_move_to(to), want, "{from} -> {to}");
                allowed_moves += usize::from(want);
            }
        }
        assert_eq!(allowed_moves, 27, "the table itself has 27 arrows");
    }

    #[test]
    fn every_status_predicate_for_every_status() {
        // GIVEN every status with its expected wire name and flags
        //   (final, needs a person, releases the amount, releases the slot, leasable)
        // THEN each predicate answers exactly that
        let table: [(RefundStatus, &str, bool, bool, bool, bool, bool); 9] = [
            (Recorded, "RECORDED", false, false, false, false, true),
            (Submitting, "SUBMITTING", false, false, false, false, false),
            (Processing, "PROCESSING", false, false, false, false, false),
            (Unknown, "UNKNOWN", false, false, false, false, true),
            (RetryWait, "RETRY_WAIT", false, false, false, false, true),
            (Success, "SUCCESS", true, false, false, false, false),
            (RefundClose, "REFUNDCLOSE", true, false, true, false, false),
            (Change, "CHANGE", true, true, false, false, false),
            (Failed, "FAILED", true, false, true, true, false),
        ];
        assert_eq!(table.map(|row| row.0), RefundStatus::ALL);
        for (st, wire, fin, person, amount, slot, leasable) in table {
            assert_eq!(st.as_str(), wire);
            assert_eq!(st.to_string(), wire, "Display of {wire}");
            assert_eq!(st.is_final(), fin, "is_final({wire})");
            assert_eq!(st.needs_person(), person, "needs_person({wire})");
            assert_eq!(
                st.releases_reservation(),
                amount,
                "releases_reservation({wire})"
            );
            assert_eq!(st.releases_slot(), slot, "releases_slot({wire})");
            assert_eq!(st.is_leasable(), leasable, "is_leasable({wire})");
        }
    }

    #[test]
    fn only_wechats_own_statuses_are_reported_by_wechat() {
        // GIVEN every status with whether WeChat itself reports it (query, notification, bill)
        // THEN exactly WeChat's four are: entering one is when the ledger learns WeChat holds it
        for (st, wechat) in [
            (Recorded, false),
            (Submitting, false),
            (Processing, true),
            (Unknown, false),
            (RetryWait, false),
            (Success, true),
            (RefundClose, true),
            (Change, true),
            (Failed, false),
        ] {
            assert_eq!(st.reported_by_wechat(), wechat, "reported_by_wechat({st})");
        }
    }

    #[test]
    fn wire_names_round_trip_through_serde_and_from_str() {
        // GIVEN every status WHEN serialised THEN the wire name matches as_str and parses back
        for st in RefundStatus::ALL {
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            assert_eq!(serde_json::from_str::<RefundStatus>(&json).unwrap(), st);
            assert_eq!(st.as_str().parse::<RefundStatus>().unwrap(), st);
        }
    }

    #[test]
    fn unknown_status_names_are_refused_and_truncated() {
        // GIVEN near-miss and overlong names WHEN parsed THEN refused, the echo capped at 32 chars
        assert_eq!(
            "REFUND_CLOSE".parse::<RefundStatus>(),
            Err(UnknownStatus("REFUND_CLOSE".into()))
        );
        assert!("success".parse::<RefundStatus>().is_err());
        assert!("".parse::<RefundStatus>().is_err());
        let long = "X".repeat(100);
        assert_eq!(
            long.parse::<RefundStatus>(),
            Err(UnknownStatus("X".repeat(32)))
        );
        assert_eq!(
            UnknownStatus("NOPE".into()).to_string(),
            "unknown refund status \"NOPE\""
        );
    }

    #[test]
    fn every_non_final_state_can_reach_a_final_one() {
        // GIVEN the expected table WHEN walking it THEN a final state is reachable from every
        // non-final state (no refund can get stuck by construction)
        for start in RefundStatus::ALL.into_iter().filter(|s| !s.is_final()) {
            let mut seen = vec![start];
            let mut i = 0;
            while i < seen.len() {
                for to in RefundStatus::ALL {
                    if allowed(seen[i], to) && !seen.contains(&to) {
                        seen.push(to);
                    }
                }
                i += 1;
            }
            assert!(seen.iter().any(|s| s.is_final()), "{start} is a dead end");
        }
    }

    fn record(status: RefundStatus, next_check_at: Option<UnixMillis>) -> RefundRecord {
        RefundRecord {
            out_refund_no: OutRefundNo::new("R1").unwrap(),
            order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
            out_trade_no: None,
            transaction_id: None,
            refund_id: None,
            total_fee: Fen::new(100).unwrap(),
            refund_fee: Fen::new(10).unwrap(),
            refund_desc: None,
            refund_account: None,
            status,
            attempts: 0,
            last_error: None,
            refund_recv_account: None,
            success_time: None,
            created_at: UnixMillis(1),
            updated_at: UnixMillis(1),
            request_hash: "h".into(),
            version: 1,
            lease: None,
            next_check_at,
            external: false,
            attention: None,
            corrections: vec![],
            accepted_at: None,
            metadata: Default::default(),
            outbox: Vec::new(),
        }
    }

    #[test]
    fn is_due_for_every_status_at_the_boundary() {
        // GIVEN a next check at t=1000, one per status, expected due-ness when the check has come
        let now = UnixMillis(1_000);
        for (st, due) in [
            (Recorded, true),
            (Submitting, true),
            (Processing, true),
            (Unknown, true),
            (RetryWait, true),
            (Success, false),
            (RefundClose, false),
            (Change, false),
            (Failed, false),
        ] {
            // WHEN the check is exactly now or earlier THEN due iff non-final
            assert_eq!(record(st, Some(now)).is_due(now), due, "{st} at its check");
            assert_eq!(
                record(st, Some(UnixMillis(999))).is_due(now),
                due,
                "{st} late"
            );
            // WHEN the check is 1 ms ahead, or there is none THEN never due
            assert!(
                !record(st, Some(UnixMillis(1_001))).is_due(now),
                "{st} early"
            );
            assert!(!record(st, None).is_due(now), "{st} without a check");
        }
    }

    #[test]
    fn time_helpers_saturate_and_print_as_integers() {
        // GIVEN a time WHEN adding a huge duration or aging into the past THEN nothing wraps
        let t = UnixMillis(1_000);
        assert_eq!(t.get(), 1_000);
        assert_eq!(t.plus(std::time::Duration::from_secs(2)), UnixMillis(3_000));
        assert_eq!(t.plus(std::time::Duration::MAX), UnixMillis(u64::MAX));
        assert_eq!(
            UnixMillis(u64::MAX - 1).plus(std::time::Duration::from_millis(5)),
            UnixMillis(u64::MAX)
        );
        assert_eq!(UnixMillis(5_000).age_at(t), std::time::Duration::ZERO);
        assert_eq!(t.age_at(UnixMillis(4_000)).as_millis(), 3_000);
        assert_eq!(t.to_string(), "1000");
        // THEN the wall clock is after 2023 and moves forward
        let a = UnixMillis::now();
        assert!(a.get() > 1_700_000_000_000);
        assert!(UnixMillis::now() >= a);
    }

    #[test]
    fn the_beijing_date_turns_at_16_00_utc() {
        // GIVEN instants around midnight in Beijing (16:00 UTC the day before)
        let midnight_bj = 1_764_604_800_000; // 2025-12-01T16:00:00Z = 2025-12-02 00:00 Beijing
        assert_eq!(UnixMillis(midnight_bj - 1).beijing_date(), "2025-12-01");
        assert_eq!(UnixMillis(midnight_bj).beijing_date(), "2025-12-02");
        assert_eq!(UnixMillis(0).beijing_date(), "1970-01-01");
        // AND a leap day
        assert_eq!(UnixMillis(1_709_164_800_000).beijing_date(), "2024-02-29");
        // AND WeChat's wall-clock times read back as the same instants
        assert_eq!(
            UnixMillis::from_beijing_time("2025-12-02 00:00:00"),
            Some(UnixMillis(midnight_bj))
        );
        assert_eq!(
            UnixMillis::from_beijing_time("2025-12-01 23:59:59"),
            Some(UnixMillis(midnight_bj - 1000))
        );
        for bad in [
            "2025-12-01",
            "2025-13-01 00:00:00",
            "2025-12-01T00:00:00",
            "",
        ] {
            assert_eq!(UnixMillis::from_beijing_time(bad), None, "{bad}");
        }
    }

    fn book(total: u64, reserved: u64, count: u32) -> OrderBook {
        OrderBook {
            order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
            total_fee: Fen::new(total).unwrap(),
            reserved: Fen::new(reserved).unwrap(),
            count,
            refunds: vec![],
        }
    }

    #[test]
    fn order_book_available_is_total_minus_reserved_never_negative() {
        // GIVEN (total, reserved, expected available)
        for (total, reserved, available) in [(100, 30, 70), (100, 0, 100), (100, 100, 0), (5, 9, 0)]
        {
            // THEN available is what is left, floored at zero
            assert_eq!(
                book(total, reserved, 1).available(),
                Fen::new(available).unwrap(),
                "{total} - {reserved}"
            );
        }
    }

    #[test]
    fn order_book_holds_nothing_only_with_no_amount_and_no_slot() {
        // GIVEN (reserved, count, expected) WHEN asked THEN only 0 and 0 holds nothing
        // (a REFUNDCLOSE refund keeps its slot with no amount; a CHANGE one keeps both)
        for (reserved, count, nothing) in
            [(0, 0, true), (0, 1, false), (10, 0, false), (10, 1, false)]
        {
            assert_eq!(
                book(100, reserved, count).holds_nothing(),
                nothing,
                "reserved {reserved}, count {count}"
            );
        }
    }

    #[test]
    fn a_record_needs_a_person_for_change_or_a_flag() {
        use crate::correction::{Attention, AttentionReason};
        for status in RefundStatus::ALL {
            let mut r = record(status, None);
            // GIVEN no flag THEN only CHANGE needs a person
            assert_eq!(r.needs_person(), status == Change, "{status}");
            // GIVEN a flag THEN every status does
            for reason in [AttentionReason::Contradiction, AttentionReason::Stuck] {
                r.attention = Some(Attention {
                    reason,
                    since: UnixMillis(1),
                });
                assert!(r.needs_person(), "{status} {reason:?}");
            }
        }
    }
}
