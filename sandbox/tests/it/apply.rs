//! `/secapi/pay/refund`: envelope errors, signatures, business rules and idempotency.

use wxpay::SignType;
use wxpay_sandbox::NewOrder;

use crate::common::*;

fn with(mut f: Vec<(String, String)>, k: &str, v: &str) -> Vec<(String, String)> {
    f.retain(|(n, _)| n != k);
    f.push((k.into(), v.into()));
    f
}

fn without(mut f: Vec<(String, String)>, k: &str) -> Vec<(String, String)> {
    f.retain(|(n, _)| n != k);
    f
}

const APPLY: &str = "/secapi/pay/refund";

#[tokio::test]
async fn success_reply_has_doc_fields_and_is_signed_md5_and_hmac() {
    // GIVEN a paid order of 1000 fen
    let sb = start("ok").await;
    let o = order(&sb, "order-ok", 1000);
    let c = client(&sb);
    for (i, st) in [SignType::Md5, SignType::HmacSha256]
        .into_iter()
        .enumerate()
    {
        // WHEN a refund of 100 is applied, signed with MD5 then HMAC-SHA256
        let no = format!("r-ok-{i}");
        let r = call(
            &sb,
            &c,
            APPLY,
            st,
            apply_fields(&sb, "order-ok", &no, 1000, 100),
        )
        .await;
        // THEN SUCCESS with the docs/PROTOCOL.md "Apply refund" fields, signed with the request's sign type
        assert_eq!(r.get("return_code"), Some("SUCCESS"), "{r:?}");
        assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
        assert_signed(&sb, &r, st);
        assert_eq!(r.get("transaction_id"), Some(o.transaction_id.as_str()));
        assert_eq!(r.get("out_trade_no"), Some("order-ok"));
        assert_eq!(r.get("out_refund_no"), Some(no.as_str()));
        assert!(
            r.non_empty("refund_id")
                .is_some_and(|id| id.len() <= 32 && id.starts_with("50"))
        );
        assert_eq!(r.get("refund_fee"), Some("100"));
        assert_eq!(r.get("total_fee"), Some("1000"));
        assert_eq!(r.get("cash_fee"), Some("1000"));
        assert_eq!(r.get("cash_refund_fee"), Some("100"));
        assert_eq!(r.get("coupon_refund_fee"), Some("0"));
        assert_eq!(r.get("coupon_refund_count"), Some("0"));
        // AND the books show a PROCESSING refund
        let v = sb.books().refund(&no).unwrap();
        assert_eq!(v.status, wxpay_sandbox::books::BookedStatus::Processing);
        assert_eq!(v.apply_calls, 1);
    }
    assert_eq!(sb.books().order("order-ok").unwrap().refunded_fee, 200);
}

