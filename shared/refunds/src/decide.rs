//! What each WeChat answer means for a refund: pure decisions, `(record, outcome of a call,
//! schedule, now) → next step`, shared by every workflow in `service/`. Nothing here does I/O; the
//! service carries the step out (a fenced ledger move, a query, a re-submission) and logs its `Why`.
//!
//! WeChat's rules this module encodes (see docs/PROTOCOL.md, "Error codes and retry classes"):
//! - "Apply refund" answers SUCCESS only when WeChat accepted the refund; the money moves later and
//!   is learned by query or notification (PROCESSING → SUCCESS / REFUNDCLOSE / CHANGE).
//! - A timeout, reset, 5xx or an unverifiable reply may hide an accepted refund: query the same
//!   `out_refund_no` before anything else, and only `REFUNDNOTEXIST` proves WeChat never took it.
//! - `SYSTEMERROR` has been seen on refunds that were taken, so a definitive refusal of a *repeat*
//!   says nothing about the earlier attempt: verify by query before failing.

use std::fmt;
use std::time::Duration;

use wxpay::query::{QueriedRefund, RefundQueryResponse, WxRefundStatus};
use wxpay::refund::{RefundResponse, RequestError};
use wxpay::{
    CallOutcome, ErrCode, Fen, OutTradeNo, RetryClass, TransactionId, UnknownReason, WxError,
};

use crate::correction::{self, Attention, AttentionReason, CorrectionKind};
use crate::ledger::{Changes, Patch};
use crate::state::{LastError, RefundRecord, RefundStatus, UnixMillis};

/// How often refunds are looked at again. Production defaults in [`Schedule::default`]; the local
/// stack and tests shorten them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// First check of an accepted refund (wallet refunds settle within minutes).
    pub first_check: Duration,
    /// Shortest and longest wait between checks or re-submissions.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How old a refund may get in each open status before a person is asked to look.
    pub escalate: Escalation,
}

/// Escalation ages: a refund older than this (from its creation) and still in the status is
/// flagged `needs_person` (attention `stuck`) and listed by `GET /refunds?needs_person=true`.
/// The production defaults say how long each status can last when everything works:
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// The poller picks a RECORDED refund up within a lease TTL (90 s): 15 min means it cannot.
    pub recorded: Duration,
    /// A lease lasts 90 s, then the poller takes over: 15 min means the takeover keeps failing.
    pub submitting: Duration,
    /// An unknown outcome is queried within minutes: 2 h of unanswerable queries needs a look.
    pub unknown: Duration,
    /// NOTENOUGH (the merchant must top up), a long SYSTEMERROR run, an unknown err_code, or a
    /// request that could not be sent: a day is as long as a customer should wait unseen.
    pub retry_wait: Duration,
    /// WeChat settles wallet refunds in minutes and bank cards in days: a week is too long.
    pub processing: Duration,
}

impl Escalation {
    pub const fn all(age: Duration) -> Self {
        Escalation {
            recorded: age,
            submitting: age,
            unknown: age,
            retry_wait: age,
            processing: age,
        }
    }

    /// The age for a status; final statuses never escalate.
    pub fn age_for(&self, status: RefundStatus) -> Option<Duration> {
        match status {
            RefundStatus::Recorded => Some(self.recorded),
            RefundStatus::Submitting => Some(self.submitting),
            RefundStatus::Unknown => Some(self.unknown),
            RefundStatus::RetryWait => Some(self.retry_wait),
            RefundStatus::Processing => Some(self.processing),
            _ => None,
        }
    }
}

impl Default for Escalation {
    fn default() -> Self {
        const MIN: u64 = 60;
        Escalation {
            recorded: Duration::from_secs(15 * MIN),
            submitting: Duration::from_secs(15 * MIN),
            unknown: Duration::from_secs(2 * 60 * MIN),
            retry_wait: Duration::from_secs(24 * 60 * MIN),
            processing: Duration::from_secs(7 * 24 * 60 * MIN),
        }
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            first_check: Duration::from_secs(60),
            min_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(4 * 3600),
            escalate: Escalation::default(),
        }
    }
}

impl Schedule {
    /// Wait before re-submitting after the `attempts`-th attempt: `min_backoff` doubling per
    /// attempt, capped at `max_backoff`.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.min_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Checks of a refund whose fate is open get sparser as it ages: half its age, within the
    /// bounds, so an unanswerable refund does not cost a query a minute forever.
    pub fn recheck_delay(&self, rec: &RefundRecord, now: UnixMillis) -> Duration {
        (rec.created_at.age_at(now) / 2)
            .min(self.max_backoff)
            .max(self.min_backoff)
    }
}

