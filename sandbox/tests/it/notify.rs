//! The encrypted refund notification: content, decryption, and retries until a SUCCESS reply.

use std::time::Duration;

use wxpay_sandbox::{NewOrder, Outcome, Sandbox, SandboxConfig};

use crate::common::*;

#[tokio::test]
async fn pushes_encrypted_notification_and_retries_until_success() {
    // GIVEN a receiver that fails twice, and fast retries (15 s / 1000 = 15 ms)
    let rx = Receiver::start(2).await;
    let sb = Sandbox::start(SandboxConfig {
        settle_after: Duration::from_millis(200),
        notify_retry_factor: 1000.0,
        ..config("notify")
    })
    .await
    .unwrap();
    let o = sb
        .books()
        .create_order(NewOrder {
            out_trade_no: "order-nt".into(),
            total_fee: 1000,
            notify_url: Some(rx.url()),
            ..NewOrder::default()
        })
        .unwrap();
    let r = apply(&sb, "order-nt", "rn-1", 1000, 250).await;
    let refund_id = r.get("refund_id").unwrap().to_string();

    // WHEN the refund settles THEN it is pushed until the receiver says SUCCESS (3 attempts)
    let log = eventually(10, || {
        let v = sb.books().refund("rn-1")?;
        v.notify.delivered.then_some(v.notify)
    })
    .await;
    assert_eq!(log.attempts, 3);
    assert_eq!(log.url.as_deref(), Some(rx.url().as_str()));
    let bodies = rx.bodies();
    assert_eq!(bodies.len(), 3);

    // AND the body is the docs/PROTOCOL.md "Refund notification" envelope, no sign, req_info decrypting to the refund
    let outer = wxpay::xml::decode(bodies[0].as_bytes()).unwrap();
    assert_eq!(outer.get("return_code"), Some("SUCCESS"));
    assert_eq!(outer.get("appid"), Some(sb.merchant().appid.as_str()));
    assert_eq!(outer.get("mch_id"), Some(sb.merchant().mch_id.as_str()));
    assert!(outer.non_empty("nonce_str").is_some());
    assert!(!outer.contains("sign"));
    let inner = wxpay_sandbox::decrypt_req_info(outer.get("req_info").unwrap(), &key(&sb)).unwrap();
    assert_eq!(inner.get("transaction_id"), Some(o.transaction_id.as_str()));
    assert_eq!(inner.get("out_trade_no"), Some("order-nt"));
    assert_eq!(inner.get("out_refund_no"), Some("rn-1"));
    assert_eq!(inner.get("refund_id"), Some(refund_id.as_str()));
    assert_eq!(inner.get("total_fee"), Some("1000"));
    assert_eq!(inner.get("refund_fee"), Some("250"));
    assert_eq!(inner.get("settlement_refund_fee"), Some("250"));
    assert_eq!(inner.get("refund_status"), Some("SUCCESS"));
    assert_eq!(inner.get("refund_recv_accout"), Some("支付用户零钱"));
    assert_eq!(
        inner.get("refund_account"),
        Some("REFUND_SOURCE_UNSETTLED_FUNDS")
    );
    assert_eq!(inner.get("refund_request_source"), Some("API"));
    assert!(inner.non_empty("success_time").is_some());
    // AND the client's own decryption (wxpay::notify, written separately) agrees
    let plain = wxpay::notify::decrypt_req_info(outer.get("req_info").unwrap(), &key(&sb)).unwrap();
    assert_eq!(wxpay::xml::decode_root(&plain, "root").unwrap(), inner);
    // AND no more pushes after the SUCCESS reply
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.bodies().len(), 3);
}

#[tokio::test]
async fn refund_notify_url_wins_and_closed_refunds_are_notified() {
    // GIVEN an order with one notify_url, a refund naming another, outcome REFUNDCLOSE
    let order_rx = Receiver::start(0).await;
    let refund_rx = Receiver::start(0).await;
    let sb = start("notify2").await;
    sb.books()
        .create_order(NewOrder {
            out_trade_no: "order-nu".into(),
            total_fee: 100,
            outcome: Some(Outcome::Refundclose),
            notify_url: Some(order_rx.url()),
            ..NewOrder::default()
        })
        .unwrap();
    let mut f = apply_fields(&sb, "order-nu", "rnu-1", 100, 100);
    f.push(("notify_url".into(), refund_rx.url()));
    let r = call(
        &sb,
        &client(&sb),
        "/secapi/pay/refund",
        wxpay::SignType::Md5,
        f,
    )
    .await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"));
    // WHEN settled now
    assert_eq!(sb.settle_now(), vec!["rnu-1".to_string()]);
    // THEN only the refund's URL gets it, with REFUNDCLOSE and no success_time
    eventually(5, || (refund_rx.bodies().len() == 1).then_some(())).await;
    assert!(order_rx.bodies().is_empty());
    let outer = wxpay::xml::decode(refund_rx.bodies()[0].as_bytes()).unwrap();
    let inner = wxpay_sandbox::decrypt_req_info(outer.get("req_info").unwrap(), &key(&sb)).unwrap();
    assert_eq!(inner.get("refund_status"), Some("REFUNDCLOSE"));
    assert!(!inner.contains("success_time"));
}

#[tokio::test]
async fn unreachable_receiver_is_retried_on_the_schedule_then_abandoned() {
    // GIVEN a URL nobody listens on and a very compressed schedule (24 h / 1e6 ≈ 90 ms)
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sb = Sandbox::start(SandboxConfig {
        notify_retry_factor: 1_000_000.0,
        notify_url: Some(format!("http://127.0.0.1:{port}/notify")),
        ..config("notify3")
    })
    .await
    .unwrap();
    order(&sb, "order-un", 100);
    apply(&sb, "order-un", "run-1", 100, 1).await;
    sb.settle_now();
    // THEN 1 + 15 attempts, then it gives up
    let log = eventually(20, || {
        let v = sb.books().refund("run-1")?;
        v.notify.gave_up.then_some(v.notify)
    })
    .await;
    assert_eq!(log.attempts, 16);
    assert!(!log.delivered);
    assert!(log.last_error.is_some());
}
