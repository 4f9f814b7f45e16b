//! Every row of the decision rules, as explicit tables: apply outcomes × record state, query
//! outcomes × record state, adoption, re-checks, the first action per trigger, replays.

use super::*;
use crate::correction::CorrectionKind;
use crate::state::Lease;
use RefundStatus::*;
use wxpay::errors::Stage;
use wxpay::{OrderRef, OutRefundNo, RefundId};

const T0: u64 = 1_800_000_000_000;
const SEC: u64 = 1_000;

fn schedule() -> Schedule {
    Schedule {
        first_check: Duration::from_secs(10),
        min_backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(4 * 3600),
        escalate: Escalation::default(),
    }
}

fn fen(n: u64) -> Fen {
    Fen::new(n).unwrap()
}

fn no() -> OutRefundNo {
    "R-1".parse().unwrap()
}

/// A refund created at T0, with `attempts`, due at T0 + 1 s.
fn rec(status: RefundStatus, attempts: u32) -> RefundRecord {
    RefundRecord {
        out_refund_no: no(),
        order: OrderRef::OutTradeNo("ORDER-1".parse().unwrap()),
        out_trade_no: Some("ORDER-1".parse().unwrap()),
        transaction_id: None,
        refund_id: None,
        total_fee: fen(100),
        refund_fee: fen(10),
        refund_desc: None,
        refund_account: None,
        status,
        attempts,
        last_error: None,
        refund_recv_account: None,
        success_time: None,
        created_at: UnixMillis(T0),
        updated_at: UnixMillis(T0),
        request_hash: "h".into(),
        version: 3,
        lease: (status == Submitting).then(|| Lease {
            owner: "me".into(),
            expires_at: UnixMillis(T0 + 90 * SEC),
        }),
        next_check_at: (!status.is_final()).then_some(UnixMillis(T0 + SEC)),
        external: false,
        attention: None,
        corrections: vec![],
        accepted_at: None,
        metadata: Default::default(),
        outbox: Vec::new(),
    }
}

fn refusal(code: &str) -> WxError {
    WxError {
        stage: Stage::Result,
        code: ErrCode::parse(code),
        description: format!("{code} described"),
        return_msg: "OK".into(),
        raw: String::new(),
    }
}

fn accepted(no: &str, fee: u64) -> RefundResponse {
    RefundResponse {
        transaction_id: "4200000001202611270000000001".parse().unwrap(),
        out_trade_no: "ORDER-1".parse().unwrap(),
        out_refund_no: no.parse().unwrap(),
        refund_id: "50000000001".parse().unwrap(),
        refund_fee: fen(fee),
        total_fee: fen(100),
        cash_fee: None,
        settlement_refund_fee: None,
        settlement_total_fee: None,
        cash_refund_fee: None,
        coupon_refund_fee: None,
        coupons: vec![],
        fields: wxpay::XmlMap::new(),
    }
}

fn queried(status: WxRefundStatus, fee: u64) -> QueriedRefund {
    QueriedRefund {
        out_refund_no: no(),
        refund_id: "50000000001".parse().unwrap(),
        refund_channel: None,
        refund_fee: fen(fee),
        settlement_refund_fee: None,
        refund_status: status,
        refund_account: None,
        refund_recv_account: Some("支付用户零钱".into()),
        refund_success_time: Some("2026-11-27 10:00:00".into()),
        coupon_refund_fee: None,
        coupons: vec![],
    }
}

fn found(status: WxRefundStatus, fee: u64) -> Lookup {
    Lookup::Found {
        refund: Box::new(queried(status, fee)),
        order: QueriedOrder::default(),
    }
}