/// WeChat's refund status in the domain. Values WeChat may add later are not final: check again.
impl From<&WxRefundStatus> for RefundStatus {
    fn from(s: &WxRefundStatus) -> Self {
        match s {
            WxRefundStatus::Success => RefundStatus::Success,
            WxRefundStatus::RefundClose => RefundStatus::RefundClose,
            WxRefundStatus::Change => RefundStatus::Change,
            WxRefundStatus::Processing | WxRefundStatus::Other(_) => RefundStatus::Processing,
        }
    }
}

/// A call that did not come back with a typed success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure {
    /// WeChat answered with a refusal (`err_code`).
    Rejected(WxError),
    /// Nothing left this process (connect failure, pacing, a request we could not build).
    NotSent(String),
    /// It may have been taken.
    Unknown(UnknownReason),
}

impl CallFailure {
    /// Splits a call's outcome into its success and its failure.
    pub fn split<T>(outcome: CallOutcome<T>) -> Result<T, CallFailure> {
        match outcome {
            CallOutcome::Ok(t) => Ok(t),
            CallOutcome::Rejected(e) => Err(CallFailure::Rejected(e)),
            CallOutcome::NotSent(r) => Err(CallFailure::NotSent(r)),
            CallOutcome::Unknown(r) => Err(CallFailure::Unknown(r)),
        }
    }

    /// The one place a failed call becomes the record's `last_error`.
    pub fn last_error(&self) -> LastError {
        match self {
            CallFailure::Rejected(e) => wx_error(e),
            CallFailure::NotSent(reason) => LastError {
                code: "NOT_SENT".into(),
                message: reason.clone(),
            },
            CallFailure::Unknown(reason) => LastError {
                code: reason.code().into(),
                message: reason.to_string(),
            },
        }
    }
}

/// What the merchant is told when a call it waits for fails (`502 upstream_error`).
impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallFailure::Rejected(e) => write!(f, "{e}"),
            CallFailure::NotSent(r) => f.write_str(r),
            CallFailure::Unknown(r) => write!(f, "{r}"),
        }
    }
}

/// WeChat's refusal as the record's `last_error` (`err_code` / `err_code_des`).
pub fn wx_error(e: &WxError) -> LastError {
    LastError {
        code: e.code.as_str().to_string(),
        message: e.description.clone(),
    }
}

/// The order as a signed query reply names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueriedOrder {
    pub out_trade_no: Option<OutTradeNo>,
    pub transaction_id: Option<TransactionId>,
    pub total_fee: Option<Fen>,
}

/// What a query by `out_refund_no` says about that number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The signed reply lists the refund.
    Found {
        refund: Box<QueriedRefund>,
        order: QueriedOrder,
    },
    /// The reply is signed and well-formed but does not list this number.
    NotListed,
    /// `REFUNDNOTEXIST`: WeChat has no refund with this number (or lags).
    NotExist(WxError),
    /// No answer about the number (another refusal, not sent, unknown).
    Failed(CallFailure),
}

impl Lookup {
    /// Finds `no` in a query's outcome.
    pub fn of(no: &wxpay::OutRefundNo, outcome: CallOutcome<RefundQueryResponse>) -> Lookup {
        match CallFailure::split(outcome) {
            Ok(resp) => {
                let order = QueriedOrder {
                    out_trade_no: resp.out_trade_no,
                    transaction_id: resp.transaction_id,
                    total_fee: resp.total_fee,
                };
                match resp.refunds.into_iter().find(|r| &r.out_refund_no == no) {
                    Some(refund) => Lookup::Found {
                        refund: Box::new(refund),
                        order,
                    },
                    None => Lookup::NotListed,
                }
            }
            Err(CallFailure::Rejected(e)) if e.code == ErrCode::RefundNotExist => {
                Lookup::NotExist(e)
            }
            Err(f) => Lookup::Failed(f),
        }
    }
}

/// Why a step was chosen: the service logs it, tests assert it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// WeChat accepted the refund.
    Accepted,
    /// The acceptance names another refund or amount: its outcome is unknown.
    ReplyMismatch {
        reply_out_refund_no: String,
        reply_refund_fee: Fen,
    },
    /// WeChat refused the attempt; the class says what may follow.
    Refused(RetryClass),
    /// The request never left.
    NotSent,
    /// The attempt may have been taken.
    OutcomeUnknown,
    /// A definitive refusal of a repeat, and WeChat never took an earlier attempt.
    NeverTaken,
    /// The stored request cannot be built; nothing was ever sent.
    Unsendable,
    /// A definitive refusal of a repeat, and WeChat could not say whether it took an earlier one.
    RepeatRefusedUnverified,
    /// WeChat's status for the refund, taken over.
    Adopted,
    /// Adopted, and PROCESSING for longer than the stale limit: a person should look.
    AdoptedStale,
    /// WeChat reports another `refund_fee` for this number: not adopted.
    AmountMismatch { wechat: Fen },
    /// WeChat says REFUNDNOTEXIST for a refund it accepted (it lags, or the books disagree).
    NotExistAfterAcceptance,
    /// The check answered nothing new (or itself failed): check again later.
    NothingLearned,
}

