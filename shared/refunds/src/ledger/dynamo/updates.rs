//! The ledger's conditional writes, as expressions: the record's create-if-absent, the order
//! reservation (with the amount/count/total conditions of `record`), the lease, the release of a
//! reservation, and the fenced transition. DynamoDB conditions have no arithmetic, so every bound
//! is computed here and sent as a value.

use aws_sdk_dynamodb::types::AttributeValue;
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, RefundId, TransactionId};

use super::codec::{attention_code, num, outbox_av, status_av};
use super::expr::Expr;
use super::keys::{accepted_pk, pending_pk, pending_sk};
use super::table::NEEDS_PERSON_PK;
use crate::ledger::{NewRefund, Patch, Transition};
use crate::state::{MAX_REFUNDS_PER_ORDER, RefundRecord, RefundStatus, UnixMillis};

/// The condition of a Put that must not overwrite anything.
pub(super) fn create_if_absent() -> Expr {
    let mut e = Expr::default();
    let pk = e.n("pk");
    e.condition = format!("attribute_not_exists({pk})");
    e
}

/// Placeholders of the order attributes a caller may put in its condition.
struct Reservation {
    total: String,
    reserved: String,
    cnt: String,
    v_total: String,
    v_zero: String,
}

/// The order-item update shared by `record` and `record_external`: create the order if absent,
/// add `fee` to `reserved`, count the refund and list its number.
fn reserve_on_order(
    o: &mut Expr,
    order: &OrderRef,
    total_fee: Fen,
    fee: u64,
    no: &OutRefundNo,
    now: UnixMillis,
) -> Reservation {
    let (okey, total, reserved, cnt, nos, created, updated) = (
        o.n("order_key"),
        o.n("total_fee"),
        o.n("reserved"),
        o.n("refund_count"),
        o.n("refund_nos"),
        o.n("created_at"),
        o.n("updated_at"),
    );
    let v_okey = o.v("okey", AttributeValue::S(order.key()));
    let v_total = o.v("total", num(total_fee.get()));
    let v_zero = o.v("zero", num(0));
    let v_fee = o.v("fee", num(fee));
    let v_one = o.v("one", num(1));
    let v_now = o.v("now", num(now.get()));
    let v_nos = o.v("nos", AttributeValue::Ss(vec![no.as_str().to_owned()]));
    // Both callers set the total: a request's only where its condition allows (a new order or
    // one holding nothing), WeChat's signed one always.
    let set_total = format!("{total} = {v_total}");
    o.set = vec![
        format!("{okey} = if_not_exists({okey}, {v_okey})"),
        set_total,
        format!("{reserved} = if_not_exists({reserved}, {v_zero}) + {v_fee}"),
        format!("{cnt} = if_not_exists({cnt}, {v_zero}) + {v_one}"),
        format!("{created} = if_not_exists({created}, {v_now})"),
        format!("{updated} = {v_now}"),
    ];
    o.add = vec![format!("{nos} {v_nos}")];
    Reservation {
        total,
        reserved,
        cnt,
        v_total,
        v_zero,
    }
}

/// `record`'s order update: reserve the fee if it fits. `max_reserved` is `total - fee`, since
/// "reserved + fee <= total" cannot be written as a condition.
pub(super) fn record_reservation(n: &NewRefund, max_reserved: Fen) -> Expr {
    let mut o = Expr::default();
    let pk = o.n("pk");
    // Equal to the stored total, or replacing the total of an order holding nothing.
    let r = reserve_on_order(
        &mut o,
        &n.order,
        n.total_fee,
        n.refund_fee.get(),
        &n.out_refund_no,
        n.now,
    );
    let (total, reserved, cnt, v_total, v_zero) = (r.total, r.reserved, r.cnt, r.v_total, r.v_zero);
    let v_max = o.v("max", num(MAX_REFUNDS_PER_ORDER));
    let v_maxres = o.v("maxres", num(max_reserved.get()));
    // Create-if-absent: a missing order is created with this request's total; an order holding
    // nothing (every refund FAILED) takes it too (see ledger::refusal).
    o.condition = format!(
        "attribute_not_exists({pk}) OR ({reserved} = {v_zero} AND {cnt} = {v_zero}) \
         OR ({total} = {v_total} AND {reserved} <= {v_maxres} AND {cnt} < {v_max})"
    );
    o
}

