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
use crate::events::OutboxEvent;
use crate::metadata::Metadata;
use crate::reconcile::Reconciliation;
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
    pub metadata: Metadata,
    /// Hash of the canonical request fields (computed by the service).
    pub request_hash: String,
    pub now: UnixMillis,
    /// When the poller should pick it up if the recorder dies before taking the lease.
    pub next_check_at: UnixMillis,
    /// The recorder's lease, taken in the same write (`leased_by`): the refund is SUBMITTING from
    /// its first write, and its first attempt needs no write of its own. `None`: RECORDED.
    pub lease: Option<Lease>,
}

impl NewRefund {
    /// The same refund, recorded already leased by `owner` until `expires_at`.
    pub fn leased_by(mut self, owner: &str, expires_at: UnixMillis) -> Self {
        self.lease = Some(Lease {
            owner: owner.to_owned(),
            expires_at,
        });
        self
    }
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
    /// Flag the refund for a person (escalation) or clear a flag the machine may clear.
    pub attention: Patch<Attention>,
    /// Events the move produces (`crate::events::of_change`), appended to the refund's outbox
    /// in the same write.
    pub events: Vec<OutboxEvent>,
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
    /// When WeChat accepted it, when the source says (a bill's apply time); `None` otherwise.
    pub accepted_at: Option<UnixMillis>,
    /// The events recording it produces, written into its outbox.
    pub events: Vec<OutboxEvent>,
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
    /// conditions (WeChat already took it), and its `total_fee` (WeChat's, from a signed reply)
    /// becomes the order's. Idempotent by `out_refund_no`.
    async fn record_external(&self, ext: ExternalRefund) -> Result<ExternalOutcome, LedgerError>;

    /// Corrects a final refund to the status a signed WeChat fact reports (see
    /// [`crate::correction`]), fenced on status and version, with the history kept and the order's
    /// book changed as the fact requires, in one transaction. `Illegal` when the record is not
    /// final or already says WeChat's status.
    async fn correct(&self, c: CorrectionWrite) -> Result<TransitionOutcome, LedgerError>;

    /// Flags a refund for a person without moving it (see [`FlagWrite`]): `Applied` with the
    /// flagged record, or with the record as stored when it already carries a grave flag (nothing
    /// written); `Conflict` when its version moved on.
    async fn flag(&self, f: FlagWrite) -> Result<TransitionOutcome, LedgerError>;