#[tokio::test]
async fn envelope_errors_are_return_code_fail_without_sign() {
    let sb = start("envelope").await;
    order(&sb, "order-env", 1000);
    let c = client(&sb);
    let url = format!("{}{APPLY}", sb.base_url());
    let k = key(&sb);
    let base = || apply_fields(&sb, "order-env", "r-env", 1000, 100);

    // GET → REQUIRE_POST_METHOD-like
    let text = c.get(&url).send().await.unwrap().text().await.unwrap();
    assert_return_fail(
        &wxpay::xml::decode(text.as_bytes()).unwrap(),
        "请使用post方法",
    );
    // empty body, garbage, DOCTYPE
    for (body, msg) in [
        ("", "post数据为空"),
        ("<xml><a>1</b></xml>", "XML格式错误"),
        ("not xml", "XML格式错误"),
        (
            "<!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><xml><a>&x;</a></xml>",
            "XML格式错误",
        ),
    ] {
        let (status, text) = post_raw(&c, &url, body.into()).await.unwrap();
        assert_eq!(status, 200);
        assert_return_fail(&wxpay::xml::decode(text.as_bytes()).unwrap(), msg);
    }
    // oversize body
    let big = format!("<xml><a>{}</a></xml>", "x".repeat(70 * 1024));
    let (_, text) = post_raw(&c, &url, big).await.unwrap();
    assert_return_fail(&wxpay::xml::decode(text.as_bytes()).unwrap(), "XML格式错误");
    // missing parameter
    for missing in [
        "total_fee",
        "refund_fee",
        "out_refund_no",
        "nonce_str",
        "appid",
    ] {
        let r = call(&sb, &c, APPLY, SignType::Md5, without(base(), missing)).await;
        assert_return_fail(&r, &format!("缺少参数{missing}"));
    }
    let r = call(
        &sb,
        &c,
        APPLY,
        SignType::Md5,
        without(base(), "out_trade_no"),
    )
    .await;
    assert_return_fail(&r, "缺少参数");
    // unknown (case-sensitive) parameter
    let r = call(&sb, &c, APPLY, SignType::Md5, with(base(), "appId", "x")).await;
    assert_return_fail(&r, "不识别的参数appId");
    // tampered signature: signed, then a field changed
    let body = signed_xml(&k, SignType::Md5, base())
        .replace("<refund_fee><![CDATA[100]]>", "<refund_fee><![CDATA[900]]>");
    let (_, text) = post_raw(&c, &url, body).await.unwrap();
    assert_return_fail(
        &wxpay::xml::decode(text.as_bytes()).unwrap(),
        "签名错误,请检查后再试",
    );
    // wrong key, and an HMAC sign declared as MD5
    let other = wxpay::ApiKey::new("b".repeat(32)).unwrap();
    let (_, text) = post_raw(&c, &url, signed_xml(&other, SignType::Md5, base()))
        .await
        .unwrap();
    assert_return_fail(&wxpay::xml::decode(text.as_bytes()).unwrap(), "签名错误");
    let mut f = base();
    f.push(("sign_type".into(), "MD5".into()));
    let sign = wxpay::sign::sign(
        f.iter().map(|(a, b)| (a.as_str(), b.as_str())),
        &k,
        SignType::HmacSha256,
    );
    f.push(("sign".into(), sign));
    let body = wxpay::xml::encode(f.iter().map(|(a, b)| (a.as_str(), b.as_str()))).unwrap();
    let (_, text) = post_raw(&c, &url, body).await.unwrap();
    assert_return_fail(&wxpay::xml::decode(text.as_bytes()).unwrap(), "签名错误");
    // THEN nothing was refunded
    assert_eq!(sb.books().order("order-env").unwrap().refund_count, 0);
}

#[tokio::test]
async fn legacy_fields_are_accepted_and_signed() {
    // GIVEN op_user_id and device_info, which current docs don't list
    let sb = start("legacy").await;
    order(&sb, "order-legacy", 1000);
    let f = with(
        with(
            apply_fields(&sb, "order-legacy", "r-legacy", 1000, 10),
            "op_user_id",
            "1900000109",
        ),
        "device_info",
        "WEB",
    );
    let r = call(&sb, &client(&sb), APPLY, SignType::Md5, f).await;
    // THEN the refund is taken
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
}

#[tokio::test]
async fn merchant_and_param_errors() {
    let sb = start("merchant").await;
    order(&sb, "order-m", 1000);
    let c = client(&sb);
    let base = || apply_fields(&sb, "order-m", "r-m", 1000, 100);
    // appid of another app → APPID_MCHID_NOT_MATCH (signed)
    let r = call(
        &sb,
        &c,
        APPLY,
        SignType::Md5,
        with(base(), "appid", "wx0000000000000000"),
    )
    .await;
    assert_eq!(r.get("err_code"), Some("APPID_MCHID_NOT_MATCH"), "{r:?}");
    assert!(wxpay::sign::verify(
        r.iter(),
        &key(&sb),
        SignType::Md5,
        r.get("sign").unwrap()
    ));
    // unknown mch_id → MCHID_NOT_EXIST, unsigned (its key is unknown)
    let r = call(
        &sb,
        &c,
        APPLY,
        SignType::Md5,
        with(base(), "mch_id", "1900000999"),
    )
    .await;
    assert_eq!(r.get("err_code"), Some("MCHID_NOT_EXIST"), "{r:?}");
    assert!(!r.contains("sign"));
    // malformed amounts and numbers → PARAM_ERROR
    for (k, v) in [
        ("refund_fee", "1.5"),
        ("refund_fee", "-1"),
        ("refund_fee", "0"),
        ("total_fee", "abc"),
        ("out_refund_no", "has space"),
        ("refund_fee_type", "USD"),
        ("refund_account", "NOPE"),
        ("notify_url", "ftp://x"),
    ] {
        let r = call(&sb, &c, APPLY, SignType::Md5, with(base(), k, v)).await;
        assert_biz_fail(&sb, &r, "PARAM_ERROR");
    }
    // 4-byte UTF-8 (emoji) → NOT_UTF8
    let r = call(
        &sb,
        &c,
        APPLY,
        SignType::Md5,
        with(base(), "refund_desc", "退款😀"),
    )
    .await;
    assert_biz_fail(&sb, &r, "NOT_UTF8");
    assert_eq!(sb.books().order("order-m").unwrap().refund_count, 0);
}

