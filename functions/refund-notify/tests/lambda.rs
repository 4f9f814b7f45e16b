//! The built `refund-notify` binary as Lambda runs it: WeChat's refund notification arriving as an
//! API Gateway HTTP API event, against moto and the sandbox.

use serde_json::json;
use wxrefund_e2e::lambda_binary::{FunctionProcess, HttpReply, Parts, http_api_event, invoke};
use wxrefund_e2e::lambda_emulator::LambdaEmulator;
use wxrefund_e2e::wxrefund::state::RefundStatus;

const BINARY: &str = env!("CARGO_BIN_EXE_refund-notify");
const PATH: &str = "/wxpay/refund-notify";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refund_notify_binary_settles_a_real_notification_and_refuses_garbage() {
    // GIVEN a PROCESSING refund in the ledger that WeChat (the sandbox) has since settled, and the
    // notification WeChat sends for it (its fields, encrypted with the merchant key)
    let parts = Parts::start("lambda-notify").await;
    parts.create_order("ORDER-LAMBDA-N1", 800);
    let rec = parts
        .submit_in_process(&json!({
            "out_refund_no": "R-LAMBDA-N1",
            "out_trade_no": "ORDER-LAMBDA-N1",
            "total_fee": 800,
            "refund_fee": 800,
        }))
        .await;
    assert_eq!(rec.status, RefundStatus::Processing);
    assert_eq!(parts.sandbox.settle_now(), vec!["R-LAMBDA-N1".to_owned()]);
    let notification = parts.notification_body("R-LAMBDA-N1");
    let emulator = LambdaEmulator::start("refund-notify")
        .await
        .expect("start the emulator");
    let mut function =
        FunctionProcess::spawn(BINARY, &parts.function_env(&emulator, "refund-notify"));

    // WHEN API Gateway delivers it to POST /wxpay/refund-notify
    let event = http_api_event("POST", PATH, "text/xml", Some(&notification));
    let reply = HttpReply::from_outcome(&invoke(&emulator, &mut function, &event).await);

    // THEN WeChat gets 200 with the SUCCESS XML, and the ledger has the refund settled
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.content_type.starts_with("text/xml"),
        "{}",
        reply.content_type
    );
    assert_eq!(reply.body, wxrefund_e2e::wxpay::notify::SUCCESS_REPLY);
    let rec = parts.record("R-LAMBDA-N1").await.expect("in the ledger");
    assert_eq!(rec.status, RefundStatus::Success);

    // WHEN a body that is not a notification arrives
    let garbage = http_api_event("POST", PATH, "text/xml", Some("<xml><nonsense/>"));
    let reply = HttpReply::from_outcome(&invoke(&emulator, &mut function, &garbage).await);

    // THEN it is answered 200 with FAIL XML (WeChat retries later), from the same warm process
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("<return_code><![CDATA[FAIL]]></return_code>"),
        "{}",
        reply.body
    );
    assert_eq!(
        function.try_exit(),
        None,
        "the function stays up between invocations"
    );
    assert_eq!(
        parts
            .record("R-LAMBDA-N1")
            .await
            .expect("in the ledger")
            .status,
        RefundStatus::Success,
        "garbage changes nothing"
    );
    // AND nothing secret was logged
    parts.assert_no_secret_in(&function.logs());
}
