//! Merchant events: one per fact a merchant acts on. A refund entering SUCCESS, REFUNDCLOSE,
//! FAILED or CHANGE, a contradiction corrected to WeChat's books, and an escalation to a person
//! each produce one event. The event is written into the refund's outbox in the same write as the
//! fact (never "write, then publish and hope"), published right after by whoever made the write,
//! and published again by the poller when that did not happen (see `service::deliver`).
//!
//! The envelope is EventBridge's: `source` [`SOURCE`], `detail-type` one of [`DetailType`],
//! `detail` = `{"event_id", "refund", "previous_status", "reason"}`. The id is fixed when the
//! fact is written (`<out_refund_no>:<version>:<kind>`), so every re-delivery carries the same
//! one and consumers de-duplicate on it. On EventBridge the envelope's own `id` is EventBridge's
//! (one per `PutEvents`); ours travels in `detail.event_id`.

use serde::{Deserialize, Serialize};

use crate::correction::{AttentionReason, CorrectionKind};
use crate::http::RefundView;
use crate::reason::{Reason, failure_reason, pending_reason};
use crate::state::{RefundRecord, RefundStatus, UnixMillis};

/// The `source` of every event.
pub const SOURCE: &str = "wxrefund";

/// What happened, as EventBridge's `detail-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DetailType {
    #[serde(rename = "Refund Succeeded")]
    Succeeded,
    #[serde(rename = "Refund Closed")]
    Closed,
    #[serde(rename = "Refund Failed")]
    Failed,
    /// CHANGE, a contradiction with WeChat's books, or an escalation: a person must look.
    #[serde(rename = "Refund Needs Attention")]
    NeedsAttention,
}

impl DetailType {
    pub const fn as_str(self) -> &'static str {
        match self {
            DetailType::Succeeded => "Refund Succeeded",
            DetailType::Closed => "Refund Closed",
            DetailType::Failed => "Refund Failed",
            DetailType::NeedsAttention => "Refund Needs Attention",
        }
    }

    /// The kind's part of the event id.
    const fn slug(self) -> &'static str {
        match self {
            DetailType::Succeeded => "succeeded",
            DetailType::Closed => "closed",
            DetailType::Failed => "failed",
            DetailType::NeedsAttention => "needs_attention",
        }
    }
}

/// Why, in one word: the refund's normalized reason ([`Reason`]) or why it needs a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventReason {
    Refund(Reason),
    Attention(AttentionWhy),
}

/// Why a refund needs a person, beyond CHANGE (which is `needs_manual_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionWhy {
    /// The ledger had said a final status WeChat's signed books contradict; it was corrected
    /// (`refund.corrections` holds the history).
    ContradictedByWechat,
    /// Still not final past its status's escalation age.
    Stuck,
    /// WeChat's books disagree in a way no status says (amount, or a refund WeChat lacks).
    Mismatch,
}

impl From<AttentionReason> for AttentionWhy {
    fn from(r: AttentionReason) -> Self {
        match r {
            AttentionReason::Contradiction => AttentionWhy::ContradictedByWechat,
            AttentionReason::Stuck => AttentionWhy::Stuck,
            AttentionReason::Mismatch => AttentionWhy::Mismatch,
        }
    }
}

/// The event's `detail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDetail {
    /// The stable id (the same on every delivery of this event).
    pub event_id: String,
    /// The refund as the API shows it, as the fact left it.
    pub refund: RefundView,
    /// The status before the fact (`null` for a refund first learnt from WeChat).
    pub previous_status: Option<RefundStatus>,
    pub reason: Option<EventReason>,
}

/// One event, as the local stack writes it and a webhook receives it. EventBridge gets the same
/// `source`, `detail-type` and `detail` (and sets its own `id` and `time`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub source: String,
    #[serde(rename = "detail-type")]
    pub detail_type: DetailType,
    /// RFC 3339, when the fact was written.
    pub time: String,
    pub detail: EventDetail,
}

/// An event waiting in a refund's outbox until a publisher took it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    pub envelope: Envelope,
    /// When the poller publishes it if its writer has not (crashed, or the publisher failed).
    pub redeliver_at: UnixMillis,
}

impl OutboxEvent {
    pub fn id(&self) -> &str {
        &self.envelope.id
    }
}

/// The events a write produces: `before` is the record it was fenced on (`None` for a refund
/// first recorded from WeChat's facts), `after` what it wrote. At most one event of each kind:
/// a status event, and one `Refund Needs Attention` when a person is newly needed (CHANGE, a
/// contradiction, a new or graver flag) and the status event does not already say so.
pub fn of_change(
    before: Option<&RefundRecord>,
    after: &RefundRecord,
    redeliver_at: UnixMillis,
) -> Vec<OutboxEvent> {
    let previous_status = before.map(|b| b.status);
    let mut events = Vec::new();
    let mut push = |detail_type: DetailType, reason: Option<EventReason>| {
        let id = format!(
            "{}:{}:{}",
            after.out_refund_no,
            after.version,
            detail_type.slug()
        );
        events.push(OutboxEvent {
            envelope: Envelope {
                id: id.clone(),
                source: SOURCE.to_owned(),
                detail_type,
                time: crate::http::refunds::rfc3339(after.updated_at),
                detail: EventDetail {
                    event_id: id,
                    refund: RefundView::from(after),
                    previous_status,
                    reason,
                },
            },
            redeliver_at,
        });
    };
    let entered = (previous_status != Some(after.status)).then_some(after.status);
    let new_contradiction = after.corrections.len() > before.map_or(0, |b| b.corrections.len())
        && after
            .corrections
            .last()
            .is_some_and(|c| c.kind == CorrectionKind::Contradiction);
    let new_flag = after.attention.as_ref().map(|a| a.reason)
        != before.and_then(|b| b.attention.as_ref()).map(|a| a.reason);
    let flag = after.attention.as_ref().filter(|_| new_flag);
    match entered {
        Some(RefundStatus::Success) => push(DetailType::Succeeded, None),
        Some(RefundStatus::RefundClose) => push(
            DetailType::Closed,
            failure_reason(after).map(EventReason::Refund),
        ),
        Some(RefundStatus::Failed) => push(
            DetailType::Failed,
            failure_reason(after).map(EventReason::Refund),
        ),
        _ => {}
    }
    // The gravest reason says why; CHANGE's own reason when nothing graver is new.
    let attention = if new_contradiction {
        Some(EventReason::Attention(AttentionWhy::ContradictedByWechat))
    } else if let Some(a) = flag.filter(|a| a.reason.is_grave()) {
        Some(EventReason::Attention(a.reason.into()))
    } else if entered == Some(RefundStatus::Change) {
        pending_reason(after).map(EventReason::Refund)
    } else {
        flag.map(|a| EventReason::Attention(a.reason.into()))
    };
    if let Some(reason) = attention {
        push(DetailType::NeedsAttention, Some(reason));
    }
    events
}

#[cfg(test)]
mod tests;
