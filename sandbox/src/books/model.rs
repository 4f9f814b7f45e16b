//! The records in the books: orders, refunds and their statuses, the notification log, and the
//! [`State`] that holds and indexes them (changed only through [`super::Books::update`]).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::coupons::{Coupon, CouponRefund, CouponType, check_coupons, sum_fen};
use super::errors::AdminError;
use super::faults::{self, Endpoint, Fault, FaultKind};

/// How refunds of an order end when they settle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    #[default]
    Success,
    Change,
    Refundclose,
}

/// A refund's `refund_status` as the sandbox books it (docs/PROTOCOL.md "Refund status values"). Named apart from the client's
/// `wxpay::RefundStatus` and the service's `wxrefund::state::RefundStatus`, which model what a
/// reply or the ledger says, not what the sandbox holds; the wire strings are the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BookedStatus {
    Processing,
    Success,
    Change,
    Refundclose,
}

impl BookedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BookedStatus::Processing => "PROCESSING",
            BookedStatus::Success => "SUCCESS",
            BookedStatus::Change => "CHANGE",
            BookedStatus::Refundclose => "REFUNDCLOSE",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Order {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub total_fee: u64,
    pub paid_at: OffsetDateTime,
    pub outcome: Outcome,
    pub notify_url: Option<String>,
    pub faults: Vec<Fault>,
    /// out_refund_no values in the order they were accepted.
    pub refunds: Vec<String>,
    /// The coupons that paid part of it (checked by [`check_coupons`]); the rest was cash.
    pub coupons: Vec<Coupon>,
}

impl Order {
    /// `cash_fee`: what the payer paid in cash. Coupons are checked to be less than the total,
    /// so the subtraction is exact.
    pub fn cash_fee(&self) -> u64 {
        let coupons = sum_fen(self.coupons.iter().map(|c| c.fee)).unwrap_or(u64::MAX);
        self.total_fee.saturating_sub(coupons)
    }

    /// `settlement_total_fee` = total minus the NO_CASH coupons; WeChat sends it only when there
    /// are some, and so do we.
    pub fn settlement_total_fee(&self) -> Option<u64> {
        let no_cash: Vec<u64> = self
            .coupons
            .iter()
            .filter(|c| c.coupon_type == CouponType::NoCash)
            .map(|c| c.fee)
            .collect();
        if no_cash.is_empty() {
            return None;
        }
        Some(
            self.total_fee
                .saturating_sub(sum_fen(no_cash).unwrap_or(u64::MAX)),
        )
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NotifyLog {
    pub url: Option<String>,
    pub attempts: u32,
    pub delivered: bool,
    pub gave_up: bool,
    pub last_error: Option<String>,
    /// When the next retry is due (wall clock), so a restart resumes the schedule; internal.
    #[serde(skip)]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Which notification of the refund this log is about: 0 for the first final status, one
    /// more for each later one (a resolved CHANGE). A push of an earlier round stops; internal.
    #[serde(skip)]
    pub round: u32,
}

impl NotifyLog {
    /// Settled, addressed, and neither delivered nor given up: a push is (or should be) running.
    pub fn pending(&self) -> bool {
        self.url.is_some() && !self.delivered && !self.gave_up
    }
}

/// `refund_request_source` (docs/PROTOCOL.md "Refund notification"): who asked for the refund.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundSource {
    /// A refund apply request.
    #[default]
    Api,
    /// Someone in the merchant platform (the admin API's stand-in for it).
    VendorPlatform,
}

impl RefundSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundSource::Api => "API",
            RefundSource::VendorPlatform => "VENDOR_PLATFORM",
        }
    }

    pub fn is_api(&self) -> bool {
        *self == RefundSource::Api
    }
}

#[derive(Clone, Debug)]
pub struct Refund {
    pub out_refund_no: String,
    pub refund_id: String,
    pub out_trade_no: String,
    pub refund_fee: u64,
    /// The `total_fee` the request carried (= the order's).
    pub total_fee: u64,
    pub status: BookedStatus,
    pub created_at: OffsetDateTime,
    pub settle_at: Instant,
    pub success_time: Option<OffsetDateTime>,
    pub refund_account: String,
    pub notify_url: Option<String>,
    pub refund_desc: Option<String>,
    pub notify: NotifyLog,
    /// What this refund gave back of each coupon (only coupons with a part > 0), in the order's
    /// coupon order; the rest of `refund_fee` is cash.
    pub coupons: Vec<CouponRefund>,
    pub source: RefundSource,
}

impl Refund {
    /// `coupon_refund_fee`. Parts are checked on creation and load to add up to at most
    /// `refund_fee`, so none of these sums saturates.
    pub fn coupon_refund_fee(&self) -> u64 {
        sum_fen(self.coupons.iter().map(|c| c.coupon_refund_fee)).unwrap_or(u64::MAX)
    }

    /// `cash_refund_fee` = refund minus coupons.
    pub fn cash_refund_fee(&self) -> u64 {
        self.refund_fee.saturating_sub(self.coupon_refund_fee())
    }

