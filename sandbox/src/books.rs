//! The sandbox's books: paid orders, their refunds, injected faults and the notification log, in
//! memory behind one mutex (and, when a [`Store`] is attached, saved to `books.json` after every
//! change), plus the refund rules of protocol doc §5 that decide what a request does.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::{OffsetDateTime, UtcOffset};
use tokio::time::Instant;

use crate::persist::Store;

/// WeChat reports times in Beijing time.
pub const BEIJING: UtcOffset = match UtcOffset::from_hms(8, 0, 0) {
    Ok(o) => o,
    Err(_) => UtcOffset::UTC,
};

/// At most this many refunds per order (doc §5.2).
pub const MAX_REFUNDS_PER_ORDER: usize = 50;
/// The refund window (doc §5.1; v3 defines it as payment + 365 days).
pub const REFUND_WINDOW_DAYS: i64 = 365;
/// At most this many coupons per order: enough for any test, and it keeps replies far below the
/// client parser's plausibility limits (50 per query record, 100 per apply reply).
pub const MAX_COUPONS_PER_ORDER: usize = 20;
/// `coupon_refund_id` is String(20) (doc §3.2).
const MAX_COUPON_ID_LEN: usize = 20;

/// `yyyy-MM-dd HH:mm:ss` in Beijing time.
pub fn wechat_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(BEIJING);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses RFC 3339, or WeChat's `yyyy-MM-dd HH:mm:ss` taken as Beijing time.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Some(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(s, &fmt)
        .ok()
        .map(|p| p.assume_offset(BEIJING))
}

/// How refunds of an order end when they settle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    #[default]
    Success,
    Change,
    Refundclose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    Processing,
    Success,
    Change,
    Refundclose,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Success => "SUCCESS",
            RefundStatus::Change => "CHANGE",
            RefundStatus::Refundclose => "REFUNDCLOSE",
        }
    }
}

/// `coupon_type` (doc §3.2). A `CASH` (recharge) coupon is funded by money the merchant loaded in
/// advance; a `NO_CASH` (non-recharge) one is not, so WeChat leaves it out of the settlement
/// amounts (`settlement_total_fee`, `settlement_refund_fee`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CouponType {
    #[serde(rename = "CASH")]
    Cash,
    #[serde(rename = "NO_CASH")]
    NoCash,
}

impl CouponType {
    pub fn as_str(self) -> &'static str {
        match self {
            CouponType::Cash => "CASH",
            CouponType::NoCash => "NO_CASH",
        }
    }
}

/// A coupon that paid part of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coupon {
    /// Also the `coupon_refund_id` of every refund of it: WeChat's 退款代金券ID names the coupon.
    pub coupon_id: String,
    pub coupon_type: CouponType,
    pub fee: u64,
}

/// A coupon in `POST /sandbox/orders`; without `coupon_id` one is generated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCoupon {
    #[serde(default)]
    pub coupon_id: Option<String>,
    pub coupon_type: CouponType,
    pub fee: u64,
}

/// What one refund gave back of one coupon (`coupon_*_$n`, `coupon_*_$n_$m`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponRefund {
    /// The coupon's `coupon_id`.
    pub coupon_refund_id: String,
    pub coupon_type: CouponType,
    pub coupon_refund_fee: u64,
}

/// Sums fen, None on overflow.
fn sum_fen(values: impl IntoIterator<Item = u64>) -> Option<u64> {
    values.into_iter().try_fold(0u64, u64::checked_add)
}