#[tokio::test]
async fn amount_rules_window_and_full_refund() {
    let sb = start("rules").await;
    order(&sb, "order-r", 1000);
    // total_fee differs from the order's → REFUND_FEE_MISMATCH
    let r = apply(&sb, "order-r", "r1", 999, 100).await;
    assert_biz_fail(&sb, &r, "REFUND_FEE_MISMATCH");
    // a single refund above the total → INVALID_REQUEST
    let r = apply(&sb, "order-r", "r1", 1000, 1001).await;
    assert_biz_fail(&sb, &r, "INVALID_REQUEST");
    assert!(
        r.get("err_code_des")
            .unwrap()
            .contains("申请退款金额超过订单可退金额")
    );
    // 600 then 500: the second exceeds → ERROR 累计退款金额大于支付金额
    assert_eq!(
        apply(&sb, "order-r", "r1", 1000, 600)
            .await
            .get("result_code"),
        Some("SUCCESS")
    );
    let r = apply(&sb, "order-r", "r2", 1000, 500).await;
    assert_biz_fail(&sb, &r, "ERROR");
    assert_eq!(r.get("err_code_des"), Some("累计退款金额大于支付金额"));
    // exactly the rest, then anything → ERROR 订单已全额退款
    assert_eq!(
        apply(&sb, "order-r", "r3", 1000, 400)
            .await
            .get("result_code"),
        Some("SUCCESS")
    );
    let r = apply(&sb, "order-r", "r4", 1000, 1).await;
    assert_biz_fail(&sb, &r, "ERROR");
    assert_eq!(r.get("err_code_des"), Some("订单已全额退款"));
    let v = sb.books().order("order-r").unwrap();
    assert_eq!(
        (v.refunded_fee, v.refundable_fee, v.refund_count),
        (1000, 0, 2)
    );

    // an order paid 366 days ago → TRADE_OVERDUE; 364 days ago is fine
    for (no, days, ok) in [("order-old", 366, false), ("order-young", 364, true)] {
        let paid = time::OffsetDateTime::now_utc() - time::Duration::days(days);
        sb.books()
            .create_order(NewOrder {
                out_trade_no: no.into(),
                total_fee: 100,
                paid_at: Some(
                    paid.format(&time::format_description::well_known::Rfc3339)
                        .unwrap(),
                ),
                ..NewOrder::default()
            })
            .unwrap();
        let r = apply(&sb, no, &format!("{no}-r"), 100, 10).await;
        if ok {
            assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
        } else {
            assert_biz_fail(&sb, &r, "TRADE_OVERDUE");
        }
    }
}

#[tokio::test]
async fn at_most_fifty_refunds_per_order() {
    // GIVEN 50 refunds of 1 fen on a 100-fen order
    let sb = start("fifty").await;
    order(&sb, "order-50", 100);
    for i in 0..50 {
        let r = apply(&sb, "order-50", &format!("r50-{i}"), 100, 1).await;
        assert_eq!(r.get("result_code"), Some("SUCCESS"), "#{i}: {r:?}");
    }
    // WHEN a 51st is applied THEN ERROR, though money is left
    let r = apply(&sb, "order-50", "r50-50", 100, 1).await;
    assert_biz_fail(&sb, &r, "ERROR");
    assert!(r.get("err_code_des").unwrap().contains("50"));
    let v = sb.books().order("order-50").unwrap();
    assert_eq!((v.refund_count, v.refundable_fee), (50, 50));
}

