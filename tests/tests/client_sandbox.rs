//! The WeChat client and gateway against the real sandbox over mutual TLS: the sandbox's legacy
//! PKCS#12, a missing client certificate, each outcome class from the matching fault, failover from
//! a closed port, and pacing of a burst.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use common::Stack;
use wxpay::client::{ClientConfig, PacingConfig, TransportError, WxPayClient};
use wxpay::query::{QuerySelector, RefundQueryRequest};
use wxpay::refund::RefundRequest;
use wxpay::{CallOutcome, ErrCode, Fen, NonceStr, OrderRef, RetryClass, UnknownReason};
use wxpay_sandbox::FaultKind;
use wxrefund::gateway::{Gateway, WxPayGateway};
use wxrefund::secrets::{MerchantConfig, SecretSource};

fn merchant(stack: &Stack) -> MerchantConfig {
    let json =
        std::fs::read_to_string(&stack.sandbox.files().merchant_json).expect("merchant.json");
    MerchantConfig::from_json(&json, SystemTime::now()).expect("merchant.json is valid")
}

fn gateway(stack: &Stack, config: ClientConfig) -> WxPayGateway {
    WxPayGateway::new(
        &merchant(stack),
        config,
        Some(SecretSource::file(
            stack.sandbox.files().merchant_json.clone(),
        )),
    )
    .expect("gateway")
}

/// What a fault's outcome must look like.
type Expect = fn(&CallOutcome<wxpay::refund::RefundResponse>) -> bool;

