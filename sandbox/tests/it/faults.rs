//! Fault injection: each kind, "once" vs "until cleared", per order vs global.

use std::time::{Duration, Instant};

use wxpay::SignType;
use wxpay_sandbox::{Fault, FaultKind, FaultTarget};

use crate::common::*;

fn once(kind: FaultKind) -> Fault {
    Fault {
        kind,
        times: Some(1),
        on: FaultTarget::Apply,
    }
}

async fn raw_apply(
    sb: &wxpay_sandbox::RunningSandbox,
    c: &reqwest::Client,
    order: &str,
    no: &str,
) -> Result<(u16, String), reqwest::Error> {
    let body = signed_xml(
        &key(sb),
        SignType::Md5,
        apply_fields(sb, order, no, 1000, 100),
    );
    post_raw(c, &format!("{}/secapi/pay/refund", sb.base_url()), body).await
}

#[tokio::test]
async fn before_faults_take_nothing_and_after_faults_take_the_refund() {
    let sb = start("faults").await;
    order(&sb, "order-f", 1000);
    let b = sb.books();

    // SYSTEMERROR before: nothing taken; then the retry succeeds (once)
    b.add_fault(Some("order-f"), once(FaultKind::SystemErrorBefore))
        .unwrap();
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-f", "f1", 1000, 100).await,
        "SYSTEMERROR",
    );
    assert_eq!(b.order("order-f").unwrap().refund_count, 0);
    assert_eq!(
        apply(&sb, "order-f", "f1", 1000, 100)
            .await
            .get("result_code"),
        Some("SUCCESS")
    );

    // BIZERR_NEED_RETRY: nothing taken
    b.add_fault(Some("order-f"), once(FaultKind::BizErrNeedRetry))
        .unwrap();
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-f", "f2", 1000, 100).await,
        "BIZERR_NEED_RETRY",
    );
    assert!(b.refund("f2").is_none());

    // SYSTEMERROR after: the refund IS taken; the retry returns it (idempotent)
    b.add_fault(Some("order-f"), once(FaultKind::SystemErrorAfter))
        .unwrap();
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-f", "f3", 1000, 100).await,
        "SYSTEMERROR",
    );
    let taken = b.refund("f3").expect("taken despite SYSTEMERROR");
    let r = apply(&sb, "order-f", "f3", 1000, 100).await;
    assert_eq!(r.get("refund_id"), Some(taken.refund_id.as_str()));
    assert_eq!(b.order("order-f").unwrap().refunded_fee, 200);

    // 502 HTML: nothing taken
    b.add_fault(None, once(FaultKind::Http502)).unwrap();
    let (status, text) = raw_apply(&sb, &client(&sb), "order-f", "f4").await.unwrap();
    assert_eq!(status, 502);
    assert!(text.contains("502 Bad Gateway"));
    assert!(b.refund("f4").is_none());

    // wrong signature on an otherwise good reply: the refund is taken, the sign doesn't verify
    b.add_fault(None, once(FaultKind::BadSign)).unwrap();
    let r = apply(&sb, "order-f", "f5", 1000, 100).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"));
    let sign = r.get("sign").unwrap();
    assert_eq!(sign.len(), 32);
    assert!(!wxpay::sign::verify(
        r.iter(),
        &key(&sb),
        SignType::Md5,
        sign
    ));
    assert!(b.refund("f5").is_some());

    // dropped response: connection closed, refund taken
    b.add_fault(Some("order-f"), once(FaultKind::DropResponse))
        .unwrap();
    let res = raw_apply(&sb, &client(&sb), "order-f", "f6").await;
    assert!(res.is_err(), "no response: {res:?}");
    assert!(b.refund("f6").is_some());

    // hang: the client times out, refund taken
    b.add_fault(Some("order-f"), once(FaultKind::Hang)).unwrap();
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(
            &std::fs::read(&sb.files().ca_pem).unwrap(),
        )
        .unwrap()])
        .identity(
            reqwest::Identity::from_pem(
                &[
                    std::fs::read(&sb.files().client_cert_pem).unwrap(),
                    std::fs::read(&sb.files().client_key_pem).unwrap(),
                ]
                .concat(),
            )
            .unwrap(),
        )
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let res = raw_apply(&sb, &c, "order-f", "f7").await;
    assert!(res.as_ref().is_err_and(|e| e.is_timeout()), "{res:?}");
    assert!(b.refund("f7").is_some());

    // every "once" fault was consumed
    assert!(b.order("order-f").unwrap().faults.is_empty());
    assert!(b.global_faults().is_empty());
}

