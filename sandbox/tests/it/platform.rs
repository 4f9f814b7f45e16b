//! The merchant platform, as the admin API plays it: refunds made there
//! (`refund_request_source=VENDOR_PLATFORM`) and CHANGE refunds resolved there.

use std::time::Duration;

use reqwest::Method as M;
use serde_json::json;
use wxpay_sandbox::{NewOrder, Outcome, Sandbox, SandboxConfig};

use crate::common::*;

#[tokio::test]
async fn a_platform_refund_obeys_the_order_rules_settles_and_is_notified() {
    // GIVEN an order without a notify_url and a sandbox whose --notify-url is a receiver
    let rx = Receiver::start(0).await;
    let sb = Sandbox::start(SandboxConfig {
        notify_url: Some(rx.url()),
        ..config("platform")
    })
    .await
    .unwrap();
    let o = order(&sb, "order-v", 1000);
    let c = anonymous(&sb);
    let u = |p: &str| format!("{}/sandbox{p}", sb.base_url());

    // WHEN a refund is made in the platform THEN 201 with the refund, PROCESSING, VENDOR_PLATFORM
    let (s, v) = admin(
        &c,
        M::POST,
        u("/orders/order-v/refunds"),
        Some(json!({"out_refund_no": "v-1", "refund_fee": 300})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "PROCESSING");
    assert_eq!(v["refund_request_source"], "VENDOR_PLATFORM");
    assert_eq!(v["refund_fee"], 300);
    assert_eq!(v["apply_calls"], 0);
    let refund_id = v["refund_id"].as_str().unwrap().to_string();
    assert!(refund_id.starts_with("50") && refund_id.len() == 29);
    // AND the same again is the same refund (200), while other amounts are refused like an apply
    let (s, again) = admin(
        &c,
        M::POST,
        u("/orders/order-v/refunds"),
        Some(json!({"out_refund_no": "v-1", "refund_fee": 300})),
    )
    .await;
    assert_eq!(
        (s, again["refund_id"].as_str()),
        (200, Some(refund_id.as_str()))
    );
    let (s, e) = admin(
        &c,
        M::POST,
        u("/orders/order-v/refunds"),
        Some(json!({"out_refund_no": "v-1", "refund_fee": 301})),
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (409, Some("refused")), "{e}");
    assert_eq!(e["err_code"], "REFUND_FEE_MISMATCH");
    // AND it counts against the order: an apply of the rest minus nothing more is refused
    let r = apply(&sb, "order-v", "api-1", 1000, 701).await;
    assert_biz_fail(&sb, &r, "ERROR");
    let (s, e) = admin(
        &c,
        M::POST,
        u("/orders/order-v/refunds"),
        Some(json!({"out_refund_no": "v-2", "refund_fee": 701})),
    )
    .await;
    assert_eq!((s, e["err_code"].as_str()), (409, Some("ERROR")), "{e}");
    assert_eq!(e["message"], "累计退款金额大于支付金额");
    assert_eq!(sb.books().order("order-v").unwrap().refunded_fee, 300);
    // AND bad requests are refused as JSON
    for (path, body, status) in [
        (
            "/orders/nope/refunds",
            json!({"out_refund_no": "v-3", "refund_fee": 1}),
            404,
        ),
        (
            "/orders/order-v/refunds",
            json!({"out_refund_no": "v-3", "refund_fee": 0}),
            400,
        ),
        (
            "/orders/order-v/refunds",
            json!({"out_refund_no": "v 3", "refund_fee": 1}),
            400,
        ),
        (
            "/orders/order-v/refunds",
            json!({"out_refund_no": "v-3"}),
            400,
        ),
        (
            "/orders/order-v/refunds",
            json!({"out_refund_no": "v-3", "refund_fee": 1, "notify_url": "x"}),
            400,
        ),
    ] {
        let (s, e) = admin(&c, M::POST, u(path), Some(body.clone())).await;
        assert_eq!(s, status, "{body} {e}");
        assert!(e["message"].is_string(), "{e}");
    }
    let (s, _) = admin(&c, M::GET, u("/orders/order-v/refunds"), None).await;
    assert_eq!(s, 405);

    // WHEN the refund is queried THEN it is there like any other
    let q = query(&sb, &[("out_refund_no", "v-1")]).await;
    assert_eq!(q.get("refund_id_0"), Some(refund_id.as_str()), "{q:?}");
    assert_eq!(q.get("refund_status_0"), Some("PROCESSING"));
    // WHEN it settles THEN the sandbox's notify_url is told, with the platform as the source
    assert_eq!(sb.settle_now(), vec!["v-1".to_string()]);
    eventually(5, || (rx.bodies().len() == 1).then_some(())).await;
    let inner = notification(&sb, &rx.bodies()[0]);
    assert_eq!(inner.get("out_refund_no"), Some("v-1"));
    assert_eq!(inner.get("transaction_id"), Some(o.transaction_id.as_str()));
    assert_eq!(inner.get("refund_status"), Some("SUCCESS"));
    assert_eq!(inner.get("refund_request_source"), Some("VENDOR_PLATFORM"));
    assert_eq!(
        inner.get("refund_account"),
        Some("REFUND_SOURCE_UNSETTLED_FUNDS")
    );
}

#[tokio::test]
async fn platform_refunds_stop_at_50_per_order_like_api_ones() {
    let sb = start("platform50").await;
    order(&sb, "order-50", 1000);
    let c = anonymous(&sb);
    let u = format!("{}/sandbox/orders/order-50/refunds", sb.base_url());
    // GIVEN 49 platform refunds and one API refund of 1 fen
    for i in 0..49 {
        let (s, v) = admin(
            &c,
            M::POST,
            u.clone(),
            Some(json!({"out_refund_no": format!("v50-{i:02}"), "refund_fee": 1})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let r = apply(&sb, "order-50", "api-50", 1000, 1).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    // WHEN a 51st is made in the platform or by the API THEN both are refused the same way
    let (s, e) = admin(
        &c,
        M::POST,
        u.clone(),
        Some(json!({"out_refund_no": "v50-x", "refund_fee": 1})),
    )
    .await;
    assert_eq!((s, e["err_code"].as_str()), (409, Some("ERROR")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("50"), "{e}");
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-50", "api-51", 1000, 1).await,
        "ERROR",
    );
    assert_eq!(sb.books().order("order-50").unwrap().refund_count, 50);
}

#[tokio::test]
async fn resolving_a_change_refund_makes_it_success_and_notifies_the_new_status() {
    // GIVEN a CHANGE refund whose first notification was delivered
    let rx = Receiver::start(0).await;
    let sb = start("resolve").await;
    sb.books()
        .create_order(NewOrder {
            out_trade_no: "order-ch".into(),
            total_fee: 1000,
            outcome: Some(Outcome::Change),
            notify_url: Some(rx.url()),
            ..NewOrder::default()
        })
        .unwrap();
    apply(&sb, "order-ch", "ch-1", 1000, 400).await;
    apply(&sb, "order-ch", "ch-2", 1000, 100).await;
    sb.settle_now();
    eventually(5, || (rx.bodies().len() == 2).then_some(())).await;
    let first = notification(&sb, &rx.bodies()[0]);
    assert_eq!(first.get("refund_status"), Some("CHANGE"));
    assert!(!first.contains("success_time"));
    let c = anonymous(&sb);
    let u = |p: &str| format!("{}/sandbox{p}", sb.base_url());

    // WHEN a person resolves it in the platform THEN it is SUCCESS, with a success time
    let (s, v) = admin(
        &c,
        M::POST,
        u("/refunds/ch-1/resolve"),
        Some(json!({"status": "SUCCESS"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "SUCCESS");
    assert!(v["success_time"].is_string(), "{v}");
    assert_eq!(v["refund_recv_accout"], "支付用户零钱");
    // AND queries report SUCCESS, the other CHANGE refund unchanged
    let q = query(&sb, &[("out_trade_no", "order-ch")]).await;
    assert_eq!(q.get("out_refund_no_0"), Some("ch-1"));
    assert_eq!(q.get("refund_status_0"), Some("SUCCESS"), "{q:?}");
    assert!(q.non_empty("refund_success_time_0").is_some());
    assert_eq!(q.get("refund_status_1"), Some("CHANGE"));
    // AND WeChat notifies the new final status
    eventually(5, || (rx.bodies().len() == 3).then_some(())).await;
    let second = notification(&sb, &rx.bodies()[2]);
    assert_eq!(second.get("out_refund_no"), Some("ch-1"));
    assert_eq!(second.get("refund_status"), Some("SUCCESS"));
    assert!(second.non_empty("success_time").is_some());
    assert_eq!(second.get("refund_recv_accout"), Some("支付用户零钱"));
    assert_eq!(second.get("refund_request_source"), Some("API"));
    let log = eventually(5, || {
        let n = sb.books().refund("ch-1")?.notify;
        n.delivered.then_some(n)
    })
    .await;
    assert_eq!(log.attempts, 1, "the log is the new notification's");

    // WHEN resolved again, or a refund that is not CHANGE, THEN 409; other statuses 400; 404
    let (s, e) = admin(
        &c,
        M::POST,
        u("/refunds/ch-1/resolve"),
        Some(json!({"status": "SUCCESS"})),
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (409, Some("conflict")), "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("only a CHANGE refund"),
        "{e}"
    );
    for (path, body, status) in [
        (
            "/refunds/ch-2/resolve",
            json!({"status": "REFUNDCLOSE"}),
            400,
        ),
        ("/refunds/ch-2/resolve", json!({}), 400),
        ("/refunds/nope/resolve", json!({"status": "SUCCESS"}), 404),
    ] {
        let (s, e) = admin(&c, M::POST, u(path), Some(body.clone())).await;
        assert_eq!(s, status, "{body} {e}");
    }
    let (s, _) = admin(&c, M::GET, u("/refunds/ch-2/resolve"), None).await;
    assert_eq!(s, 405);
    assert_eq!(sb.books().refund("ch-2").unwrap().status.as_str(), "CHANGE");
}

#[tokio::test]
async fn a_change_notification_still_retrying_stops_when_the_refund_is_resolved() {
    // GIVEN a CHANGE refund whose notification failed once (next retry in 15 s / 20 = 750 ms)
    let rx = Receiver::start(1).await;
    let sb = Sandbox::start(SandboxConfig {
        notify_retry_factor: 20.0,
        ..config("resolve-retry")
    })
    .await
    .unwrap();
    sb.books()
        .create_order(NewOrder {
            out_trade_no: "order-cr".into(),
            total_fee: 100,
            outcome: Some(Outcome::Change),
            notify_url: Some(rx.url()),
            ..NewOrder::default()
        })
        .unwrap();
    apply(&sb, "order-cr", "cr-1", 100, 100).await;
    sb.settle_now();
    eventually(5, || {
        (sb.books().refund("cr-1")?.notify.attempts == 1).then_some(())
    })
    .await;
    // WHEN it is resolved before the retry is due
    let v = sb.resolve("cr-1").unwrap();
    assert_eq!(v.status.as_str(), "SUCCESS");
    // THEN only the SUCCESS notification follows; the CHANGE one is not retried
    eventually(5, || (rx.bodies().len() == 2).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let statuses: Vec<String> = rx
        .bodies()
        .iter()
        .map(|b| {
            notification(&sb, b)
                .get("refund_status")
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(statuses, ["CHANGE", "SUCCESS"]);
    let n = sb.books().refund("cr-1").unwrap().notify;
    assert!(n.delivered && n.attempts == 1, "{n:?}");
}
