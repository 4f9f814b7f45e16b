//! `/pay/refundquery`: selectors and their priority, `_$n` records, paging with `offset`, statuses.

use wxpay::SignType;
use wxpay_sandbox::{NewOrder, Outcome};

use crate::common::*;

#[tokio::test]
async fn pages_36_refunds_with_offset() {
    // GIVEN an order with 36 refunds of 1..=36 fen
    let sb = start("paging").await;
    order(&sb, "order-page", 10_000);
    for i in 0..36u64 {
        let r = apply(&sb, "order-page", &format!("rp-{i:02}"), 10_000, i + 1).await;
        assert_eq!(r.get("result_code"), Some("SUCCESS"));
    }
    // WHEN queried by order number without offset THEN the first 10, and (docs/PROTOCOL.md "Refund query") the total
    let r = query(&sb, &[("out_trade_no", "order-page")]).await;
    assert_signed(&sb, &r, SignType::Md5);
    assert_eq!(r.get("refund_count"), Some("10"));
    assert_eq!(r.get("total_refund_count"), Some("36"));
    assert_eq!(r.get("out_refund_no_0"), Some("rp-00"));
    assert_eq!(r.get("out_refund_no_9"), Some("rp-09"));
    assert!(!r.contains("out_refund_no_10"));
    // WHEN paging with offset 0, 10, 20, 30 THEN records N..N+9, 36 distinct in all
    let mut seen = Vec::new();
    for (offset, count) in [(0, 10), (10, 10), (20, 10), (30, 6)] {
        let off = offset.to_string();
        let r = query(&sb, &[("out_trade_no", "order-page"), ("offset", &off)]).await;
        assert_eq!(
            r.get("refund_count"),
            Some(count.to_string().as_str()),
            "{r:?}"
        );
        assert_eq!(r.get("total_refund_count"), Some("36"));
        let mut page_sum = 0u64;
        for n in 0..count {
            let no = r.get(&format!("out_refund_no_{n}")).unwrap().to_string();
            assert_eq!(no, format!("rp-{:02}", offset + n));
            page_sum += r
                .get(&format!("refund_fee_{n}"))
                .unwrap()
                .parse::<u64>()
                .unwrap();
            seen.push(no);
        }
        assert_eq!(r.get("refund_fee"), Some(page_sum.to_string().as_str()));
    }
    seen.dedup();
    assert_eq!(seen.len(), 36);
    // offset 24 → 24..33
    let r = query(&sb, &[("out_trade_no", "order-page"), ("offset", "24")]).await;
    assert_eq!(r.get("out_refund_no_0"), Some("rp-24"));
    assert_eq!(r.get("out_refund_no_9"), Some("rp-33"));
    // offset ≥ total → PARAM_ERROR; a non-number too
    for off in ["36", "37", "x", "-1"] {
        let r = query(&sb, &[("out_trade_no", "order-page"), ("offset", off)]).await;
        assert_biz_fail(&sb, &r, "PARAM_ERROR");
    }
}