    /// Refunds WeChat accepted on the Beijing day `day` (`YYYY-MM-DD`, by `accepted_at`), by
    /// `out_refund_no`, one page of at most `limit` (≤ 1000) at a time; `next` is `None` after
    /// the last page.
    async fn accepted_on(
        &self,
        day: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError>;

    /// Stores the reconciliation report of its bill date, replacing an earlier one.
    async fn save_reconciliation(&self, report: &Reconciliation) -> Result<(), LedgerError>;

    /// The stored reconciliation report of a bill date (`YYYY-MM-DD`).
    async fn reconciliation(&self, day: &str) -> Result<Option<Reconciliation>, LedgerError>;

    /// Refunds that need a person (CHANGE, or flagged: a contradiction or an escalation), by
    /// `out_refund_no`, one page of at most `limit` (≤ 100) at a time; `next` is `None` after the
    /// last page.
    async fn needing_person(
        &self,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError>;

    /// Takes the events `ids` out of the refund's outbox once a publisher accepted them (ids no
    /// longer there are ignored) and puts the refund back at its next check in the poller's
    /// index, or out of it. Not fenced on the version and not bumping it: a delivery is no fact
    /// about the refund and must never fence out one. `None` when the refund does not exist.
    async fn mark_delivered(
        &self,
        no: &OutRefundNo,
        ids: &[String],
    ) -> Result<Option<RefundRecord>, LedgerError>;
}

/// The record once the events `ids` are delivered, or `None` when none of them is in its outbox
/// (nothing to write).
pub(crate) fn delivered(rec: &RefundRecord, ids: &[String]) -> Option<RefundRecord> {
    if !rec.outbox.iter().any(|e| ids.iter().any(|id| id == e.id())) {
        return None;
    }
    let mut next = rec.clone();
    next.outbox.retain(|e| !ids.iter().any(|id| id == e.id()));
    Some(next)
}

/// A flag for a person on a refund whatever its status, fenced on its version: a disagreement
/// with WeChat's books that no status says (see [`AttentionReason::Mismatch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagWrite {
    pub out_refund_no: OutRefundNo,
    pub expected_version: u64,
    pub reason: AttentionReason,
    pub now: UnixMillis,
    /// The events the flag produces, appended to the outbox with it.
    pub events: Vec<OutboxEvent>,
}

/// The record after a flag, or `None` when it already carries a flag as grave (the first one and
/// its time are kept, so re-running what raised it writes nothing). Only a `stuck` flag gives way.
pub(crate) fn flagged(rec: &RefundRecord, f: &FlagWrite) -> Option<RefundRecord> {
    if rec.attention.as_ref().is_some_and(|a| a.reason.is_grave()) {
        return None;
    }
    let mut next = rec.clone();
    next.attention = Some(Attention {
        reason: f.reason,
        since: f.now,
    });
    next.version = rec.version + 1;
    next.updated_at = f.now;
    next.outbox.extend(f.events.iter().cloned());
    Some(next)
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
    let mut next = transitioned(rec, &c.as_transition());
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
    // A contradiction's flag outranks a stuck one (which the machine may clear); the first
    // contradiction's time is kept.
    let contradicted = next
        .attention
        .as_ref()
        .is_some_and(|a| a.reason == AttentionReason::Contradiction);
    if kind == CorrectionKind::Contradiction && !contradicted {
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
    // Recorded with its lease: SUBMITTING at once, the first attempt counted, and due for the
    // poller when the lease runs out (an abandoned first attempt is taken over like any other).
    let (status, attempts, next_check_at) = match &n.lease {
        Some(l) => (RefundStatus::Submitting, 1, l.expires_at),
        None => (RefundStatus::Recorded, 0, n.next_check_at),
    };
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
        status,
        attempts,
        last_error: None,
        refund_recv_account: None,
        success_time: None,
        created_at: n.now,
        updated_at: n.now,
        request_hash: n.request_hash.clone(),
        version: 1,
        lease: n.lease.clone(),
        next_check_at: Some(next_check_at),
        external: false,
        attention: None,
        corrections: Vec::new(),
        accepted_at: None,
        metadata: n.metadata.clone(),
        outbox: Vec::new(),
    }
}

/// The record `record_external` writes (`None` for a status WeChat never reports).
pub(crate) fn external_record(e: &ExternalRefund) -> Option<RefundRecord> {
    if !e.status.reported_by_wechat() {
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
        accepted_at: e.accepted_at,
        metadata: Default::default(),
        outbox: e.events.clone(),
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

/// The book of an order the ledger does not hold yet, as this request would open it (used to answer
/// a refusal when no order item exists).
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
pub(crate) fn transitioned(rec: &RefundRecord, t: &Transition) -> RefundRecord {
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
    match &c.attention {
        Patch::Keep => {}
        Patch::Set(a) => next.attention = Some(a.clone()),
        Patch::Clear => next.attention = None,
    }
    if t.expected_status == RefundStatus::Submitting {
        next.lease = None;
    }
    // The first time the ledger sees WeChat holding the refund; later moves keep it.
    if t.to.reported_by_wechat() && next.accepted_at.is_none() {
        next.accepted_at = Some(t.now);
    }
    if t.to.is_final() {
        next.next_check_at = None;
    } else if let Some(at) = c.next_check_at {
        next.next_check_at = Some(at);
    }
    next.outbox.extend(c.events.iter().cloned());
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
    use crate::state::tests::allowed;
    use RefundStatus::*;

    fn no(s: &str) -> OutRefundNo {
        OutRefundNo::new(s).unwrap()
    }

    fn fen(n: u64) -> Fen {
        Fen::new(n).unwrap()
    }

    fn trade(s: &str) -> OutTradeNo {
        OutTradeNo::new(s).unwrap()
    }

    fn tx(s: &str) -> TransactionId {
        TransactionId::new(s).unwrap()
    }

    fn err(code: &str) -> LastError {
        LastError {
            code: code.into(),
            message: format!("{code} message"),
        }
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
            order: OrderRef::OutTradeNo(trade("ORDER-1")),
            total_fee: fen(total),
            refund_fee: fen(fee),
            refund_desc: Some("broken".into()),
            refund_account: Some("REFUND_SOURCE_RECHARGE_FUNDS".into()),
            request_hash: "h".into(),
            now: UnixMillis(1_000),
            next_check_at: UnixMillis(61_000),
            metadata: Default::default(),
            lease: None,
        }
    }

    /// A record with every field set to something distinguishable, in `status`.
    fn stored(status: RefundStatus) -> RefundRecord {
        RefundRecord {
            out_refund_no: no("R1"),
            order: OrderRef::OutTradeNo(trade("ORDER-1")),
            out_trade_no: Some(trade("ORDER-1")),
            transaction_id: None,
            refund_id: None,
            total_fee: fen(100),
            refund_fee: fen(10),
            refund_desc: Some("broken".into()),
            refund_account: None,
            status,
            attempts: 3,
            last_error: Some(err("OLD")),
            refund_recv_account: None,
            success_time: None,
            created_at: UnixMillis(1_000),
            updated_at: UnixMillis(2_000),
            request_hash: "h".into(),
            version: 7,
            lease: (status == Submitting).then(|| Lease {
                owner: "a".into(),
                expires_at: UnixMillis(90_000),
            }),
            next_check_at: Some(UnixMillis(90_000)),
            external: false,
            attention: None,
            corrections: vec![],
            accepted_at: None,
            metadata: Default::default(),
            outbox: Vec::new(),
        }
    }

    fn transition(from: RefundStatus, to: RefundStatus, changes: Changes) -> Transition {
        Transition {
            out_refund_no: no("R1"),
            expected_status: from,
            expected_version: 7,
            lease_owner: (from == Submitting).then(|| "a".to_owned()),
            to,
            changes,
            now: UnixMillis(5_000),
        }
    }

    // ---- record -------------------------------------------------------------------------------

    #[test]
    fn new_record_writes_every_field_from_the_request() {
        // GIVEN a request naming the order by out_trade_no WHEN recorded THEN this exact record
        let n = new_refund(100, 10);
        assert_eq!(
            new_record(&n),
            RefundRecord {
                out_refund_no: no("R1"),
                order: OrderRef::OutTradeNo(trade("ORDER-1")),
                out_trade_no: Some(trade("ORDER-1")),
                transaction_id: None,
                refund_id: None,
                total_fee: fen(100),
                refund_fee: fen(10),
                refund_desc: Some("broken".into()),
                refund_account: Some("REFUND_SOURCE_RECHARGE_FUNDS".into()),
                status: Recorded,
                attempts: 0,
                last_error: None,
                refund_recv_account: None,
                success_time: None,
                created_at: UnixMillis(1_000),
                updated_at: UnixMillis(1_000),
                request_hash: "h".into(),
                version: 1,
                lease: None,
                next_check_at: Some(UnixMillis(61_000)),
                external: false,
                attention: None,
                corrections: vec![],
                accepted_at: None,
                metadata: Default::default(),
                outbox: Vec::new(),
            }
        );
        // GIVEN the order named by transaction_id THEN that is the id the record carries
        let by_tx = NewRefund {
            order: OrderRef::TransactionId(tx("4200000001")),
            ..n
        };
        let rec = new_record(&by_tx);
        assert_eq!(rec.out_trade_no, None);
        assert_eq!(rec.transaction_id, Some(tx("4200000001")));
    }

    #[test]
    fn a_refund_recorded_with_its_lease_is_submitting_its_first_attempt_counted() {
        // GIVEN a request recorded with the recorder's lease until 31 s
        let n = new_refund(100, 10).leased_by("me", UnixMillis(31_000));
        let rec = new_record(&n);
        // THEN it is SUBMITTING under that lease, attempt 1, due when the lease runs out, and
        // otherwise the record a RECORDED one would be
        assert_eq!(rec.status, Submitting);
        assert_eq!(rec.attempts, 1);
        assert_eq!(
            rec.lease,
            Some(Lease {
                owner: "me".into(),
                expires_at: UnixMillis(31_000)
            })
        );
        assert_eq!(rec.next_check_at, Some(UnixMillis(31_000)));
        assert_eq!(rec.version, 1);
        let plain = new_record(&new_refund(100, 10));
        assert_eq!(
            RefundRecord {
                status: Recorded,
                attempts: 0,
                lease: None,
                next_check_at: plain.next_check_at,
                ..rec.clone()
            },
            plain
        );
        // AND the fence of its first move is its lease and version 1
        let t = transition(Submitting, Processing, Changes::default());
        assert!(fence_holds(
            &rec,
            &Transition {
                expected_version: 1,
                lease_owner: Some("me".into()),
                ..t.clone()
            }
        ));
        assert!(!fence_holds(
            &rec,
            &Transition {
                expected_version: 1,
                lease_owner: Some("other".into()),
                ..t
            }
        ));
    }

    #[test]
    fn fresh_book_is_empty_with_the_request_total() {
        // GIVEN an order never seen WHEN its book is made THEN nothing reserved, no slot taken
        assert_eq!(
            fresh_book(&new_refund(100, 10)),
            OrderBook {
                order: OrderRef::OutTradeNo(trade("ORDER-1")),
                total_fee: fen(100),
                reserved: Fen::ZERO,
                count: 0,
                refunds: vec![],
            }
        );
    }

    #[derive(Debug, PartialEq)]
    enum Refusal {
        Accept,
        Mismatch,
        TooMany,
        Exceeded,
    }

    #[test]
    fn refusal_for_every_order_rule() {
        use Refusal::*;
        let max = wxpay::money::MAX_FEN;
        // GIVEN (book total, reserved, count, request total, refund fee) and the expected answer
        for (book_total, reserved, count, total, fee, want) in [
            // amounts: exactly the total fits, one fen more does not
            (100, 0, 0, 100, 100, Accept),
            (100, 90, 3, 100, 10, Accept),
            (100, 90, 3, 100, 11, Exceeded),
            (max, max, 3, max, 1, Exceeded), // the sum leaves the Fen range
            // the 50 cap: the 50th fits, the 51st does not
            (100, 0, 49, 100, 1, Accept),
            (100, 0, 50, 100, 1, TooMany),
            (100, 0, 51, 100, 1, TooMany),
            // another total: refused while anything is held...
            (100, 10, 1, 99, 1, Mismatch),
            (100, 0, 1, 99, 1, Mismatch), // a REFUNDCLOSE refund keeps its slot
            (100, 10, 0, 99, 1, Mismatch), // an amount without a slot
            // ...but an order whose refunds all FAILED takes the new total, amounts checked on it
            (100, 0, 0, 99, 99, Accept),
            (100, 0, 0, 200, 150, Accept),
            (200, 0, 0, 100, 150, Exceeded),
            // order of the answers: total, then cap, then amount
            (99, 95, 50, 100, 10, Mismatch),
            (100, 95, 50, 100, 10, TooMany),
        ] {
            let n = new_refund(total, fee);
            let book = OrderBook {
                total_fee: fen(book_total),
                reserved: fen(reserved),
                count,
                ..fresh_book(&n)
            };
            let got = refusal(&book, &n);
            let case = format!("book {book_total}/{reserved}/{count}, request {total}/{fee}");
            // THEN the answer is the expected one and carries the book as it is
            let kind = match &got {
                None => Accept,
                Some(RecordOutcome::TotalFeeMismatch { book: b }) => {
                    assert_eq!(b, &book, "{case}");
                    Mismatch
                }
                Some(RecordOutcome::TooManyRefunds { book: b }) => {
                    assert_eq!(b, &book, "{case}");
                    TooMany
                }
                Some(RecordOutcome::AmountExceeded { book: b }) => {
                    assert_eq!(b, &book, "{case}");
                    Exceeded
                }
                Some(other) => panic!("{case}: {other:?}"),
            };
            assert_eq!(kind, want, "{case}");
        }
    }

    #[test]
    fn same_hash_is_a_replay_another_hash_a_reused_key() {
        // GIVEN a stored record with hash "h"
        let rec = new_record(&new_refund(100, 10));
        // WHEN the same number comes with the same hash THEN the stored record, as a replay
        assert_eq!(
            existing_outcome(rec.clone(), "h"),
            RecordOutcome::Existing(rec.clone())
        );
        // WHEN it comes with another hash (or hits an external record) THEN a reused key
        assert_eq!(
            existing_outcome(rec.clone(), "h2"),
            RecordOutcome::KeyReused(rec.clone())
        );
        let ext = RefundRecord {
            request_hash: EXTERNAL_REQUEST_HASH.into(),
            ..rec
        };
        assert_eq!(
            existing_outcome(ext.clone(), "h"),
            RecordOutcome::KeyReused(ext)
        );
        assert_eq!(EXTERNAL_REQUEST_HASH, "external");
    }

    // ---- lease --------------------------------------------------------------------------------

    #[derive(Debug, PartialEq)]
    enum LeaseAnswer {
        Take,
        Held,
        NotLeasable,
    }

    fn lease_answer(d: &LeaseDecision) -> LeaseAnswer {
        match d {
            LeaseDecision::Take(_) => LeaseAnswer::Take,
            LeaseDecision::Refuse(LeaseOutcome::Held(_)) => LeaseAnswer::Held,
            LeaseDecision::Refuse(LeaseOutcome::NotLeasable(_)) => LeaseAnswer::NotLeasable,
            LeaseDecision::Refuse(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn lease_decision_for_every_status() {
        // GIVEN a refund in each status, SUBMITTING under a lease until t=90000, asked at t=5000
        let now = UnixMillis(5_000);
        let ttl = Duration::from_secs(30);
        for (st, want) in [
            (Recorded, LeaseAnswer::Take),
            (Submitting, LeaseAnswer::Held),
            (Processing, LeaseAnswer::NotLeasable),
            (Unknown, LeaseAnswer::Take),
            (RetryWait, LeaseAnswer::Take),
            (Success, LeaseAnswer::NotLeasable),
            (RefundClose, LeaseAnswer::NotLeasable),
            (Change, LeaseAnswer::NotLeasable),
            (Failed, LeaseAnswer::NotLeasable),
        ] {
            let rec = stored(st);
            // THEN the decision is the expected one; a refusal carries the record untouched
            let d = lease_decision(&rec, "b", ttl, now);
            assert_eq!(lease_answer(&d), want, "{st}");
            if let LeaseDecision::Refuse(LeaseOutcome::Held(r) | LeaseOutcome::NotLeasable(r)) = d {
                assert_eq!(r, rec, "{st}");
            }
        }
    }

    #[test]
    fn a_submitting_lease_is_held_until_it_expires_even_for_its_owner() {
        // GIVEN a SUBMITTING refund leased by "a" until t=90000
        let rec = stored(Submitting);
        let ttl = Duration::from_secs(30);
        for (owner, at, want) in [
            ("b", 89_999, LeaseAnswer::Held),
            ("a", 89_999, LeaseAnswer::Held),
            ("b", 90_000, LeaseAnswer::Take),
            ("a", 90_001, LeaseAnswer::Take),
        ] {
            // WHEN asked by `owner` at `at` THEN held before expiry, taken from expiry on
            let d = lease_decision(&rec, owner, ttl, UnixMillis(at));
            assert_eq!(lease_answer(&d), want, "{owner} at {at}");
        }
        // GIVEN SUBMITTING without any lease (a broken write) THEN it can be taken
        let orphan = RefundRecord { lease: None, ..rec };
        let d = lease_decision(&orphan, "b", ttl, UnixMillis(0));
        assert_eq!(lease_answer(&d), LeaseAnswer::Take);
    }

    #[test]
    fn taking_a_lease_writes_owner_expiry_attempt_version_and_next_check() {
        // GIVEN a RETRY_WAIT refund (3 attempts, version 7) WHEN leased at 5000 for 30 s
        let rec = stored(RetryWait);
        let leased = take(lease_decision(
            &rec,
            "b",
            Duration::from_secs(30),
            UnixMillis(5_000),
        ));
        // THEN exactly these fields change
        let want = RefundRecord {
            status: Submitting,
            lease: Some(Lease {
                owner: "b".into(),
                expires_at: UnixMillis(35_000),
            }),
            attempts: 4,
            version: 8,
            updated_at: UnixMillis(5_000),
            next_check_at: Some(UnixMillis(35_000)),
            ..stored(RetryWait)
        };
        assert_eq!(leased, want);
        // GIVEN an expired SUBMITTING lease WHEN taken over THEN the new owner, one more attempt
        let over = take(lease_decision(
            &stored(Submitting),
            "c",
            Duration::from_secs(1),
            UnixMillis(90_000),
        ));
        assert_eq!(
            over.lease,
            Some(Lease {
                owner: "c".into(),
                expires_at: UnixMillis(91_000),
            })
        );
        assert_eq!((over.attempts, over.version), (4, 8));
        // GIVEN a counter at its maximum THEN it saturates instead of wrapping
        let worn = RefundRecord {
            attempts: u32::MAX,
            ..stored(Unknown)
        };
        let d = lease_decision(&worn, "b", Duration::ZERO, UnixMillis(0));
        assert_eq!(take(d).attempts, u32::MAX);
    }

    // ---- transition ---------------------------------------------------------------------------

    #[test]
    fn illegal_for_every_move_with_and_without_a_lease_owner() {
        // GIVEN every (from, to) pair, with and without a lease owner
        for from in RefundStatus::ALL {
            for to in RefundStatus::ALL {
                for owner in [Some("a".to_owned()), None] {
                    let t = Transition {
                        lease_owner: owner.clone(),
                        ..transition(from, to, Changes::default())
                    };
                    // THEN legal only for an arrow of the table, never into SUBMITTING (that is
                    // acquire_lease's), and out of SUBMITTING only naming the lease owner
                    let legal = allowed(from, to)
                        && to != Submitting
                        && !(from == Submitting && owner.is_none());
                    let want = (!legal).then_some(TransitionOutcome::Illegal { from, to });
                    assert_eq!(illegal(&t), want, "{from} -> {to}, owner {owner:?}");
                }
            }
        }
        // and spelled out for the cases the formula above could hide
        let t = |from, to, owner: Option<&str>| Transition {
            lease_owner: owner.map(str::to_owned),
            ..transition(from, to, Changes::default())
        };
        assert_eq!(illegal(&t(Submitting, Processing, Some("a"))), None);
        assert_eq!(illegal(&t(Unknown, Success, None)), None);
        assert!(illegal(&t(Submitting, Processing, None)).is_some());
        assert!(illegal(&t(RetryWait, Submitting, Some("a"))).is_some());
        assert!(illegal(&t(Recorded, Submitting, None)).is_some());
        assert!(illegal(&t(Processing, Failed, None)).is_some());
    }

    #[test]
    fn the_fence_needs_status_version_and_for_submitting_the_lease_owner() {
        let t = |from, version, owner: Option<&str>| Transition {
            expected_version: version,
            lease_owner: owner.map(str::to_owned),
            ..transition(from, Success, Changes::default())
        };
        // GIVEN a record at (status, version 7, lease "a" if SUBMITTING) and what the writer expected
        for (rec, tr, holds) in [
            (stored(Unknown), t(Unknown, 7, None), true),
            (stored(Unknown), t(Processing, 7, None), false), // another status
            (stored(Unknown), t(Unknown, 6, None), false),    // an older version
            (stored(Unknown), t(Unknown, 8, None), false),    // a newer version
            (stored(Unknown), t(Unknown, 7, Some("z")), true), // owner ignored off SUBMITTING
            (stored(Submitting), t(Submitting, 7, Some("a")), true),
            (stored(Submitting), t(Submitting, 7, Some("b")), false), // another owner
            (stored(Submitting), t(Submitting, 7, None), false),
            (stored(Submitting), t(Submitting, 6, Some("a")), false),
            (
                RefundRecord {
                    lease: None,
                    ..stored(Submitting)
                },
                t(Submitting, 7, Some("a")),
                false,
            ),
        ] {
            // THEN the fence holds only when all of it matches
            assert_eq!(fence_holds(&rec, &tr), holds, "{rec:?} vs {tr:?}");
        }
    }

    fn every_change() -> Changes {
        Changes {
            refund_id: Some(RefundId::new("50000000382019052709732678859").unwrap()),
            transaction_id: Some(tx("4200000002")),
            out_trade_no: Some(trade("ORDER-2")),
            last_error: Patch::Set(err("NEW")),
            refund_recv_account: Some("支付用户零钱".into()),
            success_time: Some("2026-01-02 03:04:05".into()),
            next_check_at: Some(UnixMillis(77_000)),
            attention: Patch::Set(Attention {
                reason: AttentionReason::Stuck,
                since: UnixMillis(6_000),
            }),
            events: Vec::new(),
        }
    }

    #[test]
    fn every_allowed_move_writes_every_changed_field() {
        // GIVEN every arrow of the table except into SUBMITTING, with every field changed
        for from in RefundStatus::ALL {
            for to in RefundStatus::ALL {
                if !allowed(from, to) || to == Submitting {
                    continue;
                }
                let next = transitioned(&stored(from), &transition(from, to, every_change()));
                // THEN the record carries each change, one version up, stamped now; the lease ends
                // when leaving SUBMITTING; a final target leaves the pending index
                let want = RefundRecord {
                    status: to,
                    version: 8,
                    updated_at: UnixMillis(5_000),
                    refund_id: Some(RefundId::new("50000000382019052709732678859").unwrap()),
                    transaction_id: Some(tx("4200000002")),
                    out_trade_no: Some(trade("ORDER-2")),
                    last_error: Some(err("NEW")),
                    refund_recv_account: Some("支付用户零钱".into()),
                    success_time: Some("2026-01-02 03:04:05".into()),
                    lease: None,
                    next_check_at: (!matches!(to, Success | RefundClose | Change | Failed))
                        .then_some(UnixMillis(77_000)),
                    attention: Some(Attention {
                        reason: AttentionReason::Stuck,
                        since: UnixMillis(6_000),
                    }),
                    // the first move into a status WeChat reports is when it was accepted
                    accepted_at: to.reported_by_wechat().then_some(UnixMillis(5_000)),
                    ..stored(from)
                };
                assert_eq!(next, want, "{from} -> {to}");
                // AND a refund accepted earlier keeps that time
                let earlier = RefundRecord {
                    accepted_at: Some(UnixMillis(2_000)),
                    ..stored(from)
                };
                let again = transitioned(&earlier, &transition(from, to, every_change()));
                assert_eq!(again.accepted_at, Some(UnixMillis(2_000)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn a_move_without_changes_keeps_every_field() {
        // GIVEN a record with all optional fields set WHEN moved with no changes
        let full = RefundRecord {
            refund_id: Some(RefundId::new("5000").unwrap()),
            transaction_id: Some(tx("4200000001")),
            refund_recv_account: Some("招商银行信用卡0403".into()),
            success_time: Some("2026-01-01 00:00:00".into()),
            ..stored(Unknown)
        };
        let next = transitioned(&full, &transition(Unknown, Processing, Changes::default()));
        // THEN only status, version and updated_at move, and WeChat is known to hold it from now
        assert_eq!(
            next,
            RefundRecord {
                status: Processing,
                version: 8,
                updated_at: UnixMillis(5_000),
                accepted_at: Some(UnixMillis(5_000)),
                ..full
            }
        );
    }

    #[test]
    fn last_error_is_kept_set_or_cleared() {
        // GIVEN a record whose last error is OLD
        for (patch, want) in [
            (Patch::Keep, Some(err("OLD"))),
            (Patch::Set(err("NEW")), Some(err("NEW"))),
            (Patch::Clear, None),
        ] {
            let changes = Changes {
                last_error: patch.clone(),
                ..Changes::default()
            };
            // WHEN moved with the patch THEN the last error is as patched
            let next = transitioned(&stored(Unknown), &transition(Unknown, Unknown, changes));
            assert_eq!(next.last_error, want, "{patch:?}");
        }
    }

    #[test]
    fn next_check_is_rescheduled_kept_or_dropped() {
        // GIVEN a record due at 90000 (target, requested next check, expected next check)
        for (to, asked, want) in [
            (Unknown, Some(77_000), Some(77_000)), // rescheduled
            (Unknown, None, Some(90_000)),         // kept
            (Processing, Some(77_000), Some(77_000)),
            (RetryWait, None, Some(90_000)),
            (Success, Some(77_000), None), // final: out of the pending index regardless
            (RefundClose, None, None),
            (Change, Some(77_000), None),
            (Failed, None, None),
        ] {
            let changes = Changes {
                next_check_at: asked.map(UnixMillis),
                ..Changes::default()
            };
            let next = transitioned(&stored(Unknown), &transition(Unknown, to, changes));
            assert_eq!(next.next_check_at, want.map(UnixMillis), "{to}, {asked:?}");
        }
    }

    #[test]
    fn only_leaving_submitting_ends_the_lease() {
        // GIVEN a SUBMITTING refund under a lease WHEN it moves on THEN the lease is gone
        let next = transitioned(
            &stored(Submitting),
            &transition(Submitting, Unknown, Changes::default()),
        );
        assert_eq!(next.lease, None);
        // GIVEN a (stale) lease on a PROCESSING refund WHEN it moves THEN the field is left alone
        let lease = Some(Lease {
            owner: "a".into(),
            expires_at: UnixMillis(1),
        });
        let odd = RefundRecord {
            lease: lease.clone(),
            ..stored(Processing)
        };
        let next = transitioned(&odd, &transition(Processing, Success, Changes::default()));
        assert_eq!(next.lease, lease);
    }

    #[test]
    fn every_releasing_move_gives_back_the_amount_and_only_failed_the_slot() {
        // GIVEN an order of 100 with 30 reserved over 3 refunds, one of them of 10
        let book = OrderBook {
            reserved: fen(30),
            count: 3,
            ..fresh_book(&new_refund(100, 10))
        };
        // (target, reserved after, count after): FAILED gives back both, REFUNDCLOSE keeps its slot
        let expected = [(Failed, 20, 2), (RefundClose, 20, 3)];
        let mut moves = 0;
        for from in RefundStatus::ALL {
            for (to, reserved, count) in expected {
                if !allowed(from, to) {
                    continue;
                }
                // WHEN the refund enters a releasing status THEN the book is this
                let after = released(&book, &stored(from), to);
                let want = OrderBook {
                    reserved: fen(reserved),
                    count,
                    ..book.clone()
                };
                assert_eq!(after, want, "{from} -> {to}");
                moves += 1;
            }
        }
        // (SUBMITTING, UNKNOWN, RETRY_WAIT → both; PROCESSING → REFUNDCLOSE only)
        assert_eq!(moves, 7);
        // GIVEN a book that somehow holds less WHEN released THEN it floors at zero
        let thin = OrderBook {
            reserved: fen(4),
            count: 0,
            ..book
        };
        let after = released(&thin, &stored(Unknown), Failed);
        assert_eq!((after.reserved, after.count), (Fen::ZERO, 0));
    }

    // ---- external refunds ---------------------------------------------------------------------

    fn external(status: RefundStatus) -> ExternalRefund {
        ExternalRefund {
            out_refund_no: no("EXT1"),
            order: OrderRef::OutTradeNo(trade("ORDER-1")),
            out_trade_no: None,
            transaction_id: None,
            refund_id: Some(RefundId::new("5000").unwrap()),
            total_fee: fen(100),
            refund_fee: fen(10),
            status,
            refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
            refund_recv_account: Some("支付用户零钱".into()),
            success_time: Some("2026-01-02 03:04:05".into()),
            now: UnixMillis(5),
            next_check_at: None,
            accepted_at: Some(UnixMillis(4)),
            events: Vec::new(),
        }
    }

    #[test]
    fn external_record_accepts_only_the_statuses_wechat_reports() {
        // GIVEN an external refund in each status (accepted?, next check when accepted)
        for (st, accepted, next_check) in [
            (Recorded, false, None),
            (Submitting, false, None),
            (Processing, true, Some(UnixMillis(5))),
            (Unknown, false, None),
            (RetryWait, false, None),
            (Success, true, None),
            (RefundClose, true, None),
            (Change, true, None),
            (Failed, false, None),
        ] {
            // THEN WeChat's statuses are recorded as they are; ours are refused
            let got = external_record(&external(st));
            assert_eq!(got.is_some(), accepted, "{st}");
            if let Some(rec) = got {
                assert_eq!(rec.status, st);
                assert_eq!(rec.next_check_at, next_check, "{st}");
            }
        }
    }

    #[test]
    fn external_record_writes_every_field() {
        // GIVEN a PROCESSING refund WeChat reported with its next check WHEN recorded
        let e = ExternalRefund {
            next_check_at: Some(UnixMillis(60_005)),
            ..external(Processing)
        };
        // THEN this exact record: external, hashed as such, ids from the order
        assert_eq!(
            external_record(&e),
            Some(RefundRecord {
                out_refund_no: no("EXT1"),
                order: OrderRef::OutTradeNo(trade("ORDER-1")),
                out_trade_no: Some(trade("ORDER-1")),
                transaction_id: None,
                refund_id: Some(RefundId::new("5000").unwrap()),
                total_fee: fen(100),
                refund_fee: fen(10),
                refund_desc: None,
                refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
                status: Processing,
                attempts: 0,
                last_error: None,
                refund_recv_account: Some("支付用户零钱".into()),
                success_time: Some("2026-01-02 03:04:05".into()),
                created_at: UnixMillis(5),
                updated_at: UnixMillis(5),
                request_hash: "external".into(),
                version: 1,
                lease: None,
                next_check_at: Some(UnixMillis(60_005)),
                external: true,
                attention: None,
                corrections: vec![],
                accepted_at: Some(UnixMillis(4)),
                metadata: Default::default(),
                outbox: Vec::new(),
            })
        );
        // GIVEN the ids WeChat reported WHEN recorded THEN they win over the order's
        let with_ids = ExternalRefund {
            out_trade_no: Some(trade("ORDER-9")),
            transaction_id: Some(tx("4200000009")),
            ..external(Success)
        };
        let rec = external_record(&with_ids).unwrap();
        assert_eq!(rec.out_trade_no, Some(trade("ORDER-9")));
        assert_eq!(rec.transaction_id, Some(tx("4200000009")));
        // GIVEN an order named by transaction_id and nothing else THEN that id is kept
        let by_tx = ExternalRefund {
            order: OrderRef::TransactionId(tx("4200000001")),
            ..external(Success)
        };
        let rec = external_record(&by_tx).unwrap();
        assert_eq!(rec.out_trade_no, None);
        assert_eq!(rec.transaction_id, Some(tx("4200000001")));
        // GIVEN a source that does not say when WeChat accepted it (a notification, a query)
        // THEN the day stays unknown: not the time we heard of it, so no day's bill must list it
        for st in [Processing, Success] {
            let unknown_day = ExternalRefund {
                accepted_at: None,
                ..external(st)
            };
            assert_eq!(
                external_record(&unknown_day).unwrap().accepted_at,
                None,
                "{st}"
            );
        }
    }

    // ---- flag -----------------------------------------------------------------------------------

    fn flag(reason: AttentionReason) -> FlagWrite {
        FlagWrite {
            out_refund_no: no("R1"),
            expected_version: 7,
            reason,
            now: UnixMillis(5_000),
            events: Vec::new(),
        }
    }

    #[test]
    fn a_flag_writes_its_reason_and_time_one_version_up() {
        let stuck = Attention {
            reason: AttentionReason::Stuck,
            since: UnixMillis(3_000),
        };
        // GIVEN a refund in each status, without a flag or with a stuck one (the machine's)
        for status in RefundStatus::ALL {
            for earlier in [None, Some(stuck.clone())] {
                for reason in [AttentionReason::Mismatch, AttentionReason::Contradiction] {
                    let rec = RefundRecord {
                        attention: earlier.clone(),
                        ..stored(status)
                    };
                    // WHEN flagged
                    let next = flagged(&rec, &flag(reason));
                    // THEN the flag says this reason since now (a stuck flag's time is not
                    // kept), one version up, stamped now, nothing else changed
                    let want = RefundRecord {
                        attention: Some(Attention {
                            reason,
                            since: UnixMillis(5_000),
                        }),
                        version: 8,
                        updated_at: UnixMillis(5_000),
                        ..rec.clone()
                    };
                    assert_eq!(next, Some(want), "{status} {earlier:?} {reason:?}");
                }
            }
        }
    }

    #[test]
    fn a_grave_flag_is_kept_with_its_time() {
        // GIVEN a refund already flagged for a contradiction or a mismatch
        for kept in [AttentionReason::Contradiction, AttentionReason::Mismatch] {
            let rec = RefundRecord {
                attention: Some(Attention {
                    reason: kept,
                    since: UnixMillis(3_000),
                }),
                ..stored(Success)
            };
            // WHEN flagged again, for any reason THEN nothing is written (the first flag stays)
            for reason in [
                AttentionReason::Contradiction,
                AttentionReason::Stuck,
                AttentionReason::Mismatch,
            ] {
                assert_eq!(
                    flagged(&rec, &flag(reason)),
                    None,
                    "{kept:?} then {reason:?}"
                );
            }
        }
    }

    #[test]
    fn cursor_is_the_string_it_was_made_of() {
        // GIVEN a cursor WHEN read back, printed or serialised THEN it is the same string
        let c = Cursor::new("3|00000000000000001234|R1");
        assert_eq!(c.as_str(), "3|00000000000000001234|R1");
        assert_eq!(c.to_string(), "3|00000000000000001234|R1");
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            "\"3|00000000000000001234|R1\""
        );
    }

    fn correction(to: RefundStatus, next_check_at: Option<UnixMillis>) -> CorrectionWrite {
        CorrectionWrite {
            out_refund_no: no("R1"),
            expected_status: Failed,
            expected_version: 7,
            to,
            changes: Changes {
                refund_id: Some(RefundId::new("50000000011").unwrap()),
                next_check_at,
                ..Changes::default()
            },
            source: FactSource::OrderListing,
            now: UnixMillis(9_000),
        }
    }

    #[test]
    fn a_contradiction_is_corrected_with_its_history_and_flagged() {
        // GIVEN a FAILED record WHEN WeChat's listing says SUCCESS THEN WeChat's status and fields,
        // one version up, the history entry, and a contradiction flag since then
        let fixed = corrected(&stored(Failed), &correction(Success, None)).unwrap();
        assert_eq!(fixed.status, Success);
        assert_eq!(fixed.version, 8);
        assert_eq!(fixed.updated_at, UnixMillis(9_000));
        assert_eq!(fixed.refund_id, Some(RefundId::new("50000000011").unwrap()));
        assert_eq!(fixed.next_check_at, None);
        assert_eq!(
            fixed.corrections,
            vec![Correction {
                from: Failed,
                to: Success,
                kind: CorrectionKind::Contradiction,
                source: FactSource::OrderListing,
                at: UnixMillis(9_000),
            }]
        );
        assert_eq!(
            fixed.attention,
            Some(Attention {
                reason: AttentionReason::Contradiction,
                since: UnixMillis(9_000)
            })
        );
        // AND a second correction appends, keeping the first flag's time
        let mut c = correction(RefundClose, None);
        c.expected_status = Success;
        c.now = UnixMillis(10_000);
        let again = corrected(&fixed, &c).unwrap();
        assert_eq!(again.corrections.len(), 2);
        assert_eq!(again.corrections[1].from, Success);
        assert_eq!(again.attention.unwrap().since, UnixMillis(9_000));
    }

    #[test]
    fn a_contradiction_outranks_a_stuck_flag_and_a_resolution_sets_none() {
        // GIVEN a stuck flag WHEN a contradiction is corrected THEN the flag becomes a contradiction
        let mut rec = stored(Failed);
        rec.attention = Some(Attention {
            reason: AttentionReason::Stuck,
            since: UnixMillis(5),
        });
        let fixed = corrected(&rec, &correction(Success, None)).unwrap();
        assert_eq!(
            fixed.attention.map(|a| (a.reason, a.since)),
            Some((AttentionReason::Contradiction, UnixMillis(9_000)))
        );
        // GIVEN a CHANGE WHEN resolved to SUCCESS THEN no flag is set
        let mut c = correction(Success, None);
        c.expected_status = Change;
        let resolved = corrected(&stored(Change), &c).unwrap();
        assert_eq!(resolved.attention, None);
        assert_eq!(resolved.corrections[0].kind, CorrectionKind::Resolution);
    }

    #[test]
    fn only_a_final_status_that_differs_is_corrected() {
        for status in RefundStatus::ALL {
            let want = status.is_final() && status != Success;
            let mut c = correction(Success, None);
            c.expected_status = status;
            assert_eq!(corrected(&stored(status), &c).is_some(), want, "{status}");
        }
    }

    #[test]
    fn a_correction_to_an_open_status_is_scheduled() {
        // WeChat says PROCESSING: back into the pending index, at the given time or now
        let at = UnixMillis(12_345);
        let r = corrected(&stored(Failed), &correction(Processing, Some(at))).unwrap();
        assert_eq!(r.next_check_at, Some(at));
        let r = corrected(&stored(Failed), &correction(Processing, None)).unwrap();
        assert_eq!(r.next_check_at, Some(UnixMillis(9_000)));
    }

    #[test]
    fn a_correction_moves_the_book_as_the_fact_requires() {
        let book = OrderBook {
            order: OrderRef::OutTradeNo(trade("ORDER-1")),
            total_fee: fen(100),
            reserved: fen(95),
            count: 3,
            refunds: vec![],
        };
        // the refund holds 10 fen; the book takes (reserved, count) to
        for (from, to, reserved, count) in [
            (Failed, Success, 105, 4),
            (Failed, RefundClose, 95, 4),
            (RefundClose, Success, 105, 3),
            (Success, RefundClose, 85, 3),
            (Change, RefundClose, 85, 3),
            (Change, Success, 95, 3),
        ] {
            let b = corrected_book(&book, &stored(from), to);
            assert_eq!(
                (b.reserved, b.count),
                (fen(reserved), count),
                "{from} -> {to}"
            );
        }
        // and a slot given back by a fact (never below zero)
        let mut empty = book.clone();
        empty.count = 0;
        empty.reserved = fen(0);
        let b = corrected_book(&empty, &stored(Success), Failed);
        assert_eq!((b.reserved, b.count), (fen(0), 0));
        let b = corrected_book(&book, &stored(Success), Failed);
        assert_eq!((b.reserved, b.count), (fen(85), 2));
    }

    #[test]
    fn a_failed_refund_leaves_the_orders_own_list_and_others_stay() {
        // GIVEN an order listing R1 and R2 WHEN R1 fails THEN only R1 leaves the order's own list
        // (its number is kept apart, see `with_released`); REFUNDCLOSE keeps its number
        let book = OrderBook {
            order: OrderRef::OutTradeNo(trade("ORDER-1")),
            total_fee: fen(100),
            reserved: fen(20),
            count: 2,
            refunds: vec![no("R1"), no("R2")],
        };
        assert_eq!(
            released(&book, &stored(Processing), Failed).refunds,
            vec![no("R2")]
        );
        assert_eq!(
            released(&book, &stored(Processing), RefundClose).refunds,
            vec![no("R1"), no("R2")]
        );
    }
}
