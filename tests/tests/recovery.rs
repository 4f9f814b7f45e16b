//! Recovery paths: a process that died after recording (RECORDED) or while calling WeChat
//! (SUBMITTING with a lease nobody will release), a refresh that asks WeChat, and a definitive
//! refusal releasing the amount. Everything runs against moto and the sandbox over mTLS.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{Stack, refund_body};
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo};
use wxrefund::ledger::{LeaseOutcome, NewRefund, RecordOutcome};
use wxrefund::service::RefundCommand;
use wxrefund::state::{RefundStatus, UnixMillis};

/// Records a refund exactly as `POST /refunds` would, then "crashes" before calling WeChat.
async fn recorded_by_a_crashed_process(stack: &Stack, no: &str, order: &str, total: u64, fee: u64) {
    let cmd = RefundCommand {
        out_refund_no: OutRefundNo::new(no).expect("no"),
        order: OrderRef::OutTradeNo(OutTradeNo::new(order).expect("order")),
        total_fee: Fen::positive(total).expect("fen"),
        refund_fee: Fen::positive(fee).expect("fen"),
        refund_desc: None,
        refund_account: None,
        metadata: Default::default(),
    };
    let now = UnixMillis::now();
    let outcome = stack
        .ledger
        .record(NewRefund {
            out_refund_no: cmd.out_refund_no.clone(),
            order: cmd.order.clone(),
            total_fee: cmd.total_fee,
            refund_fee: cmd.refund_fee,
            refund_desc: None,
            refund_account: None,
            request_hash: cmd.request_hash(),
            now,
            next_check_at: now,
            metadata: Default::default(),
            lease: None,
        })
        .await
        .expect("ledger");
    assert!(matches!(outcome, RecordOutcome::Created(_)), "{outcome:?}");
}

/// Takes the lease as a process that then dies mid-call; the lease runs out almost at once.
async fn leased_by_a_crashed_process(stack: &Stack, no: &str) {
    let lease = stack
        .ledger
        .acquire_lease(
            &OutRefundNo::new(no).expect("no"),
            "crashed-process",
            Duration::from_millis(50),
            UnixMillis::now(),
        )
        .await
        .expect("ledger");
    assert!(matches!(lease, LeaseOutcome::Acquired(_)), "{lease:?}");
    tokio::time::sleep(Duration::from_millis(80)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_submits_a_refund_recorded_by_a_process_that_died_before_calling_wechat() {
    // GIVEN a refund recorded (amount reserved) by a process that died before calling WeChat
    let stack = Stack::new().await;
    stack.create_order("ORDER-REC-1", 500);
    recorded_by_a_crashed_process(&stack, "R-REC-1", "ORDER-REC-1", 500, 200).await;
    assert_eq!(stack.apply_calls("R-REC-1"), 0);

    // WHEN the poller runs THEN it submits it once, with the same number
    let rec = stack.poll_until("R-REC-1", RefundStatus::Processing).await;
    assert!(rec.refund_id.is_some());
    assert_eq!(stack.apply_calls("R-REC-1"), 1);

    // AND the merchant's retry of the same request is a replay, not a second refund
    let (status, view) = stack
        .post_refund(&refund_body("R-REC-1", "ORDER-REC-1", 500, 200))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(stack.apply_calls("R-REC-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_attempt_that_never_reached_wechat_is_taken_over_and_submitted_once() {
    // GIVEN a refund whose submitting process died before its request left
    let stack = Stack::new().await;
    stack.create_order("ORDER-TAKE-1", 500);
    recorded_by_a_crashed_process(&stack, "R-TAKE-1", "ORDER-TAKE-1", 500, 100).await;
    leased_by_a_crashed_process(&stack, "R-TAKE-1").await;

    // WHEN the poller finds the expired lease THEN it takes over, asks WeChat (REFUNDNOTEXIST)
    // and submits the same number once
    let rec = stack.poll_until("R-TAKE-1", RefundStatus::Processing).await;
    assert_eq!(rec.attempts, 2, "the dead attempt and the takeover");
    assert!(rec.lease.is_none());
    assert_eq!(stack.apply_calls("R-TAKE-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_attempt_that_wechat_took_is_adopted_not_paid_again() {
    // GIVEN a refund whose submitting process died right after WeChat took it
    let stack = Stack::new().await;
    stack.create_order("ORDER-TAKE-2", 500);
    recorded_by_a_crashed_process(&stack, "R-TAKE-2", "ORDER-TAKE-2", 500, 100).await;
    leased_by_a_crashed_process(&stack, "R-TAKE-2").await;
    stack
        .external_refund("R-TAKE-2", "ORDER-TAKE-2", 500, 100, None)
        .await;
    assert_eq!(stack.apply_calls("R-TAKE-2"), 1);

    // WHEN the poller takes over THEN the query finds the refund and it is adopted
    let rec = stack.poll_until("R-TAKE-2", RefundStatus::Processing).await;
    assert!(rec.refund_id.is_some());
    // AND WeChat was never asked to refund it again
    assert_eq!(stack.apply_calls("R-TAKE-2"), 1);
    let books = stack.order_books("ORDER-TAKE-2");
    assert_eq!(books.refunds.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_asks_wechat_and_settles_without_the_poller() {
    // GIVEN an accepted refund that WeChat has since settled
    let stack = Stack::new().await;
    stack.create_order("ORDER-REFRESH-1", 300);
    let (status, view) = stack
        .post_refund(&refund_body("R-REFRESH-1", "ORDER-REFRESH-1", 300, 300))
        .await;
    assert_eq!(
        (status, view["status"].as_str()),
        (StatusCode::ACCEPTED, Some("PROCESSING"))
    );
    stack.sandbox.settle_now();

    // WHEN the merchant reads it without refresh THEN the ledger's view, unchanged
    let (_, plain) = stack.get_refund("R-REFRESH-1").await;
    assert_eq!(plain["status"], "PROCESSING");
    // WHEN it asks with refresh=true THEN WeChat is queried and the result recorded
    let (status, fresh) = stack.get_refund("R-REFRESH-1?refresh=true").await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_eq!(fresh["status"], "SUCCESS", "{fresh}");
    assert!(fresh["success_time"].is_string(), "{fresh}");
    assert_eq!(
        stack.record("R-REFRESH-1").await.status,
        RefundStatus::Success
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definitive_refusal_fails_the_refund_and_releases_its_amount() {
    // GIVEN an order WeChat does not know (ORDERNOTEXIST is final)
    let stack = Stack::new().await;

    // WHEN a refund of the whole amount is asked for
    let (status, view) = stack
        .post_refund(&refund_body("R-FAIL-1", "ORDER-FAIL-1", 400, 400))
        .await;

    // THEN it is FAILED at once with WeChat's reason
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "FAILED", "{view}");
    assert_eq!(view["last_error"]["code"], "ORDERNOTEXIST", "{view}");
    // AND its amount is free again: once the order exists, the whole amount can be refunded
    stack.create_order("ORDER-FAIL-1", 400);
    let (status, view) = stack
        .post_refund(&refund_body("R-FAIL-2", "ORDER-FAIL-1", 400, 400))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "PROCESSING", "{view}");
}