/// Checks an order's coupons: ids of 1–20 letters, digits, `-` or `_` (they go into signed XML),
/// unique, each worth something, at most [`MAX_COUPONS_PER_ORDER`], and together less than
/// `total_fee` (WeChat always takes some cash). Used for new orders and for loaded books.
pub fn check_coupons(coupons: &[Coupon], total_fee: u64) -> Result<(), String> {
    if coupons.len() > MAX_COUPONS_PER_ORDER {
        return Err(format!(
            "at most {MAX_COUPONS_PER_ORDER} coupons per order, got {}",
            coupons.len()
        ));
    }
    for (i, c) in coupons.iter().enumerate() {
        let id = &c.coupon_id;
        if id.is_empty()
            || id.len() > MAX_COUPON_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "coupon_id {:?} must be 1 to {MAX_COUPON_ID_LEN} letters, digits, '-' or '_'",
                id.chars().take(40).collect::<String>()
            ));
        }
        if coupons[..i].iter().any(|o| o.coupon_id == *id) {
            return Err(format!("coupon_id {id} appears twice"));
        }
        if c.fee == 0 {
            return Err(format!("coupon {id}: fee must be a positive number of fen"));
        }
    }
    match sum_fen(coupons.iter().map(|c| c.fee)) {
        Some(sum) if sum < total_fee => Ok(()),
        sum => Err(format!(
            "the coupons add up to {} fen; they must be less than total_fee ({total_fee}), \
             the rest being paid in cash",
            sum.map_or_else(|| "more than 2^64".to_string(), |s| s.to_string())
        )),
    }
}

/// Splits a refund of `refund_fee` over what is left of the order's cash and of each coupon.
///
/// Each coupon refunds `floor(left_c * refund_fee / left_total)` (`left_total` = cash left + all
/// coupons left), cash the rest. Should that take more cash than is left (rounding down several
/// coupons can leave up to one fen per coupon over), the excess comes from the coupons in order,
/// up to what is left of each. So no part is ever overdrawn, and the refund that completes the
/// order (`refund_fee == left_total`) refunds exactly what is left of each coupon and of the
/// cash: the sums always come out exact. Proportional to what is *left* (not to the original
/// amounts) so that a run of small refunds cannot drain the cash before the coupons.
///
/// Returns (cash part, coupon parts in `coupons_left` order); None when `refund_fee` exceeds what
/// is left.
pub fn split_refund(
    refund_fee: u64,
    cash_left: u64,
    coupons_left: &[u64],
) -> Option<(u64, Vec<u64>)> {
    let left_total = cash_left.checked_add(sum_fen(coupons_left.iter().copied())?)?;
    if refund_fee > left_total {
        return None;
    }
    if left_total == 0 {
        return Some((0, vec![0; coupons_left.len()]));
    }
    let mut parts = coupons_left
        .iter()
        .map(|&left| {
            // u128: the product of two u64 cannot overflow; the quotient is ≤ left.
            let p = u128::from(left) * u128::from(refund_fee) / u128::from(left_total);
            u64::try_from(p).ok()
        })
        .collect::<Option<Vec<u64>>>()?;
    let mut cash = refund_fee.checked_sub(sum_fen(parts.iter().copied())?)?;
    let mut excess = cash.saturating_sub(cash_left);
    if excess > 0 {
        cash = cash_left;
        for (part, &left) in parts.iter_mut().zip(coupons_left) {
            let take = excess.min(left.checked_sub(*part)?);
            *part = part.checked_add(take)?;
            excess -= take;
        }
    }
    (excess == 0).then_some((cash, parts))
}

/// Which endpoint a fault applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    #[default]
    Apply,
    Query,
    Any,
}

/// An injected fault. "Before" faults answer without touching the books; "after" faults take
/// the refund first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Sleep this long before handling the request.
    Latency { ms: u64 },
    /// Before: HTTP 502 with an HTML body (the gateway answered, WeChat never saw the request).
    Http502,
    /// Before: `result_code=FAIL err_code=SYSTEMERROR`, nothing recorded.
    SystemErrorBefore,
    /// Before: `err_code=BIZERR_NEED_RETRY`, nothing recorded.
    BizErrNeedRetry,
    /// Before: `err_code=NOTENOUGH` (merchant balance too low).
    NotEnough,
    /// After: the refund is taken, then `SYSTEMERROR` is returned.
    SystemErrorAfter,
    /// After: the refund is taken, then the connection is closed without a response.
    DropResponse,
    /// After: the refund is taken, then no response is ever sent (the client times out).
    Hang,
    /// After: the normal reply, with a wrong `sign`.
    BadSign,
}

