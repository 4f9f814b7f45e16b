//! The money rules end to end: partial refunds up to the total, the 50-refund cap, idempotent
//! replays and reused keys, CHANGE holding its amount and REFUNDCLOSE releasing it, listing an
//! order across WeChat's query pages, and refunds made outside our API counting against the order.
//! Every refusal is checked on both sides: our answer AND the sandbox's books (WeChat never asked).

mod common;

use axum::http::{Method, StatusCode};
use common::{Stack, eventually, refund_body};
use wxpay_sandbox::Outcome;
use wxrefund::state::RefundStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_refunds_up_to_the_total_then_one_fen_more_is_refused_locally() {
    // GIVEN a paid order of 1000 fen
    let stack = Stack::new().await;
    stack.create_order("ORDER-PART-1", 1000);

    // WHEN three partial refunds add up to exactly the total
    for (no, fee) in [("R-PART-1", 300), ("R-PART-2", 500), ("R-PART-3", 200)] {
        let (status, view) = stack
            .post_refund(&refund_body(no, "ORDER-PART-1", 1000, fee))
            .await;
        // THEN each is accepted by WeChat
        assert_eq!(status, StatusCode::ACCEPTED, "{no}: {view}");
        assert_eq!(view["status"], "PROCESSING", "{no}: {view}");
    }
    let order = stack.order_books("ORDER-PART-1");
    assert_eq!((order.refund_count, order.refunded_fee), (3, 1000));

    // WHEN one more fen is asked for
    let (status, err) = stack
        .post_refund(&refund_body("R-PART-4", "ORDER-PART-1", 1000, 1))
        .await;

    // THEN it is refused here, with what is left, and never reaches WeChat nor the ledger
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"], "refund_exceeds_order", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("0 of 1000"),
        "{err}"
    );
    assert_eq!(stack.apply_calls("R-PART-4"), 0);
    assert!(stack.sandbox.books().refund("R-PART-4").is_none());
    assert!(stack.maybe_record("R-PART-4").await.is_none());
    assert_eq!(stack.order_books("ORDER-PART-1").refund_count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_51st_refund_is_refused_locally() {
    // GIVEN an order of 100 fen with 50 refunds of 1 fen, all accepted
    let stack = Stack::new().await;
    stack.create_order("ORDER-FIFTY-1", 100);
    for i in 1..=50 {
        let no = format!("R-FIFTY-{i:02}");
        let (status, view) = stack
            .post_refund(&refund_body(&no, "ORDER-FIFTY-1", 100, 1))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{no}: {view}");
        assert_eq!(view["status"], "PROCESSING", "{no}: {view}");
    }
    assert_eq!(stack.order_books("ORDER-FIFTY-1").refund_count, 50);

    // WHEN a 51st refund is asked for (money is left: 50 of 100 fen)
    let (status, err) = stack
        .post_refund(&refund_body("R-FIFTY-51", "ORDER-FIFTY-1", 100, 1))
        .await;

    // THEN it is refused here and WeChat is never asked
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"], "too_many_refunds", "{err}");
    assert!(err["message"].is_string());
    assert_eq!(stack.apply_calls("R-FIFTY-51"), 0);
    let order = stack.order_books("ORDER-FIFTY-1");
    assert_eq!((order.refund_count, order.refunded_fee), (50, 50));
    assert!(stack.maybe_record("R-FIFTY-51").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_returns_the_same_refund_and_a_reused_key_is_refused_without_calling_wechat() {
    // GIVEN an accepted refund
    let stack = Stack::new().await;
    stack.create_order("ORDER-IDEM-1", 1000);
    let body = refund_body("R-IDEM-1", "ORDER-IDEM-1", 1000, 400);
    let (status, first) = stack.post_refund(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["status"], "PROCESSING");

    // WHEN the merchant sends the same request again (a client retry)
    let (status, replay) = stack.post_refund(&body).await;

    // THEN it gets the same record back, and WeChat was not asked again
    assert_eq!(status, StatusCode::ACCEPTED, "{replay}");
    assert_eq!(
        replay, first,
        "a replay returns the stored record unchanged"
    );
    assert_eq!(stack.apply_calls("R-IDEM-1"), 1);

    // WHEN the same out_refund_no comes with another refund_fee
    let (status, err) = stack
        .post_refund(&refund_body("R-IDEM-1", "ORDER-IDEM-1", 1000, 401))
        .await;

    // THEN it is a reused key: 409, the record is untouched, WeChat untouched
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"], "idempotency_key_reused", "{err}");
    assert!(err["message"].is_string());
    assert_eq!(stack.apply_calls("R-IDEM-1"), 1);
    assert_eq!(
        stack.sandbox.books().refund("R-IDEM-1").unwrap().refund_fee,
        400
    );
    let (_, view) = stack.get_refund("R-IDEM-1").await;
    assert_eq!(view, first);

    // WHEN the refund has settled, a replay answers 200 with the final record
    stack.sandbox.settle_now();
    stack.poll_until("R-IDEM-1", RefundStatus::Success).await;
    let (status, replay) = stack.post_refund(&body).await;
    assert_eq!(status, StatusCode::OK, "{replay}");
    assert_eq!(replay["status"], "SUCCESS");
    assert_eq!(replay["refund_id"], first["refund_id"]);
    assert_eq!(stack.apply_calls("R-IDEM-1"), 1);
    assert_eq!(stack.order_books("ORDER-IDEM-1").refund_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_36_refunds_is_listed_completely_across_query_pages() {
    // GIVEN an order with 36 refunds made through the API, all settled at WeChat
    let stack = Stack::new().await;
    stack.create_order("ORDER-LIST-1", 3600);
    for i in 1..=36 {
        let no = format!("R-LIST-{i:02}");
        let (status, view) = stack
            .post_refund(&refund_body(&no, "ORDER-LIST-1", 3600, 100))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{no}: {view}");
    }
    assert_eq!(stack.sandbox.settle_now().len(), 36);

    // WHEN the merchant lists the order's refunds
    let (status, list) = stack
        .call(Method::GET, "/orders/ORDER-LIST-1/refunds", None)
        .await;

    // THEN all 36 are there, and each is SUCCESS: the listing read WeChat's four query pages
    // (offset 0, 10, 20, 30) and adopted every record, not just the first page's
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["out_trade_no"], "ORDER-LIST-1");
    let refunds = list["refunds"].as_array().expect("refunds");
    assert_eq!(refunds.len(), 36, "{list}");
    let mut nos: Vec<&str> = refunds
        .iter()
        .map(|r| r["out_refund_no"].as_str().unwrap())
        .collect();
    nos.sort_unstable();
    let want: Vec<String> = (1..=36).map(|i| format!("R-LIST-{i:02}")).collect();
    assert_eq!(nos, want.iter().map(String::as_str).collect::<Vec<_>>());
    for r in refunds {
        assert_eq!(r["status"], "SUCCESS", "{r}");
        assert_eq!(r["external"], false, "{r}");
    }
    // AND the ledger itself was brought up to date
    let ledger = stack.ledger_order("ORDER-LIST-1").await;
    assert_eq!(ledger.len(), 36);
    assert!(ledger.iter().all(|r| r.status == RefundStatus::Success));
    assert!((1..=36).all(|i| stack.apply_calls(&format!("R-LIST-{i:02}")) == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_needs_a_person_and_keeps_its_amount_reserved() {
    // GIVEN an order paid with a card the bank will refuse refunds to
    let stack = Stack::new().await;
    stack.create_order_with("ORDER-CHANGE-1", 1000, Some(Outcome::Change));
    let (status, view) = stack
        .post_refund(&refund_body("R-CHANGE-1", "ORDER-CHANGE-1", 1000, 600))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");

    // WHEN WeChat settles it as CHANGE and the poller runs
    stack.sandbox.settle_now();
    stack.poll_until("R-CHANGE-1", RefundStatus::Change).await;

    // THEN the refund shows CHANGE and that a person must act
    let (_, view) = stack.get_refund("R-CHANGE-1").await;
    assert_eq!(view["status"], "CHANGE", "{view}");
    assert_eq!(view["needs_person"], true, "{view}");
    assert_eq!(view["refund_recv_account"], "招商银行信用卡0403", "{view}");

    // AND its 600 fen stay reserved: 401 is refused locally, 400 is accepted
    let (status, err) = stack
        .post_refund(&refund_body("R-CHANGE-2", "ORDER-CHANGE-1", 1000, 401))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"], "refund_exceeds_order", "{err}");
    assert_eq!(stack.apply_calls("R-CHANGE-2"), 0);
    let (status, view) = stack
        .post_refund(&refund_body("R-CHANGE-3", "ORDER-CHANGE-1", 1000, 400))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(stack.apply_calls("R-CHANGE-3"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refundclose_releases_its_amount_for_a_new_refund() {
    // GIVEN a full refund that WeChat will close
    let stack = Stack::new().await;
    stack.create_order_with("ORDER-CLOSE-1", 1000, Some(Outcome::Refundclose));
    let (status, view) = stack
        .post_refund(&refund_body("R-CLOSE-1", "ORDER-CLOSE-1", 1000, 1000))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");

    // WHEN it settles as REFUNDCLOSE
    stack.sandbox.settle_now();
    stack
        .poll_until("R-CLOSE-1", RefundStatus::RefundClose)
        .await;
    let (_, view) = stack.get_refund("R-CLOSE-1").await;
    assert_eq!(view["status"], "REFUNDCLOSE", "{view}");
    assert_eq!(view["needs_person"], false);

    // THEN the full amount can be refunded again, and it reaches WeChat
    let (status, view) = stack
        .post_refund(&refund_body("R-CLOSE-2", "ORDER-CLOSE-1", 1000, 1000))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "PROCESSING", "{view}");
    assert_eq!(stack.apply_calls("R-CLOSE-2"), 1);
    assert_eq!(stack.order_books("ORDER-CLOSE-1").refunded_fee, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_refund_found_by_listing_is_recorded_and_counts_against_the_order() {
    // GIVEN an order on which 700 of 1000 fen were refunded outside our API
    let stack = Stack::new().await;
    stack.create_order("ORDER-EXT-1", 1000);
    stack
        .external_refund("R-EXT-1", "ORDER-EXT-1", 1000, 700, None)
        .await;
    assert!(stack.maybe_record("R-EXT-1").await.is_none());

    // WHEN the merchant lists the order's refunds
    let (status, list) = stack
        .call(Method::GET, "/orders/ORDER-EXT-1/refunds", None)
        .await;

    // THEN the external refund is shown and recorded as external
    assert_eq!(status, StatusCode::OK, "{list}");
    let refunds = list["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{list}");
    assert_eq!(refunds[0]["out_refund_no"], "R-EXT-1");
    assert_eq!(refunds[0]["external"], true);
    assert_eq!(refunds[0]["refund_fee"], 700);
    let rec = stack.record("R-EXT-1").await;
    assert!(rec.external);
    assert_eq!(rec.refund_fee.get(), 700);

    // AND it counts against the order: 301 is refused here, 300 goes through
    let (status, err) = stack
        .post_refund(&refund_body("R-EXT-2", "ORDER-EXT-1", 1000, 301))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"], "refund_exceeds_order", "{err}");
    assert_eq!(stack.apply_calls("R-EXT-2"), 0);
    let (status, view) = stack
        .post_refund(&refund_body("R-EXT-3", "ORDER-EXT-1", 1000, 300))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(stack.order_books("ORDER-EXT-1").refunded_fee, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_refund_learned_by_notification_is_recorded_and_counts_against_the_order() {
    // GIVEN the stack served on a port, and a refund of 600 of 1000 fen made outside our API
    // whose notification comes to our notify route
    let stack = Stack::served().await;
    stack.create_order("ORDER-EXTN-1", 1000);
    let notify_url = format!("{}/wxpay/refund-notify", stack.base_url.as_ref().unwrap());
    stack
        .external_refund("R-EXTN-1", "ORDER-EXTN-1", 1000, 600, Some(notify_url))
        .await;

    // WHEN WeChat settles it and notifies us
    stack.sandbox.settle_now();

    // THEN the ledger records it as an external, successful refund, and WeChat got SUCCESS back
    eventually("the external refund to be recorded", || async {
        stack
            .maybe_record("R-EXTN-1")
            .await
            .is_some_and(|r| r.status == RefundStatus::Success)
    })
    .await;
    eventually("the notification to be acknowledged", || async {
        stack
            .sandbox
            .books()
            .refund("R-EXTN-1")
            .unwrap()
            .notify
            .delivered
    })
    .await;
    let rec = stack.record("R-EXTN-1").await;
    assert!(rec.external);
    assert_eq!(rec.refund_fee.get(), 600);
    let (_, view) = stack.get_refund("R-EXTN-1").await;
    assert_eq!(view["external"], true, "{view}");

    // AND it counts against the order
    let (status, err) = stack
        .post_refund(&refund_body("R-EXTN-2", "ORDER-EXTN-1", 1000, 401))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"], "refund_exceeds_order", "{err}");
    assert_eq!(stack.apply_calls("R-EXTN-2"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_without_refunds_lists_empty() {
    let stack = Stack::new().await;
    stack.create_order("ORDER-EMPTY-1", 1000);
    let (status, list) = stack
        .call(Method::GET, "/orders/ORDER-EMPTY-1/refunds", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["refunds"].as_array().map(Vec::len), Some(0), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_naming_the_order_only_by_transaction_id_is_refused_so_one_order_has_one_limit() {
    // GIVEN an order of 1000 fen
    let stack = Stack::new().await;
    let order = stack.create_order("ORDER-TXN-1", 1000);

    // WHEN a refund names the order only by its transaction_id
    let (status, err) = stack
        .post_refund(&serde_json::json!({
            "out_refund_no": "R-TXN-1",
            "transaction_id": order.transaction_id,
            "total_fee": 1000,
            "refund_fee": 600,
        }))
        .await;

    // THEN it is refused before anything is recorded or sent (the ledger limits refunds per
    // out_trade_no; a second key for the same order would be a second limit)
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"], "validation_error", "{err}");
    assert_eq!(stack.apply_calls("R-TXN-1"), 0);

    // AND the whole amount is still refundable by out_trade_no
    let (status, view) = stack
        .post_refund(&refund_body("R-TXN-2", "ORDER-TXN-1", 1000, 1000))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "PROCESSING", "{view}");
}
