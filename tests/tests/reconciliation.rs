//! Reconciliation against WeChat's refund bill, end to end (real sandbox over mTLS, the bill
//! downloaded over HTTPS, the DynamoDB ledger on moto): a refund made in the merchant platform is
//! found, confirmed by query, recorded and then MATCHED; a refund whose reply was lost is
//! resolved by query; a day without refunds is NO_BILL; a bill still being made is NOT_READY.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{Stack, refund_body};
use serde_json::{Value, json};
use wxpay_sandbox::books::{Fault, FaultKind, FaultTarget};
use wxrefund::state::{RefundStatus, UnixMillis};

fn today() -> String {
    UnixMillis::now().beijing_date()
}

async fn reconcile(stack: &Stack, day: &str) -> Value {
    let body = json!({ "bill_date": day }).to_string().into_bytes();
    let (status, report) = stack
        .call(Method::POST, "/reconciliations", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    report
}

fn discrepancy<'a>(report: &'a Value, no: &str) -> &'a Value {
    report["discrepancies"]
        .as_array()
        .expect("discrepancies")
        .iter()
        .find(|d| d["out_refund_no"] == no)
        .unwrap_or_else(|| panic!("no discrepancy for {no}: {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_platform_refund_is_found_confirmed_recorded_and_then_matched() {
    let stack = Stack::new().await;
    // GIVEN our refund of 100 and one of 200 made in the merchant platform on the same order,
    // both paid by WeChat
    stack.create_order("ORDER-RC-1", 1000);
    let (status, view) = stack
        .post_refund(&refund_body("R-RC-OURS", "ORDER-RC-1", 1000, 100))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    stack
        .external_refund("R-RC-PLATFORM", "ORDER-RC-1", 1000, 200, None)
        .await;
    stack.sandbox.settle_now();
    // AND WeChat's bill of today, read by our parser, lists both, adding up
    let date: time::Date = time::Date::parse(
        &today(),
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .unwrap();
    let text = stack
        .sandbox
        .bill(date, wxpay_sandbox::BillType::Refund)
        .expect("a bill today");
    let bill = wxpay::bill::parse_refund_bill(text.as_bytes()).expect("our parser reads it");
    let mut billed: Vec<(String, u64)> = bill
        .rows
        .iter()
        .map(|r| (r.out_refund_no.to_string(), r.refund_fee.get()))
        .collect();
    billed.sort();
    assert_eq!(
        billed,
        vec![
            ("R-RC-OURS".to_owned(), 100),
            ("R-RC-PLATFORM".to_owned(), 200)
        ]
    );
    assert_eq!(bill.summary.count, 2);

    // WHEN today is reconciled
    let first = reconcile(&stack, &today()).await;
    // THEN the platform refund was missing, confirmed by query and recorded as external; ours was
    // still PROCESSING in the ledger, and the query moved it to SUCCESS
    assert_eq!(first["status"], "MISMATCHED", "{first}");
    assert_eq!(
        first["bill"],
        json!({"refunds": 2, "refund_fee": 300}),
        "{first}"
    );
    assert_eq!(
        first["ledger"],
        json!({"refunds": 1, "refund_fee": 100}),
        "{first}"
    );
    let platform = discrepancy(&first, "R-RC-PLATFORM");
    assert_eq!(platform["kind"], "missing_in_ledger", "{first}");
    assert_eq!(platform["resolution"], "recorded_external", "{first}");
    assert_eq!(platform["out_trade_no"], "ORDER-RC-1", "{first}");
    assert_eq!(platform["bill"]["refund_fee"], 200, "{first}");
    let ours = discrepancy(&first, "R-RC-OURS");
    assert_eq!(ours["kind"], "status_mismatch", "{first}");
    assert_eq!(ours["resolution"], "updated_by_query", "{first}");
    assert_eq!(ours["ledger"]["status"], "PROCESSING", "{first}");
    assert_eq!(first["discrepancies"].as_array().unwrap().len(), 2);
    // AND the ledger now has both, the platform one reserved on its order
    let ext = stack.record("R-RC-PLATFORM").await;
    assert!(ext.external);
    assert_eq!(ext.status, RefundStatus::Success);
    assert_eq!(
        stack.record("R-RC-OURS").await.status,
        RefundStatus::Success
    );
    let (status, err) = stack
        .post_refund(&refund_body("R-RC-OVER", "ORDER-RC-1", 1000, 701))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");

    // WHEN the same day is reconciled again THEN it converged: MATCHED, both sides equal
    let second = reconcile(&stack, &today()).await;
    assert_eq!(second["status"], "MATCHED", "{second}");
    assert_eq!(second["ledger"], second["bill"], "{second}");
    assert_eq!(second["discrepancies"], json!([]), "{second}");
    // AND the stored report is the last one
    let (status, stored) = stack
        .call(Method::GET, &format!("/reconciliations/{}", today()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_whose_reply_was_lost_is_resolved_by_query() {
    let stack = Stack::new().await;
    // GIVEN WeChat took a refund but answered SYSTEMERROR: the ledger waits to retry while
    // WeChat's bill lists it PROCESSING
    stack.create_order("ORDER-RC-2", 1000);
    stack.fault_once("ORDER-RC-2", FaultKind::SystemErrorAfter);
    let (status, view) = stack
        .post_refund(&refund_body("R-RC-LOST", "ORDER-RC-2", 1000, 300))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "RETRY_WAIT", "{view}");
    // WHEN today is reconciled
    let first = reconcile(&stack, &today()).await;
    // THEN the query found it: PROCESSING, as the bill says
    let d = discrepancy(&first, "R-RC-LOST");
    assert_eq!(d["kind"], "status_mismatch", "{first}");
    assert_eq!(d["bill"]["status"], "PROCESSING", "{first}");
    assert_eq!(d["ledger"]["status"], "RETRY_WAIT", "{first}");
    assert_eq!(d["resolution"], "updated_by_query", "{first}");
    assert_eq!(
        stack.record("R-RC-LOST").await.status,
        RefundStatus::Processing
    );
    assert_eq!(stack.apply_calls("R-RC-LOST"), 1, "never applied twice");
    // AND a second run agrees: both say PROCESSING (the poller finishes it)
    let second = reconcile(&stack, &today()).await;
    assert_eq!(second["status"], "MATCHED", "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_day_without_refunds_has_no_bill_and_a_bill_being_made_is_not_ready() {
    let stack = Stack::new().await;
    // GIVEN a day on which nothing was refunded WHEN reconciled THEN NO_BILL
    let quiet = reconcile(&stack, "2026-01-05").await;
    assert_eq!(quiet["status"], "NO_BILL", "{quiet}");
    assert_eq!(quiet["bill"], json!({"refunds": 0, "refund_fee": 0}));
    // GIVEN WeChat still making today's bill WHEN reconciled THEN NOT_READY, stored as such
    stack
        .sandbox
        .books()
        .add_faults(
            None,
            vec![Fault {
                kind: FaultKind::BillCreating,
                times: Some(1),
                on: FaultTarget::Bill,
            }],
        )
        .expect("fault");
    stack.create_order("ORDER-RC-3", 500);
    let (status, _) = stack
        .post_refund(&refund_body("R-RC-3", "ORDER-RC-3", 500, 50))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let waiting = reconcile(&stack, &today()).await;
    assert_eq!(waiting["status"], "NOT_READY", "{waiting}");
    let (_, stored) = stack
        .call(Method::GET, &format!("/reconciliations/{}", today()), None)
        .await;
    assert_eq!(stored["status"], "NOT_READY");
    // WHEN asked again once the bill is made THEN the day is reconciled
    let done = reconcile(&stack, &today()).await;
    assert_eq!(done["status"], "MATCHED", "{done}");
    assert_eq!(
        done["bill"],
        json!({"refunds": 1, "refund_fee": 50}),
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_or_future_dates_are_refused_and_unknown_reports_are_not_found() {
    let stack = Stack::new().await;
    for (body, status_want, code) in [
        (json!({"bill_date": "2026-02-30"}), 400, "validation_error"),
        (
            json!({"bill_date": "2999-01-01"}),
            422,
            "bill_date_in_future",
        ),
        (json!({"bill_date": "yesterday"}), 400, "validation_error"),
        (json!({"date": "2026-01-01"}), 400, "validation_error"),
    ] {
        let (status, err) = stack
            .call(
                Method::POST,
                "/reconciliations",
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert_eq!(status.as_u16(), status_want, "{body}: {err}");
        assert_eq!(err["error"], code, "{body}: {err}");
    }
    let (status, err) = stack
        .call(Method::GET, "/reconciliations/2026-01-06", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err["error"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daily_run_finds_a_change_refund_a_person_resolved() {
    use tower::ServiceExt;
    let stack = Stack::new().await;
    // GIVEN a refund the bank refused (CHANGE), which a person then re-routed in the merchant
    // platform, and nobody told the ledger
    stack.create_order_with("ORDER-RC-CH", 1000, Some(wxpay_sandbox::Outcome::Change));
    let (status, _) = stack
        .post_refund(&refund_body("R-RC-CH", "ORDER-RC-CH", 1000, 600))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    stack.sandbox.settle_now();
    stack.poll_until("R-RC-CH", RefundStatus::Change).await;
    stack
        .sandbox
        .resolve("R-RC-CH")
        .expect("resolved in the platform");
    assert_eq!(stack.record("R-RC-CH").await.status, RefundStatus::Change);
    // WHEN the daily schedule's event reaches the reconcile function
    let app = wxrefund::http::reconcile_router(std::sync::Arc::clone(&stack.svc));
    let req = axum::http::Request::builder()
        .method(Method::POST)
        .uri(wxrefund::http::EVENTS_PATH)
        .body(axum::body::Body::from(r#"{"action":"reconcile"}"#))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let out: Value = serde_json::from_slice(&body).unwrap();
    // THEN it asked again about the CHANGE refund and took WeChat's SUCCESS as a resolution
    assert_eq!(
        out["change_rechecked"],
        json!({"checked": 1, "resolved": 1, "failed": 0}),
        "{out}"
    );
    let rec = stack.record("R-RC-CH").await;
    assert_eq!(rec.status, RefundStatus::Success);
    assert_eq!(
        rec.corrections.last().map(|c| c.kind),
        Some(wxrefund::correction::CorrectionKind::Resolution)
    );
    assert!(!rec.needs_person(), "a resolution needs nobody");
    // AND the previous Beijing day was reconciled too (nothing happened then)
    assert_eq!(out["status"], "NO_BILL", "{out}");
}
