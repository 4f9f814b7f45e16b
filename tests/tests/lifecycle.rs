//! A refund's life end to end: accepted → settled (by the scheduled poll, or by WeChat's
//! notification), and the recoveries: a dropped/hung response (UNKNOWN → query) and a SYSTEMERROR
//! before the refund was taken (RETRY_WAIT → re-submit with the same number).

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{LedgerKind, Stack, eventually, refund_body};
use wxpay_sandbox::FaultKind;
use wxrefund::state::RefundStatus;

/// The happy path on any ledger: 202 PROCESSING → settle → scheduled poll → SUCCESS.
async fn happy_path_via_poll(stack: &Stack) {
    // GIVEN a paid order of 10.00 yuan
    stack.create_order("ORDER-HAPPY-1", 1000);

    // WHEN the merchant asks for a refund of 3.00
    let (status, view) = stack
        .post_refund(&refund_body("R-HAPPY-1", "ORDER-HAPPY-1", 1000, 300))
        .await;

    // THEN it is accepted by WeChat and is PROCESSING, not yet successful
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "PROCESSING", "{view}");
    assert_eq!(view["refund_fee"], 300);
    let refund_id = view["refund_id"].as_str().expect("refund_id").to_string();
    assert!(refund_id.starts_with("50"), "{refund_id}");
    assert_eq!(view["attempts"], 1);
    assert_eq!(view["external"], false);
    let rec = stack.record("R-HAPPY-1").await;
    assert_eq!(rec.status, RefundStatus::Processing);
    let books = stack
        .sandbox
        .books()
        .refund("R-HAPPY-1")
        .expect("refund in the books");
    assert_eq!(books.refund_id, refund_id);

    // WHEN WeChat settles it and the scheduler fires the poller (a real scheduler payload,
    // through lambda_http's own event parsing and response shaping)
    assert_eq!(stack.sandbox.settle_now(), vec!["R-HAPPY-1".to_string()]);
    let report = stack.scheduled_poll().await;

    // THEN the poll settled it
    assert!(report["settled"].as_u64().unwrap_or(0) >= 1, "{report}");
    assert_eq!(report["errors"], 0, "{report}");

    // AND the API shows SUCCESS with where the money went and when
    let (status, view) = stack.get_refund("R-HAPPY-1").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "SUCCESS", "{view}");
    assert_eq!(view["refund_id"], refund_id.as_str());
    assert_eq!(view["refund_recv_account"], "支付用户零钱", "{view}");
    assert!(
        view["success_time"].as_str().is_some_and(|t| !t.is_empty()),
        "{view}"
    );
    assert_eq!(view["needs_person"], false);

    // AND WeChat was asked exactly once and paid exactly once
    assert_eq!(stack.apply_calls("R-HAPPY-1"), 1);
    let order = stack.order_books("ORDER-HAPPY-1");
    assert_eq!(order.refund_count, 1);
    assert_eq!(order.refunded_fee, 300);

    // AND the merchant was told once: one `Refund Succeeded`, with the refund as it ended
    let told: Vec<_> = stack
        .events
        .accepted()
        .into_iter()
        .filter(|e| e.detail.refund.out_refund_no == "R-HAPPY-1")
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].detail_type.as_str(), "Refund Succeeded");
    assert_eq!(told[0].detail.refund.status, RefundStatus::Success);
    assert_eq!(
        told[0].detail.previous_status,
        Some(RefundStatus::Processing)
    );

    // AND a second poll finds nothing left to do
    let report = stack.poll().await;
    assert_eq!(report["examined"], 0, "{report}");
    assert_eq!(stack.events.accepted().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_settles_by_scheduled_poll() {
    let stack = Stack::new().await;
    happy_path_via_poll(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_settles_by_scheduled_poll_on_the_embedded_ledger() {
    let stack = Stack::with_ledger(LedgerKind::Embedded).await;
    happy_path_via_poll(&stack).await;
}

/// Builds a notification exactly as the sandbox does, from its books and its key.
fn notification_body(stack: &Stack, out_refund_no: &str, key: &wxpay::ApiKey) -> String {
    let (_, fields) = stack
        .sandbox
        .books()
        .lock()
        .notification(out_refund_no, None)
        .expect("refund in the books");
    let req_info =
        wxpay_sandbox::encrypt_req_info(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())), key)
            .expect("encrypt req_info");
    let m = stack.sandbox.merchant();
    wxpay::xml::encode([
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", m.appid.as_str()),
        ("mch_id", m.mch_id.as_str()),
        ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
        ("req_info", req_info.as_str()),
    ])
    .expect("encode notification")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_settles_without_a_poll_and_duplicates_and_forgeries_change_nothing() {
    // GIVEN the stack served on a port, so WeChat (the sandbox) can call /wxpay/refund-notify
    let stack = Stack::served().await;
    stack.create_order("ORDER-NOTIFY-1", 500);
    let (status, view) = stack
        .post_refund(&refund_body("R-NOTIFY-1", "ORDER-NOTIFY-1", 500, 500))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "PROCESSING");
    let notify_url = format!("{}/wxpay/refund-notify", stack.base_url.as_ref().unwrap());
    assert_eq!(
        stack
            .sandbox
            .books()
            .refund("R-NOTIFY-1")
            .unwrap()
            .notify_url
            .as_deref(),
        Some(notify_url.as_str()),
        "the refund was submitted with our notify_url"
    );

    // WHEN WeChat settles the refund (and pushes its notification); nobody polls
    stack.sandbox.settle_now();

    // THEN the ledger reaches SUCCESS from the notification alone, and WeChat got SUCCESS back
    eventually("the notification to settle the refund", || async {
        stack.record("R-NOTIFY-1").await.status == RefundStatus::Success
    })
    .await;
    eventually(
        "the sandbox to see its notification acknowledged",
        || async {
            stack
                .sandbox
                .books()
                .refund("R-NOTIFY-1")
                .unwrap()
                .notify
                .delivered
        },
    )
    .await;
    let settled = stack.record("R-NOTIFY-1").await;
    assert!(settled.success_time.is_some());
    assert_eq!(settled.refund_recv_account.as_deref(), Some("支付用户零钱"));
    assert_eq!(
        stack
            .sandbox
            .books()
            .refund("R-NOTIFY-1")
            .unwrap()
            .notify
            .attempts,
        1
    );

    // WHEN the same notification arrives again (WeChat retries)
    let body = notification_body(&stack, "R-NOTIFY-1", &stack.sandbox.api_key());
    let (status, reply) = stack
        .call_raw(
            Method::POST,
            "/wxpay/refund-notify",
            Some(body.into_bytes()),
            "text/xml",
        )
        .await;

    // THEN it is acknowledged and changes nothing
    assert_eq!(status, StatusCode::OK);
    let reply = String::from_utf8(reply).unwrap();
    assert!(
        reply.contains("<return_code><![CDATA[SUCCESS]]></return_code>"),
        "{reply}"
    );
    let after = stack.record("R-NOTIFY-1").await;
    assert_eq!(
        after, settled,
        "a duplicate notification must not touch the record"
    );

    // WHEN a notification encrypted with another key arrives (a forgery, or garbage)
    let wrong = wxpay::ApiKey::new("0123456789abcdefghijklmnopqrstuv").unwrap();
    let forged = notification_body(&stack, "R-NOTIFY-1", &wrong);
    let (status, reply) = stack
        .call_raw(
            Method::POST,
            "/wxpay/refund-notify",
            Some(forged.into_bytes()),
            "text/xml",
        )
        .await;

    // THEN it is refused with a FAIL reply and nothing changes
    assert_eq!(status, StatusCode::OK);
    let reply = String::from_utf8(reply).unwrap();
    assert!(
        reply.contains("<return_code><![CDATA[FAIL]]></return_code>"),
        "{reply}"
    );
    assert_eq!(stack.record("R-NOTIFY-1").await, settled);

    // AND WeChat was asked for the refund exactly once
    assert_eq!(stack.apply_calls("R-NOTIFY-1"), 1);
    assert_eq!(stack.order_books("ORDER-NOTIFY-1").refund_count, 1);
}

/// The refund is taken, but its reply never arrives: the record is UNKNOWN, and the poller's
/// query finds the refund instead of paying it again.
async fn lost_reply_is_resolved_by_query(kind: FaultKind) {
    // GIVEN an order whose next refund apply is taken by WeChat but its reply is lost
    let stack = Stack::new().await;
    stack.create_order("ORDER-LOST-1", 800);
    stack.fault_once("ORDER-LOST-1", kind);

    // WHEN the merchant asks for a refund
    let (status, view) = stack
        .post_refund(&refund_body("R-LOST-1", "ORDER-LOST-1", 800, 800))
        .await;

    // THEN the outcome is unknown (not failed, not retried blindly)
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "UNKNOWN", "{view}");
    assert!(view["last_error"]["code"].is_string(), "{view}");
    // ... although WeChat did take it
    let order = stack.order_books("ORDER-LOST-1");
    assert_eq!(order.refund_count, 1);
    assert_eq!(
        order.refunds[0].status,
        wxpay_sandbox::books::BookedStatus::Processing
    );

    // WHEN the poller runs
    let rec = stack.poll_until("R-LOST-1", RefundStatus::Processing).await;

    // THEN its query adopted WeChat's refund (same refund_id), without re-submitting
    assert_eq!(
        rec.refund_id.as_ref().map(|r| r.to_string()),
        Some(order.refunds[0].refund_id.clone())
    );
    assert!(rec.last_error.is_none(), "{:?}", rec.last_error);
    assert_eq!(stack.apply_calls("R-LOST-1"), 1);

    // WHEN WeChat settles it, the poller completes it
    stack.sandbox.settle_now();
    stack.poll_until("R-LOST-1", RefundStatus::Success).await;

    // AND the money left exactly once
    let order = stack.order_books("ORDER-LOST-1");
    assert_eq!(order.refund_count, 1, "never paid twice");
    assert_eq!(order.refunded_fee, 800);
    assert_eq!(stack.apply_calls("R-LOST-1"), 1);
    let (_, view) = stack.get_refund("R-LOST-1").await;
    assert_eq!(view["status"], "SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_response_becomes_unknown_and_is_resolved_by_query_not_paid_twice() {
    lost_reply_is_resolved_by_query(FaultKind::DropResponse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_response_times_out_to_unknown_and_is_resolved_by_query_not_paid_twice() {
    lost_reply_is_resolved_by_query(FaultKind::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemerror_before_taking_the_refund_is_resubmitted_with_the_same_number() {
    // GIVEN an order whose next refund apply fails with SYSTEMERROR (nothing taken)
    let stack = Stack::new().await;
    stack.create_order("ORDER-SYSERR-1", 600);
    stack.fault_once("ORDER-SYSERR-1", FaultKind::SystemErrorBefore);

    // WHEN the merchant asks for a refund
    let (status, view) = stack
        .post_refund(&refund_body("R-SYSERR-1", "ORDER-SYSERR-1", 600, 250))
        .await;

    // THEN it waits to be retried, with WeChat's error on record, and nothing was taken
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "RETRY_WAIT", "{view}");
    assert_eq!(view["last_error"]["code"], "SYSTEMERROR", "{view}");
    assert_eq!(stack.order_books("ORDER-SYSERR-1").refund_count, 0);
    assert_eq!(stack.apply_calls("R-SYSERR-1"), 1);

    // WHEN the poller runs, it re-submits the SAME out_refund_no, and WeChat accepts it
    let rec = stack
        .poll_until("R-SYSERR-1", RefundStatus::Processing)
        .await;
    assert_eq!(rec.attempts, 2);
    assert!(rec.last_error.is_none(), "{:?}", rec.last_error);
    assert_eq!(stack.apply_calls("R-SYSERR-1"), 2);

    // WHEN WeChat settles it, the poller completes it
    stack.sandbox.settle_now();
    let rec = stack.poll_until("R-SYSERR-1", RefundStatus::Success).await;
    assert!(rec.success_time.is_some());

    // THEN two apply calls carried the number, and exactly one refund exists
    assert_eq!(stack.apply_calls("R-SYSERR-1"), 2);
    let order = stack.order_books("ORDER-SYSERR-1");
    assert_eq!(order.refund_count, 1);
    assert_eq!(order.refunds[0].out_refund_no, "R-SYSERR-1");
    assert_eq!(order.refunded_fee, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badly_signed_reply_becomes_unknown_and_is_resolved_by_query_not_paid_twice() {
    lost_reply_is_resolved_by_query(FaultKind::BadSign).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemerror_after_taking_the_refund_is_resubmitted_and_wechat_answers_the_same_refund() {
    // GIVEN an order whose next refund apply is taken by WeChat but answered with SYSTEMERROR
    let stack = Stack::new().await;
    stack.create_order("ORDER-SYSAFT-1", 900);
    stack.fault_once("ORDER-SYSAFT-1", FaultKind::SystemErrorAfter);

    // WHEN the merchant asks for a refund
    let (status, view) = stack
        .post_refund(&refund_body("R-SYSAFT-1", "ORDER-SYSAFT-1", 900, 900))
        .await;

    // THEN it waits to be retried (WeChat said SYSTEMERROR), although WeChat holds it
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "RETRY_WAIT", "{view}");
    assert_eq!(view["last_error"]["code"], "SYSTEMERROR", "{view}");
    assert_eq!(stack.order_books("ORDER-SYSAFT-1").refund_count, 1);

    // WHEN the poller re-submits the same number, WeChat answers with the same refund
    let rec = stack
        .poll_until("R-SYSAFT-1", RefundStatus::Processing)
        .await;
    let books = stack.sandbox.books().refund("R-SYSAFT-1").unwrap();
    assert_eq!(
        rec.refund_id.as_ref().map(|r| r.to_string()),
        Some(books.refund_id)
    );
    stack.sandbox.settle_now();
    stack.poll_until("R-SYSAFT-1", RefundStatus::Success).await;

    // THEN the money left once
    let order = stack.order_books("ORDER-SYSAFT-1");
    assert_eq!((order.refund_count, order.refunded_fee), (1, 900));
    assert_eq!(stack.apply_calls("R-SYSAFT-1"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_502_becomes_unknown_and_the_query_finding_nothing_resubmits_the_same_number() {
    // GIVEN an order whose next refund apply hits a 502 HTML page (WeChat never saw it)
    let stack = Stack::new().await;
    stack.create_order("ORDER-502-1", 500);
    stack.fault_once("ORDER-502-1", FaultKind::Http502);

    // WHEN the merchant asks for a refund
    let (status, view) = stack
        .post_refund(&refund_body("R-502-1", "ORDER-502-1", 500, 100))
        .await;

    // THEN the outcome is unknown, and nothing was taken
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "UNKNOWN", "{view}");
    assert_eq!(stack.order_books("ORDER-502-1").refund_count, 0);

    // WHEN the poller runs: its query says REFUNDNOTEXIST, so it re-submits the same number
    stack.poll_until("R-502-1", RefundStatus::Processing).await;
    stack.sandbox.settle_now();
    stack.poll_until("R-502-1", RefundStatus::Success).await;

    // THEN exactly one refund exists, after two apply calls with the same number
    let order = stack.order_books("ORDER-502-1");
    assert_eq!((order.refund_count, order.refunded_fee), (1, 100));
    assert_eq!(stack.apply_calls("R-502-1"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_make_one_refund() {
    // GIVEN an order whose refund apply is slow (WeChat takes 500 ms)
    let stack = Stack::new().await;
    stack.create_order("ORDER-RACE-1", 1000);
    stack.fault_once("ORDER-RACE-1", FaultKind::Latency { ms: 500 });
    let body = refund_body("R-RACE-1", "ORDER-RACE-1", 1000, 1000);

    // WHEN the merchant's client sends the same request twice at once
    let (a, b) = tokio::join!(stack.post_refund(&body), stack.post_refund(&body));

    // THEN one is accepted and the other is told it is in progress (or gets the same record)
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert!(
        statuses == [StatusCode::ACCEPTED, StatusCode::CONFLICT]
            || statuses == [StatusCode::ACCEPTED, StatusCode::ACCEPTED],
        "{a:?} / {b:?}"
    );
    for (status, v) in [&a, &b] {
        if *status == StatusCode::CONFLICT {
            assert_eq!(v["error"], "in_progress", "{v}");
        }
    }
    // AND WeChat was asked once
    assert_eq!(stack.apply_calls("R-RACE-1"), 1);
    assert_eq!(stack.order_books("ORDER-RACE-1").refund_count, 1);
    assert_eq!(
        stack.record("R-RACE-1").await.status,
        RefundStatus::Processing
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_reloaded_once_and_the_same_refund_goes_through() {
    // GIVEN a stack still holding the merchant's old API key, while its secret already has the new
    let stack = Stack::with_stale_key().await;
    stack.create_order("ORDER-ROTATE-1", 800);

    // WHEN a refund is asked for
    let (status, view) = stack
        .post_refund(&refund_body("R-ROTATE-1", "ORDER-ROTATE-1", 800, 300))
        .await;

    // THEN WeChat's signature refusal makes the gateway reload the secret and send the same
    // request again, which WeChat accepts: one refund, never a FAILED one
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "PROCESSING", "{view}");
    assert!(view["last_error"].is_null(), "{view}");
    let books = stack.order_books("ORDER-ROTATE-1");
    assert_eq!(books.refunds.len(), 1, "exactly one refund at WeChat");
    assert_eq!(books.refunds[0].refund_fee, 300);

    // AND the new key stays in use: the next call needs no reload and succeeds at once
    let (status, view) = stack
        .post_refund(&refund_body("R-ROTATE-2", "ORDER-ROTATE-1", 800, 200))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "PROCESSING", "{view}");
}
