//! The books check: after a run, the sandbox's books ("WeChat") must equal the ledger, order by
//! order: no refund twice or on two orders, none over the total or the 50 cap, nothing accepted
//! and missing, nothing refused and refunded.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use wxpay_sandbox::Books;
use wxrefund::ledger::Ledger;
use wxrefund::state::{MAX_REFUNDS_PER_ORDER, RefundRecord, RefundStatus};

use super::run::{Answer, Naming, Sample, order_ref};
use crate::stack::BoxError;

/// The sandbox's books against the ledger, after the run.
#[derive(Clone, Debug, Default)]
pub struct BooksCheck {
    pub orders: usize,
    /// Refunds the sandbox holds (refund records at "WeChat").
    pub sandbox_refunds: usize,
    /// Refunds the ledger holds (FAILED ones included).
    pub ledger_refunds: usize,
    /// Sandbox refunds whose number was sent in more than one apply request (idempotent resends).
    pub resent_applies: usize,
    pub max_apply_calls: u32,
    /// Everything that does not match; empty = pass.
    pub problems: Vec<String>,
}

impl BooksCheck {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The sandbox's books must equal the ledger, order by order.
pub(super) async fn check_books(
    books: &Books,
    ledger: &dyn Ledger,
    naming: &Naming,
    ledger_by_order: &BTreeMap<u64, Vec<RefundRecord>>,
    samples: &[Sample],
) -> Result<BooksCheck, BoxError> {
    let mut c = BooksCheck::default();
    let mut owner_of: HashMap<String, String> = HashMap::new();
    let empty = Vec::new();
    for j in 0..naming.orders {
        let no = naming.order(j);
        c.orders += 1;
        let Some(view) = books.order(&no) else {
            problem(&mut c, format!("{no}: missing from the sandbox"));
            continue;
        };
        let recs = ledger_by_order.get(&j).unwrap_or(&empty);
        c.sandbox_refunds += view.refunds.len();
        c.ledger_refunds += recs.len();

        let mut sandbox: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
        for r in &view.refunds {
            if sandbox
                .insert(&r.out_refund_no, (r.refund_fee, r.status.as_str()))
                .is_some()
            {
                problem(
                    &mut c,
                    format!("{no}: {} twice in the sandbox", r.out_refund_no),
                );
            }
            if let Some(other) = owner_of.insert(r.out_refund_no.clone(), no.clone()) {
                problem(
                    &mut c,
                    format!("{}: refunded on {other} and {no}", r.out_refund_no),
                );
            }
            if r.apply_calls > 1 {
                c.resent_applies += 1;
            }
            c.max_apply_calls = c.max_apply_calls.max(r.apply_calls);
        }
        // FAILED refunds were refused by WeChat: they hold no record there.
        let mut ours: BTreeMap<&str, (u64, RefundStatus)> = BTreeMap::new();
        for r in recs {
            if r.status != RefundStatus::Failed {
                ours.insert(r.out_refund_no.as_str(), (r.refund_fee.get(), r.status));
            }
        }
        for (rno, (fee, st)) in &sandbox {
            match ours.get(rno) {
                None => problem(
                    &mut c,
                    format!("{no}: {rno} in the sandbox, not in the ledger"),
                ),
                Some((lfee, _)) if lfee != fee => problem(
                    &mut c,
                    format!("{no}: {rno} is {fee} fen in the sandbox, {lfee} in the ledger"),
                ),
                // Only a final ledger status must agree: a pending one may lag behind WeChat.
                Some((_, lst)) if lst.is_final() && lst.as_str() != *st => problem(
                    &mut c,
                    format!("{no}: {rno} is {st} in the sandbox, {lst} in the ledger"),
                ),
                Some(_) => {}
            }
        }
        for (rno, (_, st)) in &ours {
            // A refund the ledger never got to send (RECORDED / RETRY_WAIT) is legitimately absent.
            let may_be_unsent = matches!(
                st,
                RefundStatus::Recorded | RefundStatus::RetryWait | RefundStatus::Unknown
            );
            if !sandbox.contains_key(rno) && !may_be_unsent {
                problem(
                    &mut c,
                    format!("{no}: {rno} ({st}) in the ledger, not in the sandbox"),
                );
            }
        }
        if view.refunded_fee > view.total_fee {
            problem(
                &mut c,
                format!(
                    "{no}: the sandbox refunded {} of {} fen",
                    view.refunded_fee, view.total_fee
                ),
            );
        }
        if view.refund_count > MAX_REFUNDS_PER_ORDER as usize {
            problem(
                &mut c,
                format!("{no}: {} refunds in the sandbox", view.refund_count),
            );
        }
        let kept: u64 = recs
            .iter()
            .filter(|r| !r.status.releases_reservation())
            .map(|r| r.refund_fee.get())
            .sum();
        if kept > view.total_fee {
            problem(
                &mut c,
                format!(
                    "{no}: the ledger keeps {kept} of {} fen refunded",
                    view.total_fee
                ),
            );
        }
        if let Some(book) = ledger.order(&order_ref(naming, j)?).await? {
            if book.count > MAX_REFUNDS_PER_ORDER {
                problem(
                    &mut c,
                    format!("{no}: {} refunds in the ledger", book.count),
                );
            }
            if book.reserved > book.total_fee {
                problem(
                    &mut c,
                    format!(
                        "{no}: the ledger reserves {} of {}",
                        book.reserved, book.total_fee
                    ),
                );
            }
        }
    }
    // Every accepted refund is in the ledger; no refused one reached the sandbox.
    let in_ledger: BTreeSet<&str> = ledger_by_order
        .values()
        .flatten()
        .map(|r| r.out_refund_no.as_str())
        .collect();
    for s in samples {
        let rno = naming.refund(s.index);
        match &s.answer {
            Answer::Http {
                status: 200 | 202, ..
            } if !in_ledger.contains(rno.as_str()) => {
                problem(&mut c, format!("{rno}: accepted but not in the ledger"));
            }
            Answer::Http { status, .. }
                if !matches!(status, 200 | 202) && owner_of.contains_key(&rno) =>
            {
                problem(
                    &mut c,
                    format!("{rno}: answered {status} but refunded in the sandbox"),
                );
            }
            _ => {}
        }
    }
    Ok(c)
}

/// Notes a mismatch; the first 20 are enough to see what is wrong without flooding the report.
fn problem(c: &mut BooksCheck, p: String) {
    if c.problems.len() < 20 {
        c.problems.push(p);
    }
}
