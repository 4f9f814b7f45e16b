//! A small operator view over any [`Ledger`]: an order's refunds and the pending refunds with their
//! age, for an admin route or CLI. Read-only.

use std::time::Duration;

use wxpay::{Fen, OrderRef, OutRefundNo};

use super::{Cursor, Ledger, LedgerError};
use crate::state::{LastError, OrderBook, RefundRecord, RefundStatus, UnixMillis};

/// One refund as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundLine {
    pub out_refund_no: OutRefundNo,
    pub status: RefundStatus,
    pub refund_fee: Fen,
    pub attempts: u32,
    /// Since it was recorded.
    pub age: Duration,
    /// How late its next check is (zero if not yet due or final).
    pub overdue: Duration,
    pub last_error: Option<LastError>,
    pub needs_person: bool,
    pub external: bool,
}

impl RefundLine {
    pub fn from_record(r: &RefundRecord, now: UnixMillis) -> Self {
        Self {
            out_refund_no: r.out_refund_no.clone(),
            status: r.status,
            refund_fee: r.refund_fee,
            attempts: r.attempts,
            age: r.created_at.age_at(now),
            overdue: r
                .next_check_at
                .filter(|_| !r.status.is_final())
                .map_or(Duration::ZERO, |at| at.age_at(now)),
            last_error: r.last_error.clone(),
            needs_person: r.needs_person(),
            external: r.external,
        }
    }
}

/// An order's book and its refunds, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderView {
    pub book: OrderBook,
    pub refunds: Vec<RefundLine>,
}

/// The order's book and refunds, or `None` if the ledger has never seen the order.
pub async fn order_view(
    ledger: &dyn Ledger,
    order: &OrderRef,
    now: UnixMillis,
) -> Result<Option<OrderView>, LedgerError> {
    let Some(book) = ledger.order(order).await? else {
        return Ok(None);
    };
    let refunds = ledger
        .list_by_order(order)
        .await?
        .iter()
        .map(|r| RefundLine::from_record(r, now))
        .collect();
    Ok(Some(OrderView { book, refunds }))
}

/// Up to `max` refunds due at `now`, most overdue first (reads the pending index page by page).
pub async fn pending(
    ledger: &dyn Ledger,
    now: UnixMillis,
    max: usize,
) -> Result<Vec<RefundLine>, LedgerError> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = ledger.due(now, cursor, 100).await?;
        out.extend(page.items.iter().map(|r| RefundLine::from_record(r, now)));
        cursor = page.next;
        if cursor.is_none() || out.len() >= max {
            break;
        }
    }
    out.sort_by_key(|l| std::cmp::Reverse(l.overdue));
    out.truncate(max);
    Ok(out)
}
