//! The format of `books.json`: a versioned snapshot of the whole [`State`] (borrowed when saving,
//! owned when loading), checked on load so a file that does not make sense is refused, not guessed.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::coupons::{Coupon, CouponRefund};
use super::faults::Fault;
use super::model::{BookedStatus, NotifyLog, Order, Outcome, Refund, RefundSource, State};
use crate::persist::{PersistError, Store};

/// Bumped when the file format changes incompatibly; other versions are refused, not guessed.
pub const FORMAT_VERSION: u32 = 1;

/// The books saved in `store`, or None when there is no file yet. A file that is there but cannot
/// be read or understood is an error: starting empty would silently forget refunds.
pub fn load(store: &Store) -> Result<Option<State>, PersistError> {
    let Some(bytes) = store.read()? else {
        return Ok(None);
    };
    decode(&bytes, OffsetDateTime::now_utc(), Instant::now())
        .map(Some)
        .map_err(|reason| store.corrupt(reason))
}

// The file format. Borrowed (`Cow`) so that saving copies nothing; loading owns everything.

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot<'a> {
    version: u32,
    #[serde(with = "time::serde::rfc3339")]
    saved_at: OffsetDateTime,
    orders: Vec<OrderRec<'a>>,
    refunds: Vec<RefundRec<'a>>,
    apply_calls: Cow<'a, HashMap<String, u32>>,
    faults: Cow<'a, [Fault]>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRec<'a> {
    out_trade_no: Cow<'a, str>,
    transaction_id: Cow<'a, str>,
    total_fee: u64,
    #[serde(with = "time::serde::rfc3339")]
    paid_at: OffsetDateTime,
    outcome: Outcome,
    notify_url: Option<Cow<'a, str>>,
    faults: Cow<'a, [Fault]>,
    /// out_refund_no values in the order they were accepted.
    refunds: Cow<'a, [String]>,
    /// Absent in files written before coupons existed, and left out when there are none (which
    /// keeps coupon-free snapshots as they were).
    #[serde(default, skip_serializing_if = "is_empty")]
    coupons: Cow<'a, [Coupon]>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRec<'a> {
    out_refund_no: Cow<'a, str>,
    refund_id: Cow<'a, str>,
    out_trade_no: Cow<'a, str>,
    refund_fee: u64,
    total_fee: u64,
    status: BookedStatus,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// When a PROCESSING refund settles, as wall-clock time (the in-memory deadline is monotonic
    /// and means nothing to another process).
    #[serde(with = "time::serde::rfc3339")]
    settle_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    success_time: Option<OffsetDateTime>,
    refund_account: Cow<'a, str>,
    notify_url: Option<Cow<'a, str>>,
    refund_desc: Option<Cow<'a, str>>,
    notify: NotifyRec<'a>,
    /// As for [`OrderRec::coupons`].
    #[serde(default, skip_serializing_if = "is_empty")]
    coupons: Cow<'a, [CouponRefund]>,
    /// Absent for `API`, the only source before admin-created refunds existed.
    #[serde(default, skip_serializing_if = "RefundSource::is_api")]
    refund_request_source: RefundSource,
}

fn is_empty<T>(list: &[T]) -> bool {
    list.is_empty()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyRec<'a> {
    url: Option<Cow<'a, str>>,
    attempts: u32,
    delivered: bool,
    gave_up: bool,
    last_error: Option<Cow<'a, str>>,
    #[serde(with = "time::serde::rfc3339::option")]
    next_attempt_at: Option<OffsetDateTime>,
    /// Absent (0) until a resolved CHANGE refund is notified again.
    #[serde(default, skip_serializing_if = "is_zero")]
    round: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn opt(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(Cow::Borrowed)
}

/// `Instant` → wall clock, relative to a pair of "now"s taken together.
fn to_wall(at: Instant, now: Instant, wall: OffsetDateTime) -> OffsetDateTime {
    let ahead = at.saturating_duration_since(now);
    wall.checked_add(time::Duration::try_from(ahead).unwrap_or(time::Duration::ZERO))
        .unwrap_or(wall)
}

/// Wall clock → `Instant`; a time already past is due now.
fn to_instant(at: OffsetDateTime, now: Instant, wall: OffsetDateTime) -> Instant {
    let ahead = std::time::Duration::try_from(at - wall).unwrap_or_default();
    now.checked_add(ahead).unwrap_or(now)
}

/// The books as `books.json` bytes. Serde cannot refuse this data (string keys, no floats); should
/// it ever, the error is returned so that nothing is written over the last good file.
pub fn encode(st: &State) -> Result<Vec<u8>, String> {
    let (now, wall) = (Instant::now(), OffsetDateTime::now_utc());
    let snap = Snapshot {
        version: FORMAT_VERSION,
        saved_at: wall,
        orders: st
            .orders
            .values()
            .map(|o| OrderRec {
                out_trade_no: Cow::Borrowed(&o.out_trade_no),
                transaction_id: Cow::Borrowed(&o.transaction_id),
                total_fee: o.total_fee,
                paid_at: o.paid_at,
                outcome: o.outcome,
                notify_url: opt(&o.notify_url),
                faults: Cow::Borrowed(&o.faults),
                refunds: Cow::Borrowed(&o.refunds),
                coupons: Cow::Borrowed(&o.coupons),
            })
            .collect(),
        refunds: st
            .refunds
            .values()
            .map(|r| RefundRec {
                out_refund_no: Cow::Borrowed(&r.out_refund_no),
                refund_id: Cow::Borrowed(&r.refund_id),
                out_trade_no: Cow::Borrowed(&r.out_trade_no),
                refund_fee: r.refund_fee,
                total_fee: r.total_fee,
                status: r.status,
                created_at: r.created_at,
                settle_at: to_wall(r.settle_at, now, wall),
                success_time: r.success_time,
                refund_account: Cow::Borrowed(&r.refund_account),
                notify_url: opt(&r.notify_url),
                refund_desc: opt(&r.refund_desc),
                notify: NotifyRec {
                    url: opt(&r.notify.url),
                    attempts: r.notify.attempts,
                    delivered: r.notify.delivered,
                    gave_up: r.notify.gave_up,
                    last_error: opt(&r.notify.last_error),
                    next_attempt_at: r.notify.next_attempt_at,
                    round: r.notify.round,
                },
                coupons: Cow::Borrowed(&r.coupons),
                refund_request_source: r.source,
            })
            .collect(),
        apply_calls: Cow::Borrowed(&st.apply_calls),
        faults: Cow::Borrowed(&st.faults),
    };
    serde_json::to_vec(&snap).map_err(|e| format!("encoding the sandbox books: {e}"))
}

/// Parses and checks `books.json` bytes; `Err` says what is wrong.
pub fn decode(bytes: &[u8], wall: OffsetDateTime, now: Instant) -> Result<State, String> {
    let snap: Snapshot<'static> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if snap.version != FORMAT_VERSION {
        return Err(format!(
            "format version {} (this sandbox reads {FORMAT_VERSION})",
            snap.version
        ));
    }
    let own = |c: Option<Cow<'_, str>>| c.map(Cow::into_owned);
    let orders = snap
        .orders
        .into_iter()
        .map(|o| Order {
            out_trade_no: o.out_trade_no.into_owned(),
            transaction_id: o.transaction_id.into_owned(),
            total_fee: o.total_fee,
            paid_at: o.paid_at,
            outcome: o.outcome,
            notify_url: own(o.notify_url),
            faults: o.faults.into_owned(),
            refunds: o.refunds.into_owned(),
            coupons: o.coupons.into_owned(),
        })
        .collect();
    let refunds = snap
        .refunds
        .into_iter()
        .map(|r| Refund {
            out_refund_no: r.out_refund_no.into_owned(),
            refund_id: r.refund_id.into_owned(),
            out_trade_no: r.out_trade_no.into_owned(),
            refund_fee: r.refund_fee,
            total_fee: r.total_fee,
            status: r.status,
            created_at: r.created_at,
            settle_at: to_instant(r.settle_at, now, wall),
            success_time: r.success_time,
            refund_account: r.refund_account.into_owned(),
            notify_url: own(r.notify_url),
            refund_desc: own(r.refund_desc),
            notify: NotifyLog {
                url: own(r.notify.url),
                attempts: r.notify.attempts,
                delivered: r.notify.delivered,
                gave_up: r.notify.gave_up,
                last_error: own(r.notify.last_error),
                next_attempt_at: r.notify.next_attempt_at,
                round: r.notify.round,
            },
            coupons: r.coupons.into_owned(),
            source: r.refund_request_source,
        })
        .collect();
    State::from_parts(
        orders,
        refunds,
        snap.apply_calls.into_owned(),
        snap.faults.into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::books::{ApplyRequest, OrderKey};

    fn encoded(st: &State) -> Vec<u8> {
        encode(st).unwrap()
    }

    fn state_with(orders: usize, refunds_per_order: usize) -> State {
        let mut st = State::default();
        let now = OffsetDateTime::now_utc();
        for o in 0..orders {
            let out_trade_no = format!("order-{o:04}");
            st.insert_order(Order {
                out_trade_no: out_trade_no.clone(),
                transaction_id: crate::books::new_transaction_id(now),
                total_fee: 1_000_000,
                paid_at: now,
                outcome: Outcome::Success,
                notify_url: Some("http://127.0.0.1:3000/wxpay/refund-notify".into()),
                faults: Vec::new(),
                refunds: Vec::new(),
                coupons: Vec::new(),
            })
            .unwrap();
            for r in 0..refunds_per_order {
                let out_refund_no = format!("refund-{o:04}-{r:02}");
                st.count_apply_call(&out_refund_no);
                st.apply(
                    &ApplyRequest {
                        order: OrderKey::OutTradeNo(out_trade_no.clone()),
                        out_refund_no,
                        total_fee: 1_000_000,
                        refund_fee: 100,
                        refund_account: "REFUND_SOURCE_UNSETTLED_FUNDS".into(),
                        notify_url: None,
                        refund_desc: Some("退款".into()),
                        source: Default::default(),
                    },
                    now,
                    Instant::now() + std::time::Duration::from_secs(60),
                )
                .unwrap();
            }
        }
        st
    }

    #[test]
    fn a_snapshot_round_trips() {
        // GIVEN books with orders, refunds (one settled with a pending notification) and faults
        let mut st = state_with(2, 3);
        st.faults.push(Fault {
            kind: crate::books::FaultKind::NotEnough,
            times: Some(2),
            on: Default::default(),
        });
        st.settle(Instant::now(), OffsetDateTime::now_utc(), true);
        st.record_notify_attempt(
            "refund-0000-00",
            0,
            Err("HTTP 500".into()),
            Some(OffsetDateTime::now_utc()),
        );
        // WHEN it is encoded and decoded
        let back = decode(&encoded(&st), OffsetDateTime::now_utc(), Instant::now()).unwrap();
        // THEN everything is there, indexes included
        assert_eq!(back.orders.len(), 2);
        assert_eq!(back.refunds.len(), 6);
        assert_eq!(back.apply_calls.get("refund-0001-02"), Some(&1));
        assert_eq!(back.faults, st.faults);
        let r = &back.refunds["refund-0000-00"];
        assert_eq!(r.status, BookedStatus::Success);
        assert_eq!(r.refund_id, st.refunds["refund-0000-00"].refund_id);
        assert_eq!(r.notify.attempts, 1);
        assert!(r.notify.next_attempt_at.is_some());
        assert_eq!(r.refund_desc.as_deref(), Some("退款"));
        let txn = &st.orders["order-0001"].transaction_id;
        assert!(
            back.find_order(&OrderKey::TransactionId(txn.clone()))
                .is_some()
        );
        assert_eq!(back.orders["order-0000"].refunds.len(), 3);
    }

    /// An order of 1000 paid with a CASH coupon of 100 and a NO_CASH one of 50, refunded 300.
    fn state_with_coupons() -> State {
        let mut st = State::default();
        let now = OffsetDateTime::now_utc();
        st.insert_order(Order {
            out_trade_no: "order-cp".into(),
            transaction_id: crate::books::new_transaction_id(now),
            total_fee: 1000,
            paid_at: now,
            outcome: Outcome::Success,
            notify_url: None,
            faults: Vec::new(),
            refunds: Vec::new(),
            coupons: vec![
                Coupon {
                    coupon_id: "C1".into(),
                    coupon_type: crate::books::CouponType::Cash,
                    fee: 100,
                },
                Coupon {
                    coupon_id: "C2".into(),
                    coupon_type: crate::books::CouponType::NoCash,
                    fee: 50,
                },
            ],
        })
        .unwrap();
        st.apply(
            &ApplyRequest {
                order: OrderKey::OutTradeNo("order-cp".into()),
                out_refund_no: "refund-cp-1".into(),
                total_fee: 1000,
                refund_fee: 300,
                refund_account: "REFUND_SOURCE_UNSETTLED_FUNDS".into(),
                notify_url: None,
                refund_desc: None,
                source: Default::default(),
            },
            now,
            Instant::now(),
        )
        .unwrap();
        st
    }

    #[test]
    fn coupons_round_trip_and_files_without_them_still_load() {
        // GIVEN books with a coupon order and a refund of part of its coupons
        let st = state_with_coupons();
        assert_eq!(st.refunds["refund-cp-1"].coupons.len(), 2);
        // WHEN encoded and decoded THEN the coupons and the refund's parts come back
        let back = decode(&encoded(&st), OffsetDateTime::now_utc(), Instant::now()).unwrap();
        assert_eq!(
            back.orders["order-cp"].coupons,
            st.orders["order-cp"].coupons
        );
        let r = &back.refunds["refund-cp-1"];
        assert_eq!(r.coupons, st.refunds["refund-cp-1"].coupons);
        assert_eq!(
            (
                r.coupon_refund_fee(),
                r.cash_refund_fee(),
                r.settlement_refund_fee()
            ),
            (45, 255, 285)
        );
        // GIVEN a file written before coupons existed (no "coupons" keys at all)
        let old = encoded(&state_with(1, 2));
        let text = String::from_utf8(old.clone()).unwrap();
        assert!(
            !text.contains("coupons"),
            "coupon-free snapshots are unchanged"
        );
        // WHEN loaded THEN it loads, with no coupons and all-cash refunds
        let back = decode(&old, OffsetDateTime::now_utc(), Instant::now()).unwrap();
        assert!(back.orders["order-0000"].coupons.is_empty());
        let r = &back.refunds["refund-0000-01"];
        assert_eq!((r.coupon_refund_fee(), r.cash_refund_fee()), (0, 100));
    }

    #[test]
    fn coupon_parts_that_do_not_match_their_order_are_refused() {
        // GIVEN a valid coupon snapshot
        let good: serde_json::Value =
            serde_json::from_slice(&encoded(&state_with_coupons())).unwrap();
        let (wall, now) = (OffsetDateTime::now_utc(), Instant::now());
        // WHEN a refund names a coupon its order lacks, or its parts exceed it, or the order's
        // coupons reach its total
        let mut unknown = good.clone();
        unknown["refunds"][0]["coupons"][0]["coupon_refund_id"] = serde_json::json!("C9");
        let mut too_much = good.clone();
        too_much["refunds"][0]["coupons"][0]["coupon_refund_fee"] = serde_json::json!(301);
        let mut order = good.clone();
        order["orders"][0]["coupons"][0]["fee"] = serde_json::json!(950);
        // THEN each is refused with a reason
        for (bad, why) in [
            (unknown, "does not have"),
            (too_much, "exceed its refund_fee"),
            (order, "less than total_fee"),
        ] {
            let e = decode(&serde_json::to_vec(&bad).unwrap(), wall, now).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn inconsistent_or_foreign_files_are_refused() {
        // GIVEN a valid snapshot
        let st = state_with(1, 1);
        let good: serde_json::Value = serde_json::from_slice(&encoded(&st)).unwrap();
        let (wall, now) = (OffsetDateTime::now_utc(), Instant::now());
        // WHEN a refund loses its order, the version changes, or the bytes are not JSON
        let mut orphan = good.clone();
        orphan["orders"] = serde_json::json!([]);
        let mut version = good.clone();
        version["version"] = serde_json::json!(99);
        // THEN each is refused with a reason
        let e = decode(&serde_json::to_vec(&orphan).unwrap(), wall, now).unwrap_err();
        assert!(e.contains("not in the file"), "{e}");
        let e = decode(&serde_json::to_vec(&version).unwrap(), wall, now).unwrap_err();
        assert!(e.contains("format version 99"), "{e}");
        assert!(decode(b"{\"version\":1,", wall, now).is_err());
        assert!(decode(b"", wall, now).is_err());
    }

    #[test]
    fn sources_and_notification_rounds_round_trip_and_older_files_still_load() {
        // GIVEN books as they were before platform refunds and resolutions existed
        let old = encoded(&state_with(1, 2));
        let text = String::from_utf8(old.clone()).unwrap();
        // THEN they are written exactly as before (no new keys)
        assert!(!text.contains("refund_request_source") && !text.contains("round"));
        // AND loaded as API refunds on their first notification
        let back = decode(&old, OffsetDateTime::now_utc(), Instant::now()).unwrap();
        let r = &back.refunds["refund-0000-01"];
        assert_eq!((r.source, r.notify.round), (RefundSource::Api, 0));
        // GIVEN a platform refund whose CHANGE was resolved (notification round 1)
        let mut st = state_with(1, 0);
        st.orders.get_mut("order-0000").unwrap().outcome = Outcome::Change;
        let req = ApplyRequest {
            order: OrderKey::OutTradeNo("order-0000".into()),
            out_refund_no: "vendor-1".into(),
            total_fee: 1_000_000,
            refund_fee: 5,
            refund_account: "REFUND_SOURCE_UNSETTLED_FUNDS".into(),
            notify_url: None,
            refund_desc: None,
            source: RefundSource::VendorPlatform,
        };
        st.apply(&req, OffsetDateTime::now_utc(), Instant::now())
            .unwrap();
        st.settle(Instant::now(), OffsetDateTime::now_utc(), true);
        st.resolve("vendor-1", OffsetDateTime::now_utc()).unwrap();
        // WHEN encoded and decoded THEN source, status and round come back
        let back = decode(&encoded(&st), OffsetDateTime::now_utc(), Instant::now()).unwrap();
        let r = &back.refunds["vendor-1"];
        assert_eq!(r.source, RefundSource::VendorPlatform);
        assert_eq!(r.status, BookedStatus::Success);
        assert_eq!(r.notify.round, 1);
        assert!(r.success_time.is_some());
    }

    /// Run with `cargo test -p wxpay-sandbox --release --lib snapshot_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, prints numbers"]
    fn snapshot_cost() {
        let st = state_with(50, 50);
        let dir = std::env::temp_dir().join(format!("wxpay-sandbox-cost-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        let n = 50u32;
        let t = std::time::Instant::now();
        for _ in 0..n {
            drop(st.clone());
        }
        let clone = t.elapsed() / n;
        let t = std::time::Instant::now();
        let mut len = 0;
        for _ in 0..n {
            len = encoded(&st).len();
        }
        let enc = t.elapsed() / n;
        let bytes = encoded(&st);
        let t = std::time::Instant::now();
        for _ in 0..n {
            store.write(&bytes).unwrap();
        }
        let write = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            decode(&bytes, OffsetDateTime::now_utc(), Instant::now()).unwrap();
        }
        let dec = t.elapsed() / n;
        println!(
            "50 orders x 50 refunds: {len} bytes; copy under the lock {clone:?}, encode {enc:?}, \
             write+fsync+rename {write:?}, decode {dec:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
