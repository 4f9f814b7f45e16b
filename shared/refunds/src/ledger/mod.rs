//! The `Ledger` port: where refunds and order reservations live, the source of truth of every
//! refund. Two adapters: [`dynamo::DynamoLedger`] (production) and [`embedded::EmbeddedLedger`]
//! (local stack, redb). Both pass one contract suite (`tests/ledger_contract.rs`).
//!
//! Business conflicts (replays, reused keys, over-refunds, stale writers) are typed outcomes;
//! [`LedgerError`] is for infrastructure failures only. Nothing is ever deleted.
//!
//! The pure rules both adapters apply inside their transactions live here, so the two cannot drift.

pub mod admin;
pub mod dynamo;
pub mod embedded;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, RefundId, TransactionId};

use crate::correction::{Attention, AttentionReason, Correction, CorrectionKind, FactSource};
use crate::state::{
    LastError, Lease, MAX_REFUNDS_PER_ORDER, OrderBook, RefundRecord, RefundStatus, UnixMillis,
};

/// A refund the service wants to record before calling WeChat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRefund {
    pub out_refund_no: OutRefundNo,
    pub order: OrderRef,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub refund_desc: Option<String>,
    pub refund_account: Option<String>,
    /// Hash of the canonical request fields (computed by the service).
    pub request_hash: String,
    pub now: UnixMillis,
    /// When the poller should pick it up if the recorder dies before taking the lease.
    pub next_check_at: UnixMillis,
}

/// What `record` did. Every refusal carries what the caller needs to answer the merchant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Recorded now (status RECORDED, version 1), amount reserved.
    Created(RefundRecord),
    /// Same number, same request hash: the stored record (a replay).
    Existing(RefundRecord),
    /// Same number, different request: the caller must get `idempotency_key_reused`.
    KeyReused(RefundRecord),
    /// `reserved + refund_fee > total_fee`. In the refusals' books, `refunds` lists only the
    /// refunds holding a slot (the released ones are kept apart; [`Ledger::order`] lists all).
    AmountExceeded { book: OrderBook },
    /// The order already has [`MAX_REFUNDS_PER_ORDER`] refunds.
    TooManyRefunds { book: OrderBook },
    /// The order's stored `total_fee` differs from this request's.
    TotalFeeMismatch { book: OrderBook },
}

/// What `acquire_lease` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Now SUBMITTING with our lease; attempts and version bumped.
    Acquired(RefundRecord),
    /// Someone (maybe us, earlier) holds an unexpired lease.
    Held(RefundRecord),
    /// The status does not allow submitting (PROCESSING, final, ...).
    NotLeasable(RefundRecord),
    NotFound,
}

/// A three-way field change: keep, set or clear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Patch<T> {
    #[default]
    Keep,
    Set(T),
    Clear,
}

/// Field changes that ride along with a status change. `None`/`Keep` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub refund_id: Option<RefundId>,
    pub transaction_id: Option<TransactionId>,
    pub out_trade_no: Option<OutTradeNo>,
    pub last_error: Patch<LastError>,
    pub refund_recv_account: Option<String>,
    pub success_time: Option<String>,
    /// Next poll for a non-final target; ignored (cleared) when the target is final. Left `None`
    /// for a non-final target, the previous next check stays.
    pub next_check_at: Option<UnixMillis>,
}

/// A fenced status change: applied only if the refund is still at `expected_status` and
/// `expected_version` (and, when leaving SUBMITTING, still leased by `lease_owner`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub out_refund_no: OutRefundNo,
    pub expected_status: RefundStatus,
    pub expected_version: u64,
    pub lease_owner: Option<String>,
    pub to: RefundStatus,
    pub changes: Changes,
    pub now: UnixMillis,
}

/// What `transition` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransitionOutcome {
    Applied(RefundRecord),
    /// The refund moved on (other status, version or lease owner): here it is as it is now.
    Conflict(RefundRecord),
    NotFound,
    /// The move itself is not allowed: not in the transition table, into SUBMITTING (that is
    /// `acquire_lease`'s job), or leaving SUBMITTING without naming the lease owner. Nothing was
    /// read or written.
    Illegal {
        from: RefundStatus,
        to: RefundStatus,
    },
}

