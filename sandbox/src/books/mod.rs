//! The sandbox's books: paid orders, their refunds, injected faults and the notification log, in
//! memory behind one mutex (and, when a store is attached, saved to `books.json` after every
//! change), plus the refund rules of docs/PROTOCOL.md "Business rules and limits" that decide what a request does.
//!
//! Inside, each file is one concept; the dependency order is
//! `coupons`, `errors`, `faults`, `ids` → `model` → `rules`, `views`, `snapshot` → `persisted`.

mod coupons;
mod errors;
mod faults;
mod ids;
mod model;
mod persisted;
mod rules;
pub mod snapshot;
mod views;

pub use coupons::{
    Coupon, CouponRefund, CouponType, MAX_COUPONS_PER_ORDER, NewCoupon, check_coupons, split_refund,
};
pub use errors::{AdminError, BizError};
pub use faults::{Endpoint, Fault, FaultKind, FaultTarget, Phase};
pub use ids::new_transaction_id;
pub use model::{BookedStatus, NotifyLog, Order, OrderKey, Outcome, Refund, RefundSource, State};
pub use persisted::{Books, BooksRead, NewOrder, NewRefund};
pub use rules::{
    Accepted, ApplyRequest, DEFAULT_REFUND_ACCOUNT, MAX_REFUNDS_PER_ORDER, REFUND_WINDOW_DAYS,
    Selector,
};
pub use views::{Notification, OrderView, RefundView, refund_view};
