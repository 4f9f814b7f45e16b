//! WeChat's books win, end to end (real sandbox over mTLS): a refund the ledger answered FAILED
//! while WeChat took it is corrected to WeChat's status once a signed fact says so, with its
//! history kept, its amount re-reserved and a person told.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{LedgerKind, Stack, refund_body};
use wxpay_sandbox::books::{Fault, FaultKind, FaultTarget};
use wxrefund::state::RefundStatus;

/// GIVEN attempt 1 answered SYSTEMERROR after WeChat took the refund, the repeat refused for good
/// (USER_ACCOUNT_ABNORMAL) and the verifying query answered REFUNDNOTEXIST (WeChat lagging): the
/// ledger says FAILED and released the amount, while WeChat holds the refund.
async fn failed_but_taken(stack: &Stack, order: &str, no: &str) {
    stack.create_order(order, 1000);
    let fault = |kind, on| Fault {
        kind,
        times: Some(1),
        on,
    };
    stack
        .sandbox
        .books()
        .add_faults(
            Some(order),
            vec![
                fault(FaultKind::SystemErrorAfter, FaultTarget::Apply),
                fault(
                    FaultKind::Refuse {
                        err_code: "USER_ACCOUNT_ABNORMAL".into(),
                        err_code_des: None,
                    },
                    FaultTarget::Apply,
                ),
                fault(FaultKind::RefundNotExist, FaultTarget::Query),
            ],
        )
        .expect("faults");
    let (status, view) = stack.post_refund(&refund_body(no, order, 1000, 100)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "RETRY_WAIT", "{view}");
    let failed = stack.poll_until(no, RefundStatus::Failed).await;
    assert_eq!(
        failed.last_error.expect("reason").code,
        "USER_ACCOUNT_ABNORMAL"
    );
    assert_eq!(stack.order_books(order).refund_count, 1, "WeChat holds it");
    // WeChat pays it out.
    stack.sandbox.settle_now();
}

