//! The workflows against a scripted gateway: the cases the sandbox cannot produce.

use super::*;
use crate::request::tests::cmd;
use wxpay::query::{QueriedRefund, RefundQueryRequest};
use wxpay::refund::RefundRequest;
use wxpay::{CallOutcome, ErrCode, Fen, WxError};

// ---- workflows against a scripted WeChat ---------------------------------------------------
//
// The sandbox cannot produce "an attempt taken but answered SYSTEMERROR, then the repeat
// refused for good", so these drive the workflows against a scripted port (the one fake: the
// end-to-end suite in tests/ covers everything the sandbox can do).

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use wxpay::XmlMap;
use wxpay::errors::Stage;
use wxpay::notify::{NotifyError, RefundNotification};
use wxpay::query::RefundQueryResponse;
use wxpay::refund::RefundResponse;

use crate::ledger::embedded::EmbeddedLedger;

#[derive(Default)]
struct Scripted {
    refunds: Mutex<VecDeque<CallOutcome<RefundResponse>>>,
    queries: Mutex<VecDeque<CallOutcome<RefundQueryResponse>>>,
    bills: Mutex<VecDeque<Result<wxpay::bill::BillText, crate::gateway::BillFailure>>>,
}

#[async_trait]
impl Gateway for Scripted {
    async fn refund(&self, _: &RefundRequest) -> CallOutcome<RefundResponse> {
        self.refunds
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted refund reply")
    }
    async fn query(&self, _: &RefundQueryRequest) -> CallOutcome<RefundQueryResponse> {
        self.queries
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted query reply")
    }
    async fn decrypt_notification(&self, _: &[u8]) -> Result<RefundNotification, NotifyError> {
        Err(NotifyError::MissingReqInfo)
    }
    async fn refund_bill(
        &self,
        _: wxpay::bill::BillDate,
    ) -> Result<wxpay::bill::BillText, crate::gateway::BillFailure> {
        self.bills
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted bill reply")
    }
}

fn refused(code: &str) -> WxError {
    WxError {
        stage: Stage::Result,
        code: ErrCode::parse(code),
        description: code.to_lowercase(),
        return_msg: "OK".into(),
        raw: String::new(),
    }
}

fn found(status: wxpay::WxRefundStatus) -> RefundQueryResponse {
    RefundQueryResponse {
        transaction_id: None,
        out_trade_no: Some("ORDER-1".parse().unwrap()),
        total_fee: Some(Fen::new(100).unwrap()),
        settlement_total_fee: None,
        fee_type: None,
        cash_fee: None,
        refund_count: 1,
        total_refund_count: None,
        refunds: vec![QueriedRefund {
            out_refund_no: "R-1".parse().unwrap(),
            refund_id: "5001".parse().unwrap(),
            refund_channel: None,
            refund_fee: Fen::new(10).unwrap(),
            settlement_refund_fee: None,
            refund_status: status,
            refund_account: None,
            refund_recv_account: None,
            refund_success_time: None,
            coupon_refund_fee: None,
            coupons: vec![],
        }],
        fields: XmlMap::new(),
    }
}

async fn service(wechat: Scripted) -> (RefundService, Arc<Scripted>, tempfile::TempDir) {
    service_publishing(
        wechat,
        crate::testing::RecordingPublisher::new(),
        Duration::from_secs(60),
    )
    .await
}

async fn service_publishing(
    wechat: Scripted,
    publisher: Arc<crate::testing::RecordingPublisher>,
    redeliver_after: Duration,
) -> (RefundService, Arc<Scripted>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(EmbeddedLedger::open(dir.path().join("l.redb")).unwrap());
    let wechat = Arc::new(wechat);
    let cfg = ServiceConfig {
        schedule: Schedule {
            min_backoff: Duration::ZERO,
            first_check: Duration::ZERO,
            ..Schedule::default()
        },
        redeliver_after,
        ..ServiceConfig::default()
    };
    let svc = RefundService::new(
        ledger,
        Arc::clone(&wechat) as Arc<dyn Gateway>,
        publisher,
        cfg,
    );
    (svc, wechat, dir)
}