fn request(order: &str, no: &str, total: u64, fee: u64) -> RefundRequest {
    RefundRequest {
        order: OrderRef::OutTradeNo(order.parse().expect("order")),
        out_refund_no: no.parse().expect("number"),
        total_fee: Fen::positive(total).expect("fen"),
        refund_fee: Fen::positive(fee).expect("fen"),
        refund_desc: None,
        refund_account: None,
        notify_url: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_legacy_p12_authenticates_a_refund_and_no_certificate_is_refused() {
    // GIVEN the merchant.json the sandbox wrote (its p12 uses WeChat's legacy RC2-40/3DES)
    let stack = Stack::new().await;
    stack.create_order("ORDER-MTLS-1", 100);
    let m = merchant(&stack);
    assert!(m.identity.info().cn_matches_mch_id);

    // WHEN a refund is applied for with that identity THEN WeChat (the sandbox) accepts it
    let gw = gateway(&stack, stack.client_config.clone());
    match gw
        .refund(&request("ORDER-MTLS-1", "R-MTLS-1", 100, 10))
        .await
    {
        CallOutcome::Ok(resp) => assert_eq!(resp.refund_fee.get(), 10),
        other => panic!("expected acceptance, got {other:?}"),
    }

    // AND a client without a certificate is refused by the front end, the refund not taken
    let bare = WxPayClient::new(&stack.client_config, None).expect("client without identity");
    let xml = request("ORDER-MTLS-1", "R-MTLS-2", 100, 10)
        .to_xml(&m.merchant_keys(), &NonceStr::random())
        .expect("xml");
    assert_eq!(
        bare.post_xml(wxpay::refund::PATH, xml.clone(), true).await,
        Err(TransportError::NoIdentity),
        "our client refuses to send a refund without the certificate"
    );
    match bare.post_xml(wxpay::refund::PATH, xml, false).await {
        Err(TransportError::HttpStatus { status, snippet }) => {
            assert_eq!(status, 400);
            assert!(snippet.contains("SSL certificate"), "{snippet}");
        }
        other => panic!("expected the front end's 400, got {other:?}"),
    }
    assert_eq!(stack.apply_calls("R-MTLS-2"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sandbox_fault_produces_its_outcome_class() {
    let stack = Stack::new().await;
    let gw = gateway(&stack, stack.client_config.clone());
    let cases: Vec<(FaultKind, Expect)> = vec![
        (
            FaultKind::SystemErrorBefore,
            |o| matches!(o, CallOutcome::Rejected(e) if e.code == ErrCode::SystemError && e.class() == RetryClass::RetrySame),
        ),
        (
            FaultKind::BizErrNeedRetry,
            |o| matches!(o, CallOutcome::Rejected(e) if e.code == ErrCode::BizErrNeedRetry && e.class() == RetryClass::RetrySame),
        ),
        (
            FaultKind::NotEnough,
            |o| matches!(o, CallOutcome::Rejected(e) if e.code == ErrCode::NotEnough && e.class() == RetryClass::RetryLater),
        ),
        (
            FaultKind::SystemErrorAfter,
            |o| matches!(o, CallOutcome::Rejected(e) if e.code == ErrCode::SystemError),
        ),
        (FaultKind::Http502, |o| {
            matches!(o, CallOutcome::Unknown(UnknownReason::HttpStatus(502)))
        }),
        (FaultKind::BadSign, |o| {
            matches!(o, CallOutcome::Unknown(UnknownReason::BadSignature))
        }),
        (FaultKind::DropResponse, |o| {
            matches!(o, CallOutcome::Unknown(UnknownReason::Transport(_)))
        }),
        (FaultKind::Hang, |o| {
            matches!(o, CallOutcome::Unknown(UnknownReason::Transport(_)))
        }),
    ];
    for (i, (fault, expected)) in cases.into_iter().enumerate() {
        // GIVEN an order whose next refund apply meets the fault
        let order = format!("ORDER-FAULT-{i}");
        stack.create_order(&order, 100);
        stack.fault_once(&order, fault.clone());
        // WHEN a refund is applied for
        let outcome = gw
            .refund(&request(&order, &format!("R-FAULT-{i}"), 100, 10))
            .await;
        // THEN the outcome class matches what WeChat did
        assert!(expected(&outcome), "{fault:?} gave {outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_primary_port_fails_over_to_the_backup_domain() {
    // GIVEN a primary domain that refuses connections and the sandbox as the backup
    let stack = Stack::new().await;
    stack.create_order("ORDER-FAILOVER-1", 100);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }; // dropped: nothing listens there now
    let mut config = stack.client_config.clone();
    config.base_url = format!("https://{closed}");
    config.backup_base_url = Some(stack.sandbox.base_url().to_string());
    let gw = gateway(&stack, config);

    // WHEN a refund is applied for and then queried
    let applied = gw
        .refund(&request("ORDER-FAILOVER-1", "R-FAILOVER-1", 100, 40))
        .await;
    let queried = gw
        .query(&RefundQueryRequest {
            selector: QuerySelector::OutRefundNo("R-FAILOVER-1".parse().expect("no")),
            offset: None,
        })
        .await;

    // THEN both went to the backup (the request never left for the closed primary)
    assert!(matches!(applied, CallOutcome::Ok(_)), "{applied:?}");
    match queried {
        CallOutcome::Ok(q) => assert_eq!(q.refunds[0].refund_fee.get(), 40),
        other => panic!("{other:?}"),
    }
    assert_eq!(stack.apply_calls("R-FAILOVER-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_refunds_is_paced_under_the_client_budget() {
    // GIVEN a client allowed 5 refund applications a second, waiting at most 100 ms for budget
    let stack = Stack::new().await;
    let mut config = stack.client_config.clone();
    config.pacing = PacingConfig {
        refund_per_sec: NonZeroU32::new(5).expect("5"),
        failing_per_sec: NonZeroU32::new(1000).expect("1000"),
        max_wait: Duration::from_millis(100),
    };
    let gw = std::sync::Arc::new(gateway(&stack, config));
    for i in 0..20 {
        stack.create_order(&format!("ORDER-PACE-{i}"), 100);
    }

    // WHEN 20 refunds are fired at once
    let mut tasks = Vec::new();
    for i in 0..20 {
        let gw = std::sync::Arc::clone(&gw);
        tasks.push(tokio::spawn(async move {
            gw.refund(&request(
                &format!("ORDER-PACE-{i}"),
                &format!("R-PACE-{i}"),
                100,
                1,
            ))
            .await
        }));
    }
    let mut sent = 0;
    let mut paced = 0;
    for t in tasks {
        match t.await.expect("task") {
            CallOutcome::Ok(_) => sent += 1,
            CallOutcome::NotSent(reason) => {
                assert!(reason.contains("rate limit"), "{reason}");
                paced += 1;
            }
            other => panic!("{other:?}"),
        }
    }

    // THEN only about one second's budget went out; the rest was refused locally, never sent
    assert!((1..=7).contains(&sent), "sent {sent}");
    assert_eq!(sent + paced, 20);
    let taken: u32 = (0..20)
        .map(|i| stack.apply_calls(&format!("R-PACE-{i}")))
        .sum();
    assert_eq!(taken, sent, "paced requests never reached WeChat");
}
