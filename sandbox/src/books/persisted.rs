//! The persisted handle on the books: [`Books`] (one mutex around the [`State`], every change
//! saved to the attached [`Store`] before it is answered) and the admin operations on it.

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;
use wxpay::Fen;

use super::coupons::{Coupon, NewCoupon, check_coupons};
use super::errors::AdminError;
use super::faults::Fault;
use super::ids::{new_coupon_id, new_transaction_id};
use super::model::{Order, OrderKey, Outcome, RefundSource, State};
use super::rules::{ApplyRequest, DEFAULT_REFUND_ACCOUNT};
use super::snapshot;
use super::views::{OrderView, RefundView, order_view, refund_view};
use crate::beijing::parse_time;
use crate::persist::Store;

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

/// `POST /sandbox/orders/{out_trade_no}/refunds`: a refund made in the merchant platform.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewRefund {
    pub out_refund_no: String,
    /// Fen, > 0.
    pub refund_fee: u64,
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
            let before = st.generation();
            let result = f(&mut st);
            (result, before, st.generation())
        };
        if after != before
            && let Some(store) = &self.store
        {
            // Outside the books lock: requests keep being served while the file is written, and
            // whoever writes next saves every change made meanwhile (group commit).
            store.commit(after, || {
                // The copy is taken under the lock (so it is a state that existed) and encoded
                // after the guard is dropped at the end of this statement: encoding is the slow part.
                let copy = self.raw().clone();
                snapshot::encode(&copy).map(|bytes| (copy.generation(), bytes))
            });
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
        if let Some(e) = new.faults.iter().find_map(|f| f.check_for_order().err()) {
            return Err(AdminError::BadRequest(format!("fault: {e}")));
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
            order_view(st, &new.out_trade_no).ok_or(AdminError::NotFound(new.out_trade_no))
        })
    }

    pub fn order(&self, out_trade_no: &str) -> Option<OrderView> {
        order_view(&self.read(), out_trade_no)
    }

    pub fn orders(&self) -> Vec<OrderView> {
        let st = self.read();
        st.orders
            .keys()
            .filter_map(|k| order_view(&st, k))
            .collect()
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
        self.add_faults(order, vec![fault])
    }

    /// Adds faults, in this order, after the ones already there: all of them or, when one is
    /// refused by [`Fault::check`] (for an order: [`Fault::check_for_order`]), none.
    pub fn add_faults(&self, order: Option<&str>, faults: Vec<Fault>) -> Result<(), AdminError> {
        let check = |f: &Fault| match order {
            Some(_) => f.check_for_order(),
            None => f.check(),
        };
        if let Some(e) = faults.iter().find_map(|f| check(f).err()) {
            return Err(AdminError::BadRequest(e));
        }
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
            if !faults.is_empty() {
                list.extend(faults);
                st.touch();
            }
            Ok(())
        })
    }

    /// A refund made in the merchant platform rather than by an apply request
    /// (`refund_request_source=VENDOR_PLATFORM`): the same rules as an apply for the order's
    /// whole `total_fee`, settling after `settle_after` and notified like any other. True when it
    /// is new; false when the same number, order and amount already had one (returned as it is).
    pub fn create_refund(
        &self,
        out_trade_no: &str,
        new: NewRefund,
        settle_after: Duration,
    ) -> Result<(RefundView, bool), AdminError> {
        let bad = |e: &dyn std::fmt::Display| AdminError::BadRequest(e.to_string());
        wxpay::OutRefundNo::new(new.out_refund_no.clone()).map_err(|e| bad(&e))?;
        let refund_fee =
            Fen::positive(new.refund_fee).map_err(|e| bad(&format!("refund_fee: {e}")))?;
        let now = OffsetDateTime::now_utc();
        let settle_at = Instant::now() + settle_after;
        self.update(|st| {
            let total_fee = st
                .orders
                .get(out_trade_no)
                .map(|o| o.total_fee)
                .ok_or_else(|| AdminError::NotFound(format!("no order {out_trade_no}")))?;
            let req = ApplyRequest {
                order: OrderKey::OutTradeNo(out_trade_no.to_string()),
                out_refund_no: new.out_refund_no,
                total_fee,
                refund_fee: refund_fee.get(),
                refund_account: DEFAULT_REFUND_ACCOUNT.to_string(),
                notify_url: None,
                refund_desc: None,
                source: RefundSource::VendorPlatform,
            };
            let accepted = st
                .apply(&req, now, settle_at)
                .map_err(AdminError::Refused)?;
            Ok((refund_view(st, &accepted.refund), accepted.new))
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