/// `record_external`'s order update: a fact, not a request, so no amount or count condition
/// (WeChat already did it), the order takes it whatever it holds, and WeChat's total for the order
/// replaces a stored one (a first request with a wrong total must not lock the order forever).
pub(super) fn external_reservation(rec: &RefundRecord) -> Expr {
    let fee = if rec.status.releases_reservation() {
        0
    } else {
        rec.refund_fee.get()
    };
    let mut o = Expr::default();
    reserve_on_order(
        &mut o,
        &rec.order,
        rec.total_fee,
        fee,
        &rec.out_refund_no,
        rec.created_at,
    );
    o
}

/// `acquire_lease`: SUBMITTING under `owner` until `expires_at`, from a leasable status or an
/// expired lease.
pub(super) fn lease_update(
    no: &OutRefundNo,
    owner: &str,
    expires_at: UnixMillis,
    now: UnixMillis,
) -> Expr {
    let mut u = Expr::default();
    let (pk, st, lo, le, att, ver, upd, nca, g1, g2) = (
        u.n("pk"),
        u.n("status"),
        u.n("lease_owner"),
        u.n("lease_expires_at"),
        u.n("attempts"),
        u.n("version"),
        u.n("updated_at"),
        u.n("next_check_at"),
        u.n("gsi1pk"),
        u.n("gsi1sk"),
    );
    let sub = u.v("sub", status_av(RefundStatus::Submitting));
    let rec_ = u.v("recorded", status_av(RefundStatus::Recorded));
    let rw = u.v("retry", status_av(RefundStatus::RetryWait));
    let unk = u.v("unknown", status_av(RefundStatus::Unknown));
    let v_owner = u.v("owner", AttributeValue::S(owner.to_owned()));
    let v_exp = u.v("exp", num(expires_at.get()));
    let v_now = u.v("now", num(now.get()));
    let v_one = u.v("one", num(1));
    let v_g1 = u.v("g1", AttributeValue::S(pending_pk(no)));
    let v_g2 = u.v("g2", AttributeValue::S(pending_sk(no, expires_at)));
    u.set = vec![
        format!("{st} = {sub}"),
        format!("{lo} = {v_owner}"),
        format!("{le} = {v_exp}"),
        format!("{att} = {att} + {v_one}"),
        format!("{ver} = {ver} + {v_one}"),
        format!("{upd} = {v_now}"),
        // An abandoned attempt becomes due when the lease runs out.
        format!("{nca} = {v_exp}"),
        format!("{g1} = {v_g1}"),
        format!("{g2} = {v_g2}"),
    ];
    u.condition = format!(
        "attribute_exists({pk}) AND ({st} IN ({rec_}, {rw}, {unk}) OR ({st} = {sub} AND \
         (attribute_not_exists({le}) OR {le} <= {v_now})))"
    );
    u
}

/// The order side of a releasing transition: give back the stored record's fee (and the slot,
/// if the target releases it). The amount comes from the stored record, never from the caller.
///
/// A target that releases the slot (FAILED) also moves the number out of the order's
/// `refund_nos` into page `failed_page_of(released)` (see [`failed_page_update`], written in the
/// same transaction) and counts it in `failed_count`. `released` is the `failed_count` the
/// caller read; the condition holds the write to it, so two releases never pick a page from the
/// same count, and a page takes exactly `FAILED_PAGE_SIZE` numbers.
pub(super) fn release_on_order(rec: &RefundRecord, t: &Transition, released: u64) -> Expr {
    let mut o = Expr::default();
    let reserved = o.n("reserved");
    let fee = o.v("fee", num(rec.refund_fee.get()));
    let upd = o.n("updated_at");
    let now = o.v("now", num(t.now.get()));
    o.set.push(format!("{reserved} = {reserved} - {fee}"));
    o.set.push(format!("{upd} = {now}"));
    let pk = o.n("pk");
    o.condition = format!("attribute_exists({pk}) AND {reserved} >= {fee}");
    if t.to.releases_slot() {
        let cnt = o.n("refund_count");
        let one = o.v("one", num(1));
        o.set.push(format!("{cnt} = {cnt} - {one}"));
        let (nos, fc) = (o.n("refund_nos"), o.n("failed_count"));
        let v_no = o.v(
            "no",
            AttributeValue::Ss(vec![rec.out_refund_no.to_string()]),
        );
        o.delete.push(format!("{nos} {v_no}"));
        let v_next = o.v("next_failed", num(released + 1));
        o.set.push(format!("{fc} = {v_next}"));
        let v_fc = o.v("failed", num(released));
        if released == 0 {
            o.condition.push_str(&format!(
                " AND (attribute_not_exists({fc}) OR {fc} = {v_fc})"
            ));
        } else {
            o.condition.push_str(&format!(" AND {fc} = {v_fc}"));
        }
    }
    o
}