impl FaultKind {
    fn phase(&self) -> Phase {
        match self {
            FaultKind::Latency { .. } => Phase::Latency,
            FaultKind::Http502
            | FaultKind::SystemErrorBefore
            | FaultKind::BizErrNeedRetry
            | FaultKind::NotEnough => Phase::Before,
            FaultKind::SystemErrorAfter
            | FaultKind::DropResponse
            | FaultKind::Hang
            | FaultKind::BadSign => Phase::After,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Latency,
    Before,
    After,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Apply,
    Query,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many requests it affects; absent = until cleared.
    #[serde(default)]
    pub times: Option<u32>,
    #[serde(default)]
    pub on: FaultTarget,
}

impl Fault {
    fn matches(&self, endpoint: Endpoint, phase: Phase) -> bool {
        let target_ok = matches!(
            (self.on, endpoint),
            (FaultTarget::Any, _)
                | (FaultTarget::Apply, Endpoint::Apply)
                | (FaultTarget::Query, Endpoint::Query)
        );
        target_ok && self.kind.phase() == phase && self.times != Some(0)
    }
}

/// Takes (and counts down) the first matching fault: the order's own faults win over global ones.
/// The flag says whether the list changed (a fault without `times` is used, not consumed).
fn take_fault(
    list: &mut Vec<Fault>,
    endpoint: Endpoint,
    phase: Phase,
) -> Option<(FaultKind, bool)> {
    let i = list.iter().position(|f| f.matches(endpoint, phase))?;
    let kind = list[i].kind.clone();
    let mut changed = false;
    if let Some(n) = list[i].times.as_mut() {
        *n = n.saturating_sub(1);
        changed = true;
        if *n == 0 {
            list.remove(i);
        }
    }
    Some((kind, changed))
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
}

impl NotifyLog {
    /// Settled, addressed, and neither delivered nor given up: a push is (or should be) running.
    pub fn pending(&self) -> bool {
        self.url.is_some() && !self.delivered && !self.gave_up
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
    pub status: RefundStatus,
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

    /// `settlement_refund_fee` = refund minus NO_CASH coupon refunds (doc §3.2).
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
            RefundStatus::Change => "招商银行信用卡0403",
            _ => "支付用户零钱",
        }
    }
}

/// Change them through [`Books::update`] and the methods here: each real change bumps
/// `generation`, which is what gets the books saved. A field written directly inside `update` must
/// be followed by [`State::touch`].
#[derive(Clone, Debug, Default)]
pub struct State {
    pub orders: BTreeMap<String, Order>,
    by_txn: HashMap<String, String>,
    pub refunds: HashMap<String, Refund>,
    by_refund_id: HashMap<String, String>,
    pub apply_calls: HashMap<String, u32>,
    pub faults: Vec<Fault>,
    /// Bumped on every change; never saved (a loaded state starts at 0, like its store).
    generation: u64,
}

/// A business error: `result_code=FAIL` with this `err_code` / `err_code_des`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BizError {
    pub code: &'static str,
    pub des: String,
}

impl BizError {
    pub fn new(code: &'static str, des: impl Into<String>) -> Self {
        Self {
            code,
            des: des.into(),
        }
    }
}

/// Which order a refund names; `transaction_id` wins when both are sent.
#[derive(Clone, Debug)]
pub enum OrderKey {
    TransactionId(String),
    OutTradeNo(String),
}