async fn first_attempt_systemerror_then_final_refusal(
    query: CallOutcome<RefundQueryResponse>,
) -> (RefundRecord, crate::state::OrderBook) {
    // GIVEN a refund whose first attempt got SYSTEMERROR (maybe taken) and whose repeat is
    // refused for good
    let script = Scripted::default();
    script.refunds.lock().unwrap().extend([
        CallOutcome::Rejected(refused("SYSTEMERROR")),
        CallOutcome::Rejected(refused("USER_ACCOUNT_ABNORMAL")),
    ]);
    script.queries.lock().unwrap().push_back(query);
    let (svc, wechat, _dir) = service(script).await;
    let first = match svc.submit(cmd()).await.unwrap() {
        Submitted::New(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(first.status, RefundStatus::RetryWait);
    // WHEN the poller re-submits the same number
    let report = svc.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.examined, report.retried), (1, 1));
    assert!(
        wechat.refunds.lock().unwrap().is_empty(),
        "the same number was sent twice"
    );
    assert!(
        wechat.queries.lock().unwrap().is_empty(),
        "WeChat was asked before failing"
    );
    let rec = svc.get(&"R-1".parse().unwrap()).await.unwrap();
    let book = svc.ledger().order(&cmd().order).await.unwrap().unwrap();
    (rec, book)
}

#[tokio::test]
async fn a_final_refusal_of_a_repeat_adopts_the_earlier_attempt_when_wechat_has_it() {
    let (rec, book) = first_attempt_systemerror_then_final_refusal(CallOutcome::Ok(found(
        wxpay::WxRefundStatus::Processing,
    )))
    .await;
    // THEN the refund WeChat took is adopted and its amount stays reserved
    assert_eq!(rec.status, RefundStatus::Processing);
    assert_eq!(rec.refund_id.as_ref().map(|r| r.as_str()), Some("5001"));
    assert_eq!(book.reserved, Fen::new(10).unwrap());
}

#[tokio::test]
async fn a_final_refusal_of_a_repeat_fails_only_when_wechat_never_took_it() {
    let (rec, book) = first_attempt_systemerror_then_final_refusal(CallOutcome::Rejected(refused(
        "REFUNDNOTEXIST",
    )))
    .await;
    // THEN FAILED with WeChat's reason, and the amount is released
    assert_eq!(rec.status, RefundStatus::Failed);
    assert_eq!(rec.last_error.unwrap().code, "USER_ACCOUNT_ABNORMAL");
    assert_eq!(book.reserved, Fen::ZERO);
}

#[tokio::test]
async fn a_final_refusal_of_a_repeat_stays_unknown_when_the_query_fails() {
    let (rec, book) =
        first_attempt_systemerror_then_final_refusal(CallOutcome::NotSent("down".into())).await;
    // THEN the amount stays reserved until WeChat can be asked
    assert_eq!(rec.status, RefundStatus::Unknown);
    assert_eq!(book.reserved, Fen::new(10).unwrap());
}