async fn then_the_ledger_agrees_with_wechat(stack: &Stack, order: &str, no: &str, source: &str) {
    // THEN the refund reads SUCCESS, flagged for a person, with what we said before
    let (status, view) = stack.get_refund(no).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["status"], "SUCCESS", "{view}");
    assert_eq!(view["needs_person"], true, "{view}");
    let c = &view["corrections"][0];
    assert_eq!(
        (
            c["from"].as_str(),
            c["to"].as_str(),
            c["kind"].as_str(),
            c["source"].as_str()
        ),
        (
            Some("FAILED"),
            Some("SUCCESS"),
            Some("contradiction"),
            Some(source)
        ),
        "{view}"
    );
    // AND its amount is reserved again: 901 on the 900 left is refused, WeChat never asked
    let (status, err) = stack
        .post_refund(&refund_body("R-BW-OVER", order, 1000, 901))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"], "refund_exceeds_order", "{err}");
    assert_eq!(stack.apply_calls("R-BW-OVER"), 0);
    let (status, view) = stack
        .post_refund(&refund_body("R-BW-REST", order, 1000, 900))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refund_wechat_paid_is_corrected_by_the_order_listing() {
    for kind in [LedgerKind::Dynamo, LedgerKind::Embedded] {
        let stack = Stack::with_ledger(kind).await;
        failed_but_taken(&stack, "ORDER-BW-1", "R-BW-1").await;
        // WHEN the merchant lists the order (WeChat's signed list says SUCCESS)
        let (status, list) = stack
            .call(Method::GET, "/orders/ORDER-BW-1/refunds", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        then_the_ledger_agrees_with_wechat(&stack, "ORDER-BW-1", "R-BW-1", "order_listing").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refund_wechat_paid_is_corrected_by_its_notification() {
    // GIVEN the stack served, so the sandbox's notifications reach it
    let stack = Stack::served().await;
    failed_but_taken(&stack, "ORDER-BW-2", "R-BW-2").await;
    // WHEN WeChat's notification of the SUCCESS arrives (confirmed by a query)
    common::eventually("the notification corrects the refund", || async {
        stack.record("R-BW-2").await.status == RefundStatus::Success
    })
    .await;
    then_the_ledger_agrees_with_wechat(&stack, "ORDER-BW-2", "R-BW-2", "notification").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_true_total_comes_from_wechat() {
    for kind in [LedgerKind::Dynamo, LedgerKind::Embedded] {
        // GIVEN an order of 2000 whose first refund was sent with a wrong total and refused
        let stack = Stack::with_ledger(kind).await;
        stack.create_order("ORDER-BW-3", 2000);
        let (status, view) = stack
            .post_refund(&refund_body("R-BW-3A", "ORDER-BW-3", 1000, 100))
            .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["status"], "FAILED", "{view}");
        assert_eq!(view["last_error"]["code"], "REFUND_FEE_MISMATCH", "{view}");
        // AND a refund made in the merchant platform, learned from WeChat's order listing
        stack
            .sandbox
            .vendor_refund(
                "ORDER-BW-3",
                wxpay_sandbox::books::NewRefund {
                    out_refund_no: "R-BW-PLATFORM".into(),
                    refund_fee: 300,
                },
            )
            .expect("platform refund");
        let (status, list) = stack
            .call(Method::GET, "/orders/ORDER-BW-3/refunds", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert!(
            list["refunds"]
                .as_array()
                .expect("refunds")
                .iter()
                .any(|r| r["out_refund_no"] == "R-BW-PLATFORM" && r["external"] == true),
            "{list}"
        );
        // WHEN the merchant asks with the true total THEN it is accepted and reaches WeChat
        let (status, view) = stack
            .post_refund(&refund_body("R-BW-3B", "ORDER-BW-3", 2000, 100))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{kind:?}: {view}");
        assert_eq!(view["status"], "PROCESSING", "{view}");
        // AND the true total bounds it: 1600 more would pass 2000 (300 + 100 + 1601)
        let (status, err) = stack
            .post_refund(&refund_body("R-BW-3C", "ORDER-BW-3", 2000, 1601))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_stuck_in_unknown_is_escalated_listed_and_clears_once_it_finishes() {
    // GIVEN escalation ages of zero: a refund not final when the machine looks needs a person
    let stack = Stack::with_escalation(std::time::Duration::ZERO).await;
    stack.create_order("ORDER-ESC-1", 1000);
    // AND WeChat takes the refund but its reply is lost, and its first query answer is a 502
    let fault = |kind, on| Fault {
        kind,
        times: Some(1),
        on,
    };
    stack
        .sandbox
        .books()
        .add_faults(
            Some("ORDER-ESC-1"),
            vec![
                fault(FaultKind::DropResponse, FaultTarget::Apply),
                fault(FaultKind::Http502, FaultTarget::Query),
            ],
        )
        .expect("faults");
    let (status, view) = stack
        .post_refund(&refund_body("R-ESC-1", "ORDER-ESC-1", 1000, 100))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "UNKNOWN", "{view}");
    // WHEN the poller looks and WeChat cannot tell
    stack.poll().await;
    // THEN it is flagged and listed for a person, still UNKNOWN, waiting on WeChat
    let rec = stack.record("R-ESC-1").await;
    assert!(rec.needs_person(), "{rec:?}");
    let (status, page) = stack
        .call(Method::GET, "/refunds?needs_person=true", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed = &page["refunds"][0];
    assert_eq!(listed["out_refund_no"], "R-ESC-1", "{page}");
    assert_eq!(listed["needs_person"], true, "{page}");
    assert_eq!(listed["pending_reason"], "outcome_unknown", "{page}");
    // WHEN WeChat answers (PROCESSING), then pays
    stack.poll_until("R-ESC-1", RefundStatus::Processing).await;
    stack.sandbox.settle_now();
    let done = stack.poll_until("R-ESC-1", RefundStatus::Success).await;
    // THEN the stuck flag clears by itself and the list is empty; it was applied once
    assert!(!done.needs_person(), "{done:?}");
    let (_, page) = stack
        .call(Method::GET, "/refunds?needs_person=true", None)
        .await;
    assert_eq!(page["refunds"], serde_json::json!([]), "{page}");
    assert_eq!(stack.apply_calls("R-ESC-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_a_slow_wechat_the_poller_serves_the_most_overdue_refunds_first() {
    let stack = Stack::new().await;
    // GIVEN six refunds whose replies were lost (UNKNOWN), due one after another
    for i in 1..=6 {
        let order = format!("ORDER-FAIR-{i}");
        stack.create_order(&order, 1000);
        stack.fault_once(&order, FaultKind::DropResponse);
        let (status, view) = stack
            .post_refund(&refund_body(&format!("R-FAIR-{i}"), &order, 1000, 100))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{view}");
        assert_eq!(view["status"], "UNKNOWN", "{view}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut by_due = Vec::new();
    for i in 1..=6 {
        let rec = stack.record(&format!("R-FAIR-{i}")).await;
        by_due.push((
            rec.next_check_at.expect("due"),
            rec.out_refund_no.to_string(),
        ));
    }
    by_due.sort();
    // AND WeChat answering every query 300 ms late
    stack
        .sandbox
        .books()
        .add_faults(
            None,
            vec![Fault {
                kind: FaultKind::Latency { ms: 300 },
                times: None,
                on: FaultTarget::Query,
            }],
        )
        .expect("fault");
    // WHEN a poll has 700 ms: time for a few of them only
    let report = stack
        .svc
        .poll(std::time::Duration::from_millis(700))
        .await
        .expect("poll");
    // THEN the ones it examined are the most overdue ones, and it says how many it left
    let examined = usize::try_from(report.examined).unwrap();
    assert!((1..6).contains(&examined), "{report:?}");
    for (k, (_, no)) in by_due.iter().enumerate() {
        let status = stack.record(no).await.status;
        let want = if k < examined {
            RefundStatus::Processing
        } else {
            RefundStatus::Unknown
        };
        assert_eq!(status, want, "{no} (due #{k}), {report:?}");
    }
    assert_eq!(report.left_due as usize, 6 - examined, "{report:?}");
}