/// The page item that takes a released (FAILED) number: created by the first number of its page,
/// unconditional (the order update's condition in the same transaction guards it).
pub(super) fn failed_page_update(rec: &RefundRecord, page: u64, now: UnixMillis) -> Expr {
    let mut o = Expr::default();
    let (okey, pg, nos, upd) = (
        o.n("order_key"),
        o.n("page"),
        o.n("refund_nos"),
        o.n("updated_at"),
    );
    let v_okey = o.v("okey", AttributeValue::S(rec.order.key()));
    let v_page = o.v("page", num(page));
    let v_now = o.v("now", num(now.get()));
    let v_no = o.v(
        "no",
        AttributeValue::Ss(vec![rec.out_refund_no.to_string()]),
    );
    o.set = vec![
        format!("{okey} = {v_okey}"),
        format!("{pg} = {v_page}"),
        format!("{upd} = {v_now}"),
    ];
    o.add = vec![format!("{nos} {v_no}")];
    o
}

/// The attribute an UpdateItem of a refund stamps with its own id ([`stamp_write`]).
pub(super) const WRITE_ID: &str = "write_id";

/// Stamps `u` with `write_id`, unique to one call of the adapter. An UpdateItem has no
/// idempotency token, and the SDK sends it again when its answer is lost (the connection dropped,
/// or the attempt timed out after DynamoDB applied it); the resend then fails the update's own
/// condition, and the item it is refused against (returned with the failure) shows by this id
/// whether the write that moved it on was this call's.
pub(super) fn stamp_write(u: &mut Expr, write_id: &str) {
    let a = u.n(WRITE_ID);
    let v = u.v("write_id", AttributeValue::S(write_id.to_owned()));
    u.set.push(format!("{a} = {v}"));
}

