//! The refund workflows, independent of Lambda and HTTP: orchestration only. What a WeChat answer
//! means is decided in [`crate::decide`]; this module carries the decision out: the ledger is
//! written before WeChat is called, every write is fenced, and every retry reuses the out_refund_no.
//!
//! One file per workflow: `submit` (record, then apply), `refresh` (get, reconcile by query),
//! `poll` (the scheduled sweep), `orders` (an order's refunds merged with WeChat's list),
//! `notify` (WeChat's refund notification).

mod notify;
mod orders;
mod poll;
mod reconciliation;
mod refresh;
mod submit;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tracing::{error, info, warn};
use wxpay::refund::RefundRequest;
use wxpay::{Fen, OutRefundNo, RetryClass};

use crate::correction::{CorrectionKind, FactSource};
use crate::decide::{self, CallFailure, Lookup, Schedule, Step, Why};
use crate::events::{self, OutboxEvent};
use crate::gateway::Gateway;
use crate::ledger::{
    Changes, CorrectionWrite, LeaseOutcome, Ledger, LedgerError, Transition, TransitionOutcome,
};
use crate::publish::EventPublisher;
use crate::state::{RefundRecord, RefundStatus, UnixMillis};

pub use crate::request::RefundCommand;

/// What one delivery did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryCount {
    pub published: u32,
    pub failed: u32,
}
pub use poll::PollReport;
pub use reconciliation::{CHANGE_WATCH, ChangeRecheck};

/// Timings of the workflows. Production defaults; the local stack and tests shorten them.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// How long one attempt may hold a refund; longer than the WeChat client's total timeout plus
    /// pacing waits, so a live attempt is never taken over.
    pub lease_ttl: Duration,
    /// When refunds are looked at again.
    pub schedule: Schedule,
    /// Due refunds read per page by the poller.
    pub page_size: usize,
    /// Passed to WeChat as `notify_url` when set.
    pub notify_url: Option<String>,
    /// When the poller publishes an event its writer did not get published (the writer crashed,
    /// or the publisher refused it).
    pub redeliver_after: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            lease_ttl: Duration::from_secs(90),
            schedule: Schedule::default(),
            page_size: 25,
            notify_url: None,
            // The poller runs every minute: an event its writer failed to publish goes out on the
            // poll after next at the latest.
            redeliver_after: Duration::from_secs(60),
        }
    }
}

/// What the merchant gets back from a submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Recorded now and (normally) handed to WeChat.
    New(RefundRecord),
    /// The same request was made before: the stored record.
    Replay(RefundRecord),
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("out_refund_no {0} was already used for a different refund request")]
    KeyReused(OutRefundNo),
    #[error("refund {0} is being submitted right now; retry shortly")]
    InProgress(OutRefundNo),
    #[error(
        "refund_fee {requested} exceeds what is still refundable on this order ({available} of {total_fee} fen)"
    )]
    AmountExceeded {
        requested: Fen,
        available: Fen,
        total_fee: Fen,
    },
    #[error("the order already has the maximum of 50 refunds")]
    TooManyRefunds,
    #[error(
        "total_fee {given} differs from the order's total_fee {stored} recorded with its earlier refunds"
    )]
    TotalFeeMismatch { given: Fen, stored: Fen },
    #[error("refund {0} not found")]
    NotFound(OutRefundNo),
    #[error("WeChat Pay: {0}")]
    Upstream(String),
    /// WeChat refused the call for its rate limit (FREQUENCY_LIMITED): retry in a second.
    #[error("WeChat Pay's rate limit: {0}")]
    RateLimited(String),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<CallFailure> for ServiceError {
    fn from(f: CallFailure) -> Self {
        match &f {
            // Both are WeChat's per-second limits (crate::reason says rate_limited for both).
            CallFailure::Rejected(e)
                if matches!(
                    e.code,
                    wxpay::ErrCode::FrequencyLimited | wxpay::ErrCode::InvalidReqTooMuch
                ) =>
            {
                ServiceError::RateLimited(f.to_string())
            }
            _ => ServiceError::Upstream(f.to_string()),
        }
    }
}

/// Proof that this caller holds a refund's lease: only its holder may move the refund out of
/// SUBMITTING.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseToken(String);

