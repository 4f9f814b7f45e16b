//! Coupons: orders paid partly with CASH / NO_CASH coupons, refunds that give coupons back
//! proportionally, and the coupon, cash and settlement fields of the apply reply, the query reply
//! (`_$n_$m`, paged) and the notification. Checked through the client's own parsers
//! (`wxpay::refund`, `wxpay::query`, `wxpay::notify`), which cross-checks both implementations.

use serde_json::{Value, json};
use wxpay::query::RefundQueryResponse;
use wxpay::refund::{RefundCoupon, RefundResponse};
use wxpay::{Fen, MerchantKeys, SignType, XmlMap};
use wxpay_sandbox::books::BookedStatus;
use wxpay_sandbox::{CouponType, NewCoupon, NewOrder, RunningSandbox};

use crate::common::*;

/// A notification's out_refund_no, settlement_total_fee, settlement_refund_fee, cash_refund_fee.
type NotifiedFees = (String, Option<Fen>, Option<Fen>, Option<Fen>);

fn fen(v: u64) -> Option<Fen> {
    Some(Fen::new(v).unwrap())
}

fn coupon(kind: &str, id: &str, fee: u64) -> RefundCoupon {
    RefundCoupon {
        coupon_type: Some(kind.into()),
        coupon_refund_id: Some(id.into()),
        coupon_refund_fee: fen(fee),
    }
}

/// The query's per-record coupons, as the client parses them, in the apply reply's shape.
fn as_refund_coupons(r: &wxpay::query::QueriedRefund) -> Vec<RefundCoupon> {
    r.coupons
        .iter()
        .map(|c| RefundCoupon {
            coupon_type: c.coupon_type.clone(),
            coupon_refund_id: c.coupon_refund_id.clone(),
            coupon_refund_fee: c.coupon_refund_fee,
        })
        .collect()
}

fn keys(sb: &RunningSandbox) -> MerchantKeys {
    MerchantKeys {
        appid: sb.merchant().appid.parse().unwrap(),
        mch_id: sb.merchant().mch_id.parse().unwrap(),
        api_key: key(sb),
        sign_type: SignType::Md5,
    }
}

fn sum(coupons: &[RefundCoupon], kind: &str) -> u64 {
    coupons
        .iter()
        .filter(|c| c.coupon_type.as_deref() == Some(kind))
        .map(|c| c.coupon_refund_fee.unwrap().get())
        .sum()
}

fn parse_query(sb: &RunningSandbox, reply: &XmlMap) -> RefundQueryResponse {
    assert_eq!(reply.get("result_code"), Some("SUCCESS"), "{reply:?}");
    assert_signed(sb, reply, SignType::Md5);
    RefundQueryResponse::try_from(reply).expect("the client parses the query reply")
}

