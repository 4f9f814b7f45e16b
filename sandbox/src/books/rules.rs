//! The refund rules of docs/PROTOCOL.md "Business rules and limits": what an apply request does to the books (accepted,
//! idempotent, or refused with WeChat's `err_code`), which refunds a query selects, and settling.

use time::OffsetDateTime;
use tokio::time::Instant;

use super::coupons::{CouponRefund, split_refund, sum_fen};
use super::errors::{AdminError, BizError};
use super::ids::new_refund_id;
use super::model::{
    BookedStatus, NotifyLog, Order, OrderKey, Outcome, Refund, RefundSource, State,
};

/// At most this many refunds per order (docs/PROTOCOL.md "Business rules and limits").
pub const MAX_REFUNDS_PER_ORDER: usize = 50;
/// The refund window (docs/PROTOCOL.md "Business rules and limits"; v3 defines it as payment + 365 days).
pub const REFUND_WINDOW_DAYS: i64 = 365;
/// `refund_account` when a request names none (docs/PROTOCOL.md "Apply refund").
pub const DEFAULT_REFUND_ACCOUNT: &str = "REFUND_SOURCE_UNSETTLED_FUNDS";

pub struct ApplyRequest {
    pub order: OrderKey,
    pub out_refund_no: String,
    pub total_fee: u64,
    pub refund_fee: u64,
    pub refund_account: String,
    pub notify_url: Option<String>,
    pub refund_desc: Option<String>,
    pub source: RefundSource,
}

/// What the reply to an accepted refund needs.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub order: Order,
    pub refund: Refund,
    /// False when an earlier identical request already took this refund.
    pub new: bool,
}

pub enum Selector {
    RefundId(String),
    OutRefundNo(String),
    TransactionId(String),
    OutTradeNo(String),
}

impl State {
    /// What a new refund of `refund_fee` gives back of each coupon of `order` (see
    /// [`split_refund`]), counting only refunds that still hold money (a REFUNDCLOSE releases its
    /// coupon parts with its amount). Books that do not add up are a `SYSTEMERROR`, never a panic.
    fn coupon_parts(&self, order: &Order, refund_fee: u64) -> Result<Vec<CouponRefund>, BizError> {
        let broken = || BizError::new("SYSTEMERROR", "系统超时，请使用相同参数重试");
        if order.coupons.is_empty() {
            return Ok(Vec::new());
        }
        let held: Vec<&Refund> = order
            .refunds
            .iter()
            .filter_map(|n| self.refunds.get(n))
            .filter(|r| r.status != BookedStatus::Refundclose)
            .collect();
        let coupons_left = order
            .coupons
            .iter()
            .map(|c| {
                let refunded = sum_fen(held.iter().flat_map(|r| {
                    r.coupons
                        .iter()
                        .filter(|p| p.coupon_refund_id == c.coupon_id)
                        .map(|p| p.coupon_refund_fee)
                }))?;
                c.fee.checked_sub(refunded)
            })
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(broken)?;
        let cash_left = sum_fen(held.iter().map(|r| r.cash_refund_fee()))
            .and_then(|refunded| order.cash_fee().checked_sub(refunded))
            .ok_or_else(broken)?;
        let (_cash, parts) =
            split_refund(refund_fee, cash_left, &coupons_left).ok_or_else(broken)?;
        Ok(order
            .coupons
            .iter()
            .zip(parts)
            .filter(|(_, part)| *part > 0)
            .map(|(c, part)| CouponRefund {
                coupon_refund_id: c.coupon_id.clone(),
                coupon_type: c.coupon_type,
                coupon_refund_fee: part,
            })
            .collect())
    }

    /// The refund rules, in the order WeChat appears to apply them.
    pub fn apply(
        &mut self,
        req: &ApplyRequest,
        now: OffsetDateTime,
        settle_at: Instant,
    ) -> Result<Accepted, BizError> {
        let order_name = self
            .order_key_name(&req.order)
            .ok_or_else(|| BizError::new("ORDERNOTEXIST", "订单不存在"))?;
        let order = self
            .orders
            .get(&order_name)
            .cloned()
            .ok_or_else(|| BizError::new("ORDERNOTEXIST", "订单不存在"))?;

        // The refund number is the idempotency key, unique per merchant.
        if let Some(existing) = self.refunds.get(&req.out_refund_no) {
            if existing.out_trade_no == order.out_trade_no
                && existing.refund_fee == req.refund_fee
                && existing.total_fee == req.total_fee
            {
                return Ok(Accepted {
                    order,
                    refund: existing.clone(),
                    new: false,
                });
            }
            return Err(BizError::new(
                "REFUND_FEE_MISMATCH",
                "订单金额或退款金额与之前请求不一致，请核实后再试",
            ));
        }
        if req.total_fee != order.total_fee {
            return Err(BizError::new(
                "REFUND_FEE_MISMATCH",
                "订单金额或退款金额与之前请求不一致，请核实后再试",
            ));
        }
        if now - order.paid_at > time::Duration::days(REFUND_WINDOW_DAYS) {
            return Err(BizError::new("TRADE_OVERDUE", "订单已经超过退款期限"));
        }
        let refunded = self.refunded(&order);
        if refunded >= order.total_fee {
            return Err(BizError::new("ERROR", "订单已全额退款"));
        }
        if order.refunds.len() >= MAX_REFUNDS_PER_ORDER {
            return Err(BizError::new(
                "ERROR",
                "退款次数超过限制，一笔订单最多可退款50次",
            ));
        }
        if refunded.saturating_add(req.refund_fee) > order.total_fee {
            return Err(if refunded == 0 {
                BizError::new("INVALID_REQUEST", "申请退款金额超过订单可退金额")
            } else {
                BizError::new("ERROR", "累计退款金额大于支付金额")
            });
        }

        let coupons = self.coupon_parts(&order, req.refund_fee)?;
        let refund = Refund {
            out_refund_no: req.out_refund_no.clone(),
            refund_id: new_refund_id(now),
            out_trade_no: order.out_trade_no.clone(),
            refund_fee: req.refund_fee,
            total_fee: req.total_fee,
            status: BookedStatus::Processing,
            created_at: now,
            settle_at,
            success_time: None,
            refund_account: req.refund_account.clone(),
            notify_url: req.notify_url.clone(),
            refund_desc: req.refund_desc.clone(),
            notify: NotifyLog::default(),
            coupons,
            source: req.source,
        };
        self.by_refund_id
            .insert(refund.refund_id.clone(), refund.out_refund_no.clone());
        self.refunds
            .insert(refund.out_refund_no.clone(), refund.clone());
        if let Some(o) = self.orders.get_mut(&order_name) {
            o.refunds.push(refund.out_refund_no.clone());
        }
        self.touch();
        Ok(Accepted {
            order,
            refund,
            new: true,
        })
    }

