//! The built `refund` binary as Lambda runs it: cold start against Secrets Manager and DynamoDB
//! (moto) and the WeChat sandbox, then API Gateway HTTP API events through the Runtime API emulator.

use std::time::Duration;

use serde_json::json;
use wxrefund_e2e::lambda_binary::{FunctionProcess, HttpReply, Parts, http_api_event, invoke};
use wxrefund_e2e::lambda_emulator::LambdaEmulator;
use wxrefund_e2e::wxrefund::state::RefundStatus;

const BINARY: &str = env!("CARGO_BIN_EXE_refund");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refund_binary_cold_starts_and_serves_refunds_from_api_gateway_events() {
    // GIVEN the secret and a fresh ledger table on moto, a paid order in the sandbox, and the
    // binary started by the emulated Lambda service
    let parts = Parts::start("lambda-refund").await;
    parts.create_order("ORDER-LAMBDA-1", 1000);
    let emulator = LambdaEmulator::start("refund")
        .await
        .expect("start the emulator");
    let mut function = FunctionProcess::spawn(BINARY, &parts.function_env(&emulator, "refund"));

    // WHEN API Gateway delivers POST /refunds
    let body = json!({
        "out_refund_no": "R-LAMBDA-1",
        "out_trade_no": "ORDER-LAMBDA-1",
        "total_fee": 1000,
        "refund_fee": 400,
    })
    .to_string();
    let event = http_api_event("POST", "/refunds", "application/json", Some(&body));
    let reply = HttpReply::from_outcome(&invoke(&emulator, &mut function, &event).await);

    // THEN the function answers 202 with the PROCESSING record (the HTTP API 2.0 response shape)
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert!(
        reply.content_type.starts_with("application/json"),
        "{}",
        reply.content_type
    );
    let view = reply.json();
    assert_eq!(view["status"], "PROCESSING", "{view}");
    assert_eq!(view["out_refund_no"], "R-LAMBDA-1");
    assert_eq!(view["refund_fee"], 400);
    // AND WeChat (the sandbox) was asked once and has the refund
    let books = parts
        .sandbox
        .books()
        .refund("R-LAMBDA-1")
        .expect("the sandbox has the refund");
    assert_eq!(books.refund_fee, 400);
    assert_eq!(books.apply_calls, 1);
    // AND the ledger table (read independently) holds it, with WeChat's refund id
    let rec = parts
        .record("R-LAMBDA-1")
        .await
        .expect("the ledger has the refund");
    assert_eq!(rec.status, RefundStatus::Processing);
    assert_eq!(rec.refund_fee.get(), 400);
    assert_eq!(
        rec.refund_id.as_ref().map(ToString::to_string).as_deref(),
        Some(books.refund_id.as_str())
    );

    // WHEN a second event carries a malformed body
    let bad = http_api_event(
        "POST",
        "/refunds",
        "application/json",
        Some("{\"out_refund_no\":"),
    );
    let reply = HttpReply::from_outcome(&invoke(&emulator, &mut function, &bad).await);

    // THEN it gets a 400 JSON error, from the same warm process (one cold start served both)
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.json()["error"], "invalid_json", "{}", reply.body);
    assert_eq!(
        function.try_exit(),
        None,
        "the function stays up between invocations"
    );
    assert_eq!(emulator.delivered().len(), 2);
    let logs = function.logs();
    assert_eq!(
        logs.matches("merchant configuration loaded").count(),
        1,
        "exactly one cold start: {logs}"
    );
    // AND each invocation ended with its CloudWatch EMF documents (one per label set): the cold
    // start once, every answer by result, the WeChat call by outcome, all in namespace wxrefund
    // with the Function dimension
    let emf: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).expect("an EMF line is one JSON object"))
        .collect();
    for doc in &emf {
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "wxrefund", "{doc}");
        assert_eq!(directive["Dimensions"][0][0], "Function", "{doc}");
        assert_eq!(doc["Function"], "refund", "{doc}");
    }
    let with = |metric: &str| -> Vec<&serde_json::Value> {
        emf.iter().filter(|d| !d[metric].is_null()).collect()
    };
    let cold = with("ColdStarts");
    assert_eq!(cold.len(), 1, "one cold start: {logs}");
    assert_eq!(cold[0]["ColdStarts"], 1);
    let answers: Vec<&str> = with("RefundRequests")
        .iter()
        .filter_map(|d| d["result"].as_str())
        .collect();
    assert_eq!(answers, vec!["PROCESSING", "invalid_json"], "{logs}");
    let calls = with("WeChatCalls");
    assert_eq!(calls.len(), 1, "{logs}");
    assert_eq!(
        (calls[0]["call"].as_str(), calls[0]["outcome"].as_str()),
        (Some("refund"), Some("ok"))
    );
    assert!(
        with("WeChatCallMilliseconds")[0]["WeChatCallMilliseconds"][0]
            .as_f64()
            .is_some()
    );
    // AND nothing secret was logged
    parts.assert_no_secret_in(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_fails_the_cold_start_naming_the_secret_without_key_material() {
    // GIVEN a function whose WXPAY_SECRET_ID names no secret
    let parts = Parts::start("lambda-refund-init").await;
    let emulator = LambdaEmulator::start("refund")
        .await
        .expect("start the emulator");
    let missing = format!("{}-missing", parts.secret_id);
    let env: Vec<(String, String)> = parts
        .function_env(&emulator, "refund")
        .into_iter()
        .map(|(k, v)| {
            if k == "WXPAY_SECRET_ID" {
                (k, missing.clone())
            } else {
                (k, v)
            }
        })
        .collect();

    // WHEN the Lambda service starts it
    let mut function = FunctionProcess::spawn(BINARY, &env);

    // THEN initialisation fails: the process exits non-zero (main returns the boot error before
    // the runtime loop starts, so Lambda records an init failure) and serves nothing
    let (status, logs) = function
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the function exits when its secret is missing");
    assert!(!status.success(), "exit status {status:?}; logs:\n{logs}");
    assert!(emulator.delivered().is_empty());
    // AND the output names the secret that could not be read, and why
    assert!(logs.contains(&missing), "the secret id is named: {logs}");
    assert!(logs.contains("Secrets Manager"), "{logs}");
    // AND prints no key material
    parts.assert_no_secret_in(&logs);
    // The emulator may also have been told through init/error; if so, it says the same.
    if let Some(init) = emulator.init_error(Duration::from_millis(10)).await {
        let body = String::from_utf8_lossy(&init.body);
        assert!(body.contains(&missing), "{body}");
    }
}