/// A refund WeChat told us about (notification or query) that we never recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalRefund {
    pub out_refund_no: OutRefundNo,
    pub order: OrderRef,
    pub out_trade_no: Option<OutTradeNo>,
    pub transaction_id: Option<TransactionId>,
    pub refund_id: Option<RefundId>,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    /// PROCESSING, SUCCESS, REFUNDCLOSE or CHANGE: the statuses WeChat reports.
    pub status: RefundStatus,
    pub refund_account: Option<String>,
    pub refund_recv_account: Option<String>,
    pub success_time: Option<String>,
    pub now: UnixMillis,
    /// Next poll if `status` is PROCESSING (defaults to `now`).
    pub next_check_at: Option<UnixMillis>,
}

/// What `record_external` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExternalOutcome {
    Created(RefundRecord),
    /// The number is already in the ledger (ours or an earlier external record): untouched.
    Existing(RefundRecord),
    /// Not a status WeChat reports; nothing written.
    InvalidStatus(RefundStatus),
}

/// An opaque position in the pending index; a string so it can travel in JSON or an event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(String);

impl Cursor {
    pub fn new(s: impl Into<String>) -> Self {
        Cursor(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of due refunds; `next` is `None` after the last page. A page may hold fewer than
/// `limit` items, and the page after a full one may be empty (DynamoDB cannot tell that nothing
/// follows without reading on): keep paging until `next` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<RefundRecord>,
    pub next: Option<Cursor>,
}

/// Infrastructure failures. Business conflicts are outcomes, never these.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// The store could not be reached or refused the request (network, throttling, 5xx, I/O).
    #[error("ledger store unavailable: {0}")]
    Unavailable(String),
    /// A stored item does not parse or breaks an invariant.
    #[error("ledger item {key} is corrupt: {problem}")]
    Corrupt { key: String, problem: String },
    /// Concurrent transactions kept colliding after our retries.
    #[error("ledger contention on {0}: gave up after retries")]
    Contention(String),
    /// A cursor that this adapter did not produce.
    #[error("invalid pending cursor: {0}")]
    BadCursor(String),
    /// Configuration (e.g. a missing `LEDGER_TABLE`).
    #[error("ledger configuration: {0}")]
    Config(String),
}

/// The ledger port. Object-safe, so the service holds an `Arc<dyn Ledger>`.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Records a new refund together with its order reservation, atomically.
    async fn record(&self, new: NewRefund) -> Result<RecordOutcome, LedgerError>;

    /// The refund as stored now (strongly consistent).
    async fn get(&self, no: &OutRefundNo) -> Result<Option<RefundRecord>, LedgerError>;