impl LeaseToken {
    fn new() -> Self {
        LeaseToken(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub struct RefundService {
    ledger: Arc<dyn Ledger>,
    gateway: Arc<dyn Gateway>,
    publisher: Arc<dyn EventPublisher>,
    cfg: ServiceConfig,
}

impl RefundService {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        gateway: Arc<dyn Gateway>,
        publisher: Arc<dyn EventPublisher>,
        cfg: ServiceConfig,
    ) -> Self {
        RefundService {
            ledger,
            gateway,
            publisher,
            cfg,
        }
    }

    /// The events a write from `before` (`None`: a first record) to `after` produces.
    fn events_of(&self, before: Option<&RefundRecord>, after: &RefundRecord) -> Vec<OutboxEvent> {
        let redeliver_at = after.updated_at.plus(self.cfg.redeliver_after);
        events::of_change(before, after, redeliver_at)
    }

    /// Publishes what waits in the refund's outbox and takes what was accepted out of it. Never
    /// fails its caller: what is not published stays for the poller. The number published.
    pub(crate) async fn deliver(&self, rec: &RefundRecord) -> DeliveryCount {
        let mut count = DeliveryCount::default();
        if rec.outbox.is_empty() {
            return count;
        }
        let envelopes: Vec<_> = rec.outbox.iter().map(|e| e.envelope.clone()).collect();
        let d = self.publisher.publish(&envelopes).await;
        let no = &rec.out_refund_no;
        for (id, why) in &d.failed {
            warn!(out_refund_no = %no, event_id = %id, error = %why, "event not published; the poller publishes it again");
        }
        count.failed = u32::try_from(d.failed.len()).unwrap_or(u32::MAX);
        metrics::counter!(crate::telemetry::EVENTS_PENDING).increment(u64::from(count.failed));
        if d.accepted.is_empty() {
            return count;
        }
        for e in envelopes.iter().filter(|e| d.accepted.contains(&e.id)) {
            info!(out_refund_no = %no, event_id = %e.id, detail_type = e.detail_type.as_str(), "event published");
        }
        count.published = u32::try_from(d.accepted.len()).unwrap_or(u32::MAX);
        metrics::counter!(crate::telemetry::EVENTS_PUBLISHED).increment(u64::from(count.published));
        if let Err(e) = self.ledger.mark_delivered(no, &d.accepted).await {
            // Published but still in the outbox: published again later, under the same id.
            warn!(out_refund_no = %no, error = %e, "published events could not be marked delivered");
        }
        count
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    fn schedule(&self) -> &Schedule {
        &self.cfg.schedule
    }

    /// The WeChat request for a stored refund: the one place it is built, so every attempt of a
    /// number sends the same fields.
    fn wire_request(&self, rec: &RefundRecord) -> RefundRequest {
        crate::request::wire_request(rec, self.cfg.notify_url.clone())
    }

    /// Takes the refund's lease and runs `run` holding it. A held lease means someone else is
    /// submitting right now; a refund that may not be leased is returned as it is.
    async fn under_lease<F, Fut>(
        &self,
        no: &OutRefundNo,
        run: F,
    ) -> Result<RefundRecord, ServiceError>
    where
        F: FnOnce(RefundRecord, LeaseToken) -> Fut,
        Fut: Future<Output = Result<RefundRecord, ServiceError>>,
    {
        let token = LeaseToken::new();
        match self
            .ledger
            .acquire_lease(no, token.as_str(), self.cfg.lease_ttl, UnixMillis::now())
            .await?
        {
            LeaseOutcome::Acquired(rec) => run(rec, token).await,
            LeaseOutcome::Held(rec) => Err(ServiceError::InProgress(rec.out_refund_no)),
            LeaseOutcome::NotLeasable(rec) => Ok(rec),
            LeaseOutcome::NotFound => Err(ServiceError::NotFound(no.clone())),
        }
    }

    /// Asks WeChat about one refund number and finds it in the reply.
    async fn look_up(&self, no: &OutRefundNo) -> Lookup {
        let query = wxpay::query::RefundQueryRequest {
            selector: wxpay::query::QuerySelector::OutRefundNo(no.clone()),
            offset: None,
        };
        Lookup::of(no, self.gateway.query(&query).await)
    }

    /// Carries out a decided step that needs no further call: a fenced move, or keeping the
    /// record. `Verify` and `Resubmit` are the callers' to handle before this.
    async fn carry_out(
        &self,
        rec: &RefundRecord,
        lease: Option<&LeaseToken>,
        step: Step,
        source: FactSource,
        now: UnixMillis,
    ) -> Result<RefundRecord, ServiceError> {
        match step {
            Step::Move {
                to,
                mut changes,
                why,
            } => {
                log_move(rec, to, &changes, &why);
                if changes.attention == crate::ledger::Patch::Keep {
                    changes.attention = decide::escalation(rec, to, self.schedule(), now);
                }
                if let crate::ledger::Patch::Set(a) = &changes.attention {
                    metrics::counter!(crate::telemetry::NEEDS_PERSON, "reason" => "stuck")
                        .increment(1);
                    error!(out_refund_no = %rec.out_refund_no, out_trade_no = rec.order.field().1, status = %to, age_secs = rec.created_at.age_at(now).as_secs(), reason = ?a.reason, "refund needs a person: still not final past its escalation age");
                }
                self.move_to(rec, lease, to, changes, now).await
            }
            Step::Keep => Ok(rec.clone()),
            Step::Correct { to, changes, kind } => {
                self.correct(rec, to, changes, kind, source, now).await
            }
            Step::Verify { .. } | Step::Resubmit => Err(ServiceError::Internal(format!(
                "step {step:?} reached carry_out for {}",
                rec.out_refund_no
            ))),
        }
    }

    /// Takes WeChat's status for a final refund through the correction transition. A
    /// contradiction is an error an operator must see: the merchant may have acted on ours.
    async fn correct(
        &self,
        rec: &RefundRecord,
        to: RefundStatus,
        changes: Changes,
        kind: CorrectionKind,
        source: FactSource,
        now: UnixMillis,
    ) -> Result<RefundRecord, ServiceError> {
        let mut c = CorrectionWrite {
            out_refund_no: rec.out_refund_no.clone(),
            expected_status: rec.status,
            expected_version: rec.version,
            to,
            changes,
            source,
            now,
        };
        if let Some(after) = crate::ledger::corrected(rec, &c) {
            c.changes.events = self.events_of(Some(rec), &after);
        }
        match self.ledger.correct(c).await? {
            TransitionOutcome::Applied(after) => {
                self.deliver(&after).await;
                match kind {
                    CorrectionKind::Contradiction => {
                        metrics::counter!(crate::telemetry::NEEDS_PERSON, "reason" => "contradiction")
                            .increment(1);
                        error!(out_refund_no = %rec.out_refund_no, out_trade_no = rec.order.field().1, ours = %rec.status, wechat = %to, refund_fee = rec.refund_fee.get(), ?source, "the ledger contradicted WeChat's books: corrected to WeChat's status, history kept; a person must check what the merchant did meanwhile");
                    }
                    CorrectionKind::Resolution => {
                        info!(out_refund_no = %rec.out_refund_no, out_trade_no = rec.order.field().1, from = %rec.status, to = %to, ?source, "CHANGE refund resolved in the merchant platform");
                    }
                }
                Ok(after)
            }
            TransitionOutcome::Conflict(current) => {
                info!(out_refund_no = %rec.out_refund_no, now_at = %current.status, "refund moved on before its correction; checking again later");
                Ok(current)
            }
            TransitionOutcome::NotFound => Err(ServiceError::NotFound(rec.out_refund_no.clone())),
            TransitionOutcome::Illegal { from, to } => Err(ServiceError::Internal(format!(
                "illegal correction {from} -> {to}"
            ))),
        }
    }

    /// A fenced ledger move; a conflict means someone else moved the refund on: theirs stands.
    async fn move_to(
        &self,
        rec: &RefundRecord,
        lease: Option<&LeaseToken>,
        to: RefundStatus,
        changes: Changes,
        now: UnixMillis,
    ) -> Result<RefundRecord, ServiceError> {
        let mut t = Transition {
            out_refund_no: rec.out_refund_no.clone(),
            expected_status: rec.status,
            expected_version: rec.version,
            lease_owner: lease.map(|l| l.as_str().to_string()),
            to,
            changes,
            now,
        };
        t.changes.events = self.events_of(Some(rec), &crate::ledger::transitioned(rec, &t));
        match self.ledger.transition(t).await? {
            TransitionOutcome::Applied(after) => {
                self.deliver(&after).await;
                if after.status.needs_person() {
                    metrics::counter!(crate::telemetry::NEEDS_PERSON, "reason" => "change")
                        .increment(1);
                    error!(out_refund_no = %after.out_refund_no, out_trade_no = after.order.field().1, "refund in CHANGE: the bank refused it; a person must handle it in the merchant platform");
                }
                Ok(after)
            }
            TransitionOutcome::Conflict(current) => {
                // Normal after a restart or a race with the poller or a notification: not news.
                info!(out_refund_no = %rec.out_refund_no, from = %rec.status, to = %to, now_at = %current.status, "refund moved on concurrently; keeping the other writer's state");
                Ok(current)
            }
            TransitionOutcome::NotFound => Err(ServiceError::NotFound(rec.out_refund_no.clone())),
            TransitionOutcome::Illegal { from, to } => Err(ServiceError::Internal(format!(
                "illegal transition {from} -> {to}"
            ))),
        }
    }
}

/// One log line per decided move, at the level an operator needs.
fn log_move(rec: &RefundRecord, to: RefundStatus, changes: &Changes, why: &Why) {
    let no = &rec.out_refund_no;
    let (err_code, err_code_des) = match &changes.last_error {
        crate::ledger::Patch::Set(e) => (e.code.as_str(), e.message.as_str()),
        _ => ("", ""),
    };
    match why {
        Why::Accepted => info!(out_refund_no = %no, "refund accepted by WeChat"),
        Why::ReplyMismatch {
            reply_out_refund_no,
            reply_refund_fee,
        } => {
            error!(out_refund_no = %no, %reply_out_refund_no, ours = rec.refund_fee.get(), reply_refund_fee = reply_refund_fee.get(), "acceptance does not match the request; treating the outcome as unknown");
        }
        Why::Refused(RetryClass::Misconfigured) => {
            error!(out_refund_no = %no, err_code, err_code_des, next = %to, "merchant configuration rejected by WeChat (key, certificate or account): an operator must fix it; the refund waits");
        }
        Why::Refused(class) => {
            warn!(out_refund_no = %no, err_code, err_code_des, ?class, next = %to, "refund refused by WeChat");
        }
        Why::NotSent => warn!(out_refund_no = %no, reason = err_code_des, "refund not sent"),
        Why::OutcomeUnknown => {
            warn!(out_refund_no = %no, reason = err_code_des, "refund outcome unknown; will query");
        }
        Why::NeverTaken => {
            warn!(out_refund_no = %no, err_code, err_code_des, "refund refused for good and never taken");
        }
        Why::Unsendable => {
            error!(out_refund_no = %no, out_trade_no = rec.order.field().1, reason = err_code_des, "stored refund cannot be sent to WeChat: failed, amount released");
        }
        Why::RepeatRefusedUnverified => {
            warn!(out_refund_no = %no, err_code, "repeat refused; WeChat could not confirm whether an earlier attempt was taken: keeping the amount");
        }
        Why::Adopted if to != rec.status => {
            info!(out_refund_no = %no, from = %rec.status, to = %to, "status taken from WeChat");
        }
        Why::Adopted => {}
        Why::AdoptedStale => {
            error!(out_refund_no = %no, "refund PROCESSING for over the stale limit: needs a person");
        }
        Why::AmountMismatch { wechat } => {
            error!(out_refund_no = %no, ours = rec.refund_fee.get(), wechat = wechat.get(), "WeChat reports another refund_fee for this number: not adopted, needs a person");
        }
        Why::NotExistAfterAcceptance => {
            error!(out_refund_no = %no, status = %rec.status, "WeChat says REFUNDNOTEXIST for a refund it accepted");
        }
        Why::NothingLearned => {
            tracing::debug!(out_refund_no = %no, status = %rec.status, err_code, "nothing new from WeChat; checking again later");
        }
    }
}

#[cfg(test)]
mod tests;
