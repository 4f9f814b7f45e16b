//! `/pay/downloadbill`: the day's REFUND bill (API and platform refunds, every status, coupons),
//! read back by a minimal parser of this file's own (not the sandbox's writer, not the client's);
//! gzip; the ALL and SUCCESS bills; WeChat's unsigned `error_code` replies; bill faults.

use std::collections::HashMap;
use std::io::Read as _;

use reqwest::Method as M;
use serde_json::json;
use wxpay::SignType;
use wxpay_sandbox::{CouponType, NewCoupon, NewOrder, NewRefund, Outcome, RunningSandbox};

use crate::common::*;

const REFUND_HEADER: &str = "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,代金券或立减优惠金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,代金券或立减优惠退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率";
const SUMMARY_HEADER: &str =
    "总交易单数,总交易额,总退款金额,总代金券或立减优惠退款金额,手续费总金额";

/// A bill as a reader sees it: the header's names, one name → value map per row, the summary.
struct Parsed {
    header: Vec<String>,
    rows: Vec<HashMap<String, String>>,
    summary: HashMap<String, String>,
}

/// Splits lines, strips the backtick every value carries, maps header names to values.
fn parse_bill(text: &str) -> Parsed {
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.last(), Some(&""), "the bill ends with a line end");
    let lines = &lines[..lines.len() - 1];
    assert!(lines.len() >= 3, "{text}");
    let names = |line: &str| -> Vec<String> { line.split(',').map(str::to_string).collect() };
    let values = |line: &str| -> Vec<String> {
        line.split(',')
            .map(|v| {
                v.strip_prefix('`')
                    .unwrap_or_else(|| panic!("value without backtick: {v:?} in {line}"))
                    .to_string()
            })
            .collect()
    };
    let header = names(lines[0]);
    let summary_at = lines.len() - 2;
    assert_eq!(lines[summary_at], SUMMARY_HEADER);
    let rows = lines[1..summary_at]
        .iter()
        .map(|line| {
            let v = values(line);
            assert_eq!(v.len(), header.len(), "{line}");
            header.iter().cloned().zip(v).collect()
        })
        .collect();
    let summary = names(SUMMARY_HEADER)
        .into_iter()
        .zip(values(lines[summary_at + 1]))
        .collect();
    Parsed {
        header,
        rows,
        summary,
    }
}

/// Yuan with two decimals to fen, in integers.
fn fen(yuan: &str) -> u64 {
    let (whole, cents) = yuan.split_once('.').expect("a decimal point");
    assert_eq!(cents.len(), 2, "{yuan}");
    assert!(
        whole
            .bytes()
            .chain(cents.bytes())
            .all(|b| b.is_ascii_digit())
    );
    whole.parse::<u64>().unwrap() * 100 + cents.parse::<u64>().unwrap()
}

/// `yyyyMMdd` of a `yyyy-MM-dd HH:mm:ss` time.
fn day_of(time: &str) -> String {
    time[..10].replace('-', "")
}

fn bill_fields(sb: &RunningSandbox, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    query_fields(sb, extra)
}

/// A signed download: HTTP status, content type, body.
async fn download(
    sb: &RunningSandbox,
    sign_type: SignType,
    fields: Vec<(String, String)>,
) -> Result<(u16, String, Vec<u8>), reqwest::Error> {
    let body = signed_xml(&key(sb), sign_type, fields);
    let resp = anonymous(sb)
        .post(format!("{}/pay/downloadbill", sb.base_url()))
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((status, ct, resp.bytes().await?.to_vec()))
}

/// The day's bill as text (asserting a plain-text 200).
async fn bill_text(sb: &RunningSandbox, extra: &[(&str, &str)]) -> String {
    let (status, ct, body) = download(sb, SignType::Md5, bill_fields(sb, extra))
        .await
        .unwrap();
    let text = String::from_utf8(body).expect("UTF-8");
    assert_eq!(
        (status, ct.as_str()),
        (200, "text/plain;charset=utf-8"),
        "{text}"
    );
    assert!(!text.starts_with("<xml>"), "{text}");
    text
}