    /// `settlement_refund_fee` = refund minus NO_CASH coupon refunds (docs/PROTOCOL.md "Apply refund").
    pub fn settlement_refund_fee(&self) -> u64 {
        let no_cash = self
            .coupons
            .iter()
            .filter(|c| c.coupon_type == CouponType::NoCash)
            .map(|c| c.coupon_refund_fee);
        self.refund_fee
            .saturating_sub(sum_fen(no_cash).unwrap_or(u64::MAX))
    }

    /// Where the money goes (`refund_recv_accout` [sic]).
    pub fn recv_account(&self) -> &'static str {
        match self.status {
            // CHANGE happens when the bank card paid with is void or frozen.
            BookedStatus::Change => "招商银行信用卡0403",
            _ => "支付用户零钱",
        }
    }
}

/// Change them through [`super::Books::update`] and the methods here: each real change bumps
/// `generation`, which is what gets the books saved. A field written directly inside `update` must
/// be followed by [`State::touch`].
#[derive(Clone, Debug, Default)]
pub struct State {
    pub orders: BTreeMap<String, Order>,
    by_txn: HashMap<String, String>,
    pub refunds: HashMap<String, Refund>,
    pub(super) by_refund_id: HashMap<String, String>,
    pub apply_calls: HashMap<String, u32>,
    pub faults: Vec<Fault>,
    /// Bumped on every change; never saved (a loaded state starts at 0, like its store).
    generation: u64,
}

/// Which order a refund names; `transaction_id` wins when both are sent.
#[derive(Clone, Debug)]
pub enum OrderKey {
    TransactionId(String),
    OutTradeNo(String),
}

impl State {
    /// Rebuilds a state (and its indexes) from saved parts; `Err` names the first inconsistency.
    pub fn from_parts(
        orders: Vec<Order>,
        refunds: Vec<Refund>,
        apply_calls: HashMap<String, u32>,
        faults: Vec<Fault>,
    ) -> Result<State, String> {
        if let Some(e) = faults.iter().find_map(|f| f.check().err()) {
            return Err(format!("global fault: {e}"));
        }
        let mut st = State {
            apply_calls,
            faults,
            ..State::default()
        };
        for o in orders {
            check_coupons(&o.coupons, o.total_fee)
                .map_err(|e| format!("order {}: {e}", o.out_trade_no))?;
            if let Some(e) = o.faults.iter().find_map(|f| f.check_for_order().err()) {
                return Err(format!("order {}: fault: {e}", o.out_trade_no));
            }
            st.insert_order(o).map_err(|e| e.to_string())?;
        }
        for r in refunds {
            let Some(o) = st.orders.get(&r.out_trade_no) else {
                return Err(format!(
                    "refund {} names order {}, which is not in the file",
                    r.out_refund_no, r.out_trade_no
                ));
            };
            // The fee getters of Refund rely on these: parts of the order's coupons, ≤ the refund.
            if let Some(c) = r.coupons.iter().find(|c| {
                !o.coupons
                    .iter()
                    .any(|oc| oc.coupon_id == c.coupon_refund_id && oc.coupon_type == c.coupon_type)
            }) {
                return Err(format!(
                    "refund {} refunds coupon {}, which its order {} does not have",
                    r.out_refund_no, c.coupon_refund_id, r.out_trade_no
                ));
            }
            if sum_fen(r.coupons.iter().map(|c| c.coupon_refund_fee))
                .is_none_or(|sum| sum > r.refund_fee)
            {
                return Err(format!(
                    "refund {}: its coupon parts exceed its refund_fee",
                    r.out_refund_no
                ));
            }
            if !o.refunds.contains(&r.out_refund_no) {
                return Err(format!(
                    "refund {} is not listed by its order {}",
                    r.out_refund_no, r.out_trade_no
                ));
            }
            if st
                .by_refund_id
                .insert(r.refund_id.clone(), r.out_refund_no.clone())
                .is_some()
            {
                return Err(format!("refund_id {} appears twice", r.refund_id));
            }
            if let Some(dup) = st.refunds.insert(r.out_refund_no.clone(), r) {
                return Err(format!("out_refund_no {} appears twice", dup.out_refund_no));
            }
        }
        if let Some((o, n)) = st
            .orders
            .values()
            .flat_map(|o| o.refunds.iter().map(move |n| (o, n)))
            .find(|(_, n)| !st.refunds.contains_key(*n))
        {
            return Err(format!(
                "order {} lists refund {n}, which is not in the file",
                o.out_trade_no
            ));
        }
        st.generation = 0;
        Ok(st)
    }