#[tokio::test]
async fn coupon_refunds_are_proportional_exact_and_reported_everywhere() {
    // GIVEN an order of 1000 paid with a CASH coupon of 100 and a NO_CASH coupon of 50
    let rx = Receiver::start(0).await;
    let sb = start("coupons").await;
    let o = sb
        .books()
        .create_order(NewOrder {
            out_trade_no: "order-cp".into(),
            total_fee: 1000,
            notify_url: Some(rx.url()),
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
    assert_eq!((o.cash_fee, o.settlement_total_fee), (850, Some(950)));

    // WHEN refunds of 300 then 700 are applied
    let r1 = apply(&sb, "order-cp", "rcp-1", 1000, 300).await;
    let r2 = apply(&sb, "order-cp", "rcp-2", 1000, 700).await;

    // THEN both replies are signed and carry the coupon, cash and settlement fields
    for r in [&r1, &r2] {
        assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
        assert_signed(&sb, r, SignType::Md5);
        assert_eq!(r.get("cash_fee"), Some("850"));
        assert_eq!(r.get("settlement_total_fee"), Some("950"));
        assert_eq!(r.get("coupon_refund_count"), Some("2"));
    }
    // AND the client parses them: 300 = 30 (C1) + 15 (C2) + 255 cash, 700 = what is left
    let p1 = RefundResponse::try_from(&r1).expect("the client parses reply 1");
    let p2 = RefundResponse::try_from(&r2).expect("the client parses reply 2");
    assert_eq!(
        p1.coupons,
        vec![coupon("CASH", "C1", 30), coupon("NO_CASH", "C2", 15)]
    );
    assert_eq!(
        (
            p1.coupon_refund_fee,
            p1.cash_refund_fee,
            p1.settlement_refund_fee
        ),
        (fen(45), fen(255), fen(285))
    );
    assert_eq!(
        p2.coupons,
        vec![coupon("CASH", "C1", 70), coupon("NO_CASH", "C2", 35)]
    );
    assert_eq!(
        (
            p2.coupon_refund_fee,
            p2.cash_refund_fee,
            p2.settlement_refund_fee
        ),
        (fen(105), fen(595), fen(665))
    );
    assert_eq!((p2.cash_fee, p2.settlement_total_fee), (fen(850), fen(950)));
    // AND the sums are exact: coupon refunds add up to the coupons, cash refunds to the cash
    let all: Vec<RefundCoupon> = p1.coupons.iter().chain(&p2.coupons).cloned().collect();
    assert_eq!((sum(&all, "CASH"), sum(&all, "NO_CASH")), (100, 50));
    let cash: u64 = [&p1, &p2]
        .iter()
        .map(|p| p.cash_refund_fee.unwrap().get())
        .sum();
    assert_eq!(cash, 850);
    // AND resubmitting the first refund answers the same coupon parts (nothing new taken)
    let again = apply(&sb, "order-cp", "rcp-1", 1000, 300).await;
    let again = RefundResponse::try_from(&again).unwrap();
    assert_eq!(
        (again.refund_id, again.coupons),
        (p1.refund_id.clone(), p1.coupons.clone())
    );

    // WHEN the order is queried without offset, with offset 0 and with offset 1
    let whole = parse_query(&sb, &query(&sb, &[("out_trade_no", "order-cp")]).await);
    let page0 = parse_query(
        &sb,
        &query(&sb, &[("out_trade_no", "order-cp"), ("offset", "0")]).await,
    );
    let page1 = parse_query(
        &sb,
        &query(&sb, &[("out_trade_no", "order-cp"), ("offset", "1")]).await,
    );
    // THEN every record carries its coupons (`_$n_$m`) and settlement amount, numbered per page
    for q in [&whole, &page0] {
        assert_eq!(q.refund_count, 2);
        assert_eq!((q.cash_fee, q.settlement_total_fee), (fen(850), fen(950)));
        assert_eq!(as_refund_coupons(&q.refunds[0]), p1.coupons);
        assert_eq!(as_refund_coupons(&q.refunds[1]), p2.coupons);
        assert_eq!(q.refunds[0].coupon_refund_fee, fen(45));
        assert_eq!(q.refunds[1].coupon_refund_fee, fen(105));
        assert_eq!(q.refunds[0].settlement_refund_fee, fen(285));
        assert_eq!(q.refunds[1].settlement_refund_fee, fen(665));
    }
    assert_eq!(whole.fields.get("coupon_refund_id_1_0"), Some("C1"));
    assert_eq!(whole.fields.get("coupon_type_1_1"), Some("NO_CASH"));
    assert_eq!(whole.fields.get("coupon_refund_fee_1_1"), Some("35"));
    assert_eq!(page0.total_refund_count, Some(2));
    assert_eq!((page1.refund_count, page1.total_refund_count), (1, Some(2)));
    assert_eq!(page1.refunds[0].out_refund_no.as_str(), "rcp-2");
    assert_eq!(as_refund_coupons(&page1.refunds[0]), p2.coupons);
    assert_eq!(page1.fields.get("coupon_refund_fee_0_1"), Some("35"));
    assert!(
        !page1.fields.contains("coupon_type_1_0"),
        "one record on this page"
    );
    // AND by refund number, with an HMAC signature, the same
    let hmac = call(
        &sb,
        &anonymous(&sb),
        "/pay/refundquery",
        SignType::HmacSha256,
        query_fields(&sb, &[("out_refund_no", "rcp-1")]),
    )
    .await;
    assert_signed(&sb, &hmac, SignType::HmacSha256);
    let one = RefundQueryResponse::try_from(&hmac).unwrap();
    assert_eq!(as_refund_coupons(&one.refunds[0]), p1.coupons);

    // WHEN the refunds settle THEN each notification carries the settlement and cash amounts
    sb.settle_now();
    eventually(10, || (rx.bodies().len() == 2).then_some(())).await;
    let mut seen: Vec<NotifiedFees> = rx
        .bodies()
        .iter()
        .map(|b| {
            let n = wxpay::notify::decrypt(b.as_bytes(), &keys(&sb)).expect("client decrypts");
            (
                n.out_refund_no.as_str().to_string(),
                n.settlement_total_fee,
                n.settlement_refund_fee,
                n.cash_refund_fee,
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("rcp-1".into(), fen(950), fen(285), fen(255)),
            ("rcp-2".into(), fen(950), fen(665), fen(595)),
        ]
    );
}

#[tokio::test]
async fn coupons_over_the_admin_api_validation_and_closed_refunds() {
    let sb = start("coupons-admin").await;
    let c = anonymous(&sb);
    let url = format!("{}/sandbox/orders", sb.base_url());
    let post = |body: Value| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let resp = c.post(url).body(body.to_string()).send().await.unwrap();
            let status = resp.status().as_u16();
            (
                status,
                serde_json::from_slice::<Value>(&resp.bytes().await.unwrap()).unwrap(),
            )
        }
    };

    // GIVEN coupons that reach the total, a bad type, a zero fee, a repeated id
    // WHEN posted THEN 400 bad_request naming the problem, and no order is created
    for (coupons, why) in [
        (
            json!([{"coupon_id": "C1", "coupon_type": "CASH", "fee": 600},
                   {"coupon_id": "C2", "coupon_type": "NO_CASH", "fee": 400}]),
            "less than total_fee",
        ),
        (
            json!([{"coupon_id": "C1", "coupon_type": "GOLD", "fee": 1}]),
            "unknown variant",
        ),
        (
            json!([{"coupon_id": "C1", "coupon_type": "CASH", "fee": 0}]),
            "positive",
        ),
        (
            json!([{"coupon_id": "C1", "coupon_type": "CASH", "fee": 1},
                   {"coupon_id": "C1", "coupon_type": "CASH", "fee": 1}]),
            "twice",
        ),
    ] {
        let (s, e) = post(json!({"out_trade_no": "order-bad", "total_fee": 1000,
                                 "coupons": coupons}))
        .await;
        assert_eq!((s, e["error"].as_str()), (400, Some("bad_request")), "{e}");
        assert!(e["message"].as_str().unwrap().contains(why), "{e}");
    }
    assert!(sb.books().order("order-bad").is_none());

    // GIVEN a CASH-only order (generated coupon id) that settles REFUNDCLOSE
    let (s, o) = post(json!({"out_trade_no": "order-cash", "total_fee": 1000,
                             "outcome": "REFUNDCLOSE",
                             "coupons": [{"coupon_type": "CASH", "fee": 200}]}))
    .await;
    assert_eq!(s, 201, "{o}");
    assert_eq!(o["cash_fee"], 800);
    assert_eq!(o["settlement_total_fee"], Value::Null);
    let id = o["coupons"][0]["coupon_id"].as_str().unwrap().to_string();
    assert!(!id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()));
    // WHEN the whole order is refunded
    let r = apply(&sb, "order-cash", "rcc-1", 1000, 1000).await;
    // THEN the coupon comes back whole; without NO_CASH coupons no settlement fields are sent
    assert_signed(&sb, &r, SignType::Md5);
    let p = RefundResponse::try_from(&r).unwrap();
    assert_eq!(p.coupons, vec![coupon("CASH", &id, 200)]);
    assert_eq!((p.cash_fee, p.cash_refund_fee), (fen(800), fen(800)));
    assert!(!r.contains("settlement_refund_fee") && !r.contains("settlement_total_fee"));
    let q = parse_query(&sb, &query(&sb, &[("out_refund_no", "rcc-1")]).await);
    assert_eq!(q.refunds[0].settlement_refund_fee, fen(1000));
    assert_eq!(q.settlement_total_fee, None);
    // AND the admin views show the split
    let v = sb.books().refund("rcc-1").unwrap();
    assert_eq!(
        (
            v.coupon_refund_fee,
            v.cash_refund_fee,
            v.settlement_refund_fee
        ),
        (200, 800, 1000)
    );
    // WHEN that refund closes THEN its coupon part is released: a new full refund gets it again
    sb.settle_now();
    assert_eq!(
        sb.books().refund("rcc-1").unwrap().status,
        BookedStatus::Refundclose
    );
    let r = apply(&sb, "order-cash", "rcc-2", 1000, 1000).await;
    let p = RefundResponse::try_from(&r).unwrap();
    assert_eq!(p.coupons, vec![coupon("CASH", &id, 200)]);
    assert_eq!(p.cash_refund_fee, fen(800));
}