#[tokio::test]
async fn a_configuration_refusal_keeps_the_refund_waiting_not_failed() {
    let script = Scripted::default();
    script
        .refunds
        .lock()
        .unwrap()
        .push_back(CallOutcome::Rejected(refused("CERT_ERROR")));
    let (svc, _wechat, _dir) = service(script).await;
    let rec = match svc.submit(cmd()).await.unwrap() {
        Submitted::New(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(rec.status, RefundStatus::RetryWait);
    assert_eq!(rec.last_error.unwrap().code, "CERT_ERROR");
}

#[tokio::test]
async fn a_first_refusal_naming_an_existing_number_is_verified_and_adopted() {
    // GIVEN WeChat refuses the first attempt with REFUND_FEE_MISMATCH (the number exists there,
    // e.g. from a timed-out attempt) and the query lists it with our amount
    let script = Scripted::default();
    script
        .refunds
        .lock()
        .unwrap()
        .push_back(CallOutcome::Rejected(refused("REFUND_FEE_MISMATCH")));
    script
        .queries
        .lock()
        .unwrap()
        .push_back(CallOutcome::Ok(found(wxpay::WxRefundStatus::Success)));
    let (svc, wechat, _dir) = service(script).await;
    // WHEN submitted
    let rec = match svc.submit(cmd()).await.unwrap() {
        Submitted::New(r) => r,
        other => panic!("{other:?}"),
    };
    // THEN WeChat was asked, and the refund it holds is adopted with its amount kept
    assert!(wechat.queries.lock().unwrap().is_empty());
    assert_eq!(rec.status, RefundStatus::Success);
    let book = svc.ledger().order(&cmd().order).await.unwrap().unwrap();
    assert_eq!(book.reserved, Fen::new(10).unwrap());
}

#[tokio::test]
async fn a_stored_request_that_cannot_be_sent_fails_and_releases() {
    // GIVEN a refund recorded (by an older version, before the edge refused it) with a
    // refund_desc that CDATA cannot carry
    let (svc, wechat, _dir) = service(Scripted::default()).await;
    let now = crate::state::UnixMillis::now();
    let mut new = cmd().into_new_refund(now, now);
    new.refund_desc = Some("a]]>b".into());
    svc.ledger().record(new).await.unwrap();
    // WHEN the poller picks it up
    let report = svc.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.examined, 1);
    // THEN it is FAILED with the reason, WeChat was never called, and amount and slot are free
    let rec = svc.get(&"R-1".parse().unwrap()).await.unwrap();
    assert_eq!(rec.status, RefundStatus::Failed);
    let e = rec.last_error.unwrap();
    assert_eq!(e.code, "UNSENDABLE");
    assert!(e.message.contains("refund_desc"), "{}", e.message);
    assert!(wechat.refunds.lock().unwrap().is_empty());
    let book = svc.ledger().order(&cmd().order).await.unwrap().unwrap();
    assert_eq!((book.reserved, book.count), (Fen::ZERO, 0));
}

#[tokio::test]
async fn a_refund_stuck_in_unknown_is_escalated_listed_and_cleared_when_it_finishes() {
    use wxpay::UnknownReason;
    // GIVEN escalation at any age, an apply whose outcome is unknown, and a WeChat whose queries
    // fail once, then answer SUCCESS
    let script = Scripted::default();
    script
        .refunds
        .lock()
        .unwrap()
        .push_back(CallOutcome::Unknown(UnknownReason::HttpStatus(502)));
    script.queries.lock().unwrap().extend([
        CallOutcome::Unknown(UnknownReason::HttpStatus(504)),
        CallOutcome::Ok(found(wxpay::WxRefundStatus::Success)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(EmbeddedLedger::open(dir.path().join("l.redb")).unwrap());
    let wechat = Arc::new(script);
    let cfg = ServiceConfig {
        schedule: Schedule {
            min_backoff: Duration::ZERO,
            first_check: Duration::ZERO,
            escalate: crate::decide::Escalation::all(Duration::ZERO),
            ..Schedule::default()
        },
        ..ServiceConfig::default()
    };
    let svc = RefundService::new(
        ledger,
        Arc::clone(&wechat) as Arc<dyn Gateway>,
        crate::testing::RecordingPublisher::new(),
        cfg,
    );
    svc.submit(cmd()).await.unwrap();
    // WHEN the poller finds it still UNKNOWN
    tokio::time::sleep(Duration::from_millis(5)).await;
    svc.poll(Duration::from_secs(5)).await.unwrap();
    // THEN it is flagged as stuck and listed for a person
    let rec = svc.get(&"R-1".parse().unwrap()).await.unwrap();
    assert_eq!(rec.status, RefundStatus::Unknown);
    assert_eq!(
        rec.attention.as_ref().map(|a| a.reason),
        Some(crate::correction::AttentionReason::Stuck)
    );
    let page = svc.needing_person(None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    // WHEN WeChat answers at last
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = svc.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.settled, 1, "{report:?}");
    // THEN it finishes by itself, and the flag the machine set is cleared
    let rec = svc.get(&"R-1".parse().unwrap()).await.unwrap();
    assert_eq!(rec.status, RefundStatus::Success);
    assert_eq!(rec.attention, None);
    assert!(!rec.needs_person());
    assert!(svc.needing_person(None, 10).await.unwrap().items.is_empty());
    assert!(wechat.queries.lock().unwrap().is_empty());
}

// ---- reconciliation against a scripted bill ----------------------------------------------------
//
// The sandbox bills what its books hold, so it never disagrees on an amount nor forgets a refund
// it took: those two come from a scripted bill.

/// A refund of `fee` fen accepted by WeChat now (PROCESSING, `accepted_at` = now).
async fn accepted(svc: &RefundService, no: &str, order: &str, fee: u64) -> RefundRecord {
    let now = UnixMillis::now();
    let new = crate::ledger::NewRefund {
        out_refund_no: no.parse().unwrap(),
        order: wxpay::OrderRef::OutTradeNo(order.parse().unwrap()),
        total_fee: Fen::new(1000).unwrap(),
        refund_fee: Fen::new(fee).unwrap(),
        refund_desc: None,
        refund_account: None,
        request_hash: "h".into(),
        now,
        next_check_at: now,
        metadata: Default::default(),
        lease: None,
    };
    svc.ledger().record(new).await.unwrap();
    let leased = match svc
        .ledger()
        .acquire_lease(&no.parse().unwrap(), "x", Duration::from_secs(30), now)
        .await
        .unwrap()
    {
        LeaseOutcome::Acquired(r) => r,
        other => panic!("{other:?}"),
    };
    let t = Transition {
        out_refund_no: leased.out_refund_no.clone(),
        expected_status: leased.status,
        expected_version: leased.version,
        lease_owner: Some("x".into()),
        to: RefundStatus::Processing,
        changes: Changes::default(),
        now,
    };
    match svc.ledger().transition(t).await.unwrap() {
        TransitionOutcome::Applied(r) => r,
        other => panic!("{other:?}"),
    }
}

/// A 2018-format REFUND bill of `rows` (out_refund_no, out_trade_no, fen, status), as WeChat
/// sends it (text, backticks, summary).
fn bill_text(rows: &[(&str, &str, u64, &str)]) -> wxpay::bill::BillText {
    let yuan = |f: u64| format!("{}.{:02}", f / 100, f % 100);
    let mut text = String::from(
        "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\n",
    );
    let today = UnixMillis::now().beijing_date();
    let mut total = 0;
    for (no, order, fee, status) in rows {
        total += fee;
        text.push_str(&format!(
            "`{today} 10:00:00,`wx2421b1c4370ec43b,`1900000109,`0,`,`4200000001,`{order},`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`REFUND,`OTHERS,`CNY,`10.00,`0.00,`{today} 10:00:00,`,`50000001,`{no},`{y},`0.00,`ORIGINAL,`{status},`goods,`,`0.00000,`0.60%,`10.00,`{y},`\n",
            y = yuan(*fee)
        ));
    }
    text.push_str("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\n");
    text.push_str(&format!(
        "`{},`0.00,`{t},`0.00,`0.00000,`0.00,`{t}\n",
        rows.len(),
        t = yuan(total)
    ));
    wxpay::bill::read_reply(text.as_bytes()).unwrap()
}

#[tokio::test]
async fn an_amount_wechat_bills_otherwise_and_a_refund_wechat_denies_are_flagged_for_a_person() {
    let script = Scripted::default();
    let (svc, wechat, _dir) = service(script).await;
    // GIVEN R-A (100 fen) and R-B (50 fen), both accepted by WeChat today per the ledger
    accepted(&svc, "R-A", "ORDER-A", 100).await;
    accepted(&svc, "R-B", "ORDER-B", 50).await;
    // AND WeChat's bill lists R-A for 90 fen and lacks R-B, whose query answers REFUNDNOTEXIST
    wechat
        .bills
        .lock()
        .unwrap()
        .push_back(Ok(bill_text(&[("R-A", "ORDER-A", 90, "SUCCESS")])));
    let mut r_a = found(wxpay::WxRefundStatus::Success);
    r_a.refunds[0].out_refund_no = "R-A".parse().unwrap();
    r_a.refunds[0].refund_fee = Fen::new(100).unwrap();
    wechat.queries.lock().unwrap().extend([
        CallOutcome::Ok(r_a),
        CallOutcome::Rejected(refused("REFUNDNOTEXIST")),
    ]);
    // WHEN today is reconciled
    let day: wxpay::bill::BillDate = UnixMillis::now().beijing_date().parse().unwrap();
    let report = svc.reconcile_bill_date(&day).await.unwrap();
    // THEN both are discrepancies flagged for a person, with the three amounts in words
    assert_eq!(report.status, crate::reconcile::ReportStatus::Mismatched);
    let kinds: Vec<_> = report
        .discrepancies
        .iter()
        .map(|d| (d.out_refund_no.to_string(), d.kind, d.resolution))
        .collect();
    use crate::reconcile::{DiscrepancyKind as K, Resolution as R};
    assert_eq!(
        kinds,
        vec![
            ("R-A".to_owned(), K::AmountMismatch, R::FlaggedForPerson),
            ("R-B".to_owned(), K::MissingInBill, R::FlaggedForPerson),
        ]
    );
    assert!(
        report.discrepancies[0]
            .detail
            .contains("bill 90 fen, ledger 100 fen; WeChat's query says 100 fen"),
        "{}",
        report.discrepancies[0].detail
    );
    assert_eq!(report.bill.refund_fee, Fen::new(90).unwrap());
    assert_eq!(report.ledger.refund_fee, Fen::new(150).unwrap());
    // AND the ledger marks them as needing a person, their statuses and amounts untouched
    for (no, fee) in [("R-A", 100), ("R-B", 50)] {
        let rec = svc.get(&no.parse().unwrap()).await.unwrap();
        assert_eq!(rec.status, RefundStatus::Processing, "{no}");
        assert_eq!(rec.refund_fee, Fen::new(fee).unwrap(), "{no}");
        assert_eq!(
            rec.attention.map(|a| a.reason),
            Some(crate::correction::AttentionReason::Mismatch),
            "{no}"
        );
    }
    assert!(wechat.queries.lock().unwrap().is_empty(), "one query each");
    // AND the report is stored
    assert_eq!(svc.reconciliation(&day).await.unwrap(), Some(report));
}

#[tokio::test]
async fn a_bill_that_does_not_add_up_is_refused_and_nothing_is_stored() {
    let script = Scripted::default();
    let (svc, wechat, _dir) = service(script).await;
    let text = bill_text(&[("R-A", "ORDER-A", 90, "SUCCESS")]).into_string();
    let broken = text.replace("`1,`0.00,`0.90", "`2,`0.00,`0.90");
    wechat
        .bills
        .lock()
        .unwrap()
        .push_back(Ok(wxpay::bill::read_reply(broken.as_bytes()).unwrap()));
    let day: wxpay::bill::BillDate = UnixMillis::now().beijing_date().parse().unwrap();
    match svc.reconcile_bill_date(&day).await {
        Err(ServiceError::Upstream(m)) => assert!(m.contains("summary counts 2"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(svc.reconciliation(&day).await.unwrap(), None);
}

// ---- merchant events ---------------------------------------------------------------------------

/// A WeChat that loses the apply's answer, then reports the refund SUCCESS when asked.
fn lost_answer_then_success() -> Scripted {
    let script = Scripted::default();
    script
        .refunds
        .lock()
        .unwrap()
        .push_back(CallOutcome::Unknown(wxpay::UnknownReason::HttpStatus(502)));
    script
        .queries
        .lock()
        .unwrap()
        .push_back(CallOutcome::Ok(found(wxpay::WxRefundStatus::Success)));
    script
}

#[tokio::test]
async fn a_refund_that_succeeds_is_announced_once_and_leaves_nothing_in_its_outbox() {
    // GIVEN a publisher that takes everything
    let events = crate::testing::RecordingPublisher::new();
    let (svc, _wechat, _dir) = service_publishing(
        lost_answer_then_success(),
        Arc::clone(&events),
        Duration::ZERO,
    )
    .await;
    // WHEN a refund goes UNKNOWN, then the poller learns it succeeded
    svc.submit(cmd()).await.unwrap();
    assert!(
        events.accepted().is_empty(),
        "nothing is news before a final status"
    );
    svc.poll(Duration::from_secs(5)).await.unwrap();
    // THEN one `Refund Succeeded`, with the refund as it ended
    let rec = svc
        .ledger()
        .get(&"R-1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, RefundStatus::Success);
    let got = events.accepted();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].detail_type, crate::events::DetailType::Succeeded);
    assert_eq!(got[0].id, format!("R-1:{}:succeeded", rec.version));
    assert_eq!(got[0].detail.previous_status, Some(RefundStatus::Unknown));
    assert_eq!(got[0].detail.refund.status, RefundStatus::Success);
    // AND the outbox is empty, so later polls publish nothing again
    assert!(rec.outbox.is_empty());
    let report = svc.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.events_published, report.events_pending), (0, 0));
    assert_eq!(events.accepted().len(), 1);
}

#[tokio::test]
async fn an_event_its_writer_could_not_publish_is_published_by_the_poller_under_the_same_id() {
    // GIVEN a destination that is down when the refund succeeds
    let events = crate::testing::RecordingPublisher::new();
    events.refuse(true);
    let (svc, _wechat, _dir) = service_publishing(
        lost_answer_then_success(),
        Arc::clone(&events),
        Duration::ZERO,
    )
    .await;
    svc.submit(cmd()).await.unwrap();
    let report = svc.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.settled, 1, "{report:?}");
    // THEN the event waits in the outbox, written with the success
    let rec = svc
        .ledger()
        .get(&"R-1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, RefundStatus::Success);
    assert_eq!(rec.outbox.len(), 1);
    let id = rec.outbox[0].id().to_owned();
    // AND a poll while the destination is still down keeps it, counted as pending
    let report = svc.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.events_published, report.events_pending), (0, 1));
    assert_eq!(report.examined, 0, "a final refund is not driven again");
    // WHEN the destination is back and the poller runs
    events.refuse(false);
    let report = svc.poll(Duration::from_secs(5)).await.unwrap();
    // THEN it is published once, under the id it was written with, and leaves the outbox
    assert_eq!((report.events_published, report.events_pending), (1, 0));
    let got = events.accepted();
    assert_eq!(
        got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![id]
    );
    let after = svc
        .ledger()
        .get(&"R-1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(after.outbox.is_empty());
    assert_eq!(after.version, rec.version, "a delivery is no fact");
    svc.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(events.accepted().len(), 1);
}

#[tokio::test]
async fn an_event_is_not_published_again_before_its_redelivery_time() {
    // GIVEN a refund whose event could not be published, re-delivered only after an hour
    let events = crate::testing::RecordingPublisher::new();
    events.refuse(true);
    let (svc, _wechat, _dir) = service_publishing(
        lost_answer_then_success(),
        Arc::clone(&events),
        Duration::from_secs(3600),
    )
    .await;
    svc.submit(cmd()).await.unwrap();
    svc.poll(Duration::from_secs(5)).await.unwrap();
    events.refuse(false);
    // WHEN the poller runs before that
    let report = svc.poll(Duration::from_secs(5)).await.unwrap();
    // THEN it leaves the event alone (its writer may still be publishing it)
    assert_eq!((report.events_published, report.events_pending), (0, 0));
    assert!(events.accepted().is_empty());
}
