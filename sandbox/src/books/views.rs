//! What the admin API and the notification read from the books: order and refund views (JSON),
//! and the decrypted fields of a refund notification.

use serde::Serialize;

use super::coupons::{Coupon, CouponRefund};
use super::faults::Fault;
use super::model::{BookedStatus, NotifyLog, Outcome, Refund, RefundSource, State};
use crate::beijing::wechat_time;

#[derive(Clone, Debug, Serialize)]
pub struct RefundView {
    pub out_refund_no: String,
    pub refund_id: String,
    pub refund_fee: u64,
    pub status: BookedStatus,
    pub created_at: String,
    pub success_time: Option<String>,
    pub refund_recv_accout: String,
    pub refund_account: String,
    pub notify_url: Option<String>,
    pub refund_desc: Option<String>,
    /// Apply requests (with a valid signature) that carried this out_refund_no.
    pub apply_calls: u32,
    pub notify: NotifyLog,
    pub coupon_refund_fee: u64,
    pub cash_refund_fee: u64,
    pub settlement_refund_fee: u64,
    pub coupons: Vec<CouponRefund>,
    /// `API` (apply requests) or `VENDOR_PLATFORM` (`POST /sandbox/orders/{o}/refunds`).
    pub refund_request_source: RefundSource,
}

#[derive(Clone, Debug, Serialize)]
pub struct OrderView {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub total_fee: u64,
    pub paid_at: String,
    pub outcome: Outcome,
    pub notify_url: Option<String>,
    /// Sum of refunds not closed (PROCESSING, SUCCESS, CHANGE).
    pub refunded_fee: u64,
    pub refundable_fee: u64,
    pub refund_count: usize,
    pub refunds: Vec<RefundView>,
    pub faults: Vec<Fault>,
    pub cash_fee: u64,
    /// Present when a NO_CASH coupon paid part of the order.
    pub settlement_total_fee: Option<u64>,
    pub coupons: Vec<Coupon>,
}

pub fn refund_view(st: &State, r: &Refund) -> RefundView {
    RefundView {
        out_refund_no: r.out_refund_no.clone(),
        refund_id: r.refund_id.clone(),
        refund_fee: r.refund_fee,
        status: r.status,
        created_at: wechat_time(r.created_at),
        success_time: r.success_time.map(wechat_time),
        refund_recv_accout: r.recv_account().to_string(),
        refund_account: r.refund_account.clone(),
        notify_url: r.notify_url.clone(),
        refund_desc: r.refund_desc.clone(),
        apply_calls: st.apply_calls.get(&r.out_refund_no).copied().unwrap_or(0),
        notify: r.notify.clone(),
        coupon_refund_fee: r.coupon_refund_fee(),
        cash_refund_fee: r.cash_refund_fee(),
        settlement_refund_fee: r.settlement_refund_fee(),
        coupons: r.coupons.clone(),
        refund_request_source: r.source,
    }
}

pub fn order_view(st: &State, out_trade_no: &str) -> Option<OrderView> {
    let o = st.orders.get(out_trade_no)?;
    let refunded = st.refunded(o);
    Some(OrderView {
        out_trade_no: o.out_trade_no.clone(),
        transaction_id: o.transaction_id.clone(),
        total_fee: o.total_fee,
        paid_at: wechat_time(o.paid_at),
        outcome: o.outcome,
        notify_url: o.notify_url.clone(),
        refunded_fee: refunded,
        refundable_fee: o.total_fee.saturating_sub(refunded),
        refund_count: o.refunds.len(),
        refunds: o
            .refunds
            .iter()
            .filter_map(|n| st.refunds.get(n))
            .map(|r| refund_view(st, r))
            .collect(),
        faults: o.faults.clone(),
        cash_fee: o.cash_fee(),
        settlement_total_fee: o.settlement_total_fee(),
        coupons: o.coupons.clone(),
    })
}

/// The URL to push a notification to (if any) and its decrypted fields, in order.
pub type Notification = (Option<String>, Vec<(String, String)>);

impl State {
    /// The decrypted fields of the refund notification (docs/PROTOCOL.md "Refund notification") and the URL to push them to.
    pub fn notification(
        &self,
        out_refund_no: &str,
        default_url: Option<&str>,
    ) -> Option<Notification> {
        let r = self.refunds.get(out_refund_no)?;
        let o = self.orders.get(&r.out_trade_no)?;
        let url = r
            .notify_url
            .clone()
            .or_else(|| o.notify_url.clone())
            .or_else(|| default_url.map(str::to_string));
        let mut f: Vec<(String, String)> = vec![
            ("transaction_id".into(), o.transaction_id.clone()),
            ("out_trade_no".into(), o.out_trade_no.clone()),
            ("refund_id".into(), r.refund_id.clone()),
            ("out_refund_no".into(), r.out_refund_no.clone()),
            ("total_fee".into(), o.total_fee.to_string()),
        ];
        if let Some(s) = o.settlement_total_fee() {
            f.push(("settlement_total_fee".into(), s.to_string()));
        }
        f.push(("refund_fee".into(), r.refund_fee.to_string()));
        f.push((
            "settlement_refund_fee".into(),
            r.settlement_refund_fee().to_string(),
        ));
        f.push(("refund_status".into(), r.status.as_str().into()));
        if let Some(t) = r.success_time {
            f.push(("success_time".into(), wechat_time(t)));
        }
        f.push(("refund_recv_accout".into(), r.recv_account().into()));
        f.push(("refund_account".into(), r.refund_account.clone()));
        f.push(("refund_request_source".into(), r.source.as_str().into()));
        f.push(("cash_refund_fee".into(), r.cash_refund_fee().to_string()));
        Some((url, f))
    }
}