    /// Moves a refund to SUBMITTING under a lease held by `owner` until `now + ttl`.
    async fn acquire_lease(
        &self,
        no: &OutRefundNo,
        owner: &str,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<LeaseOutcome, LedgerError>;

    /// A fenced status change (see [`Transition`]); releases the order reservation in the same
    /// transaction when the target status releases it.
    async fn transition(&self, t: Transition) -> Result<TransitionOutcome, LedgerError>;

    /// Non-final refunds whose next check is at or before `now`, one page at a time, most overdue
    /// first across the whole index (by next check, then by number: both adapters serve the same
    /// order), so a poll that stops at its budget has served the longest-waiting refunds.
    async fn due(
        &self,
        now: UnixMillis,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError>;

    /// The order's book (strongly consistent). Its `refunds` lists every number ever recorded
    /// for the order, FAILED ones included: first the ones still holding a slot, then the
    /// released ones. (The book a refusal of `record` carries lists only the former.)
    async fn order(&self, order: &OrderRef) -> Result<Option<OrderBook>, LedgerError>;

    /// Every refund recorded for the order, FAILED ones included, oldest first.
    async fn list_by_order(&self, order: &OrderRef) -> Result<Vec<RefundRecord>, LedgerError>;

    /// Records a refund made outside our API as the fact it is: its amount is reserved without
    /// conditions (WeChat already took it). Idempotent by `out_refund_no`.
    async fn record_external(&self, ext: ExternalRefund) -> Result<ExternalOutcome, LedgerError>;

    /// Corrects a final refund to the status a signed WeChat fact reports (see
    /// [`crate::correction`]), fenced on status and version, with the history kept and the order's
    /// book changed as the fact requires, in one transaction. `Illegal` when the record is not
    /// final or already says WeChat's status.
    async fn correct(&self, c: CorrectionWrite) -> Result<TransitionOutcome, LedgerError>;
}

/// A correction of a final refund to WeChat's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrectionWrite {
    pub out_refund_no: OutRefundNo,
    pub expected_status: RefundStatus,
    pub expected_version: u64,
    pub to: RefundStatus,
    /// WeChat's fields for the refund (ids, account, success time) and, when `to` is not final,
    /// its next check.
    pub changes: Changes,
    pub source: FactSource,
    pub now: UnixMillis,
}

impl CorrectionWrite {
    fn as_transition(&self) -> Transition {
        Transition {
            out_refund_no: self.out_refund_no.clone(),
            expected_status: self.expected_status,
            expected_version: self.expected_version,
            lease_owner: None,
            to: self.to,
            changes: self.changes.clone(),
            now: self.now,
        }
    }
}

/// The record after a (fenced) correction, or `None` when it is no correction.
pub(crate) fn corrected(rec: &RefundRecord, c: &CorrectionWrite) -> Option<RefundRecord> {
    let kind = crate::correction::kind(rec.status, c.to)?;
    let mut next = apply_transition(rec, &c.as_transition());
    if !c.to.is_final() {
        next.next_check_at = Some(c.changes.next_check_at.unwrap_or(c.now));
    }
    next.corrections.push(Correction {
        from: rec.status,
        to: c.to,
        kind,
        source: c.source,
        at: c.now,
    });
    if kind == CorrectionKind::Contradiction && next.attention.is_none() {
        next.attention = Some(Attention {
            reason: AttentionReason::Contradiction,
            since: c.now,
        });
    }
    Some(next)
}

/// The order's book after a correction of `rec` to `to`: facts, so no limit applies.
pub(crate) fn corrected_book(book: &OrderBook, rec: &RefundRecord, to: RefundStatus) -> OrderBook {
    let change = crate::correction::book_change(rec.status, to, rec.refund_fee);
    let mut b = book.clone();
    let fee = rec.refund_fee;
    b.reserved = match change.reserved.signum() {
        1 => b.reserved.checked_add(fee).unwrap_or(b.reserved),
        -1 => b.reserved.saturating_sub(fee),
        _ => b.reserved,
    };
    b.count = match change.count.signum() {
        1 => b.count.saturating_add(1),
        -1 => b.count.saturating_sub(1),
        _ => b.count,
    };
    b
}

// ---- rules shared by the adapters --------------------------------------------------------------

/// The record `record` writes.
pub(crate) fn new_record(n: &NewRefund) -> RefundRecord {
    let (out_trade_no, transaction_id) = order_ids(&n.order);
    RefundRecord {
        out_refund_no: n.out_refund_no.clone(),
        order: n.order.clone(),
        out_trade_no,
        transaction_id,
        refund_id: None,
        total_fee: n.total_fee,
        refund_fee: n.refund_fee,
        refund_desc: n.refund_desc.clone(),
        refund_account: n.refund_account.clone(),
        status: RefundStatus::Recorded,
        attempts: 0,
        last_error: None,
        refund_recv_account: None,
        success_time: None,
        created_at: n.now,
        updated_at: n.now,
        request_hash: n.request_hash.clone(),
        version: 1,
        lease: None,
        next_check_at: Some(n.next_check_at),
        external: false,
        attention: None,
        corrections: Vec::new(),
    }
}

/// The record `record_external` writes (`None` for a status WeChat never reports).
pub(crate) fn external_record(e: &ExternalRefund) -> Option<RefundRecord> {
    use RefundStatus::*;
    if !matches!(e.status, Processing | Success | RefundClose | Change) {
        return None;
    }
    let (ot, tx) = order_ids(&e.order);
    Some(RefundRecord {
        out_refund_no: e.out_refund_no.clone(),
        order: e.order.clone(),
        out_trade_no: e.out_trade_no.clone().or(ot),
        transaction_id: e.transaction_id.clone().or(tx),
        refund_id: e.refund_id.clone(),
        total_fee: e.total_fee,
        refund_fee: e.refund_fee,
        refund_desc: None,
        refund_account: e.refund_account.clone(),
        status: e.status,
        attempts: 0,
        last_error: None,
        refund_recv_account: e.refund_recv_account.clone(),
        success_time: e.success_time.clone(),
        created_at: e.now,
        updated_at: e.now,
        // No request of ours produced it; a merchant reusing the number gets KeyReused.
        request_hash: EXTERNAL_REQUEST_HASH.to_owned(),
        version: 1,
        lease: None,
        next_check_at: (!e.status.is_final()).then(|| e.next_check_at.unwrap_or(e.now)),
        external: true,
        attention: None,
        corrections: Vec::new(),
    })
}

/// The request hash stored on external refunds.
pub const EXTERNAL_REQUEST_HASH: &str = "external";

fn order_ids(order: &OrderRef) -> (Option<OutTradeNo>, Option<TransactionId>) {
    match order {
        OrderRef::OutTradeNo(n) => (Some(n.clone()), None),
        OrderRef::TransactionId(t) => (None, Some(t.clone())),
    }
}

/// Why an existing order refuses a new refund, in the order the merchant should hear it:
/// a wrong total first (the request is wrong), then the 50 cap, then the amount.
///
/// An order that holds nothing (every earlier refund FAILED) takes the new request's total: the
/// first request's total may have been the wrong one WeChat refused, and must not lock the order.
pub(crate) fn refusal(book: &OrderBook, n: &NewRefund) -> Option<RecordOutcome> {
    if book.total_fee != n.total_fee && !book.holds_nothing() {
        return Some(RecordOutcome::TotalFeeMismatch { book: book.clone() });
    }
    if book.count >= MAX_REFUNDS_PER_ORDER {
        return Some(RecordOutcome::TooManyRefunds { book: book.clone() });
    }
    let fits = book
        .reserved
        .checked_add(n.refund_fee)
        .is_some_and(|sum| sum <= n.total_fee);
    if !fits {
        return Some(RecordOutcome::AmountExceeded { book: book.clone() });
    }
    None
}

/// A refund that is not in the ledger yet and cannot fit even an empty order.
pub(crate) fn fresh_book(n: &NewRefund) -> OrderBook {
    OrderBook {
        order: n.order.clone(),
        total_fee: n.total_fee,
        reserved: Fen::ZERO,
        count: 0,
        refunds: Vec::new(),
    }
}

/// Replay or reuse of an existing number.
pub(crate) fn existing_outcome(rec: RefundRecord, request_hash: &str) -> RecordOutcome {
    if rec.request_hash == request_hash {
        RecordOutcome::Existing(rec)
    } else {
        RecordOutcome::KeyReused(rec)
    }
}

/// What `acquire_lease` decides for a stored record.
#[derive(Debug)]
pub(crate) enum LeaseDecision {
    /// Take the lease: the record to write.
    Take(RefundRecord),
    Refuse(LeaseOutcome),
}

/// What `acquire_lease` decides for a stored record.
pub(crate) fn lease_decision(
    rec: &RefundRecord,
    owner: &str,
    ttl: Duration,
    now: UnixMillis,
) -> LeaseDecision {
    let expired_takeover = rec.status == RefundStatus::Submitting
        && rec.lease.as_ref().is_none_or(|l| l.expires_at <= now);
    if rec.status == RefundStatus::Submitting && !expired_takeover {
        return LeaseDecision::Refuse(LeaseOutcome::Held(rec.clone()));
    }
    if !rec.status.is_leasable() && !expired_takeover {
        return LeaseDecision::Refuse(LeaseOutcome::NotLeasable(rec.clone()));
    }
    let expires_at = now.plus(ttl);
    let mut next = rec.clone();
    next.status = RefundStatus::Submitting;
    next.lease = Some(Lease {
        owner: owner.to_owned(),
        expires_at,
    });
    next.attempts = rec.attempts.saturating_add(1);
    next.version = rec.version + 1;
    next.updated_at = now;
    // An abandoned attempt becomes due when its lease runs out: the poller needs no second index.
    next.next_check_at = Some(expires_at);
    LeaseDecision::Take(next)
}

/// Checks a transition that needs no stored state.
pub(crate) fn illegal(t: &Transition) -> Option<TransitionOutcome> {
    let bad = !t.expected_status.can_move_to(t.to)
        || t.to == RefundStatus::Submitting
        || (t.expected_status == RefundStatus::Submitting && t.lease_owner.is_none());
    bad.then_some(TransitionOutcome::Illegal {
        from: t.expected_status,
        to: t.to,
    })
}

/// The stored record is the one the transition was computed against (fencing).
pub(crate) fn fence_holds(rec: &RefundRecord, t: &Transition) -> bool {
    rec.status == t.expected_status
        && rec.version == t.expected_version
        && (t.expected_status != RefundStatus::Submitting
            || rec.lease.as_ref().map(|l| l.owner.as_str()) == t.lease_owner.as_deref())
}

/// The record after a (fenced, legal) transition.
pub(crate) fn apply_transition(rec: &RefundRecord, t: &Transition) -> RefundRecord {
    let mut next = rec.clone();
    let c = &t.changes;
    next.status = t.to;
    next.version = rec.version + 1;
    next.updated_at = t.now;
    if let Some(v) = &c.refund_id {
        next.refund_id = Some(v.clone());
    }
    if let Some(v) = &c.transaction_id {
        next.transaction_id = Some(v.clone());
    }
    if let Some(v) = &c.out_trade_no {
        next.out_trade_no = Some(v.clone());
    }
    match &c.last_error {
        Patch::Keep => {}
        Patch::Set(e) => next.last_error = Some(e.clone()),
        Patch::Clear => next.last_error = None,
    }
    if let Some(v) = &c.refund_recv_account {
        next.refund_recv_account = Some(v.clone());
    }
    if let Some(v) = &c.success_time {
        next.success_time = Some(v.clone());
    }
    if t.expected_status == RefundStatus::Submitting {
        next.lease = None;
    }
    if t.to.is_final() {
        next.next_check_at = None;
    } else if let Some(at) = c.next_check_at {
        next.next_check_at = Some(at);
    }
    next
}

/// The order book after a refund enters `to` (only called when `to` releases). A refund that gives
/// back its slot (FAILED) also leaves the book's own list: the adapters keep released numbers
/// apart from the order (bounded pages, see [`dynamo`] and [`embedded`]), so the order's own list
/// holds at most the refunds holding a slot, however many attempts failed.
pub(crate) fn released(book: &OrderBook, rec: &RefundRecord, to: RefundStatus) -> OrderBook {
    let mut b = book.clone();
    b.reserved = b.reserved.saturating_sub(rec.refund_fee);
    if to.releases_slot() {
        b.count = b.count.saturating_sub(1);
        b.refunds.retain(|no| no != &rec.out_refund_no);
    }
    b
}

/// The whole book as [`Ledger::order`] answers it: the order's own list (the refunds holding a
/// slot) followed by the released (FAILED) numbers kept apart, each number once (a book written
/// before the numbers were kept apart may still list failed ones itself).
pub(crate) fn with_released(
    mut book: OrderBook,
    released: impl IntoIterator<Item = OutRefundNo>,
) -> OrderBook {
    let mut seen: std::collections::HashSet<OutRefundNo> = book.refunds.iter().cloned().collect();
    for no in released {
        if seen.insert(no.clone()) {
            book.refunds.push(no);
        }
    }
    book
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no(s: &str) -> OutRefundNo {
        OutRefundNo::new(s).unwrap()
    }

    fn take(d: LeaseDecision) -> RefundRecord {
        match d {
            LeaseDecision::Take(r) => r,
            LeaseDecision::Refuse(o) => panic!("expected the lease, got {o:?}"),
        }
    }

    fn new_refund(total: u64, fee: u64) -> NewRefund {
        NewRefund {
            out_refund_no: no("R1"),
            order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
            total_fee: Fen::new(total).unwrap(),
            refund_fee: Fen::new(fee).unwrap(),
            refund_desc: None,
            refund_account: None,
            request_hash: "h".into(),
            now: UnixMillis(1_000),
            next_check_at: UnixMillis(61_000),
        }
    }

    #[test]
    fn refusal_order_is_total_then_count_then_amount() {
        // GIVEN a full order with a different total WHEN checked THEN the total mismatch wins
        let n = new_refund(100, 10);
        let mut book = fresh_book(&n);
        book.count = MAX_REFUNDS_PER_ORDER;
        book.reserved = Fen::new(95).unwrap();
        book.total_fee = Fen::new(99).unwrap();
        assert!(matches!(
            refusal(&book, &n),
            Some(RecordOutcome::TotalFeeMismatch { .. })
        ));
        book.total_fee = Fen::new(100).unwrap();
        assert!(matches!(
            refusal(&book, &n),
            Some(RecordOutcome::TooManyRefunds { .. })
        ));
        book.count = 3;
        assert!(matches!(
            refusal(&book, &n),
            Some(RecordOutcome::AmountExceeded { .. })
        ));
        book.reserved = Fen::new(90).unwrap();
        assert_eq!(refusal(&book, &n), None, "exactly the total fits");
    }

    #[test]
    fn lease_rules() {
        // GIVEN a recorded refund WHEN leased THEN it is SUBMITTING, due at lease expiry
        let rec = new_record(&new_refund(100, 10));
        let now = UnixMillis(2_000);
        let leased = take(lease_decision(&rec, "a", Duration::from_secs(30), now));
        assert_eq!(leased.status, RefundStatus::Submitting);
        assert_eq!(leased.attempts, 1);
        assert_eq!(leased.version, 2);
        assert_eq!(leased.next_check_at, Some(UnixMillis(32_000)));
        // WHEN another owner tries before expiry THEN held; after expiry THEN taken over
        assert!(matches!(
            lease_decision(&leased, "b", Duration::from_secs(30), UnixMillis(31_999)),
            LeaseDecision::Refuse(LeaseOutcome::Held(_))
        ));
        let taken = take(lease_decision(
            &leased,
            "b",
            Duration::from_secs(30),
            UnixMillis(32_000),
        ));
        assert_eq!(taken.lease.unwrap().owner, "b");
        assert_eq!(taken.attempts, 2);
    }

    #[test]
    fn transition_clears_lease_and_pending_when_final() {
        // GIVEN a leased refund WHEN it goes to SUCCESS THEN lease and next check are gone
        let rec = new_record(&new_refund(100, 10));
        let leased = take(lease_decision(
            &rec,
            "a",
            Duration::from_secs(30),
            UnixMillis(2),
        ));
        let t = Transition {
            out_refund_no: no("R1"),
            expected_status: RefundStatus::Submitting,
            expected_version: 2,
            lease_owner: Some("a".into()),
            to: RefundStatus::Success,
            changes: Changes {
                last_error: Patch::Set(LastError {
                    code: "X".into(),
                    message: "y".into(),
                }),
                ..Changes::default()
            },
            now: UnixMillis(3),
        };
        assert_eq!(illegal(&t), None);
        assert!(fence_holds(&leased, &t));
        let done = apply_transition(&leased, &t);
        assert_eq!(done.lease, None);
        assert_eq!(done.next_check_at, None);
        assert_eq!(done.version, 3);
        assert_eq!(done.last_error.map(|e| e.code), Some("X".into()));
        // WHEN the lease owner is someone else THEN the fence fails
        let other = Transition {
            lease_owner: Some("b".into()),
            ..t.clone()
        };
        assert!(!fence_holds(&leased, &other));
        // WHEN leaving SUBMITTING without an owner THEN the move is illegal before any I/O
        let anonymous = Transition {
            lease_owner: None,
            ..t
        };
        assert!(matches!(
            illegal(&anonymous),
            Some(TransitionOutcome::Illegal { .. })
        ));
    }

    #[test]
    fn external_record_rules() {
        // GIVEN a WeChat-reported PROCESSING refund THEN it is pending and external
        let e = ExternalRefund {
            out_refund_no: no("EXT1"),
            order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
            out_trade_no: None,
            transaction_id: None,
            refund_id: None,
            total_fee: Fen::new(100).unwrap(),
            refund_fee: Fen::new(10).unwrap(),
            status: RefundStatus::Processing,
            refund_account: None,
            refund_recv_account: None,
            success_time: None,
            now: UnixMillis(5),
            next_check_at: None,
        };
        let rec = external_record(&e).unwrap();
        assert!(rec.external);
        assert_eq!(rec.next_check_at, Some(UnixMillis(5)));
        // WHEN the status is one of ours THEN it is refused
        let bad = ExternalRefund {
            status: RefundStatus::Submitting,
            ..e
        };
        assert_eq!(external_record(&bad), None);
    }
}
