//! The correction transition on DynamoDB: the corrected refund item (put whole, fenced on status
//! and version) and the order's book changed by the fact, in one `TransactWriteItems`. The order
//! update has no limit condition: the correction records what WeChat already did.

use super::adapter::DynamoLedger;
use super::codec::{Item, num, status_av};
use super::expr::Expr;
use super::keys::order_pk;
use super::txn_retry::{TxnRetry, code};
use crate::correction::book_change;
use crate::ledger::{CorrectionWrite, LedgerError, TransitionOutcome, corrected};
use crate::state::RefundRecord;

/// The fence of the put: the record is still at the status and version the correction read.
fn fenced(c: &CorrectionWrite) -> Expr {
    let mut e = Expr::default();
    let (st, ver) = (e.n("status"), e.n("version"));
    let v_st = e.v("exp_st", status_av(c.expected_status));
    let v_ver = e.v("exp_v", num(c.expected_version));
    e.condition = format!("{st} = {v_st} AND {ver} = {v_ver}");
    e
}

/// The order side: the amount and slot the fact gives back or takes (`ADD` of a signed delta).
fn book_update(rec: &RefundRecord, c: &CorrectionWrite) -> Expr {
    let change = book_change(rec.status, c.to, rec.refund_fee);
    let mut o = Expr::default();
    let (reserved, cnt, upd, pk) = (
        o.n("reserved"),
        o.n("refund_count"),
        o.n("updated_at"),
        o.n("pk"),
    );
    let d_res = o.v("d_res", num(change.reserved));
    let d_cnt = o.v("d_cnt", num(change.count));
    let now = o.v("now", num(c.now.get()));
    o.add.push(format!("{reserved} {d_res}"));
    o.add.push(format!("{cnt} {d_cnt}"));
    o.set.push(format!("{upd} = {now}"));
    o.condition = format!("attribute_exists({pk})");
    o
}

impl DynamoLedger {
    pub(super) async fn correct_refund(
        &self,
        c: &CorrectionWrite,
    ) -> Result<TransitionOutcome, LedgerError> {
        let mut retry = TxnRetry::new();
        loop {
            let Some(rec) = self.get_refund(&c.out_refund_no).await? else {
                return Ok(TransitionOutcome::NotFound);
            };
            if rec.status != c.expected_status || rec.version != c.expected_version {
                return Ok(TransitionOutcome::Conflict(rec));
            }
            let Some(next) = corrected(&rec, c) else {
                return Ok(TransitionOutcome::Illegal {
                    from: rec.status,
                    to: c.to,
                });
            };
            let items = vec![
                self.put_item(Item::from(&next), fenced(c))?,
                self.update_item(order_pk(&rec.order), book_update(&rec, c))?,
            ];
            let what = format!("correction of {}", c.out_refund_no);
            let Some(reasons) = self.transact(&what, items).await? else {
                return Ok(TransitionOutcome::Applied(next));
            };
            // A failed fence: read again; the loop answers Conflict with what is stored now.
            let fence_failed = reasons
                .first()
                .is_some_and(|r| code(r) == "ConditionalCheckFailed");
            if !fence_failed {
                return Err(LedgerError::Corrupt {
                    key: order_pk(&rec.order),
                    problem: format!("order of refund {} is missing", rec.out_refund_no),
                });
            }
            if !retry.pause().await {
                return Err(LedgerError::Contention(what));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correction::FactSource;
    use crate::ledger::Changes;
    use crate::state::{RefundStatus, UnixMillis};

    #[test]
    fn the_put_is_fenced_on_status_and_version() {
        let c = CorrectionWrite {
            out_refund_no: "R-1".parse().unwrap(),
            expected_status: RefundStatus::Failed,
            expected_version: 4,
            to: RefundStatus::Success,
            changes: Changes::default(),
            source: FactSource::Query,
            now: UnixMillis(7),
        };
        let e = fenced(&c);
        assert_eq!(e.condition, "#n0 = :v0 AND #n1 = :v1");
        assert_eq!(e.names.get("#n0").map(String::as_str), Some("status"));
        assert_eq!(e.values.get(":v1"), Some(&num(4)));
    }
}