/// Asserts WeChat's unsigned error reply: exactly return_code FAIL, return_msg, error_code.
async fn assert_bill_error(
    sb: &RunningSandbox,
    sign_type: SignType,
    fields: Vec<(String, String)>,
    msg: &str,
    code: &str,
) {
    let (status, _, body) = download(sb, sign_type, fields).await.unwrap();
    assert_eq!(status, 200);
    let reply = wxpay::xml::decode(&body).expect("an XML error reply");
    assert_eq!(reply.get("return_code"), Some("FAIL"), "{reply:?}");
    assert_eq!(reply.get("return_msg"), Some(msg), "{reply:?}");
    assert_eq!(reply.get("error_code"), Some(code), "{reply:?}");
    assert_eq!(reply.len(), 3, "nothing else, no sign: {reply:?}");
}

fn coupon_order(sb: &RunningSandbox, out_trade_no: &str) {
    sb.books()
        .create_order(NewOrder {
            out_trade_no: out_trade_no.into(),
            total_fee: 1000,
            coupons: vec![
                NewCoupon {
                    coupon_id: Some("C1".into()),
                    coupon_type: CouponType::Cash,
                    fee: 100,
                },
                NewCoupon {
                    coupon_id: Some("C2".into()),
                    coupon_type: CouponType::NoCash,
                    fee: 50,
                },
            ],
            ..NewOrder::default()
        })
        .unwrap();
}