#[tokio::test]
async fn notenough_until_cleared_and_latency() {
    let sb = start("notenough").await;
    order(&sb, "order-n", 1000);
    let b = sb.books();
    // GIVEN NOTENOUGH until cleared (global)
    b.add_fault(
        None,
        Fault {
            kind: FaultKind::NotEnough,
            times: None,
            on: FaultTarget::Apply,
        },
    )
    .unwrap();
    for _ in 0..3 {
        assert_biz_fail(
            &sb,
            &apply(&sb, "order-n", "n1", 1000, 100).await,
            "NOTENOUGH",
        );
    }
    assert!(b.refund("n1").is_none());
    // WHEN cleared THEN the same number goes through
    b.clear_faults(None).unwrap();
    assert_eq!(
        apply(&sb, "order-n", "n1", 1000, 100)
            .await
            .get("result_code"),
        Some("SUCCESS")
    );

    // latency of 400 ms, twice, on queries only
    b.add_fault(
        Some("order-n"),
        Fault {
            kind: FaultKind::Latency { ms: 400 },
            times: Some(2),
            on: FaultTarget::Query,
        },
    )
    .unwrap();
    let t = Instant::now();
    apply(&sb, "order-n", "n2", 1000, 100).await;
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "apply not delayed"
    );
    for _ in 0..2 {
        let t = Instant::now();
        let r = query(&sb, &[("out_trade_no", "order-n")]).await;
        assert!(t.elapsed() >= Duration::from_millis(400));
        assert_eq!(r.get("refund_count"), Some("2"));
    }
    let t = Instant::now();
    query(&sb, &[("out_trade_no", "order-n")]).await;
    assert!(t.elapsed() < Duration::from_millis(400), "used up");
}

#[tokio::test]
async fn refuse_answers_a_signed_definitive_refusal_and_takes_nothing() {
    let sb = start("refuse").await;
    order(&sb, "order-rf", 1000);
    let c = anonymous(&sb);
    let u = |p: &str| format!("{}/sandbox{p}", sb.base_url());
    // GIVEN a refusal without a text, then one with its own, added over the admin API
    let (s, f) = admin(
        &c,
        reqwest::Method::POST,
        u("/orders/order-rf/faults"),
        Some(serde_json::json!([
            {"kind": "refuse", "err_code": "USER_ACCOUNT_ABNORMAL", "times": 1},
            {"kind": "refuse", "err_code": "TRADE_OVERDUE", "err_code_des": "订单太旧", "times": 1},
        ])),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["faults"][0]["err_code"], "USER_ACCOUNT_ABNORMAL");
    assert_eq!(f["faults"][0]["on"], "apply");

    // WHEN the refund is applied for THEN a signed FAIL with that err_code and WeChat's text
    let r = apply(&sb, "order-rf", "rf-1", 1000, 100).await;
    assert_biz_fail(&sb, &r, "USER_ACCOUNT_ABNORMAL");
    assert_eq!(r.get("err_code_des"), Some("退款请求失败，用户帐号注销"));
    // AND nothing was taken, though the request was counted
    assert!(sb.books().refund("rf-1").is_none());
    assert_eq!(sb.books().apply_calls("rf-1"), 1);
    // WHEN applied again THEN the second refusal, with its own text
    let r = apply(&sb, "order-rf", "rf-1", 1000, 100).await;
    assert_biz_fail(&sb, &r, "TRADE_OVERDUE");
    assert_eq!(r.get("err_code_des"), Some("订单太旧"));
    // AND once both are used up the same number goes through
    let r = apply(&sb, "order-rf", "rf-1", 1000, 100).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    assert!(sb.books().order("order-rf").unwrap().faults.is_empty());

    // GIVEN a refusal as ORDERNOTEXIST THEN it comes unsigned, like the rules' own
    sb.books()
        .add_fault(
            None,
            once(FaultKind::Refuse {
                err_code: "ORDERNOTEXIST".into(),
                err_code_des: None,
            }),
        )
        .unwrap();
    let r = apply(&sb, "order-rf", "rf-2", 1000, 100).await;
    assert_eq!(r.get("err_code"), Some("ORDERNOTEXIST"), "{r:?}");
    assert!(!r.contains("sign") && !r.contains("appid"), "{r:?}");

    // WHEN a refusal cannot be sent as WeChat would THEN the admin API refuses it, adding none
    for bad in [
        serde_json::json!({"kind": "refuse", "err_code": "not upper"}),
        serde_json::json!({"kind": "refuse"}),
        serde_json::json!([{"kind": "not_enough"}, {"kind": "refuse", "err_code": "X", "err_code_des": "a]]>"}]),
        serde_json::json!({"kind": "refuse", "err_code": "X", "tims": 1}),
    ] {
        let (s, e) = admin(&c, reqwest::Method::POST, u("/faults"), Some(bad.clone())).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (400, Some("bad_request")),
            "{bad} {e}"
        );
    }
    assert!(sb.books().global_faults().is_empty());
}