    /// The order and its refund records a query selects (all of them, before paging).
    pub fn query(&self, sel: &Selector) -> Result<(Order, Vec<Refund>), BizError> {
        let not_exist = || BizError::new("REFUNDNOTEXIST", "not exist");
        let single = |no: &str| -> Result<(Order, Vec<Refund>), BizError> {
            let r = self.refunds.get(no).ok_or_else(not_exist)?;
            let o = self.orders.get(&r.out_trade_no).ok_or_else(not_exist)?;
            Ok((o.clone(), vec![r.clone()]))
        };
        match sel {
            Selector::RefundId(id) => single(self.by_refund_id.get(id).ok_or_else(not_exist)?),
            Selector::OutRefundNo(no) => single(no),
            Selector::TransactionId(t) => self.order_refunds(&OrderKey::TransactionId(t.clone())),
            Selector::OutTradeNo(o) => self.order_refunds(&OrderKey::OutTradeNo(o.clone())),
        }
    }

    /// Whether [`State::query`] would find any record, without copying them.
    pub fn selects_any(&self, sel: &Selector) -> bool {
        match sel {
            Selector::RefundId(id) => self.refund_by_id(id).is_some(),
            Selector::OutRefundNo(no) => self.refunds.contains_key(no),
            Selector::TransactionId(t) => self
                .find_order(&OrderKey::TransactionId(t.clone()))
                .is_some_and(|o| !o.refunds.is_empty()),
            Selector::OutTradeNo(o) => self.orders.get(o).is_some_and(|o| !o.refunds.is_empty()),
        }
    }

    fn order_refunds(&self, key: &OrderKey) -> Result<(Order, Vec<Refund>), BizError> {
        let o = self
            .find_order(key)
            .ok_or_else(|| BizError::new("REFUNDNOTEXIST", "not exist"))?;
        let refunds: Vec<Refund> = o
            .refunds
            .iter()
            .filter_map(|n| self.refunds.get(n).cloned())
            .collect();
        if refunds.is_empty() {
            return Err(BizError::new("REFUNDNOTEXIST", "not exist"));
        }
        Ok((o.clone(), refunds))
    }

    /// Moves due (or, with `force`, all) PROCESSING refunds to their final state; returns the
    /// out_refund_no of each one settled, for the notification push.
    pub fn settle(&mut self, now: Instant, wall: OffsetDateTime, force: bool) -> Vec<String> {
        let mut settled = Vec::new();
        for r in self.refunds.values_mut() {
            if r.status != BookedStatus::Processing || (!force && r.settle_at > now) {
                continue;
            }
            let outcome = self
                .orders
                .get(&r.out_trade_no)
                .map(|o| o.outcome)
                .unwrap_or_default();
            r.status = match outcome {
                Outcome::Success => BookedStatus::Success,
                Outcome::Change => BookedStatus::Change,
                Outcome::Refundclose => BookedStatus::Refundclose,
            };
            if r.status == BookedStatus::Success {
                r.success_time = Some(wall);
            }
            settled.push(r.out_refund_no.clone());
        }
        if !settled.is_empty() {
            self.touch();
        }
        settled.sort();
        settled
    }

    /// A person in the merchant platform resolving a CHANGE refund (the bank card was void, the
    /// money went elsewhere): it becomes SUCCESS now. Its notification log starts over for the
    /// notification WeChat sends about the new final status; any push of the CHANGE one stops.
    pub fn resolve(&mut self, out_refund_no: &str, wall: OffsetDateTime) -> Result<(), AdminError> {
        let r = self
            .refunds
            .get_mut(out_refund_no)
            .ok_or_else(|| AdminError::NotFound(format!("no refund {out_refund_no}")))?;
        if r.status != BookedStatus::Change {
            return Err(AdminError::Conflict(format!(
                "refund {out_refund_no} is {}; only a CHANGE refund can be resolved",
                r.status.as_str()
            )));
        }
        r.status = BookedStatus::Success;
        r.success_time = Some(wall);
        r.notify = NotifyLog {
            round: r.notify.round.wrapping_add(1),
            ..NotifyLog::default()
        };
        self.touch();
        Ok(())
    }
}