#[tokio::test]
async fn orders_without_coupons_answer_exactly_the_fields_they_always_did() {
    // GIVEN an order without coupons WHEN a refund is applied and queried
    let sb = start("no-coupons").await;
    order(&sb, "order-plain", 1000);
    let r = apply(&sb, "order-plain", "rpl-1", 1000, 100).await;
    let q = query(&sb, &[("out_trade_no", "order-plain")]).await;
    // THEN the replies carry exactly the fields they carried before coupons existed
    let keys = |m: &XmlMap| {
        let mut k: Vec<String> = m.keys().map(str::to_string).collect();
        k.sort();
        k
    };
    let expect = |names: &[&str]| {
        let mut k: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    };
    let envelope = [
        "return_code",
        "return_msg",
        "appid",
        "mch_id",
        "nonce_str",
        "sign",
    ];
    let apply_fields = [
        "result_code",
        "transaction_id",
        "out_trade_no",
        "out_refund_no",
        "refund_id",
        "refund_channel",
        "refund_fee",
        "coupon_refund_fee",
        "total_fee",
        "cash_fee",
        "coupon_refund_count",
        "cash_refund_fee",
    ];
    let query_fields = [
        "result_code",
        "transaction_id",
        "out_trade_no",
        "total_fee",
        "cash_fee",
        "fee_type",
        "refund_count",
        "refund_fee",
        "out_refund_no_0",
        "refund_id_0",
        "refund_channel_0",
        "refund_fee_0",
        "settlement_refund_fee_0",
        "refund_status_0",
        "refund_account_0",
        "refund_recv_accout_0",
        "coupon_refund_fee_0",
        "coupon_refund_count_0",
    ];
    assert_eq!(
        keys(&r),
        expect(&[&envelope[..], &apply_fields[..]].concat())
    );
    assert_eq!(
        keys(&q),
        expect(&[&envelope[..], &query_fields[..]].concat())
    );
    assert_eq!(
        (
            r.get("cash_fee"),
            r.get("cash_refund_fee"),
            r.get("coupon_refund_fee")
        ),
        (Some("1000"), Some("100"), Some("0"))
    );
    assert_eq!(
        (
            q.get("cash_fee"),
            q.get("settlement_refund_fee_0"),
            q.get("coupon_refund_count_0")
        ),
        (Some("1000"), Some("100"), Some("0"))
    );
}
