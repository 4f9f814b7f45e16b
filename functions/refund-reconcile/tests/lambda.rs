//! The built `refund-reconcile` binary as Lambda runs it: `POST /reconciliations` and
//! `GET /reconciliations/{bill_date}` from API Gateway, and the daily schedule's payload arriving
//! as a raw (pass-through) event, against moto and the sandbox.

use serde_json::json;
use wxrefund_e2e::lambda_binary::{FunctionProcess, HttpReply, Parts, http_api_event, invoke};
use wxrefund_e2e::lambda_emulator::LambdaEmulator;
use wxrefund_e2e::wxrefund::state::{RefundStatus, UnixMillis};

const BINARY: &str = env!("CARGO_BIN_EXE_refund-reconcile");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refund_reconcile_binary_reconciles_a_day_and_serves_its_report() {
    // GIVEN a refund accepted today, recorded by an in-process service on the same table, and the
    // binary started by the emulated Lambda service
    let parts = Parts::start("lambda-reconcile").await;
    parts.create_order("ORDER-LAMBDA-RC1", 1000);
    let first = parts
        .submit_in_process(&json!({
            "out_refund_no": "R-LAMBDA-RC1",
            "out_trade_no": "ORDER-LAMBDA-RC1",
            "total_fee": 1000,
            "refund_fee": 300,
        }))
        .await;
    assert_eq!(first.status, RefundStatus::Processing);
    let emulator = LambdaEmulator::start("refund-reconcile")
        .await
        .expect("start the emulator");
    let mut function =
        FunctionProcess::spawn(BINARY, &parts.function_env(&emulator, "refund-reconcile"));
    let today = UnixMillis::now().beijing_date();

    // WHEN API Gateway delivers POST /reconciliations for today
    let body = json!({ "bill_date": today }).to_string();
    let post = http_api_event("POST", "/reconciliations", "application/json", Some(&body));
    let reply = HttpReply::from_outcome(&invoke(&emulator, &mut function, &post).await);

    // THEN WeChat's bill (downloaded over HTTPS, gzip) and the ledger agree
    assert_eq!(reply.status, 200, "{}", reply.body);
    let report = reply.json();
    assert_eq!(report["status"], "MATCHED", "{report}");
    assert_eq!(
        report["bill"],
        json!({"refunds": 1, "refund_fee": 300}),
        "{report}"
    );

    // AND GET through the same warm process reads the stored report
    let path = format!("/reconciliations/{today}");
    let get = http_api_event("GET", &path, "application/json", None);
    let reply = HttpReply::from_outcome(&invoke(&emulator, &mut function, &get).await);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), report);

    // WHEN the daily schedule's payload arrives as a raw event
    let out = invoke(&emulator, &mut function, &json!({"action": "reconcile"}))
        .await
        .json();
    // THEN yesterday (Beijing) was reconciled (nothing happened then) and CHANGE refunds checked
    assert_eq!(out["status"], "NO_BILL", "{out}");
    assert_eq!(out["change_rechecked"]["checked"], 0, "{out}");
    assert_eq!(
        function.try_exit(),
        None,
        "the function stays up between invocations"
    );
    // AND nothing secret was logged
    parts.assert_no_secret_in(&function.logs());
}