pub struct ApplyRequest {
    pub order: OrderKey,
    pub out_refund_no: String,
    pub total_fee: u64,
    pub refund_fee: u64,
    pub refund_account: String,
    pub notify_url: Option<String>,
    pub refund_desc: Option<String>,
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
    /// Rebuilds a state (and its indexes) from saved parts; `Err` names the first inconsistency.
    pub fn from_parts(
        orders: Vec<Order>,
        refunds: Vec<Refund>,
        apply_calls: HashMap<String, u32>,
        faults: Vec<Fault>,
    ) -> Result<State, String> {
        let mut st = State {
            apply_calls,
            faults,
            ..State::default()
        };
        for o in orders {
            check_coupons(&o.coupons, o.total_fee)
                .map_err(|e| format!("order {}: {e}", o.out_trade_no))?;
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

    /// Marks the books changed, so that [`Books::update`] saves them.
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

    fn order_key_name(&self, key: &OrderKey) -> Option<String> {
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

    /// Takes the next fault of `phase` for a request about `order` (None: global faults only).
    pub fn take_fault(
        &mut self,
        order: Option<&str>,
        endpoint: Endpoint,
        phase: Phase,
    ) -> Option<FaultKind> {
        let taken = match order.and_then(|o| self.orders.get_mut(o)) {
            Some(o) => take_fault(&mut o.faults, endpoint, phase),
            None => None,
        }
        .or_else(|| take_fault(&mut self.faults, endpoint, phase));
        let (kind, changed) = taken?;
        // Only a counted-down fault is a change; an endless one is merely used (query path).
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

    /// Records one push attempt; `next_at` is when the next one is due (None: no more).
    pub fn record_notify_attempt(
        &mut self,
        out_refund_no: &str,
        result: Result<(), String>,
        next_at: Option<OffsetDateTime>,
    ) {
        if let Some(r) = self.refunds.get_mut(out_refund_no) {
            let delivered = result.is_ok();
            r.notify.attempts = r.notify.attempts.saturating_add(1);
            r.notify.delivered |= delivered;
            r.notify.last_error = result.err();
            r.notify.gave_up = !delivered && next_at.is_none();
            r.notify.next_attempt_at = if delivered { None } else { next_at };
            self.touch();
        }
    }

    /// Sum of refunds that still hold money (a REFUNDCLOSE releases its amount).
    pub fn refunded(&self, order: &Order) -> u64 {
        order
            .refunds
            .iter()
            .filter_map(|n| self.refunds.get(n))
            .filter(|r| r.status != RefundStatus::Refundclose)
            .map(|r| r.refund_fee)
            .sum()
    }

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
            .filter(|r| r.status != RefundStatus::Refundclose)
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
            status: RefundStatus::Processing,
            created_at: now,
            settle_at,
            success_time: None,
            refund_account: req.refund_account.clone(),
            notify_url: req.notify_url.clone(),
            refund_desc: req.refund_desc.clone(),
            notify: NotifyLog::default(),
            coupons,
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
            if r.status != RefundStatus::Processing || (!force && r.settle_at > now) {
                continue;
            }
            let outcome = self
                .orders
                .get(&r.out_trade_no)
                .map(|o| o.outcome)
                .unwrap_or_default();
            r.status = match outcome {
                Outcome::Success => RefundStatus::Success,
                Outcome::Change => RefundStatus::Change,
                Outcome::Refundclose => RefundStatus::Refundclose,
            };
            if r.status == RefundStatus::Success {
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
}

/// The URL to push a notification to (if any) and its decrypted fields, in order.
pub type Notification = (Option<String>, Vec<(String, String)>);

impl State {
    /// The decrypted fields of the refund notification (doc §7) and the URL to push them to.
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
        f.push(("refund_request_source".into(), "API".into()));
        f.push(("cash_refund_fee".into(), r.cash_refund_fee().to_string()));
        Some((url, f))
    }
}

/// WeChat refund ids look like `50000408942018111511434556789`: "50", then digits (29 in all).
fn new_refund_id(now: OffsetDateTime) -> String {
    let t = now.to_offset(BEIJING);
    let r: u64 = rand::random::<u64>() % 10_000_000_000;
    format!(
        "50{:06}{:04}{:02}{:02}{:05}{:010}",
        rand::random::<u32>() % 1_000_000,
        t.year(),
        u8::from(t.month()),
        t.day(),
        rand::random::<u32>() % 100_000,
        r
    )
}

/// A coupon id like WeChat's (digits); the index keeps the ids of one order distinct.
fn new_coupon_id(index: usize) -> String {
    format!(
        "{:010}{:02}",
        rand::random::<u64>() % 10_000_000_000,
        index % 100
    )
}

/// A 28-digit transaction id like WeChat's (`4200001234202501011234567890`).
pub fn new_transaction_id(now: OffsetDateTime) -> String {
    let t = now.to_offset(BEIJING);
    format!(
        "42000{:05}{:04}{:02}{:02}{:010}",
        rand::random::<u32>() % 100_000,
        t.year(),
        u8::from(t.month()),
        t.day(),
        rand::random::<u64>() % 10_000_000_000
    )
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

impl AdminError {
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "bad_request",
            AdminError::NotFound(_) => "not_found",
            AdminError::Conflict(_) => "conflict",
        }
    }
}

/// `POST /sandbox/orders`: a paid order.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub out_trade_no: String,
    #[serde(default)]
    pub transaction_id: Option<String>,
    pub total_fee: u64,
    /// RFC 3339 or `yyyy-MM-dd HH:mm:ss` (Beijing); default now.
    #[serde(default)]
    pub paid_at: Option<String>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub notify_url: Option<String>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Coupons that paid part of the order (together less than `total_fee`).
    #[serde(default)]
    pub coupons: Vec<NewCoupon>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RefundView {
    pub out_refund_no: String,
    pub refund_id: String,
    pub refund_fee: u64,
    pub status: RefundStatus,
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

/// A cheap, cloneable handle on the books (shared by the server, the admin API and tests).
#[derive(Clone, Debug, Default)]
pub struct Books {
    inner: Arc<Mutex<State>>,
    /// Where changes are saved; None keeps the books in memory only.
    store: Option<Arc<Store>>,
}

/// Read access to the books (changes go through [`Books::update`], which saves them).
pub struct BooksRead<'a>(MutexGuard<'a, State>);

impl Deref for BooksRead<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl Books {
    /// Books starting from `state` (e.g. loaded from `store`), saved to `store` after each change.
    pub fn new(state: State, store: Option<Arc<Store>>) -> Books {
        Books {
            inner: Arc::new(Mutex::new(state)),
            store,
        }
    }

    /// A poisoned lock is recovered (the sandbox must keep answering).
    fn raw(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, read-only.
    pub fn read(&self) -> BooksRead<'_> {
        BooksRead(self.raw())
    }

    /// The same as [`Books::read`]: the name callers used before changes had to be saved.
    pub fn lock(&self) -> BooksRead<'_> {
        self.read()
    }

    /// Runs `f` on the state under the lock. If it changed the books (see [`State::touch`]) and a
    /// store is attached, a snapshot containing the change is on disk when this returns, so a
    /// reply sent afterwards never reports something a kill could take back.
    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, before, after) = {
            let mut st = self.raw();
            let before = st.generation;
            let result = f(&mut st);
            (result, before, st.generation)
        };
        if after != before
            && let Some(store) = &self.store
        {
            // Outside the books lock: requests keep being served while the file is written, and
            // whoever writes next saves every change made meanwhile (group commit).
            store.commit(after, || self.raw().clone());
        }
        result
    }