/// The next thing to do with a refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A fenced move of the record to `to` with `changes`.
    Move {
        to: RefundStatus,
        changes: Changes,
        why: Why,
    },
    /// About to fail a refund that an earlier attempt may have placed at WeChat: ask WeChat about
    /// the number first. `failure` is what the refund fails with if WeChat never took it.
    Verify { failure: LastError },
    /// WeChat's signed books contradict a final status (or resolve a CHANGE): take WeChat's
    /// status through the correction transition, history kept (see `crate::correction`).
    Correct {
        to: RefundStatus,
        changes: Changes,
        kind: CorrectionKind,
    },
    /// WeChat has never seen the number: send it again (same number, same amounts).
    Resubmit,
    /// Leave the record as it is.
    Keep,
}

fn moved(to: RefundStatus, last_error: Patch<LastError>, next: UnixMillis, why: Why) -> Step {
    Step::Move {
        to,
        changes: Changes {
            last_error,
            next_check_at: Some(next),
            ..Changes::default()
        },
        why,
    }
}

/// After "apply refund" for a refund we hold the lease on (status SUBMITTING, `attempts` counts
/// this attempt).
pub fn after_apply(
    rec: &RefundRecord,
    outcome: CallOutcome<RefundResponse>,
    s: &Schedule,
    now: UnixMillis,
) -> Step {
    let retry_at = now.plus(s.retry_delay(rec.attempts));
    match CallFailure::split(outcome) {
        Ok(resp)
            if resp.out_refund_no != rec.out_refund_no || resp.refund_fee != rec.refund_fee =>
        {
            moved(
                RefundStatus::Unknown,
                Patch::Set(LastError {
                    code: "REPLY_MISMATCH".into(),
                    message: "WeChat's acceptance names another refund or amount".into(),
                }),
                now.plus(s.min_backoff),
                Why::ReplyMismatch {
                    reply_out_refund_no: resp.out_refund_no.to_string(),
                    reply_refund_fee: resp.refund_fee,
                },
            )
        }
        Ok(resp) => Step::Move {
            to: RefundStatus::Processing,
            changes: Changes {
                refund_id: Some(resp.refund_id),
                transaction_id: Some(resp.transaction_id),
                out_trade_no: Some(resp.out_trade_no),
                last_error: Patch::Clear,
                next_check_at: Some(now.plus(s.first_check)),
                ..Changes::default()
            },
            why: Why::Accepted,
        },
        Err(CallFailure::Rejected(e)) => {
            let class = e.class();
            let definitive = matches!(class, RetryClass::Final | RetryClass::FixRequest);
            if definitive && (rec.attempts > 1 || names_an_existing_number(&e.code)) {
                return Step::Verify {
                    failure: wx_error(&e),
                };
            }
            // A configuration refusal waits for an operator instead of failing: the refund must
            // never need a new number because our key or certificate was wrong.
            let to = if definitive {
                RefundStatus::Failed
            } else {
                RefundStatus::RetryWait
            };
            moved(to, Patch::Set(wx_error(&e)), retry_at, Why::Refused(class))
        }
        Err(f @ CallFailure::NotSent(_)) => moved(
            RefundStatus::RetryWait,
            Patch::Set(f.last_error()),
            retry_at,
            Why::NotSent,
        ),
        Err(f @ CallFailure::Unknown(_)) => moved(
            RefundStatus::Unknown,
            Patch::Set(f.last_error()),
            now.plus(s.min_backoff),
            Why::OutcomeUnknown,
        ),
    }
}

/// Refusals that say "this `out_refund_no` already exists at WeChat with other fields": an
/// earlier attempt (ours, lost in a timeout, or made in the merchant platform) may hold the number,
/// so even a first attempt is verified before it fails.
pub fn names_an_existing_number(code: &ErrCode) -> bool {
    matches!(code, ErrCode::RefundFeeMismatch | ErrCode::InvalidRequest)
}