#[tokio::test]
async fn selectors_priority_and_record_fields() {
    let sb = start("select").await;
    let a = order(&sb, "order-qa", 1000);
    order(&sb, "order-qb", 1000);
    let ra = apply(&sb, "order-qa", "rq-a", 1000, 100).await;
    let rb = apply(&sb, "order-qb", "rq-b", 1000, 200).await;
    let id_b = rb.get("refund_id").unwrap().to_string();

    // refund_id beats everything
    let r = query(
        &sb,
        &[
            ("refund_id", &id_b),
            ("out_refund_no", "rq-a"),
            ("transaction_id", &a.transaction_id),
            ("out_trade_no", "order-qa"),
        ],
    )
    .await;
    assert_eq!(r.get("out_refund_no_0"), Some("rq-b"), "{r:?}");
    assert_eq!(r.get("out_trade_no"), Some("order-qb"));
    assert!(!r.contains("total_refund_count"), "no offset, one record");
    // out_refund_no beats order numbers
    let r = query(
        &sb,
        &[("out_refund_no", "rq-b"), ("out_trade_no", "order-qa")],
    )
    .await;
    assert_eq!(r.get("out_refund_no_0"), Some("rq-b"));
    // transaction_id beats out_trade_no
    let r = query(
        &sb,
        &[
            ("transaction_id", &a.transaction_id),
            ("out_trade_no", "order-qb"),
        ],
    )
    .await;
    assert_eq!(r.get("out_refund_no_0"), Some("rq-a"));
    // record fields while PROCESSING: no success time
    assert_eq!(r.get("refund_id_0"), ra.get("refund_id"));
    assert_eq!(r.get("refund_status_0"), Some("PROCESSING"));
    assert_eq!(r.get("refund_fee_0"), Some("100"));
    assert_eq!(
        r.get("refund_account_0"),
        Some("REFUND_SOURCE_UNSETTLED_FUNDS")
    );
    assert_eq!(r.get("refund_recv_accout_0"), Some("支付用户零钱"));
    assert_eq!(r.get("coupon_refund_count_0"), Some("0"));
    assert_eq!(r.get("total_fee"), Some("1000"));
    assert!(!r.contains("refund_success_time_0"));

    // WHEN settled THEN SUCCESS with a success time
    sb.settle_now();
    let r = query(&sb, &[("out_refund_no", "rq-a")]).await;
    assert_eq!(r.get("refund_status_0"), Some("SUCCESS"));
    let t = r.get("refund_success_time_0").unwrap();
    assert_eq!(t.len(), "2025-01-01 00:00:00".len(), "{t}");

    // unknown numbers → REFUNDNOTEXIST; an order without refunds too; no selector → FAIL
    for sel in [
        ("refund_id", "5000000000"),
        ("out_refund_no", "nope"),
        ("out_trade_no", "order-none"),
    ] {
        let r = query(&sb, &[sel]).await;
        assert_biz_fail(&sb, &r, "REFUNDNOTEXIST");
    }
    order(&sb, "order-empty", 10);
    assert_biz_fail(
        &sb,
        &query(&sb, &[("out_trade_no", "order-empty")]).await,
        "REFUNDNOTEXIST",
    );
    assert_return_fail(&query(&sb, &[]).await, "缺少参数");
    // HMAC query → HMAC reply
    let r = call(
        &sb,
        &anonymous(&sb),
        "/pay/refundquery",
        SignType::HmacSha256,
        query_fields(&sb, &[("out_refund_no", "rq-a")]),
    )
    .await;
    assert_signed(&sb, &r, SignType::HmacSha256);
}

#[tokio::test]
async fn refunds_settle_after_the_delay_to_the_orders_outcome() {
    // GIVEN a short settle delay and orders asking for each outcome
    let sb = wxpay_sandbox::Sandbox::start(wxpay_sandbox::SandboxConfig {
        settle_after: std::time::Duration::from_millis(300),
        ..config("settle")
    })
    .await
    .unwrap();
    for (no, outcome) in [
        ("order-s", Outcome::Success),
        ("order-c", Outcome::Change),
        ("order-x", Outcome::Refundclose),
    ] {
        sb.books()
            .create_order(NewOrder {
                out_trade_no: no.into(),
                total_fee: 100,
                outcome: Some(outcome),
                ..NewOrder::default()
            })
            .unwrap();
        let r = apply(&sb, no, &format!("{no}-r"), 100, 100).await;
        assert_eq!(r.get("result_code"), Some("SUCCESS"));
    }
    let r = query(&sb, &[("out_refund_no", "order-s-r")]).await;
    assert_eq!(r.get("refund_status_0"), Some("PROCESSING"));
    // WHEN the delay passes THEN each is final
    eventually(5, || {
        (sb.books().refund("order-x-r")?.status != wxpay_sandbox::books::BookedStatus::Processing)
            .then_some(())
    })
    .await;
    let s = query(&sb, &[("out_refund_no", "order-s-r")]).await;
    assert_eq!(s.get("refund_status_0"), Some("SUCCESS"));
    assert!(s.contains("refund_success_time_0"));
    let c = query(&sb, &[("out_refund_no", "order-c-r")]).await;
    assert_eq!(c.get("refund_status_0"), Some("CHANGE"));
    assert!(!c.contains("refund_success_time_0"));
    let x = query(&sb, &[("out_refund_no", "order-x-r")]).await;
    assert_eq!(x.get("refund_status_0"), Some("REFUNDCLOSE"));
    // AND a closed refund releases its amount: a new refund of the full total is accepted
    assert_eq!(sb.books().order("order-x").unwrap().refundable_fee, 100);
    let r = apply(&sb, "order-x", "order-x-r2", 100, 100).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    // while a fully refunded CHANGE order does not
    let r = apply(&sb, "order-c", "order-c-r2", 100, 1).await;
    assert_biz_fail(&sb, &r, "ERROR");
}