    pub fn create_order(&self, new: NewOrder) -> Result<OrderView, AdminError> {
        let now = OffsetDateTime::now_utc();
        wxpay::OutTradeNo::new(new.out_trade_no.clone())
            .map_err(|e| AdminError::BadRequest(e.to_string()))?;
        if new.total_fee == 0 || new.total_fee > wxpay::money::MAX_FEN {
            return Err(AdminError::BadRequest(
                "total_fee must be a positive number of fen".into(),
            ));
        }
        let transaction_id = match new.transaction_id {
            Some(t) => wxpay::TransactionId::new(t)
                .map_err(|e| AdminError::BadRequest(e.to_string()))?
                .as_str()
                .to_string(),
            None => new_transaction_id(now),
        };
        let paid_at = match new.paid_at.as_deref() {
            Some(s) => parse_time(s).ok_or_else(|| {
                AdminError::BadRequest(format!(
                    "paid_at {s:?} is neither RFC 3339 nor yyyy-MM-dd HH:mm:ss"
                ))
            })?,
            None => now,
        };
        let coupons: Vec<Coupon> = new
            .coupons
            .into_iter()
            .enumerate()
            .map(|(i, c)| Coupon {
                coupon_id: c.coupon_id.unwrap_or_else(|| new_coupon_id(i)),
                coupon_type: c.coupon_type,
                fee: c.fee,
            })
            .collect();
        check_coupons(&coupons, new.total_fee).map_err(AdminError::BadRequest)?;
        let order = Order {
            out_trade_no: new.out_trade_no.clone(),
            transaction_id,
            total_fee: new.total_fee,
            paid_at,
            outcome: new.outcome.unwrap_or_default(),
            notify_url: new.notify_url.filter(|u| !u.is_empty()),
            faults: new.faults,
            refunds: Vec::new(),
            coupons,
        };
        self.update(|st| {
            st.insert_order(order)?;
            view(st, &new.out_trade_no).ok_or(AdminError::NotFound(new.out_trade_no))
        })
    }

