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
