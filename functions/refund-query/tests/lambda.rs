//! The built `refund-query` binary as Lambda runs it: API Gateway HTTP API reads, and the
//! EventBridge Scheduler poll arriving as a raw (pass-through) event, against moto and the sandbox.

use serde_json::json;
use wxrefund_e2e::lambda_binary::{FunctionProcess, HttpReply, Parts, http_api_event, invoke};
use wxrefund_e2e::lambda_emulator::LambdaEmulator;
use wxrefund_e2e::wxrefund::state::RefundStatus;

const BINARY: &str = env!("CARGO_BIN_EXE_refund-query");

fn refund(out_refund_no: &str, refund_fee: u64) -> serde_json::Value {
    json!({
        "out_refund_no": out_refund_no,
        "out_trade_no": "ORDER-LAMBDA-Q1",
        "total_fee": 1000,
        "refund_fee": refund_fee,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refund_query_binary_serves_reads_and_the_scheduled_poll() {
    // GIVEN a paid order and a PROCESSING refund recorded by an in-process service on the same
    // table (due for its first check at once), and the binary started by the emulated Lambda service
    let parts = Parts::start("lambda-query").await;
    parts.create_order("ORDER-LAMBDA-Q1", 1000);
    let first = parts.submit_in_process(&refund("R-LAMBDA-Q1", 300)).await;
    assert_eq!(first.status, RefundStatus::Processing);
    let emulator = LambdaEmulator::start("refund-query")
        .await
        .expect("start the emulator");
    let mut function =
        FunctionProcess::spawn(BINARY, &parts.function_env(&emulator, "refund-query"));

    // WHEN API Gateway delivers GET /refunds/R-LAMBDA-Q1
    let get = http_api_event("GET", "/refunds/R-LAMBDA-Q1", "application/json", None);
    let reply = HttpReply::from_outcome(&invoke(&emulator, &mut function, &get).await);

    // THEN the record comes back
    assert_eq!(reply.status, 200, "{}", reply.body);
    let view = reply.json();
    assert_eq!(view["out_refund_no"], "R-LAMBDA-Q1");
    assert_eq!(view["status"], "PROCESSING");
    assert_eq!(view["refund_fee"], 300);

    // WHEN the scheduler's payload arrives as a raw event while WeChat is still processing
    let report = invoke(&emulator, &mut function, &json!({"action": "poll"}))
        .await
        .json();

    // THEN the pass-through response is the poll report: the refund was checked, still pending
    assert_eq!(report["examined"], 1, "{report}");
    assert_eq!(report["still_pending"], 1, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(
        parts
            .record("R-LAMBDA-Q1")
            .await
            .expect("in the ledger")
            .status,
        RefundStatus::Processing
    );

    // GIVEN a second refund, due at once, and WeChat settling everything
    // (the first one is now rescheduled a backoff away by the function, so it is not due again)
    parts.submit_in_process(&refund("R-LAMBDA-Q2", 200)).await;
    let settled = parts.sandbox.settle_now();
    assert_eq!(settled.len(), 2, "{settled:?}");

    // WHEN the next scheduled poll runs
    let report = invoke(&emulator, &mut function, &json!({"action": "poll"}))
        .await
        .json();

    // THEN it settles the due refund to SUCCESS in the ledger
    assert_eq!(report["examined"], 1, "{report}");
    assert_eq!(report["settled"], 1, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let rec = parts.record("R-LAMBDA-Q2").await.expect("in the ledger");
    assert_eq!(rec.status, RefundStatus::Success);
    assert!(rec.success_time.is_some());

    // AND GET through the same warm process shows it
    let get = http_api_event("GET", "/refunds/R-LAMBDA-Q2", "application/json", None);
    let reply = HttpReply::from_outcome(&invoke(&emulator, &mut function, &get).await);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["status"], "SUCCESS");
    assert_eq!(
        function.try_exit(),
        None,
        "the function stays up between invocations"
    );
    assert_eq!(emulator.delivered().len(), 4);
    // AND nothing secret was logged
    parts.assert_no_secret_in(&function.logs());
}