    pub fn order(&self, out_trade_no: &str) -> Option<OrderView> {
        view(&self.read(), out_trade_no)
    }

    pub fn orders(&self) -> Vec<OrderView> {
        let st = self.read();
        st.orders.keys().filter_map(|k| view(&st, k)).collect()
    }

    pub fn refund(&self, out_refund_no: &str) -> Option<RefundView> {
        let st = self.read();
        st.refunds.get(out_refund_no).map(|r| refund_view(&st, r))
    }

    /// How many apply requests carried this out_refund_no (0 if none).
    pub fn apply_calls(&self, out_refund_no: &str) -> u32 {
        self.read()
            .apply_calls
            .get(out_refund_no)
            .copied()
            .unwrap_or(0)
    }

    /// Adds a fault to an order (`Some`) or globally (`None`).
    pub fn add_fault(&self, order: Option<&str>, fault: Fault) -> Result<(), AdminError> {
        self.update(|st| {
            match order {
                Some(o) => st
                    .orders
                    .get_mut(o)
                    .ok_or_else(|| AdminError::NotFound(format!("no order {o}")))?
                    .faults
                    .push(fault),
                None => st.faults.push(fault),
            }
            st.touch();
            Ok(())
        })
    }

    pub fn clear_faults(&self, order: Option<&str>) -> Result<(), AdminError> {
        self.update(|st| {
            let list = match order {
                Some(o) => {
                    &mut st
                        .orders
                        .get_mut(o)
                        .ok_or_else(|| AdminError::NotFound(format!("no order {o}")))?
                        .faults
                }
                None => &mut st.faults,
            };
            // Clearing an empty list changes nothing and need not be saved.
            if !list.is_empty() {
                list.clear();
                st.touch();
            }
            Ok(())
        })
    }

    pub fn global_faults(&self) -> Vec<Fault> {
        self.read().faults.clone()
    }
}

fn refund_view(st: &State, r: &Refund) -> RefundView {
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
    }
}