/// A stored refund whose apply request cannot be built (`problem`, from the request's own rules).
/// Nothing was sent, and nothing ever will be for these fields: the refund fails with the reason,
/// releasing its amount and slot. A refund with earlier attempts is verified first, so that a
/// rule tightened since one of them was sent cannot fail a refund WeChat holds.
pub fn unsendable(
    rec: &RefundRecord,
    problem: &RequestError,
    s: &Schedule,
    now: UnixMillis,
) -> Step {
    let failure = LastError {
        code: "UNSENDABLE".into(),
        message: format!("the stored request cannot be sent to WeChat: {problem}"),
    };
    if let RequestError::NotifyUrl(_) = problem {
        // The notify_url comes from configuration, which an operator can fix: wait.
        return moved(
            RefundStatus::RetryWait,
            Patch::Set(LastError {
                code: "NOT_SENT".into(),
                message: failure.message,
            }),
            now.plus(s.retry_delay(rec.attempts)),
            Why::NotSent,
        );
    }
    if rec.attempts > 1 {
        return Step::Verify { failure };
    }
    moved(
        RefundStatus::Failed,
        Patch::Set(failure),
        now.plus(s.min_backoff),
        Why::Unsendable,
    )
}

/// After the query that verifies a failure of a refund that may be at WeChat (`failure`).
pub fn after_verify(
    rec: &RefundRecord,
    failure: &LastError,
    lookup: Lookup,
    s: &Schedule,
    now: UnixMillis,
) -> Step {
    let next = now.plus(s.min_backoff);
    match lookup {
        Lookup::Found { refund, .. } => adopt(rec, &refund, s, now),
        Lookup::NotExist(_) => moved(
            RefundStatus::Failed,
            Patch::Set(failure.clone()),
            next,
            Why::NeverTaken,
        ),
        // Cannot tell: keep the amount and find out later.
        Lookup::NotListed | Lookup::Failed(_) => moved(
            RefundStatus::Unknown,
            Patch::Set(failure.clone()),
            next,
            Why::RepeatRefusedUnverified,
        ),
    }
}

/// After a query by number for a refund that is not being submitted by us right now.
/// `holds_lease`: the caller took the lease over (an abandoned SUBMITTING refund).
pub fn after_query(
    rec: &RefundRecord,
    lookup: Lookup,
    holds_lease: bool,
    s: &Schedule,
    now: UnixMillis,
) -> Step {
    match lookup {
        Lookup::Found { refund, .. } => adopt(rec, &refund, s, now),
        Lookup::NotListed => recheck_later(
            rec,
            LastError {
                code: "QUERY_MISMATCH".into(),
                message: "query reply does not list this refund".into(),
            },
            s,
            now,
        ),
        Lookup::NotExist(e) => match rec.status {
            RefundStatus::Submitting if holds_lease => Step::Resubmit,
            RefundStatus::Submitting => Step::Keep,
            // A refresh or a notification must not skip the backoff WeChat asked for.
            RefundStatus::Unknown | RefundStatus::RetryWait if !rec.is_due(now) => Step::Keep,
            RefundStatus::Unknown | RefundStatus::RetryWait => Step::Resubmit,
            _ => match recheck_later(rec, wx_error(&e), s, now) {
                Step::Move { to, changes, .. } => Step::Move {
                    to,
                    changes,
                    why: Why::NotExistAfterAcceptance,
                },
                other => other,
            },
        },
        Lookup::Failed(f) => recheck_later(rec, f.last_error(), s, now),
    }
}

/// Moves the refund to what WeChat reports for it, unless WeChat names another amount.
pub fn adopt(rec: &RefundRecord, found: &QueriedRefund, s: &Schedule, now: UnixMillis) -> Step {
    if found.refund_fee != rec.refund_fee {
        let e = LastError {
            code: "AMOUNT_MISMATCH".into(),
            message: format!(
                "WeChat reports refund_fee {} for this number",
                found.refund_fee
            ),
        };
        return match recheck_later(rec, e, s, now) {
            Step::Move { to, changes, .. } => Step::Move {
                to,
                changes,
                why: Why::AmountMismatch {
                    wechat: found.refund_fee,
                },
            },
            other => other,
        };
    }
    let to = RefundStatus::from(&found.refund_status);
    let changes = Changes {
        refund_id: Some(found.refund_id.clone()),
        last_error: Patch::Clear,
        refund_recv_account: found.refund_recv_account.clone(),
        success_time: found.refund_success_time.clone(),
        next_check_at: (!to.is_final()).then(|| now.plus(s.recheck_delay(rec, now))),
        ..Changes::default()
    };
    if rec.status.is_final() {
        // A final status is not the end of listening: WeChat's signed status wins.
        return match correction::kind(rec.status, to) {
            Some(kind) => Step::Correct { to, changes, kind },
            None => Step::Keep,
        };
    }
    let stale =
        to == RefundStatus::Processing && rec.created_at.age_at(now) > s.escalate.processing;
    Step::Move {
        to,
        changes,
        why: if stale {
            Why::AdoptedStale
        } else {
            Why::Adopted
        },
    }
}

