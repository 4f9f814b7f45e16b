//! The correction transition: a signed WeChat fact (a query reply, a confirmed notification, the
//! order listing, the refund bill) that contradicts a *final* ledger status wins. The ledger takes
//! WeChat's status, keeps what it said before in the refund's history, re-reserves or releases the
//! amount as the fact requires (even past the order's total: that is what happened), and flags the
//! refund for a person. Pure rules here; the ledger adapters apply them inside one transaction.

use serde::{Deserialize, Serialize};
use wxpay::Fen;

use crate::state::{RefundStatus, UnixMillis};

/// Where the signed fact came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FactSource {
    Query,
    Notification,
    OrderListing,
    Bill,
}

/// Contradiction (we said something WeChat's books deny) or resolution (a CHANGE refund that a
/// person re-routed or closed in the merchant platform).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionKind {
    Contradiction,
    Resolution,
}

/// One correction in a refund's history: what we said, what WeChat says, from where, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub from: RefundStatus,
    pub to: RefundStatus,
    pub kind: CorrectionKind,
    pub source: FactSource,
    pub at: UnixMillis,
}

/// Why a refund needs a person, beyond CHANGE (which says so by its status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttentionReason {
    /// The ledger said a final status that WeChat's books contradict: the merchant may have acted
    /// on the wrong one (e.g. refunded again under a new number after a FAILED). Never cleared by
    /// the machine.
    Contradiction,
    /// Still not final past its status's escalation age (`decide::Schedule`): nothing the machine
    /// does moves it on. Cleared when the refund reaches a final status by itself.
    Stuck,
    /// WeChat's books disagree with the ledger in a way no status says: the amount differs, or
    /// WeChat does not know a refund the ledger says it accepted (found by reconciliation against
    /// the refund bill). Never cleared by the machine.
    Mismatch,
}

impl AttentionReason {
    /// Only a `stuck` flag is the machine's to clear or to replace by a graver one.
    pub const fn is_grave(self) -> bool {
        !matches!(self, AttentionReason::Stuck)
    }
}

/// The refund needs a person, since when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attention {
    pub reason: AttentionReason,
    pub since: UnixMillis,
}

/// Whether a final record disagrees with what WeChat reports for it, and how.
pub fn kind(ours: RefundStatus, wechat: RefundStatus) -> Option<CorrectionKind> {
    if !ours.is_final() || ours == wechat {
        return None;
    }
    Some(if ours == RefundStatus::Change {
        CorrectionKind::Resolution
    } else {
        CorrectionKind::Contradiction
    })
}

/// What a correction does to the order's book, as facts: the amount and the slot come back when
/// the new status holds them and the old one did not, and go when it is the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookChange {
    /// Added to the reservation (negative: released).
    pub reserved: i64,
    /// Added to the count of slots taken (negative: given back).
    pub count: i64,
}

pub fn book_change(from: RefundStatus, to: RefundStatus, refund_fee: Fen) -> BookChange {
    let held = |s: RefundStatus| !s.releases_reservation();
    let slot = |s: RefundStatus| !s.releases_slot();
    let fee = i64::try_from(refund_fee.get()).unwrap_or(i64::MAX);
    let delta = |had: bool, has: bool, n: i64| match (had, has) {
        (false, true) => n,
        (true, false) => -n,
        _ => 0,
    };
    BookChange {
        reserved: delta(held(from), held(to), fee),
        count: delta(slot(from), slot(to), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RefundStatus::*;

    #[test]
    fn which_disagreements_are_corrections() {
        // GIVEN every pair of our status and WeChat's THEN only a final status of ours that
        // differs is corrected; CHANGE moving on is a resolution, anything else a contradiction
        let wechat_says = [Processing, Success, RefundClose, Change];
        for ours in RefundStatus::ALL {
            for w in wechat_says {
                let want = match (ours, w) {
                    (o, w) if !o.is_final() || o == w => None,
                    (Change, _) => Some(CorrectionKind::Resolution),
                    _ => Some(CorrectionKind::Contradiction),
                };
                assert_eq!(kind(ours, w), want, "{ours} vs WeChat {w}");
            }
        }
    }

    #[test]
    fn only_a_stuck_flag_is_not_grave() {
        // GIVEN every reason a refund is flagged for THEN only `stuck` (the machine's own) may
        // be cleared or replaced; a contradiction and a mismatch stay until a person acts
        for (reason, grave) in [
            (AttentionReason::Contradiction, true),
            (AttentionReason::Stuck, false),
            (AttentionReason::Mismatch, true),
        ] {
            assert_eq!(reason.is_grave(), grave, "{reason:?}");
        }
    }

    #[test]
    fn the_book_follows_the_fact() {
        let fee = Fen::new(900).unwrap();
        for (from, to, reserved, count) in [
            // FAILED held nothing: WeChat paid (or holds) it, so amount and slot come back
            (Failed, Success, 900, 1),
            (Failed, Processing, 900, 1),
            (Failed, Change, 900, 1),
            // REFUNDCLOSE kept its slot but released the amount
            (Failed, RefundClose, 0, 1),
            (RefundClose, Success, 900, 0),
            (RefundClose, Change, 900, 0),
            // SUCCESS held both; WeChat says it was closed: the amount is free again
            (Success, RefundClose, -900, 0),
            (Success, Change, 0, 0),
            (Change, Success, 0, 0),
            (Change, RefundClose, -900, 0),
            (Change, Processing, 0, 0),
        ] {
            assert_eq!(
                book_change(from, to, fee),
                BookChange { reserved, count },
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn history_and_attention_serialise_with_stable_names() {
        let c = Correction {
            from: Failed,
            to: Success,
            kind: CorrectionKind::Contradiction,
            source: FactSource::OrderListing,
            at: UnixMillis(5),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"from":"FAILED","to":"SUCCESS","kind":"contradiction","source":"order_listing","at":5}"#
        );
        let a = Attention {
            reason: AttentionReason::Contradiction,
            since: UnixMillis(5),
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"reason":"contradiction","since":5}"#
        );
    }
}