    /// Marks the books changed, so that [`super::Books::update`] saves them.
    pub fn touch(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Counts changes since this state was created or loaded.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn find_order(&self, key: &OrderKey) -> Option<&Order> {
        match key {
            OrderKey::TransactionId(t) => self.by_txn.get(t).and_then(|o| self.orders.get(o)),
            OrderKey::OutTradeNo(o) => self.orders.get(o),
        }
    }

    /// The refund WeChat numbered `refund_id`.
    pub fn refund_by_id(&self, refund_id: &str) -> Option<&Refund> {
        self.by_refund_id
            .get(refund_id)
            .and_then(|no| self.refunds.get(no))
    }

    pub(super) fn order_key_name(&self, key: &OrderKey) -> Option<String> {
        self.find_order(key).map(|o| o.out_trade_no.clone())
    }

    pub fn insert_order(&mut self, order: Order) -> Result<(), AdminError> {
        if self.orders.contains_key(&order.out_trade_no) {
            return Err(AdminError::Conflict(format!(
                "order {} already exists",
                order.out_trade_no
            )));
        }
        if self.by_txn.contains_key(&order.transaction_id) {
            return Err(AdminError::Conflict(format!(
                "transaction_id {} already exists",
                order.transaction_id
            )));
        }
        self.by_txn
            .insert(order.transaction_id.clone(), order.out_trade_no.clone());
        self.orders.insert(order.out_trade_no.clone(), order);
        self.touch();
        Ok(())
    }

    /// Uses the oldest latency fault hitting this request (the order's before the global ones);
    /// returns how long to sleep.
    pub fn take_latency(&mut self, order: Option<&str>, endpoint: Endpoint) -> Option<u64> {
        let kind = self.take_where(order, |list| faults::latency(list, endpoint))?;
        match kind {
            FaultKind::Latency { ms } => Some(ms),
            _ => None,
        }
    }

    /// The fault that decides a request about `order` (None: global faults only): the oldest one
    /// hitting `endpoint` in the order's list, else in the global list, so faults fire in the
    /// order they were added. It is used (and returned) only when `wanted` says it applies now;
    /// otherwise it stays first in line (an "after" fault waits for a request that is accepted).
    pub fn take_fault_if(
        &mut self,
        order: Option<&str>,
        endpoint: Endpoint,
        wanted: impl FnOnce(&FaultKind) -> bool,
    ) -> Option<FaultKind> {
        let find = |list: &[Fault]| faults::decisive(list, endpoint);
        let order_list = order
            .and_then(|o| self.orders.get(o))
            .map(|o| o.faults.as_slice())
            .filter(|list| find(list).is_some());
        let list = order_list.unwrap_or(&self.faults);
        if !wanted(&list.get(find(list)?)?.kind) {
            return None;
        }
        self.take_where(order, find)
    }

    /// Uses the fault `find` picks in the order's list (or, if it picks none there, the global
    /// one); only a counted-down fault is a change to save, an endless one is merely used.
    fn take_where(
        &mut self,
        order: Option<&str>,
        find: impl Fn(&[Fault]) -> Option<usize>,
    ) -> Option<FaultKind> {
        let from_order = order
            .and_then(|o| self.orders.get_mut(o))
            .and_then(|o| find(&o.faults).and_then(|i| faults::use_fault(&mut o.faults, i)));
        let (kind, changed) = match from_order {
            Some(t) => t,
            None => find(&self.faults).and_then(|i| faults::use_fault(&mut self.faults, i))?,
        };
        if changed {
            self.touch();
        }
        Some(kind)
    }

    pub fn count_apply_call(&mut self, out_refund_no: &str) {
        *self
            .apply_calls
            .entry(out_refund_no.to_string())
            .or_insert(0) += 1;
        self.touch();
    }

    /// Where the settled refund's notification goes (`None`: nowhere, with the reason).
    pub fn set_notify_target(
        &mut self,
        out_refund_no: &str,
        url: Option<String>,
        error: Option<String>,
    ) {
        if let Some(r) = self.refunds.get_mut(out_refund_no) {
            r.notify.url = url;
            r.notify.last_error = error;
            self.touch();
        }
    }

    /// Records one push attempt of notification `round`; `next_at` is when the next one is due
    /// (None: no more). False when that notification was superseded (nothing recorded): its push
    /// must stop.
    pub fn record_notify_attempt(
        &mut self,
        out_refund_no: &str,
        round: u32,
        result: Result<(), String>,
        next_at: Option<OffsetDateTime>,
    ) -> bool {
        let Some(r) = self.refunds.get_mut(out_refund_no) else {
            return false;
        };
        if r.notify.round != round {
            return false;
        }
        let delivered = result.is_ok();
        r.notify.attempts = r.notify.attempts.saturating_add(1);
        r.notify.delivered |= delivered;
        r.notify.last_error = result.err();
        r.notify.gave_up = !delivered && next_at.is_none();
        r.notify.next_attempt_at = if delivered { None } else { next_at };
        self.touch();
        true
    }

    /// Whether notification `round` of the refund is still the one to deliver.
    pub fn notify_round_is(&self, out_refund_no: &str, round: u32) -> bool {
        self.refunds
            .get(out_refund_no)
            .is_some_and(|r| r.notify.round == round)
    }

    /// Sum of refunds that still hold money (a REFUNDCLOSE releases its amount).
    pub fn refunded(&self, order: &Order) -> u64 {
        order
            .refunds
            .iter()
            .filter_map(|n| self.refunds.get(n))
            .filter(|r| r.status != BookedStatus::Refundclose)
            .map(|r| r.refund_fee)
            .sum()
    }
}