/// Nothing learned: keep the status (an abandoned attempt becomes an unknown outcome), note the
/// error, check again later.
pub fn recheck_later(
    rec: &RefundRecord,
    last_error: LastError,
    s: &Schedule,
    now: UnixMillis,
) -> Step {
    let (to, delay) = match rec.status {
        RefundStatus::Submitting => (RefundStatus::Unknown, s.min_backoff),
        RefundStatus::Processing | RefundStatus::Unknown => (rec.status, s.recheck_delay(rec, now)),
        other => (other, s.retry_delay(rec.attempts)),
    };
    if !rec.status.can_move_to(to) {
        return Step::Keep;
    }
    moved(
        to,
        Patch::Set(last_error),
        now.plus(delay),
        Why::NothingLearned,
    )
}

/// A ledger refund that WeChat's order listing also reports: adopt its status when that moves the
/// refund on, or correct a final status it contradicts (the listing is signed, like a query by
/// number).
pub fn from_listing(
    rec: &RefundRecord,
    found: &QueriedRefund,
    s: &Schedule,
    now: UnixMillis,
) -> Step {
    let to = RefundStatus::from(&found.refund_status);
    let movable = rec.status != RefundStatus::Submitting
        && rec.status != to
        && (rec.status.is_final() || rec.status.can_move_to(to));
    if movable {
        adopt(rec, found, s, now)
    } else {
        Step::Keep
    }
}

/// Whether a move of `rec` to `to` flags it for a person or clears its flag: a refund older
/// than the escalation age of the open status it moves to is flagged `stuck` (once); reaching a
/// final status by itself clears a `stuck` flag, never a contradiction.
pub fn escalation(
    rec: &RefundRecord,
    to: RefundStatus,
    s: &Schedule,
    now: UnixMillis,
) -> Patch<Attention> {
    match (&rec.attention, s.escalate.age_for(to)) {
        (Some(a), None) if a.reason == AttentionReason::Stuck => Patch::Clear,
        (None, Some(age)) if rec.created_at.age_at(now) > age => Patch::Set(Attention {
            reason: AttentionReason::Stuck,
            since: now,
        }),
        _ => Patch::Keep,
    }
}

/// What prompted a look at one refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The poller found it due.
    Poll,
    /// A merchant asked for `GET /refunds/{no}?refresh=true`.
    Refresh,
    /// WeChat's notification named it.
    Notification,
    /// WeChat's refund bill lists it and the ledger disagrees (reconciliation).
    Bill,
}

/// The first action for a refund, by what prompted it and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Take the lease and apply (first attempt or a re-submission).
    Submit,
    /// Ask WeChat about the number.
    Query,
    /// Take over an abandoned attempt's lease, then ask WeChat about the number.
    TakeOverThenQuery,
    /// Nothing to do now.
    Keep,
}

pub fn action(rec: &RefundRecord, trigger: Trigger) -> Action {
    use RefundStatus::*;
    match (trigger, rec.status) {
        (Trigger::Poll, Recorded | RetryWait) => Action::Submit,
        (Trigger::Poll, Processing | Unknown) => Action::Query,
        (Trigger::Poll, Submitting) => Action::TakeOverThenQuery,
        (Trigger::Poll, _) => Action::Keep,
        (_, Submitting) => Action::Keep,
        // The bill proves WeChat holds it: find out what it says before anything else.
        (Trigger::Bill, _) => Action::Query,
        (_, Recorded) => Action::Submit,
        // Final ones too: a notification or a refresh may bring a fact that contradicts them.
        (_, _) => Action::Query,
    }
}

/// What a repeated `POST /refunds` with the same request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Recorded by a caller that never got to submit it (or is about to): the lease decides.
    Submit,
    /// Someone holds a live lease and is calling WeChat right now.
    InProgress,
    /// The stored record is the answer.
    Stored,
}

pub fn on_replay(rec: &RefundRecord, now: UnixMillis) -> Replay {
    match rec.status {
        RefundStatus::Recorded => Replay::Submit,
        RefundStatus::Submitting if rec.lease.as_ref().is_some_and(|l| l.expires_at > now) => {
            Replay::InProgress
        }
        _ => Replay::Stored,
    }
}

#[cfg(test)]
mod tests;
