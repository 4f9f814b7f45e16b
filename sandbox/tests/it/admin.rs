//! The admin JSON API over HTTPS (no client certificate).

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn orders_books_faults_and_settle_over_http() {
    let sb = start("admin").await;
    let c = anonymous(&sb);
    let u = |p: &str| format!("{}/sandbox{p}", sb.base_url());
    use reqwest::Method as M;

    // create an order with a fault; the transaction_id is generated (28 digits)
    let (s, o) = admin(
        &c,
        M::POST,
        u("/orders"),
        Some(
            json!({"out_trade_no": "order-adm", "total_fee": 500, "outcome": "CHANGE",
                    "faults": [{"kind": "system_error_before", "times": 1}]}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{o}");
    let txn = o["transaction_id"].as_str().unwrap();
    assert_eq!(txn.len(), 28);
    assert!(txn.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(o["outcome"], "CHANGE");
    assert_eq!(o["faults"][0]["kind"], "system_error_before");
    // duplicate → 409; bad JSON → 400; bad number → 400; unknown order → 404
    let (s, e) = admin(
        &c,
        M::POST,
        u("/orders"),
        Some(json!({"out_trade_no": "order-adm", "total_fee": 1})),
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (409, Some("conflict")));
    assert!(e["message"].is_string());
    let (s, e) = admin(&c, M::POST, u("/orders"), Some(json!({"total_fee": "x"}))).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("bad_request")));
    let (s, _) = admin(
        &c,
        M::POST,
        u("/orders"),
        Some(json!({"out_trade_no": "a b", "total_fee": 1})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, e) = admin(&c, M::GET, u("/orders/nope"), None).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("not_found")));
    let (s, _) = admin(&c, M::DELETE, u("/orders"), None).await;
    assert_eq!(s, 405);
    let (s, _) = admin(&c, M::GET, u("/nothing"), None).await;
    assert_eq!(s, 404);

    // the order's fault fires once, then a refund is taken and shows in the books
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-adm", "ra-1", 500, 100).await,
        "SYSTEMERROR",
    );
    apply(&sb, "order-adm", "ra-1", 500, 100).await;
    let (s, o) = admin(&c, M::GET, u("/orders/order-adm"), None).await;
    assert_eq!(s, 200);
    assert_eq!(o["refunded_fee"], 100);
    assert_eq!(o["refundable_fee"], 400);
    assert_eq!(o["refunds"][0]["status"], "PROCESSING");
    assert_eq!(o["refunds"][0]["apply_calls"], 2);
    assert_eq!(o["faults"], json!([]));
    let (_, list) = admin(&c, M::GET, u("/orders"), None).await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 1);

    // global faults: add (one or many), list, clear
    let (s, f) = admin(
        &c,
        M::POST,
        u("/faults"),
        Some(json!([{"kind": "latency", "ms": 10}, {"kind": "not_enough"}])),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["faults"].as_array().unwrap().len(), 2);
    let (s, _) = admin(&c, M::POST, u("/faults"), Some(json!({"kind": "meteor"}))).await;
    assert_eq!(s, 400);
    assert_biz_fail(
        &sb,
        &apply(&sb, "order-adm", "ra-2", 500, 100).await,
        "NOTENOUGH",
    );
    let (_, f) = admin(&c, M::DELETE, u("/faults"), None).await;
    assert_eq!(f["faults"], json!([]));
    let (s, _) = admin(
        &c,
        M::POST,
        u("/orders/order-adm/faults"),
        Some(json!({"kind": "http502", "times": 1})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = admin(&c, M::DELETE, u("/orders/order-adm/faults"), None).await;
    assert_eq!(s, 200);
    let (s, _) = admin(
        &c,
        M::POST,
        u("/orders/nope/faults"),
        Some(json!({"kind": "http502"})),
    )
    .await;
    assert_eq!(s, 404);

    // settle now → CHANGE
    let (s, v) = admin(&c, M::POST, u("/settle"), None).await;
    assert_eq!((s, v["settled"].clone()), (200, json!(["ra-1"])));
    let (_, r) = admin(&c, M::GET, u("/refunds/ra-1"), None).await;
    assert_eq!(r["status"], "CHANGE");
    assert_eq!(r["refund_recv_accout"], "招商银行信用卡0403");
    // merchant config
    let (_, m) = admin(&c, M::GET, u("/merchant"), None).await;
    assert_eq!(m["mch_id"], sb.merchant().mch_id.as_str());
    assert!(m["cert_p12_base64"].as_str().unwrap().len() > 100);
}