/// The fenced update of a refund for a transition (the same on both paths).
pub(super) fn transition_update(t: &Transition) -> Expr {
    let mut u = Expr::default();
    let c = &t.changes;
    let (pk, st, ver, upd) = (u.n("pk"), u.n("status"), u.n("version"), u.n("updated_at"));
    let v_to = u.v("to", status_av(t.to));
    let v_exp_st = u.v("exp_st", status_av(t.expected_status));
    let v_exp_v = u.v("exp_v", num(t.expected_version));
    let v_new_v = u.v("new_v", num(t.expected_version + 1));
    let v_now = u.v("now", num(t.now.get()));
    u.set = vec![
        format!("{st} = {v_to}"),
        format!("{ver} = {v_new_v}"),
        format!("{upd} = {v_now}"),
    ];
    fn set_s(u: &mut Expr, attr: &str, val: Option<&str>) {
        if let Some(val) = val {
            let a = u.n(attr);
            let v = u.v(attr, AttributeValue::S(val.to_owned()));
            u.set.push(format!("{a} = {v}"));
        }
    }
    set_s(
        &mut u,
        "refund_id",
        c.refund_id.as_ref().map(RefundId::as_str),
    );
    set_s(
        &mut u,
        "transaction_id",
        c.transaction_id.as_ref().map(TransactionId::as_str),
    );
    set_s(
        &mut u,
        "out_trade_no",
        c.out_trade_no.as_ref().map(OutTradeNo::as_str),
    );
    set_s(
        &mut u,
        "refund_recv_account",
        c.refund_recv_account.as_deref(),
    );
    set_s(&mut u, "success_time", c.success_time.as_deref());
    match &c.last_error {
        Patch::Keep => {}
        Patch::Set(e) => {
            set_s(&mut u, "last_error_code", Some(&e.code));
            set_s(&mut u, "last_error_message", Some(&e.message));
        }
        Patch::Clear => {
            let (a, b) = (u.n("last_error_code"), u.n("last_error_message"));
            u.remove.extend([a, b]);
        }
    }
    match &c.attention {
        Patch::Keep => {}
        Patch::Set(a) => {
            set_s(&mut u, "attention_reason", Some(attention_code(a.reason)));
            let (since, v) = (u.n("attention_since"), u.v("since", num(a.since.get())));
            u.set.push(format!("{since} = {v}"));
        }
        Patch::Clear => {
            let (a, b) = (u.n("attention_reason"), u.n("attention_since"));
            u.remove.extend([a, b]);
        }
    }
    // The needs-person index: entering CHANGE or a flag puts the refund in; clearing the flag
    // takes it out (a transition never leaves CHANGE: that is a correction, written whole).
    if t.to == RefundStatus::Change || matches!(c.attention, Patch::Set(_)) {
        let (g1, g2) = (u.n("gsi2pk"), u.n("gsi2sk"));
        let v_g1 = u.v("np", AttributeValue::S(NEEDS_PERSON_PK.into()));
        let v_g2 = u.v("npno", AttributeValue::S(t.out_refund_no.as_str().into()));
        u.set.push(format!("{g1} = {v_g1}"));
        u.set.push(format!("{g2} = {v_g2}"));
    } else if matches!(c.attention, Patch::Clear) {
        let (g1, g2) = (u.n("gsi2pk"), u.n("gsi2sk"));
        u.remove.extend([g1, g2]);
    }
    // The first move into a status WeChat reports is when WeChat is known to hold the refund
    // (`ledger::transitioned`); later moves keep the first time and its day.
    if t.to.reported_by_wechat() {
        let (acc, g1, g2) = (u.n("accepted_at"), u.n("gsi3pk"), u.n("gsi3sk"));
        let v_acc = u.v("acc", num(t.now.get()));
        let v_g1 = u.v("acc_day", AttributeValue::S(accepted_pk(t.now)));
        let v_g2 = u.v("acc_no", AttributeValue::S(t.out_refund_no.as_str().into()));
        u.set.push(format!("{acc} = if_not_exists({acc}, {v_acc})"));
        u.set.push(format!("{g1} = if_not_exists({g1}, {v_g1})"));
        u.set.push(format!("{g2} = if_not_exists({g2}, {v_g2})"));
    }
    let mut condition =
        format!("attribute_exists({pk}) AND {st} = {v_exp_st} AND {ver} = {v_exp_v}");
    if t.expected_status == RefundStatus::Submitting {
        let (lo, le) = (u.n("lease_owner"), u.n("lease_expires_at"));
        u.remove.extend([lo.clone(), le]);
        let owner = t.lease_owner.clone().unwrap_or_default();
        let v_owner = u.v("owner", AttributeValue::S(owner));
        condition.push_str(&format!(" AND {lo} = {v_owner}"));
    }
    // The pending index: the next check while not final, or the events' re-delivery if sooner
    // (`RefundRecord::due_at`). Without a new next check the stored one is not known here: the
    // re-delivery time stands in, and the delivery puts the refund back at its next check.
    let redeliver = c.events.iter().map(|e| e.redeliver_at).min();
    let check = c.next_check_at.filter(|_| !t.to.is_final());
    if t.to.is_final() {
        let nca = u.n("next_check_at");
        u.remove.push(nca);
    } else if let Some(at) = check {
        let (nca, v_at) = (u.n("next_check_at"), u.v("nca", num(at.get())));
        u.set.push(format!("{nca} = {v_at}"));
    }
    let due = match (check, redeliver) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(at) = due {
        let (g1, g2) = (u.n("gsi1pk"), u.n("gsi1sk"));
        let v_g1 = u.v("g1", AttributeValue::S(pending_pk(&t.out_refund_no)));
        let v_g2 = u.v("g2", AttributeValue::S(pending_sk(&t.out_refund_no, at)));
        u.set.push(format!("{g1} = {v_g1}"));
        u.set.push(format!("{g2} = {v_g2}"));
    } else if t.to.is_final() {
        let (g1, g2) = (u.n("gsi1pk"), u.n("gsi1sk"));
        u.remove.extend([g1, g2]);
    }
    if !c.events.is_empty() {
        let ob = u.n("outbox");
        let v_empty = u.v("no_events", AttributeValue::L(Vec::new()));
        let v_events = u.v("events", outbox_av(&c.events));
        u.set.push(format!(
            "{ob} = list_append(if_not_exists({ob}, {v_empty}), {v_events})"
        ));
    }
    u.condition = condition;
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Changes, NewRefund};
    use wxpay::Fen;

    fn failed_move(no: &str) -> (RefundRecord, Transition) {
        let rec = crate::ledger::new_record(&NewRefund {
            out_refund_no: OutRefundNo::new(no).unwrap(),
            order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
            total_fee: Fen::new(100).unwrap(),
            refund_fee: Fen::new(100).unwrap(),
            refund_desc: None,
            refund_account: None,
            request_hash: "h".into(),
            now: UnixMillis(1),
            next_check_at: UnixMillis(2),
            metadata: Default::default(),
            lease: None,
        });
        let t = Transition {
            out_refund_no: rec.out_refund_no.clone(),
            expected_status: RefundStatus::Submitting,
            expected_version: 2,
            lease_owner: Some("a".into()),
            to: RefundStatus::Failed,
            changes: Changes::default(),
            now: UnixMillis(3),
        };
        (rec, t)
    }

    fn value<'a>(e: &'a Expr, v: &str) -> &'a AttributeValue {
        &e.values[v]
    }

    #[test]
    fn a_failed_refund_leaves_the_order_item_for_a_page_under_the_count_it_read() {
        // GIVEN a refund failing for good on an order that released 2,345 numbers before
        let (rec, t) = failed_move("R1");
        let o = release_on_order(&rec, &t, 2_345);
        let expr = o.update_expression();
        // THEN the order item loses the number, counts it, and only if the count is still 2,345
        assert!(expr.contains("DELETE #n"), "{expr}");
        assert!(o.condition.ends_with("AND #n5 = :v5"), "{}", o.condition);
        assert_eq!(o.names["#n5"], "failed_count");
        assert_eq!(value(&o, ":v5"), &num(2_345));
        assert_eq!(value(&o, ":v4"), &num(2_346));
        // AND the number goes to page 2 (the 2,346th number), which only ever gains it
        let p = failed_page_update(&rec, super::super::keys::failed_page_of(2_345), t.now);
        assert!(p.update_expression().ends_with("ADD #n2 :v3"));
        assert_eq!(value(&p, ":v1"), &num(2));
        assert!(p.condition.is_empty());
        // AND the first release also accepts an order item written before failed_count existed
        let first = release_on_order(&rec, &t, 0);
        assert!(
            first
                .condition
                .contains("attribute_not_exists(#n5) OR #n5 = ")
        );
        // AND a REFUNDCLOSE keeps the number (and slot) on the order
        let close = Transition {
            to: RefundStatus::RefundClose,
            ..t
        };
        let o = release_on_order(&rec, &close, 7);
        assert!(o.delete.is_empty() && !o.names.values().any(|n| n == "failed_count"));
    }

    #[test]
    fn a_full_page_of_the_longest_numbers_stays_far_below_the_item_limit() {
        // GIVEN a page item holding FAILED_PAGE_SIZE numbers of the maximal 64 bytes
        let nos: Vec<String> = (0..super::super::keys::FAILED_PAGE_SIZE)
            .map(|i| format!("{i:064}"))
            .collect();
        // THEN its size (attribute names + values, DynamoDB's measure) is under 70 KB of 400 KB
        let size = "pk".len()
            + "ORDER#out_trade_no:".len()
            + 32
            + "#FAILED#".len()
            + 20
            + "order_key".len()
            + 64
            + "page".len()
            + 21
            + "updated_at".len()
            + 21
            + "refund_nos".len()
            + nos.iter().map(String::len).sum::<usize>();
        assert!(size < 70_000, "{size}");
    }
}