#[tokio::test]
async fn same_number_is_idempotent_and_other_amounts_mismatch() {
    let sb = start("idem").await;
    order(&sb, "order-i", 1000);
    // GIVEN a refund taken
    let first = apply(&sb, "order-i", "r-i", 1000, 300).await;
    assert_eq!(first.get("result_code"), Some("SUCCESS"));
    // WHEN resubmitted with the same amounts THEN the same refund, no new money
    let again = apply(&sb, "order-i", "r-i", 1000, 300).await;
    assert_eq!(again.get("result_code"), Some("SUCCESS"), "{again:?}");
    assert_eq!(again.get("refund_id"), first.get("refund_id"));
    let v = sb.books().order("order-i").unwrap();
    assert_eq!((v.refund_count, v.refunded_fee), (1, 300));
    assert_eq!(sb.books().apply_calls("r-i"), 2);
    // WHEN resubmitted with another refund_fee THEN REFUND_FEE_MISMATCH
    let r = apply(&sb, "order-i", "r-i", 1000, 301).await;
    assert_biz_fail(&sb, &r, "REFUND_FEE_MISMATCH");
    // AND the same number on another order is a mismatch too (numbers are merchant-wide)
    order(&sb, "order-j", 1000);
    let r = apply(&sb, "order-j", "r-i", 1000, 300).await;
    assert_biz_fail(&sb, &r, "REFUND_FEE_MISMATCH");
    assert_eq!(sb.books().order("order-i").unwrap().refunded_fee, 300);
    assert_eq!(sb.books().order("order-j").unwrap().refund_count, 0);
    assert_eq!(sb.books().apply_calls("r-i"), 4);
}

#[tokio::test]
async fn unknown_order_and_transaction_id_precedence() {
    let sb = start("order").await;
    let a = order(&sb, "order-a", 1000);
    order(&sb, "order-b", 500);
    // unknown order → ORDERNOTEXIST (observed without appid/mch_id/sign)
    let r = apply(&sb, "order-nope", "r-x", 1000, 1).await;
    assert_eq!(r.get("return_code"), Some("SUCCESS"));
    assert_eq!(r.get("result_code"), Some("FAIL"));
    assert_eq!(r.get("err_code"), Some("ORDERNOTEXIST"));
    assert!(!r.contains("sign"));
    // GIVEN both numbers naming different orders WHEN applying THEN transaction_id (order-a) wins
    let f = with(
        apply_fields(&sb, "order-b", "r-both", 1000, 100),
        "transaction_id",
        &a.transaction_id,
    );
    let r = call(&sb, &client(&sb), APPLY, SignType::Md5, f).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    assert_eq!(r.get("out_trade_no"), Some("order-a"));
    assert_eq!(sb.books().order("order-a").unwrap().refund_count, 1);
    assert_eq!(sb.books().order("order-b").unwrap().refund_count, 0);
}

#[tokio::test]
async fn sandbox_prefixes_are_served() {
    let sb = start("prefix").await;
    order(&sb, "order-p", 1000);
    let c = client(&sb);
    for (i, p) in [
        "/sandboxnew/secapi/pay/refund",
        "/xdc/apiv2sandbox/secapi/pay/refund",
        "/sandboxnew/pay/refund",
    ]
    .iter()
    .enumerate()
    {
        let r = call(
            &sb,
            &c,
            p,
            SignType::Md5,
            apply_fields(&sb, "order-p", &format!("r-p{i}"), 1000, 10),
        )
        .await;
        assert_eq!(r.get("result_code"), Some("SUCCESS"), "{p}: {r:?}");
    }
    for p in [
        "/sandboxnew/pay/refundquery",
        "/xdc/apiv2sandbox/pay/refundquery",
    ] {
        let r = call(
            &sb,
            &c,
            p,
            SignType::Md5,
            query_fields(&sb, &[("out_trade_no", "order-p")]),
        )
        .await;
        assert_eq!(r.get("refund_count"), Some("3"), "{p}: {r:?}");
    }
}