#[tokio::test]
async fn refund_not_exist_hides_a_held_refund_from_queries_only() {
    let sb = start("notexist").await;
    order(&sb, "order-ne", 1000);
    order(&sb, "order-empty", 1000);
    let r = apply(&sb, "order-ne", "ne-1", 1000, 100).await;
    let refund_id = r.get("refund_id").unwrap().to_string();
    // GIVEN WeChat lagging twice on the order (the fault's "on" defaults to query)
    let c = anonymous(&sb);
    let (s, f) = admin(
        &c,
        reqwest::Method::POST,
        format!("{}/sandbox/orders/order-ne/faults", sb.base_url()),
        Some(serde_json::json!({"kind": "refund_not_exist", "times": 2})),
    )
    .await;
    assert_eq!(
        (s, f["faults"][0]["on"].as_str()),
        (200, Some("query")),
        "{f}"
    );

    // WHEN a refund is applied for THEN the fault does not touch it
    let r = apply(&sb, "order-ne", "ne-2", 1000, 100).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    assert_eq!(
        sb.books().order("order-ne").unwrap().faults[0].times,
        Some(2)
    );
    // WHEN the held refund is queried by number, then by refund_id THEN REFUNDNOTEXIST (signed)
    let q = query(&sb, &[("out_refund_no", "ne-1")]).await;
    assert_biz_fail(&sb, &q, "REFUNDNOTEXIST");
    assert_eq!(q.get("err_code_des"), Some("not exist"));
    let q = query(&sb, &[("refund_id", &refund_id)]).await;
    assert_biz_fail(&sb, &q, "REFUNDNOTEXIST");
    // AND then WeChat has caught up
    let q = query(&sb, &[("out_trade_no", "order-ne")]).await;
    assert_eq!(q.get("refund_count"), Some("2"), "{q:?}");
    assert!(
        sb.books().refund("ne-1").is_some(),
        "the refund was held all along"
    );

    // GIVEN the same fault on an order with no refunds WHEN it is queried THEN the fault is not
    // spent on a refund that truly does not exist
    sb.books()
        .add_fault(
            Some("order-empty"),
            Fault {
                kind: FaultKind::RefundNotExist,
                times: Some(1),
                on: FaultTarget::Query,
            },
        )
        .unwrap();
    let q = query(&sb, &[("out_trade_no", "order-empty")]).await;
    assert_biz_fail(&sb, &q, "REFUNDNOTEXIST");
    assert_eq!(sb.books().order("order-empty").unwrap().faults.len(), 1);
    // AND it cannot be aimed at apply requests
    let e = sb
        .books()
        .add_fault(
            None,
            Fault {
                kind: FaultKind::RefundNotExist,
                times: None,
                on: FaultTarget::Apply,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("only hits query"), "{e}");
}

#[tokio::test]
async fn faults_of_one_order_fire_in_the_order_they_were_added() {
    let sb = start("fifo").await;
    order(&sb, "order-q", 1000);
    let b = sb.books();
    // GIVEN an "after" fault, then two "before" faults, added in that order
    for kind in [
        FaultKind::SystemErrorAfter,
        FaultKind::NotEnough,
        FaultKind::Refuse {
            err_code: "USER_ACCOUNT_ABNORMAL".into(),
            err_code_des: None,
        },
    ] {
        b.add_fault(Some("order-q"), once(kind)).unwrap();
    }
    // WHEN four refunds are applied for THEN the faults answer them in that order
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-q", "q1", 1000, 100).await,
        "SYSTEMERROR",
    );
    assert!(b.refund("q1").is_some(), "the after fault took the refund");
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-q", "q2", 1000, 100).await,
        "NOTENOUGH",
    );
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-q", "q3", 1000, 100).await,
        "USER_ACCOUNT_ABNORMAL",
    );
    let r = apply(&sb, "order-q", "q4", 1000, 100).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    assert!(b.refund("q2").is_none() && b.refund("q3").is_none());

    // GIVEN an "after" fault first in line, then a "before" one
    b.add_fault(Some("order-q"), once(FaultKind::SystemErrorAfter))
        .unwrap();
    b.add_fault(Some("order-q"), once(FaultKind::NotEnough))
        .unwrap();
    // WHEN a request the rules refuse comes first THEN neither fault is used (the after fault
    // waits for an accepted request and the before fault waits behind it)
    let r = apply(&sb, "order-q", "q5", 1000, 901).await;
    assert_biz_fail(&sb, &r, "ERROR");
    assert_eq!(b.order("order-q").unwrap().faults.len(), 2);
    // AND the next accepted request gets the after fault, the one after it the before fault
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-q", "q6", 1000, 100).await,
        "SYSTEMERROR",
    );
    assert!(b.refund("q6").is_some());
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-q", "q7", 1000, 100).await,
        "NOTENOUGH",
    );
    assert!(b.order("order-q").unwrap().faults.is_empty());
}