fn view(st: &State, out_trade_no: &str) -> Option<OrderView> {
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

/// Settle delay helper so callers don't mix clocks.
pub fn settle_deadline(after: Duration) -> Instant {
    Instant::now() + after
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies refunds of `amounts` to cash/coupons through [`split_refund`], checking the
    /// invariants after each; returns what was refunded of the cash and of each coupon.
    fn run(cash: u64, coupons: &[u64], amounts: &[u64]) -> (u64, Vec<u64>) {
        let (mut cash_left, mut left) = (cash, coupons.to_vec());
        for &r in amounts {
            let (c, parts) = split_refund(r, cash_left, &left).expect("refund fits");
            assert_eq!(
                c + parts.iter().sum::<u64>(),
                r,
                "parts add up to the refund"
            );
            cash_left = cash_left.checked_sub(c).expect("cash never overdrawn");
            for (l, p) in left.iter_mut().zip(&parts) {
                *l = l.checked_sub(*p).expect("coupon never overdrawn");
            }
        }
        (
            cash - cash_left,
            coupons.iter().zip(&left).map(|(c, l)| c - l).collect(),
        )
    }

    #[test]
    fn split_is_proportional_and_the_completing_refund_takes_the_rest() {
        // GIVEN 850 cash + coupons of 100 and 50 WHEN 300 then 700 are refunded
        let (mut cash, mut left) = (850, vec![100, 50]);
        let (c, parts) = split_refund(300, cash, &left).unwrap();
        // THEN 300 = 30 + 15 coupons + 255 cash
        assert_eq!((c, parts.clone()), (255, vec![30, 15]));
        cash -= c;
        left = left.iter().zip(&parts).map(|(l, p)| l - p).collect();
        // AND the completing 700 refunds exactly what is left of each
        assert_eq!(split_refund(700, cash, &left), Some((595, vec![70, 35])));
        // AND more than is left is refused
        assert_eq!(split_refund(701, cash, &left), None);
    }

    #[test]
    fn small_refunds_never_overdraw_cash_and_sums_come_out_exact() {
        // GIVEN 1 fen of cash and coupons of 500 and 499 (rounding down both leaves no cash)
        // WHEN the order is refunded 1 fen at a time, then with uneven amounts
        let ones = vec![1; 1000];
        // THEN nothing is overdrawn (checked in `run`) and everything is refunded exactly
        assert_eq!(run(1, &[500, 499], &ones), (1, vec![500, 499]));
        let uneven = [7, 333, 1, 1, 2, 250, 99, 307];
        assert_eq!(uneven.iter().sum::<u64>(), 1000);
        assert_eq!(run(850, &[100, 50], &uneven), (850, vec![100, 50]));
        assert_eq!(run(3, &[331, 333, 333], &uneven), (3, vec![331, 333, 333]));
        // AND without coupons everything is cash
        assert_eq!(split_refund(5, 10, &[]), Some((5, vec![])));
    }

    #[test]
    fn split_handles_the_largest_amounts_without_overflow() {
        // GIVEN amounts near the money limit, whose products exceed u64
        let max = wxpay::money::MAX_FEN;
        // WHEN a refund of almost everything is split THEN parts are exact and within bounds
        let (c, parts) = split_refund(max - 1, 1, &[max / 2, max / 2 - 1]).unwrap();
        assert_eq!(c + parts.iter().sum::<u64>(), max - 1);
        assert!(parts[0] <= max / 2 && parts[1] < max / 2 && c <= 1);
        // AND an overflowing "left" total is refused, not wrapped
        assert_eq!(split_refund(1, u64::MAX, &[1]), None);
    }

    #[test]
    fn coupons_are_checked() {
        let c = |id: &str, fee| Coupon {
            coupon_id: id.into(),
            coupon_type: CouponType::Cash,
            fee,
        };
        // GIVEN valid coupons THEN accepted
        assert_eq!(check_coupons(&[c("C1", 100), c("C2", 50)], 1000), Ok(()));
        // WHEN they reach the total, repeat an id, are worth nothing, or have a bad id THEN refused
        let e = check_coupons(&[c("C1", 600), c("C2", 400)], 1000).unwrap_err();
        assert!(e.contains("less than total_fee"), "{e}");
        assert!(check_coupons(&[c("C1", u64::MAX), c("C2", 1)], 1000).is_err());
        let e = check_coupons(&[c("C1", 1), c("C1", 1)], 1000).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(check_coupons(&[c("C1", 0)], 1000).is_err());
        for bad in ["", "a]]>b", "x".repeat(21).as_str(), "券"] {
            assert!(check_coupons(&[c(bad, 1)], 1000).is_err(), "{bad:?}");
        }
        let many: Vec<Coupon> = (0..21).map(|i| c(&format!("C{i}"), 1)).collect();
        assert!(check_coupons(&many, 1000).is_err());
    }
}
