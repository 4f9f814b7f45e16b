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
}

impl Refund {
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
            st.insert_order(o).map_err(|e| e.to_string())?;
        }
        for r in refunds {
            let Some(o) = st.orders.get(&r.out_trade_no) else {
                return Err(format!(
                    "refund {} names order {}, which is not in the file",
                    r.out_refund_no, r.out_trade_no
                ));
            };
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
            ("refund_fee".into(), r.refund_fee.to_string()),
            ("settlement_refund_fee".into(), r.refund_fee.to_string()),
            ("refund_status".into(), r.status.as_str().into()),
        ];
        if let Some(t) = r.success_time {
            f.push(("success_time".into(), wechat_time(t)));
        }
        f.push(("refund_recv_accout".into(), r.recv_account().into()));
        f.push(("refund_account".into(), r.refund_account.clone()));
        f.push(("refund_request_source".into(), "API".into()));
        f.push(("cash_refund_fee".into(), r.refund_fee.to_string()));
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
        let order = Order {
            out_trade_no: new.out_trade_no.clone(),
            transaction_id,
            total_fee: new.total_fee,
            paid_at,
            outcome: new.outcome.unwrap_or_default(),
            notify_url: new.notify_url.filter(|u| !u.is_empty()),
            faults: new.faults,
            refunds: Vec::new(),
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
    })
}

/// Settle delay helper so callers don't mix clocks.
pub fn settle_deadline(after: Duration) -> Instant {
    Instant::now() + after
}