/// A step reduced to what a table can state: the kind, the target, the error code written and the
/// delay to the next check (seconds after `now`).
#[derive(Debug, PartialEq, Eq)]
enum Row {
    Move(RefundStatus, Option<&'static str>, Option<u64>),
    Verify(&'static str),
    /// A correction to the status, of the kind.
    Correct(RefundStatus, CorrectionKind),
    Resubmit,
    Keep,
}

fn row(step: &Step, now: UnixMillis) -> Row {
    match step {
        Step::Move { to, changes, .. } => {
            let code = match &changes.last_error {
                Patch::Set(e) => Some(leak(e.code.clone())),
                Patch::Clear => Some("-cleared-"),
                Patch::Keep => None,
            };
            let delay = changes.next_check_at.map(|t| (t.get() - now.get()) / SEC);
            Row::Move(*to, code, delay)
        }
        Step::Verify { failure } => Row::Verify(leak(failure.code.clone())),
        Step::Correct { to, kind, .. } => Row::Correct(*to, *kind),
        Step::Resubmit => Row::Resubmit,
        Step::Keep => Row::Keep,
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

// ---- after_apply --------------------------------------------------------------------------------

#[test]
fn every_apply_outcome_at_every_attempt() {
    // GIVEN a leased refund at attempt 1, 2 or 5, and a schedule of 10 s / 60 s doubling to 4 h
    let now = UnixMillis(T0 + 5 * SEC);
    let unknown = || CallOutcome::Unknown(UnknownReason::HttpStatus(502));
    type Case = (u32, CallOutcome<RefundResponse>, Row);
    let cases: Vec<Case> = vec![
        // accepted → PROCESSING, error cleared, first check
        (
            1,
            CallOutcome::Ok(accepted("R-1", 10)),
            Row::Move(Processing, Some("-cleared-"), Some(10)),
        ),
        (
            5,
            CallOutcome::Ok(accepted("R-1", 10)),
            Row::Move(Processing, Some("-cleared-"), Some(10)),
        ),
        // an acceptance of another number or amount is not ours: unknown
        (
            1,
            CallOutcome::Ok(accepted("R-2", 10)),
            Row::Move(Unknown, Some("REPLY_MISMATCH"), Some(60)),
        ),
        (
            1,
            CallOutcome::Ok(accepted("R-1", 11)),
            Row::Move(Unknown, Some("REPLY_MISMATCH"), Some(60)),
        ),
        // transient refusals wait: 60 s × 2^(attempts-1)
        (
            1,
            CallOutcome::Rejected(refusal("SYSTEMERROR")),
            Row::Move(RetryWait, Some("SYSTEMERROR"), Some(60)),
        ),
        (
            2,
            CallOutcome::Rejected(refusal("SYSTEMERROR")),
            Row::Move(RetryWait, Some("SYSTEMERROR"), Some(120)),
        ),
        (
            5,
            CallOutcome::Rejected(refusal("BIZERR_NEED_RETRY")),
            Row::Move(RetryWait, Some("BIZERR_NEED_RETRY"), Some(960)),
        ),
        (
            1,
            CallOutcome::Rejected(refusal("NOTENOUGH")),
            Row::Move(RetryWait, Some("NOTENOUGH"), Some(60)),
        ),
        (
            3,
            CallOutcome::Rejected(refusal("FREQUENCY_LIMITED")),
            Row::Move(RetryWait, Some("FREQUENCY_LIMITED"), Some(240)),
        ),
        // an unknown code is never final on a guess
        (
            1,
            CallOutcome::Rejected(refusal("SOMETHING_NEW")),
            Row::Move(RetryWait, Some("SOMETHING_NEW"), Some(60)),
        ),
        // a configuration refusal waits for an operator
        (
            1,
            CallOutcome::Rejected(refusal("CERT_ERROR")),
            Row::Move(RetryWait, Some("CERT_ERROR"), Some(60)),
        ),
        (
            2,
            CallOutcome::Rejected(refusal("SIGNERROR")),
            Row::Move(RetryWait, Some("SIGNERROR"), Some(120)),
        ),
        // REFUNDNOTEXIST on an apply (class NotFound) is not definitive
        (
            1,
            CallOutcome::Rejected(refusal("REFUNDNOTEXIST")),
            Row::Move(RetryWait, Some("REFUNDNOTEXIST"), Some(60)),
        ),
        // definitive on the first attempt → FAILED
        (
            1,
            CallOutcome::Rejected(refusal("TRADE_OVERDUE")),
            Row::Move(Failed, Some("TRADE_OVERDUE"), Some(60)),
        ),
        (
            1,
            CallOutcome::Rejected(refusal("USER_ACCOUNT_ABNORMAL")),
            Row::Move(Failed, Some("USER_ACCOUNT_ABNORMAL"), Some(60)),
        ),
        (
            1,
            CallOutcome::Rejected(refusal("PARAM_ERROR")),
            Row::Move(Failed, Some("PARAM_ERROR"), Some(60)),
        ),
        (
            1,
            CallOutcome::Rejected(refusal("ORDERNOTEXIST")),
            Row::Move(Failed, Some("ORDERNOTEXIST"), Some(60)),
        ),
        // a refusal that says the number exists with other fields is verified even at first
        (
            1,
            CallOutcome::Rejected(refusal("REFUND_FEE_MISMATCH")),
            Row::Verify("REFUND_FEE_MISMATCH"),
        ),
        (
            1,
            CallOutcome::Rejected(refusal("INVALID_REQUEST")),
            Row::Verify("INVALID_REQUEST"),
        ),
        (
            3,
            CallOutcome::Rejected(refusal("INVALID_REQUEST")),
            Row::Verify("INVALID_REQUEST"),
        ),
        // definitive on a repeat → verify by query first
        (
            2,
            CallOutcome::Rejected(refusal("TRADE_OVERDUE")),
            Row::Verify("TRADE_OVERDUE"),
        ),
        (
            2,
            CallOutcome::Rejected(refusal("PARAM_ERROR")),
            Row::Verify("PARAM_ERROR"),
        ),
        (
            5,
            CallOutcome::Rejected(refusal("USER_ACCOUNT_ABNORMAL")),
            Row::Verify("USER_ACCOUNT_ABNORMAL"),
        ),
        // nothing left: wait and resend
        (
            1,
            CallOutcome::NotSent("connect refused".into()),
            Row::Move(RetryWait, Some("NOT_SENT"), Some(60)),
        ),
        (
            4,
            CallOutcome::NotSent("paced".into()),
            Row::Move(RetryWait, Some("NOT_SENT"), Some(480)),
        ),
        // may have been taken: query soon
        (
            1,
            unknown(),
            Row::Move(Unknown, Some("HTTP_STATUS"), Some(60)),
        ),
        (
            5,
            unknown(),
            Row::Move(Unknown, Some("HTTP_STATUS"), Some(60)),
        ),
        (
            1,
            CallOutcome::Unknown(UnknownReason::BadSignature),
            Row::Move(Unknown, Some("BAD_SIGNATURE"), Some(60)),
        ),
    ];
    for (attempts, outcome, want) in cases {
        let label = format!("attempt {attempts}, {outcome:?}");
        // WHEN the outcome is decided THEN the row matches
        let step = after_apply(&rec(Submitting, attempts), outcome, &schedule(), now);
        assert_eq!(row(&step, now), want, "{label}");
    }
}

#[test]
fn an_acceptance_writes_wechats_ids_and_says_why() {
    let now = UnixMillis(T0);
    match after_apply(
        &rec(Submitting, 1),
        CallOutcome::Ok(accepted("R-1", 10)),
        &schedule(),
        now,
    ) {
        Step::Move { to, changes, why } => {
            assert_eq!((to, why), (Processing, Why::Accepted));
            assert_eq!(
                changes.refund_id,
                Some("50000000001".parse::<RefundId>().unwrap())
            );
            assert_eq!(
                changes.transaction_id.map(|t| t.to_string()).as_deref(),
                Some("4200000001202611270000000001")
            );
            assert_eq!(
                changes.out_trade_no.map(|t| t.to_string()).as_deref(),
                Some("ORDER-1")
            );
            assert_eq!(changes.refund_recv_account, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn apply_reasons_name_the_class() {
    let now = UnixMillis(T0);
    let why = |o| match after_apply(&rec(Submitting, 1), o, &schedule(), now) {
        Step::Move { why, .. } => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        why(CallOutcome::Rejected(refusal("CERT_ERROR"))),
        Why::Refused(RetryClass::Misconfigured)
    );
    assert_eq!(
        why(CallOutcome::Rejected(refusal("PARAM_ERROR"))),
        Why::Refused(RetryClass::FixRequest)
    );
    assert_eq!(
        why(CallOutcome::Rejected(refusal("TRADE_OVERDUE"))),
        Why::Refused(RetryClass::Final)
    );
    assert_eq!(why(CallOutcome::NotSent("x".into())), Why::NotSent);
    assert_eq!(
        why(CallOutcome::Unknown(UnknownReason::BadSignature)),
        Why::OutcomeUnknown
    );
    assert_eq!(
        why(CallOutcome::Ok(accepted("R-1", 11))),
        Why::ReplyMismatch {
            reply_out_refund_no: "R-1".into(),
            reply_refund_fee: fen(11)
        }
    );
}

#[test]
fn only_the_existing_number_refusals_name_one() {
    for code in ErrCode::ALL {
        let want = matches!(*code, "REFUND_FEE_MISMATCH" | "INVALID_REQUEST");
        assert_eq!(
            names_an_existing_number(&ErrCode::parse(code)),
            want,
            "{code}"
        );
    }
    assert!(!names_an_existing_number(&ErrCode::parse("SOMETHING_NEW")));
}

#[test]
fn a_request_that_cannot_be_built() {
    use wxpay::refund::RequestError;
    let now = UnixMillis(T0 + 5 * SEC);
    let s = schedule();
    // GIVEN a stored refund_desc the encoder refuses WHEN it is the first attempt THEN FAILED
    // (nothing ever left), with the reason
    let bad = RequestError::DescTooLong;
    let step = unsendable(&rec(Submitting, 1), &bad, &s, now);
    assert_eq!(
        row(&step, now),
        Row::Move(Failed, Some("UNSENDABLE"), Some(60))
    );
    match &step {
        Step::Move { changes, why, .. } => {
            assert_eq!(*why, Why::Unsendable);
            match &changes.last_error {
                Patch::Set(e) => assert!(e.message.contains("80 characters"), "{}", e.message),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    // WHEN an earlier attempt exists THEN verify by query before failing
    assert_eq!(
        row(&unsendable(&rec(Submitting, 2), &bad, &s, now), now),
        Row::Verify("UNSENDABLE")
    );
    // WHEN the cause is configuration (notify_url) THEN wait for an operator, never fail
    let config = RequestError::NotifyUrl("must be an http(s) URL");
    assert_eq!(
        row(&unsendable(&rec(Submitting, 2), &config, &s, now), now),
        Row::Move(RetryWait, Some("NOT_SENT"), Some(120))
    );
}

// ---- after_verify -------------------------------------------------------------------------------

#[test]
fn verifying_a_refused_repeat() {
    // GIVEN attempt 2 refused for good (TRADE_OVERDUE)
    let now = UnixMillis(T0 + 100 * SEC);
    let r = rec(Submitting, 2);
    let refused = refusal("TRADE_OVERDUE");
    for (lookup, want) in [
        // WeChat has it from attempt 1: adopt, keep the amount
        (
            found(WxRefundStatus::Processing, 10),
            Row::Move(Processing, Some("-cleared-"), Some(60)),
        ),
        (
            found(WxRefundStatus::Success, 10),
            Row::Move(Success, Some("-cleared-"), None),
        ),
        // WeChat has the number with another amount: not adopted, unknown
        (
            found(WxRefundStatus::Success, 9),
            Row::Move(Unknown, Some("AMOUNT_MISMATCH"), Some(60)),
        ),
        // never taken: FAILED with the refusal's reason
        (
            Lookup::NotExist(refusal("REFUNDNOTEXIST")),
            Row::Move(Failed, Some("TRADE_OVERDUE"), Some(60)),
        ),
        // cannot tell: unknown, the refusal noted
        (
            Lookup::NotListed,
            Row::Move(Unknown, Some("TRADE_OVERDUE"), Some(60)),
        ),
        (
            Lookup::Failed(CallFailure::NotSent("down".into())),
            Row::Move(Unknown, Some("TRADE_OVERDUE"), Some(60)),
        ),
        (
            Lookup::Failed(CallFailure::Rejected(refusal("SYSTEMERROR"))),
            Row::Move(Unknown, Some("TRADE_OVERDUE"), Some(60)),
        ),
        (
            Lookup::Failed(CallFailure::Unknown(UnknownReason::HttpStatus(500))),
            Row::Move(Unknown, Some("TRADE_OVERDUE"), Some(60)),
        ),
    ] {
        let label = format!("{lookup:?}");
        // WHEN the verifying query answers THEN
        let step = after_verify(&r, &wx_error(&refused), lookup, &schedule(), now);
        assert_eq!(row(&step, now), want, "{label}");
    }
}

// ---- after_query --------------------------------------------------------------------------------

#[test]
fn every_query_answer_for_every_open_state() {
    // GIVEN a refund created 1000 s ago (recheck delay: max(60, 500) = 500 s) with 2 attempts
    // (retry delay 120 s); "due" means its next check (T0 + 1 s) has come
    let now = UnixMillis(T0 + 1000 * SEC);
    let not_due = |s| {
        let mut r = rec(s, 2);
        r.next_check_at = Some(UnixMillis(T0 + 2000 * SEC));
        r
    };
    let e = || Lookup::NotExist(refusal("REFUNDNOTEXIST"));
    let failed = || Lookup::Failed(CallFailure::Rejected(refusal("SYSTEMERROR")));
    let not_sent = || Lookup::Failed(CallFailure::NotSent("down".into()));
    let unknown = || Lookup::Failed(CallFailure::Unknown(UnknownReason::HttpStatus(504)));
    type Case = (RefundRecord, bool, Lookup, Row);
    let cases: Vec<Case> = vec![
        // PROCESSING
        (
            rec(Processing, 1),
            false,
            found(WxRefundStatus::Success, 10),
            Row::Move(Success, Some("-cleared-"), None),
        ),
        (
            rec(Processing, 1),
            false,
            found(WxRefundStatus::RefundClose, 10),
            Row::Move(RefundClose, Some("-cleared-"), None),
        ),
        (
            rec(Processing, 1),
            false,
            found(WxRefundStatus::Change, 10),
            Row::Move(Change, Some("-cleared-"), None),
        ),
        (
            rec(Processing, 1),
            false,
            found(WxRefundStatus::Processing, 10),
            Row::Move(Processing, Some("-cleared-"), Some(500)),
        ),
        (
            rec(Processing, 1),
            false,
            found(WxRefundStatus::Other("NEW".into()), 10),
            Row::Move(Processing, Some("-cleared-"), Some(500)),
        ),
        (
            rec(Processing, 1),
            false,
            found(WxRefundStatus::Success, 11),
            Row::Move(Processing, Some("AMOUNT_MISMATCH"), Some(500)),
        ),
        (
            rec(Processing, 1),
            false,
            Lookup::NotListed,
            Row::Move(Processing, Some("QUERY_MISMATCH"), Some(500)),
        ),
        (
            rec(Processing, 1),
            false,
            e(),
            Row::Move(Processing, Some("REFUNDNOTEXIST"), Some(500)),
        ),
        (
            rec(Processing, 1),
            false,
            failed(),
            Row::Move(Processing, Some("SYSTEMERROR"), Some(500)),
        ),
        (
            rec(Processing, 1),
            false,
            not_sent(),
            Row::Move(Processing, Some("NOT_SENT"), Some(500)),
        ),
        (
            rec(Processing, 1),
            false,
            unknown(),
            Row::Move(Processing, Some("HTTP_STATUS"), Some(500)),
        ),
        // UNKNOWN
        (
            rec(Unknown, 2),
            false,
            found(WxRefundStatus::Processing, 10),
            Row::Move(Processing, Some("-cleared-"), Some(500)),
        ),
        (
            rec(Unknown, 2),
            false,
            found(WxRefundStatus::Success, 10),
            Row::Move(Success, Some("-cleared-"), None),
        ),
        (
            rec(Unknown, 2),
            false,
            Lookup::NotListed,
            Row::Move(Unknown, Some("QUERY_MISMATCH"), Some(500)),
        ),
        (rec(Unknown, 2), false, e(), Row::Resubmit),
        (not_due(Unknown), false, e(), Row::Keep),
        (
            rec(Unknown, 2),
            false,
            failed(),
            Row::Move(Unknown, Some("SYSTEMERROR"), Some(500)),
        ),
        (
            rec(Unknown, 2),
            false,
            not_sent(),
            Row::Move(Unknown, Some("NOT_SENT"), Some(500)),
        ),
        (
            rec(Unknown, 2),
            false,
            unknown(),
            Row::Move(Unknown, Some("HTTP_STATUS"), Some(500)),
        ),
        // RETRY_WAIT (a refresh or notification: the backoff is kept)
        (
            rec(RetryWait, 2),
            false,
            found(WxRefundStatus::Processing, 10),
            Row::Move(Processing, Some("-cleared-"), Some(500)),
        ),
        (
            rec(RetryWait, 2),
            false,
            found(WxRefundStatus::Change, 10),
            Row::Move(Change, Some("-cleared-"), None),
        ),
        (
            rec(RetryWait, 2),
            false,
            Lookup::NotListed,
            Row::Move(RetryWait, Some("QUERY_MISMATCH"), Some(120)),
        ),
        (rec(RetryWait, 2), false, e(), Row::Resubmit),
        (not_due(RetryWait), false, e(), Row::Keep),
        (
            rec(RetryWait, 2),
            false,
            failed(),
            Row::Move(RetryWait, Some("SYSTEMERROR"), Some(120)),
        ),
        (
            rec(RetryWait, 2),
            false,
            not_sent(),
            Row::Move(RetryWait, Some("NOT_SENT"), Some(120)),
        ),
        // SUBMITTING taken over (we hold the lease) or seen without it
        (
            rec(Submitting, 2),
            true,
            found(WxRefundStatus::Processing, 10),
            Row::Move(Processing, Some("-cleared-"), Some(500)),
        ),
        (
            rec(Submitting, 2),
            true,
            found(WxRefundStatus::Success, 10),
            Row::Move(Success, Some("-cleared-"), None),
        ),
        (rec(Submitting, 2), true, e(), Row::Resubmit),
        (rec(Submitting, 2), false, e(), Row::Keep),
        (
            rec(Submitting, 2),
            true,
            Lookup::NotListed,
            Row::Move(Unknown, Some("QUERY_MISMATCH"), Some(60)),
        ),
        (
            rec(Submitting, 2),
            true,
            failed(),
            Row::Move(Unknown, Some("SYSTEMERROR"), Some(60)),
        ),
        (
            rec(Submitting, 2),
            true,
            unknown(),
            Row::Move(Unknown, Some("HTTP_STATUS"), Some(60)),
        ),
        // final: nothing learned moves it (today's rule; signed facts are adopted by the fenced
        // write, which refuses moves out of a final state)
        (rec(Success, 1), false, Lookup::NotListed, Row::Keep),
        (rec(Failed, 1), false, failed(), Row::Keep),
        (rec(Change, 1), false, e(), Row::Keep),
        // final, and WeChat's signed reply lists it: the same status is nothing new; another
        // status is corrected (CHANGE moving on is a resolution); another amount is never adopted
        (
            rec(Success, 1),
            false,
            found(WxRefundStatus::Success, 10),
            Row::Keep,
        ),
        (
            rec(Failed, 2),
            false,
            found(WxRefundStatus::Success, 10),
            Row::Correct(Success, CorrectionKind::Contradiction),
        ),
        (
            rec(Failed, 2),
            false,
            found(WxRefundStatus::Processing, 10),
            Row::Correct(Processing, CorrectionKind::Contradiction),
        ),
        (
            rec(Failed, 2),
            false,
            found(WxRefundStatus::Change, 10),
            Row::Correct(Change, CorrectionKind::Contradiction),
        ),
        (
            rec(RefundClose, 1),
            false,
            found(WxRefundStatus::Success, 10),
            Row::Correct(Success, CorrectionKind::Contradiction),
        ),
        (
            rec(Change, 1),
            false,
            found(WxRefundStatus::Success, 10),
            Row::Correct(Success, CorrectionKind::Resolution),
        ),
        (
            rec(Change, 1),
            false,
            found(WxRefundStatus::RefundClose, 10),
            Row::Correct(RefundClose, CorrectionKind::Resolution),
        ),
        (
            rec(Failed, 2),
            false,
            found(WxRefundStatus::Success, 11),
            Row::Keep,
        ),
    ];
    for (r, lease, lookup, want) in cases {
        let label = format!("{} lease={lease} {lookup:?}", r.status);
        // WHEN the query answers THEN the row matches
        let step = after_query(&r, lookup, lease, &schedule(), now);
        assert_eq!(row(&step, now), want, "{label}");
    }
}

#[test]
fn a_correction_carries_wechats_fields_and_schedules_an_open_status() {
    let now = UnixMillis(T0 + 1000 * SEC);
    match adopt(
        &rec(Failed, 2),
        &queried(WxRefundStatus::Processing, 10),
        &schedule(),
        now,
    ) {
        Step::Correct { to, changes, kind } => {
            assert_eq!((to, kind), (Processing, CorrectionKind::Contradiction));
            assert_eq!(changes.refund_id, Some("50000000001".parse().unwrap()));
            assert_eq!(changes.last_error, Patch::Clear);
            assert_eq!(
                changes.next_check_at,
                Some(now.plus(Duration::from_secs(500)))
            );
        }
        other => panic!("{other:?}"),
    }
    match adopt(
        &rec(Failed, 2),
        &queried(WxRefundStatus::Success, 10),
        &schedule(),
        now,
    ) {
        Step::Correct { changes, .. } => {
            assert_eq!(changes.next_check_at, None);
            assert_eq!(changes.success_time.as_deref(), Some("2026-11-27 10:00:00"));
            assert_eq!(changes.refund_recv_account.as_deref(), Some("支付用户零钱"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_not_exist_after_acceptance_is_named() {
    let now = UnixMillis(T0 + 1000 * SEC);
    let step = after_query(
        &rec(Processing, 1),
        Lookup::NotExist(refusal("REFUNDNOTEXIST")),
        false,
        &schedule(),
        now,
    );
    assert!(
        matches!(
            step,
            Step::Move {
                why: Why::NotExistAfterAcceptance,
                ..
            }
        ),
        "{step:?}"
    );
}

// ---- adopt and recheck_later ---------------------------------------------------------------------

#[test]
fn adoption_writes_wechats_fields_and_flags_stale_processing() {
    let s = schedule();
    // GIVEN a refund 8 days old WHEN WeChat still says PROCESSING THEN adopted, marked stale,
    // next check capped at max_backoff
    let now = UnixMillis(T0 + 8 * 24 * 3600 * SEC);
    match adopt(
        &rec(Unknown, 1),
        &queried(WxRefundStatus::Processing, 10),
        &s,
        now,
    ) {
        Step::Move { to, changes, why } => {
            assert_eq!((to, why), (Processing, Why::AdoptedStale));
            assert_eq!(changes.next_check_at, Some(now.plus(s.max_backoff)));
            assert_eq!(changes.refund_id, Some("50000000001".parse().unwrap()));
            assert_eq!(changes.refund_recv_account.as_deref(), Some("支付用户零钱"));
            assert_eq!(changes.success_time.as_deref(), Some("2026-11-27 10:00:00"));
            assert_eq!(changes.last_error, Patch::Clear);
        }
        other => panic!("{other:?}"),
    }
    // WHEN it is exactly at the limit THEN not stale yet (older than, not as old as)
    let at_limit = UnixMillis(T0 + 7 * 24 * 3600 * SEC);
    assert!(matches!(
        adopt(
            &rec(Processing, 1),
            &queried(WxRefundStatus::Processing, 10),
            &s,
            at_limit
        ),
        Step::Move {
            why: Why::Adopted,
            ..
        }
    ));
    // WHEN it is 6 days old THEN not stale
    let now = UnixMillis(T0 + 6 * 24 * 3600 * SEC);
    assert!(matches!(
        adopt(
            &rec(Processing, 1),
            &queried(WxRefundStatus::Processing, 10),
            &s,
            now
        ),
        Step::Move {
            why: Why::Adopted,
            ..
        }
    ));
    // WHEN WeChat names another amount THEN the mismatch is the reason
    assert!(matches!(
        adopt(&rec(Processing, 1), &queried(WxRefundStatus::Success, 12), &s, now),
        Step::Move { to: Processing, why: Why::AmountMismatch { wechat }, .. } if wechat == fen(12)
    ));
}

#[test]
fn recheck_later_per_status() {
    // GIVEN a refund created 1000 s ago with 3 attempts (retry delay 240 s, recheck delay 500 s)
    let now = UnixMillis(T0 + 1000 * SEC);
    let e = || LastError {
        code: "X".into(),
        message: "x".into(),
    };
    for (status, want) in [
        (Recorded, Row::Keep),
        (Submitting, Row::Move(Unknown, Some("X"), Some(60))),
        (Processing, Row::Move(Processing, Some("X"), Some(500))),
        (Unknown, Row::Move(Unknown, Some("X"), Some(500))),
        (RetryWait, Row::Move(RetryWait, Some("X"), Some(240))),
        (Success, Row::Keep),
        (RefundClose, Row::Keep),
        (Change, Row::Keep),
        (Failed, Row::Keep),
    ] {
        let step = recheck_later(&rec(status, 3), e(), &schedule(), now);
        assert_eq!(row(&step, now), want, "{status}");
        if let Step::Move { why, .. } = step {
            assert_eq!(why, Why::NothingLearned);
        }
    }
}

#[test]
fn the_order_listing_moves_open_refunds_on_and_corrects_final_ones() {
    let now = UnixMillis(T0 + 1000 * SEC);
    let s = schedule();
    for (status, wx, want) in [
        (
            Processing,
            WxRefundStatus::Success,
            Row::Move(Success, Some("-cleared-"), None),
        ),
        (
            Unknown,
            WxRefundStatus::Processing,
            Row::Move(Processing, Some("-cleared-"), Some(500)),
        ),
        (
            RetryWait,
            WxRefundStatus::Success,
            Row::Move(Success, Some("-cleared-"), None),
        ),
        (Processing, WxRefundStatus::Processing, Row::Keep),
        (Submitting, WxRefundStatus::Success, Row::Keep),
        (Recorded, WxRefundStatus::Success, Row::Keep),
        (Success, WxRefundStatus::Success, Row::Keep),
        (Change, WxRefundStatus::Change, Row::Keep),
        // a final status WeChat's listing contradicts is corrected; a moved-on CHANGE resolved
        (
            Failed,
            WxRefundStatus::Success,
            Row::Correct(Success, CorrectionKind::Contradiction),
        ),
        (
            Failed,
            WxRefundStatus::Processing,
            Row::Correct(Processing, CorrectionKind::Contradiction),
        ),
        (
            RefundClose,
            WxRefundStatus::Success,
            Row::Correct(Success, CorrectionKind::Contradiction),
        ),
        (
            Success,
            WxRefundStatus::RefundClose,
            Row::Correct(RefundClose, CorrectionKind::Contradiction),
        ),
        (
            Change,
            WxRefundStatus::Success,
            Row::Correct(Success, CorrectionKind::Resolution),
        ),
    ] {
        let step = from_listing(&rec(status, 1), &queried(wx.clone(), 10), &s, now);
        assert_eq!(row(&step, now), want, "{status} ← {wx}");
    }
}

// ---- first action and replays --------------------------------------------------------------------

#[test]
fn the_first_action_per_trigger_and_status() {
    use Action::*;
    use Trigger::*;
    let table = [
        // status      poll               refresh  notification  bill
        (Recorded, [Submit, Submit, Submit, Query]),
        (Submitting, [TakeOverThenQuery, Keep, Keep, Keep]),
        (Processing, [Query, Query, Query, Query]),
        (Unknown, [Query, Query, Query, Query]),
        (RetryWait, [Submit, Query, Query, Query]),
        // final: the poller leaves them, but a refresh, a notification or the bill asks WeChat
        // again (a signed fact may contradict them)
        (Success, [Keep, Query, Query, Query]),
        (RefundClose, [Keep, Query, Query, Query]),
        (Change, [Keep, Query, Query, Query]),
        (Failed, [Keep, Query, Query, Query]),
    ];
    assert_eq!(table.len(), RefundStatus::ALL.len());
    for (status, [poll, refresh, notification, bill]) in table {
        let r = rec(status, 1);
        assert_eq!(action(&r, Poll), poll, "{status} poll");
        assert_eq!(action(&r, Refresh), refresh, "{status} refresh");
        assert_eq!(action(&r, Bill), bill, "{status} bill");
        assert_eq!(
            action(&r, Notification),
            notification,
            "{status} notification"
        );
    }
}

#[test]
fn replays_by_status_and_lease() {
    let now = UnixMillis(T0 + 10 * SEC);
    for status in RefundStatus::ALL {
        let want = match status {
            Recorded => Replay::Submit,
            Submitting => Replay::InProgress,
            _ => Replay::Stored,
        };
        assert_eq!(on_replay(&rec(status, 1), now), want, "{status}");
    }
    // an expired lease is no longer in progress: the stored record answers
    let late = UnixMillis(T0 + 91 * SEC);
    assert_eq!(on_replay(&rec(Submitting, 1), late), Replay::Stored);
    // the lease's last millisecond still counts as held
    let last = UnixMillis(T0 + 90 * SEC - 1);
    assert_eq!(on_replay(&rec(Submitting, 1), last), Replay::InProgress);
    assert_eq!(
        on_replay(&rec(Submitting, 1), UnixMillis(T0 + 90 * SEC)),
        Replay::Stored
    );
}

// ---- schedule, errors, lookups -------------------------------------------------------------------

#[test]
fn retry_delay_doubles_from_min_to_max() {
    let s = schedule();
    for (attempts, secs) in [
        (0, 60),
        (1, 60),
        (2, 120),
        (3, 240),
        (8, 7_680),
        (9, 14_400),
        (40, 14_400),
        (u32::MAX, 14_400),
    ] {
        assert_eq!(
            s.retry_delay(attempts),
            Duration::from_secs(secs),
            "attempts {attempts}"
        );
    }
}

#[test]
fn recheck_delay_is_half_the_age_within_bounds() {
    let s = schedule();
    let r = rec(Processing, 1);
    for (age_secs, delay_secs) in [
        (0, 60),
        (100, 60),
        (120, 60),
        (122, 61),
        (1000, 500),
        (28_800, 14_400),
        (10_000_000, 14_400),
    ] {
        assert_eq!(
            s.recheck_delay(&r, UnixMillis(T0 + age_secs * SEC)),
            Duration::from_secs(delay_secs),
            "age {age_secs}"
        );
    }
}

#[test]
fn production_schedule() {
    let s = Schedule::default();
    assert_eq!(s.first_check, Duration::from_secs(60));
    assert_eq!(s.min_backoff, Duration::from_secs(60));
    assert_eq!(s.max_backoff, Duration::from_secs(4 * 3600));
    let e = &s.escalate;
    assert_eq!(
        [
            e.recorded,
            e.submitting,
            e.unknown,
            e.retry_wait,
            e.processing
        ],
        [
            Duration::from_secs(15 * 60),
            Duration::from_secs(15 * 60),
            Duration::from_secs(2 * 3600),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(7 * 24 * 3600),
        ]
    );
}

#[test]
fn one_last_error_per_failure_kind() {
    let rejected = CallFailure::Rejected(refusal("NOTENOUGH"));
    assert_eq!(
        rejected.last_error(),
        LastError {
            code: "NOTENOUGH".into(),
            message: "NOTENOUGH described".into()
        }
    );
    assert_eq!(
        CallFailure::NotSent("connect refused".into()).last_error(),
        LastError {
            code: "NOT_SENT".into(),
            message: "connect refused".into()
        }
    );
    let unknown = CallFailure::Unknown(UnknownReason::HttpStatus(502));
    assert_eq!(
        unknown.last_error(),
        LastError {
            code: "HTTP_STATUS".into(),
            message: "WeChat answered HTTP 502".into()
        }
    );
    assert_eq!(unknown.to_string(), "WeChat answered HTTP 502");
    assert_eq!(CallFailure::NotSent("down".into()).to_string(), "down");
    assert!(rejected.to_string().contains("NOTENOUGH"), "{rejected}");
}

#[test]
fn split_keeps_every_outcome() {
    assert_eq!(CallFailure::split(CallOutcome::Ok(1)), Ok(1));
    assert_eq!(
        CallFailure::split::<()>(CallOutcome::NotSent("x".into())),
        Err(CallFailure::NotSent("x".into()))
    );
    assert_eq!(
        CallFailure::split::<()>(CallOutcome::Unknown(UnknownReason::BadSignature)),
        Err(CallFailure::Unknown(UnknownReason::BadSignature))
    );
    assert_eq!(
        CallFailure::split::<()>(CallOutcome::Rejected(refusal("SYSTEMERROR"))),
        Err(CallFailure::Rejected(refusal("SYSTEMERROR")))
    );
}

fn reply(refunds: Vec<QueriedRefund>) -> RefundQueryResponse {
    RefundQueryResponse {
        transaction_id: Some("4200000001202611270000000001".parse().unwrap()),
        out_trade_no: Some("ORDER-1".parse().unwrap()),
        total_fee: Some(fen(100)),
        settlement_total_fee: None,
        fee_type: None,
        cash_fee: None,
        refund_count: refunds.len() as u32,
        total_refund_count: None,
        refunds,
        fields: wxpay::XmlMap::new(),
    }
}

#[test]
fn a_lookup_finds_the_number_or_says_why_not() {
    let mut other = queried(WxRefundStatus::Success, 10);
    other.out_refund_no = "R-2".parse().unwrap();
    // found among others, with the order's facts
    match Lookup::of(
        &no(),
        CallOutcome::Ok(reply(vec![
            other.clone(),
            queried(WxRefundStatus::Change, 10),
        ])),
    ) {
        Lookup::Found { refund, order } => {
            assert_eq!(refund.refund_status, WxRefundStatus::Change);
            assert_eq!(order.total_fee, Some(fen(100)));
            assert_eq!(
                order.out_trade_no.map(|o| o.to_string()).as_deref(),
                Some("ORDER-1")
            );
            assert!(order.transaction_id.is_some());
        }
        l => panic!("{l:?}"),
    }
    assert_eq!(
        Lookup::of(&no(), CallOutcome::Ok(reply(vec![other]))),
        Lookup::NotListed
    );
    assert_eq!(
        Lookup::of(&no(), CallOutcome::Rejected(refusal("REFUNDNOTEXIST"))),
        Lookup::NotExist(refusal("REFUNDNOTEXIST"))
    );
    assert_eq!(
        Lookup::of(&no(), CallOutcome::Rejected(refusal("SYSTEMERROR"))),
        Lookup::Failed(CallFailure::Rejected(refusal("SYSTEMERROR")))
    );
    assert_eq!(
        Lookup::of(&no(), CallOutcome::NotSent("x".into())),
        Lookup::Failed(CallFailure::NotSent("x".into()))
    );
}

#[test]
fn wechats_statuses_in_the_domain() {
    for (wx, ours) in [
        (WxRefundStatus::Processing, Processing),
        (WxRefundStatus::Success, Success),
        (WxRefundStatus::RefundClose, RefundClose),
        (WxRefundStatus::Change, Change),
        (WxRefundStatus::Other("REFUND_NEW".into()), Processing),
    ] {
        assert_eq!(RefundStatus::from(&wx), ours, "{wx}");
    }
}

#[test]
fn escalation_flags_an_old_open_refund_once_and_clears_only_its_own_flag() {
    use crate::correction::{Attention, AttentionReason};
    let s = Schedule {
        escalate: Escalation {
            recorded: Duration::from_secs(10),
            submitting: Duration::from_secs(20),
            unknown: Duration::from_secs(30),
            retry_wait: Duration::from_secs(40),
            processing: Duration::from_secs(50),
        },
        ..schedule()
    };
    let flag = |reason| Attention {
        reason,
        since: UnixMillis(T0),
    };
    let stuck = || Some(flag(AttentionReason::Stuck));
    let contradicted = || Some(flag(AttentionReason::Contradiction));
    // (age of the refund in s, its flag, the status it moves to) → what happens to the flag
    for (age, attention, to, want) in [
        // each open status by its own age: just under keeps, just over flags
        (10, None, Recorded, "keep"),
        (11, None, Recorded, "set"),
        (20, None, Submitting, "keep"),
        (21, None, Submitting, "set"),
        (30, None, Unknown, "keep"),
        (31, None, Unknown, "set"),
        (40, None, RetryWait, "keep"),
        (41, None, RetryWait, "set"),
        (50, None, Processing, "keep"),
        (51, None, Processing, "set"),
        // flagged once: an old flag is not renewed, and a contradiction is never replaced
        (99, stuck(), Unknown, "keep"),
        (99, contradicted(), Unknown, "keep"),
        // final: the machine resolved it, so a stuck flag clears; a contradiction stays
        (99, stuck(), Success, "clear"),
        (99, stuck(), Failed, "clear"),
        (99, stuck(), Change, "clear"),
        (99, contradicted(), Success, "keep"),
        (99, None, Success, "keep"),
    ] {
        let mut r = rec(Unknown, 1);
        r.attention = attention.clone();
        let now = UnixMillis(T0 + age * SEC);
        let got = match escalation(&r, to, &s, now) {
            Patch::Keep => "keep",
            Patch::Set(a) => {
                assert_eq!(
                    a,
                    Attention {
                        reason: AttentionReason::Stuck,
                        since: now
                    }
                );
                "set"
            }
            Patch::Clear => "clear",
        };
        assert_eq!(got, want, "age {age}, {attention:?}, to {to}");
    }
}