#[tokio::test]
async fn the_refund_bill_lists_every_refund_applied_that_day_with_its_status_now() {
    let sb = start("bill-refund").await;
    // GIVEN an order paid yesterday with a refund settled SUCCESS today and one still PROCESSING
    let yesterday = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let paid = yesterday
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    sb.books()
        .create_order(NewOrder {
            out_trade_no: "order-b1".into(),
            total_fee: 1000,
            paid_at: Some(paid),
            ..NewOrder::default()
        })
        .unwrap();
    // AND an order whose refunds close
    sb.books()
        .create_order(NewOrder {
            out_trade_no: "order-bclose".into(),
            total_fee: 500,
            outcome: Some(Outcome::Refundclose),
            ..NewOrder::default()
        })
        .unwrap();
    for (o, n, total, fee) in [
        ("order-b1", "rb-success", 1000, 300),
        ("order-bclose", "rb-close", 500, 100),
    ] {
        let r = apply(&sb, o, n, total, fee).await;
        assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    }
    sb.settle_now();
    let r = apply(&sb, "order-b1", "rb-processing", 1000, 200).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    // AND a refund made in the merchant platform
    order(&sb, "order-bplat", 2000);
    sb.vendor_refund(
        "order-bplat",
        NewRefund {
            out_refund_no: "rb-platform".into(),
            refund_fee: 500,
        },
    )
    .unwrap();
    // AND a refund of an order paid with a CASH coupon of 100 and a NO_CASH coupon of 50
    coupon_order(&sb, "order-bcoupon");
    let r = apply(&sb, "order-bcoupon", "rb-coupon", 1000, 300).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");

    let numbers = [
        "rb-success",
        "rb-close",
        "rb-processing",
        "rb-platform",
        "rb-coupon",
    ];
    let views: HashMap<&str, _> = numbers
        .iter()
        .map(|n| (*n, sb.books().refund(n).unwrap()))
        .collect();
    assert_eq!(views["rb-success"].status.as_str(), "SUCCESS");
    assert_eq!(views["rb-close"].status.as_str(), "REFUNDCLOSE");
    assert_eq!(views["rb-coupon"].settlement_refund_fee, 285);
    // The refunds of the test's first day (all of them unless it ran across Beijing midnight).
    let date = day_of(&views["rb-success"].created_at);
    let expected: Vec<&str> = numbers
        .iter()
        .copied()
        .filter(|n| day_of(&views[n].created_at) == date)
        .collect();

    // WHEN that day's REFUND bill is downloaded
    let text = bill_text(&sb, &[("bill_date", &date), ("bill_type", "REFUND")]).await;
    let bill = parse_bill(&text);

    // THEN it has the documented 26 columns and one row per refund applied that day
    assert_eq!(bill.header.join(","), REFUND_HEADER);
    assert_eq!(bill.header.len(), 26);
    let mut listed: Vec<&str> = bill
        .rows
        .iter()
        .map(|r| r["商户退款单号"].as_str())
        .collect();
    listed.sort_unstable();
    let mut want = expected.clone();
    want.sort_unstable();
    assert_eq!(listed, want, "{text}");

    let mut openids: HashMap<String, String> = HashMap::new();
    let (mut trade, mut refunded, mut coupons) = (0u64, 0u64, 0u64);
    let order_of: HashMap<&str, &str> = [
        ("rb-success", "order-b1"),
        ("rb-close", "order-bclose"),
        ("rb-processing", "order-b1"),
        ("rb-platform", "order-bplat"),
        ("rb-coupon", "order-bcoupon"),
    ]
    .into();
    for row in &bill.rows {
        let n = row["商户退款单号"].as_str();
        let v = &views[n];
        let o = sb.books().order(order_of[n]).unwrap();
        // ids, merchant and the fixed columns
        assert_eq!(row["公众账号ID"], sb.merchant().appid);
        assert_eq!(row["商户号"], sb.merchant().mch_id);
        assert_eq!(row["子商户号"], "0");
        assert_eq!(row["设备号"], "");
        assert_eq!(row["微信订单号"], o.transaction_id);
        assert_eq!(row["商户订单号"], o.out_trade_no);
        assert_eq!(row["微信退款单号"], v.refund_id);
        assert_eq!(row["交易类型"], "JSAPI");
        assert_eq!(row["交易状态"], "REFUND");
        assert_eq!(row["付款银行"], "OTHERS");
        assert_eq!(row["货币种类"], "CNY");
        assert_eq!(row["退款类型"], "ORIGINAL");
        assert_eq!(row["商户数据包"], "");
        assert_eq!(row["费率"], "0.60%");
        assert_eq!(row["手续费"], "0.00000");
        assert!(!row["商品名称"].is_empty());
        // one made-up openid per order
        let openid = &row["用户标识"];
        assert!(openid.starts_with('o') && openid.len() == 28, "{openid}");
        let first = openids
            .entry(o.out_trade_no.clone())
            .or_insert(openid.clone());
        assert_eq!(
            first, openid,
            "the same openid for every refund of an order"
        );
        // times: applied (Beijing), succeeded only when SUCCESS
        assert_eq!(row["交易时间"], v.created_at);
        assert_eq!(row["退款申请时间"], v.created_at);
        match v.status.as_str() {
            "SUCCESS" => assert_eq!(Some(&row["退款成功时间"]), v.success_time.as_ref()),
            _ => assert_eq!(row["退款成功时间"], ""),
        }
        // status as the books hold it now
        assert_eq!(row["退款状态"], v.status.as_str());
        // amounts: the order's total and NO_CASH coupons; the settlement refund and the NO_CASH
        // part, which add up to the refund_fee requested
        assert_eq!(fen(&row["总金额"]), o.total_fee);
        assert_eq!(
            fen(&row["代金券或立减优惠金额"]),
            o.total_fee - o.settlement_total_fee.unwrap_or(o.total_fee)
        );
        assert_eq!(fen(&row["退款金额"]), v.settlement_refund_fee);
        assert_eq!(
            fen(&row["退款金额"]) + fen(&row["代金券或立减优惠退款金额"]),
            v.refund_fee
        );
        trade += fen(&row["总金额"]);
        refunded += fen(&row["退款金额"]);
        coupons += fen(&row["代金券或立减优惠退款金额"]);
    }
    // AND the coupon refund shows its NO_CASH part (15 of 300; settlement 285)
    if let Some(row) = bill.rows.iter().find(|r| r["商户退款单号"] == "rb-coupon") {
        assert_eq!(row["代金券或立减优惠金额"], "0.50");
        assert_eq!(row["退款金额"], "2.85");
        assert_eq!(row["代金券或立减优惠退款金额"], "0.15");
    }
    if let Some(row) = bill
        .rows
        .iter()
        .find(|r| r["商户退款单号"] == "rb-platform")
    {
        assert_eq!(row["退款金额"], "5.00");
        assert_eq!(row["退款状态"], "PROCESSING");
    }
    // AND the summary adds up
    assert_eq!(bill.summary["总交易单数"], bill.rows.len().to_string());
    assert_eq!(fen(&bill.summary["总交易额"]), trade);
    assert_eq!(fen(&bill.summary["总退款金额"]), refunded);
    assert_eq!(fen(&bill.summary["总代金券或立减优惠退款金额"]), coupons);
    assert_eq!(bill.summary["手续费总金额"], "0.00000");

    // WHEN the same bill is asked for gzipped (and signed with HMAC-SHA256) THEN the same text
    let (status, ct, body) = download(
        &sb,
        SignType::HmacSha256,
        bill_fields(
            &sb,
            &[
                ("bill_date", &date),
                ("bill_type", "REFUND"),
                ("tar_type", "GZIP"),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!((status, ct.as_str()), (200, "application/x-gzip"));
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(body.as_slice())
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, text);

    // WHEN a refund settles THEN the bill of its day shows the new status (billed at request time)
    sb.settle_now();
    let again = parse_bill(&bill_text(&sb, &[("bill_date", &date), ("bill_type", "REFUND")]).await);
    for row in &again.rows {
        let v = sb.books().refund(&row["商户退款单号"]).unwrap();
        assert_ne!(v.status.as_str(), "PROCESSING");
        assert_eq!(row["退款状态"], v.status.as_str());
        if v.status.as_str() == "SUCCESS" {
            assert_eq!(Some(&row["退款成功时间"]), v.success_time.as_ref());
        }
    }
}

#[tokio::test]
async fn all_and_success_bills_list_the_days_payments() {
    let sb = start("bill-all").await;
    // GIVEN an order paid yesterday, refunded today, and one paid today
    let yesterday = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let paid = yesterday
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let old = sb
        .books()
        .create_order(NewOrder {
            out_trade_no: "order-old".into(),
            total_fee: 1000,
            paid_at: Some(paid),
            ..NewOrder::default()
        })
        .unwrap();
    let new = order(&sb, "order-new", 700);
    let r = apply(&sb, "order-old", "ra-1", 1000, 400).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    let refund = sb.books().refund("ra-1").unwrap();
    let old_day = day_of(&old.paid_at);
    let new_day = day_of(&new.paid_at);
    let refund_day = day_of(&refund.created_at);

    // WHEN yesterday's SUCCESS bill is read THEN the 18 documented columns and the old payment
    let bill =
        parse_bill(&bill_text(&sb, &[("bill_date", &old_day), ("bill_type", "SUCCESS")]).await);
    assert_eq!(
        bill.header.join(","),
        "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,代金券或立减优惠金额,商品名称,商户数据包,手续费,费率"
    );
    assert_eq!(bill.rows.len(), 1);
    let row = &bill.rows[0];
    assert_eq!(row["商户订单号"], "order-old");
    assert_eq!(row["微信订单号"], old.transaction_id);
    assert_eq!(row["交易时间"], old.paid_at);
    assert_eq!(row["交易状态"], "SUCCESS");
    assert_eq!(fen(&row["总金额"]), 1000);
    assert_eq!(bill.summary["总交易单数"], "1");
    assert_eq!(bill.summary["总交易额"], "10.00");
    assert_eq!(bill.summary["总退款金额"], "0.00");

    // WHEN today's ALL bill is read THEN 24 columns: today's payment and today's refund
    let bill = parse_bill(&bill_text(&sb, &[("bill_date", &new_day)]).await);
    assert_eq!(bill.header.len(), 24);
    assert_eq!(bill.header[14], "微信退款单号");
    let payment = bill
        .rows
        .iter()
        .find(|r| r["交易状态"] == "SUCCESS")
        .expect("today's payment");
    assert_eq!(payment["商户订单号"], "order-new");
    assert_eq!(
        (
            payment["微信退款单号"].as_str(),
            payment["退款金额"].as_str()
        ),
        ("0", "0.00")
    );
    if refund_day == new_day {
        let row = bill
            .rows
            .iter()
            .find(|r| r["交易状态"] == "REFUND")
            .expect("today's refund");
        assert_eq!(row["商户退款单号"], "ra-1");
        assert_eq!(row["微信退款单号"], refund.refund_id);
        assert_eq!(fen(&row["退款金额"]), 400);
        assert_eq!(row["退款状态"], "PROCESSING");
        assert_eq!(bill.rows.len(), 2);
        // 总交易额 sums the payments; 总退款金额 the refunds
        assert_eq!(bill.summary["总交易单数"], "2");
        assert_eq!(bill.summary["总交易额"], "7.00");
        assert_eq!(bill.summary["总退款金额"], "4.00");
    }
}

#[tokio::test]
async fn a_day_without_refunds_has_no_bill() {
    let sb = start("bill-none").await;
    // GIVEN an order paid today and never refunded
    let o = order(&sb, "order-nr", 1000);
    let today = day_of(&o.paid_at);
    let no_bill = |date: &str, kind: &str| {
        let mut f = bill_fields(&sb, &[("bill_date", date)]);
        if !kind.is_empty() {
            f.push(("bill_type".into(), kind.into()));
        }
        f
    };
    // WHEN its REFUND bill is asked for THEN No Bill Exist (WeChat's spelling, not the doc's)
    assert_bill_error(
        &sb,
        SignType::Md5,
        no_bill(&today, "REFUND"),
        "No Bill Exist",
        "20002",
    )
    .await;
    // AND a day with nothing at all, a day in the future, recharge refunds: the same
    for (date, kind) in [
        ("20200101", ""),
        ("20991231", "ALL"),
        (today.as_str(), "RECHARGE_REFUND"),
    ] {
        assert_bill_error(
            &sb,
            SignType::Md5,
            no_bill(date, kind),
            "No Bill Exist",
            "20002",
        )
        .await;
    }
    // AND the payment itself is billed in SUCCESS
    let bill =
        parse_bill(&bill_text(&sb, &[("bill_date", &today), ("bill_type", "SUCCESS")]).await);
    assert_eq!(bill.rows.len(), 1);
}

#[tokio::test]
async fn bad_requests_get_the_bill_apis_unsigned_error_codes() {
    let sb = start("bill-errors").await;
    let date = [("bill_date", "20250101")];
    // GIVEN a request signed with another key WHEN sent THEN sign error 20001
    let other = wxpay::ApiKey::new("0123456789abcdefghijklmnopqrstuv".to_string()).unwrap();
    let body = signed_xml(&other, SignType::Md5, bill_fields(&sb, &date));
    let resp = anonymous(&sb)
        .post(format!("{}/pay/downloadbill", sb.base_url()))
        .body(body)
        .send()
        .await
        .unwrap();
    let reply = wxpay::xml::decode(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(reply.get("return_msg"), Some("sign error"), "{reply:?}");
    assert_eq!(reply.get("error_code"), Some("20001"));
    assert_eq!(reply.len(), 3);
    // AND HMAC-SHA256 with the wrong key too
    let body = signed_xml(&other, SignType::HmacSha256, bill_fields(&sb, &date));
    let (_, text) = post_raw(
        &anonymous(&sb),
        &format!("{}/pay/downloadbill", sb.base_url()),
        body,
    )
    .await
    .unwrap();
    assert!(text.contains("<![CDATA[sign error]]>"), "{text}");

    // WHEN a parameter is wrong THEN its message, 20001
    for (fields, msg) in [
        (vec![("bill_date", "20250230")], "invalid bill_date"),
        (vec![("bill_date", "2025-01-01")], "invalid bill_date"),
        (vec![("bill_date", "202501")], "invalid bill_date"),
        (
            vec![("bill_date", "20250101"), ("bill_type", "refund")],
            "invalid bill_type",
        ),
        (
            vec![("bill_date", "20250101"), ("tar_type", "ZIP")],
            "invalid tar_type, Only GZIP supported",
        ),
        (vec![("bill_type", "REFUND")], "missing parameter"),
        (
            vec![("bill_date", "20250101"), ("billdate", "20250101")],
            "invalid parameter",
        ),
    ] {
        assert_bill_error(&sb, SignType::Md5, bill_fields(&sb, &fields), msg, "20001").await;
    }
    // AND another appid is refused as such
    let mut f = bill_fields(&sb, &date);
    f[0].1 = "wx0000000000000000".into();
    assert_bill_error(&sb, SignType::Md5, f, "invalid appid", "20001").await;
    // AND a GET is refused before anything else
    let resp = anonymous(&sb)
        .get(format!("{}/pay/downloadbill", sb.base_url()))
        .send()
        .await
        .unwrap();
    let reply = wxpay::xml::decode(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(reply.get("return_msg"), Some("require POST method"));
}

#[tokio::test]
async fn bill_faults_are_global_and_used_up_like_the_others() {
    let sb = start("bill-faults").await;
    let o = order(&sb, "order-bf", 1000);
    let r = apply(&sb, "order-bf", "rf-1", 1000, 100).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    let date = day_of(&sb.books().refund("rf-1").unwrap().created_at);
    let fields = || bill_fields(&sb, &[("bill_date", &date), ("bill_type", "REFUND")]);
    let c = anonymous(&sb);
    let u = |p: &str| format!("{}/sandbox{p}", sb.base_url());

    // GIVEN a bill_creating fault once, through the admin API (`on` defaults to "bill")
    let (s, v) = admin(
        &c,
        M::POST,
        u("/faults"),
        Some(json!({"kind": "bill_creating", "times": 1})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["faults"][0]["on"], "bill");
    // WHEN the bill is downloaded THEN Bill Creating once, then the bill
    assert_bill_error(&sb, SignType::Md5, fields(), "Bill Creating", "20002").await;
    let bill = parse_bill(&bill_text(&sb, &[("bill_date", &date), ("bill_type", "REFUND")]).await);
    assert_eq!(bill.rows.len(), 1);
    assert_eq!(bill.rows[0]["微信订单号"], o.transaction_id);

    // GIVEN faults a bill can never meet WHEN added THEN refused with 400
    for (path, fault) in [
        ("/orders/order-bf/faults", json!({"kind": "bill_creating"})),
        (
            "/orders/order-bf/faults",
            json!({"kind": "system_error_before", "on": "bill"}),
        ),
        ("/faults", json!({"kind": "bill_creating", "on": "apply"})),
        ("/faults", json!({"kind": "bad_sign", "on": "bill"})),
        ("/faults", json!({"kind": "refund_not_exist", "on": "bill"})),
    ] {
        let (s, v) = admin(&c, M::POST, u(path), Some(fault.clone())).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("bad_request")),
            "{fault}: {v}"
        );
    }

    // GIVEN an apply fault (the default target) WHEN the bill is downloaded THEN it is untouched
    let (s, _) = admin(
        &c,
        M::POST,
        u("/faults"),
        Some(json!({"kind": "not_enough"})),
    )
    .await;
    assert_eq!(s, 200);
    bill_text(&sb, &[("bill_date", &date)]).await;
    admin(&c, M::DELETE, u("/faults"), None).await;

    // GIVEN generic faults aimed at bills, in order: system error, 502, a dropped response, a
    // refusal with a code of the test's choosing
    let (s, v) = admin(
        &c,
        M::POST,
        u("/faults"),
        Some(json!([
            {"kind": "system_error_before", "on": "bill", "times": 1},
            {"kind": "http502", "on": "any", "times": 1},
            {"kind": "drop_response", "on": "bill", "times": 1},
            {"kind": "refuse", "err_code": "20007", "err_code_des": "当前商户号账单API权限已经关闭", "on": "bill", "times": 1},
        ])),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_bill_error(&sb, SignType::Md5, fields(), "system error", "20003").await;
    let (status, ct, _) = download(&sb, SignType::Md5, fields()).await.unwrap();
    assert_eq!((status, ct.as_str()), (502, "text/html"));
    // a dropped response waits for a bill that exists: a day without one leaves it in line
    assert_bill_error(
        &sb,
        SignType::Md5,
        bill_fields(&sb, &[("bill_date", "20200101")]),
        "No Bill Exist",
        "20002",
    )
    .await;
    assert!(download(&sb, SignType::Md5, fields()).await.is_err());
    assert_bill_error(
        &sb,
        SignType::Md5,
        fields(),
        "当前商户号账单API权限已经关闭",
        "20007",
    )
    .await;
    // AND all used up: the bill again, and the list is empty
    bill_text(&sb, &[("bill_date", &date), ("bill_type", "REFUND")]).await;
    assert_eq!(sb.books().global_faults(), vec![]);
}
