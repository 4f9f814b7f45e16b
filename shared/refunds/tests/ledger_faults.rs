//! The DynamoDB ledger under DynamoDB's failures, injected by the moto relay of
//! `wxrefund::testing` ([`Faults`]): throttled and conflicting transactions, the SDK-retried
//! throttling and 5xx answers, and writes whose answer is lost or too slow. Every write must be
//! applied exactly once once the faults stop, and a fault that does not stop must end in a typed
//! `LedgerError` with nothing half-written.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, RefundId};
use wxrefund::ledger::dynamo::DynamoLedger;
use wxrefund::ledger::{
    Changes, ExternalOutcome, ExternalRefund, LeaseOutcome, Ledger, LedgerError, NewRefund,
    RecordOutcome, Transition, TransitionOutcome,
};
use wxrefund::state::{OrderBook, RefundRecord, RefundStatus, UnixMillis};
use wxrefund::testing::{CancelCode, Fault, FaultRule, Faults, Op, faulty_dynamo_ledger};

const T0: UnixMillis = UnixMillis(1_800_000_000_000);
const LEASE: Duration = Duration::from_secs(30);
/// `DynamoLedger`'s attempts per transaction (`TXN_ATTEMPTS`).
const TXN_ATTEMPTS: u64 = 10;

const THROTTLED: Fault = Fault::TransactionCanceled(CancelCode::ThrottlingError);
const CONFLICT: Fault = Fault::TransactionCanceled(CancelCode::TransactionConflict);

// ---- helpers -----------------------------------------------------------------------------------

async fn ledger(faults: &Faults) -> DynamoLedger {
    faulty_dynamo_ledger("faults", faults, None).await
}

fn no(s: &str) -> OutRefundNo {
    OutRefundNo::new(s).expect("valid out_refund_no")
}

fn order(s: &str) -> OrderRef {
    OrderRef::OutTradeNo(OutTradeNo::new(s).expect("valid out_trade_no"))
}

fn fen(n: u64) -> Fen {
    Fen::new(n).expect("valid amount")
}

fn new_refund(n: &str, total: u64, fee: u64) -> NewRefund {
    NewRefund {
        out_refund_no: no(n),
        order: order("ORDER-1"),
        total_fee: fen(total),
        refund_fee: fen(fee),
        refund_desc: None,
        refund_account: None,
        request_hash: "h".into(),
        now: T0,
        next_check_at: T0.plus(Duration::from_secs(60)),
        metadata: Default::default(),
        lease: None,
    }
}

async fn created(l: &DynamoLedger, n: NewRefund) -> RefundRecord {
    match l.record(n).await {
        Ok(RecordOutcome::Created(r)) => r,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn leased(l: &DynamoLedger, n: &str) -> RefundRecord {
    match l.acquire_lease(&no(n), "lambda-a", LEASE, T0).await {
        Ok(LeaseOutcome::Acquired(r)) => r,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// The move of `r`, as it is now, to `to` (fenced on its status, version and lease owner).
fn move_of(r: &RefundRecord, to: RefundStatus, changes: Changes) -> Transition {
    Transition {
        out_refund_no: r.out_refund_no.clone(),
        expected_status: r.status,
        expected_version: r.version,
        lease_owner: r.lease.as_ref().map(|l| l.owner.clone()),
        to,
        changes,
        now: T0.plus(Duration::from_secs(1)),
    }
}

/// A final failure: releases the amount and the slot in one transaction with the refund update.
fn fail(r: &RefundRecord) -> Transition {
    move_of(r, RefundStatus::Failed, Changes::default())
}

async fn book(l: &DynamoLedger) -> Option<OrderBook> {
    l.order(&order("ORDER-1")).await.expect("read the order")
}

async fn stored(l: &DynamoLedger, n: &str) -> Option<RefundRecord> {
    l.get(&no(n)).await.expect("read the refund")
}

/// The book after exactly one refund of `fee` was recorded.
async fn assert_reserved_once(l: &DynamoLedger, fee: u64, refunds: &[&str]) {
    let b = book(l).await.expect("order book exists");
    assert_eq!(b.reserved, fen(fee), "reserved");
    assert_eq!(b.count, refunds.len() as u32, "refund_count");
    let mut listed: Vec<&str> = b.refunds.iter().map(OutRefundNo::as_str).collect();
    listed.sort_unstable();
    assert_eq!(listed, refunds, "refund_nos");
}

// ---- transactions cancelled by DynamoDB ------------------------------------------------------

#[tokio::test]
async fn given_throttled_cancellations_when_recording_then_the_refund_is_recorded_once_they_stop() {
    // GIVEN the next 3 TransactWriteItems cancelled with ThrottlingError
    let faults = Faults::seeded(1);
    let l = ledger(&faults).await;
    faults.add(FaultRule::next(3, Op::TransactWriteItems, THROTTLED));
    let before = l.write_stats();

    // WHEN a refund is recorded
    let rec = created(&l, new_refund("R1", 100, 40)).await;

    // THEN it took 4 transactions, and is stored once: version 1, no attempt, 40 reserved once
    assert_eq!(faults.injected().len(), 3);
    assert_eq!(faults.requests(Op::TransactWriteItems), 4);
    assert_eq!(l.write_stats().requests - before.requests, 4);
    assert_eq!((rec.version, rec.attempts), (1, 0));
    assert_eq!(stored(&l, "R1").await, Some(rec));
    assert_reserved_once(&l, 40, &["R1"]).await;
}

#[tokio::test]
async fn given_transaction_conflicts_when_recording_then_the_refund_is_recorded_once_they_stop() {
    // GIVEN the next 2 TransactWriteItems cancelled by a conflicting transaction
    let faults = Faults::seeded(2);
    let l = ledger(&faults).await;
    faults.add(FaultRule::next(2, Op::TransactWriteItems, CONFLICT));

    // WHEN a refund is recorded THEN it is recorded once, on the third transaction
    let rec = created(&l, new_refund("R1", 100, 100)).await;
    assert_eq!(faults.requests(Op::TransactWriteItems), 3);
    assert_eq!(stored(&l, "R1").await, Some(rec));
    assert_reserved_once(&l, 100, &["R1"]).await;
}

#[tokio::test]
async fn given_throttled_cancellations_when_a_refund_fails_then_it_is_released_exactly_once() {
    // GIVEN a leased refund holding the whole order, and the next 3 transactions throttled
    // (ProvisionedThroughputExceeded, the provisioned-capacity flavour)
    let faults = Faults::seeded(3);
    let l = ledger(&faults).await;
    created(&l, new_refund("R1", 100, 100)).await;
    let a = leased(&l, "R1").await;
    faults.add(FaultRule::next(
        3,
        Op::TransactWriteItems,
        Fault::TransactionCanceled(CancelCode::ProvisionedThroughputExceeded),
    ));

    // WHEN it fails for good
    let out = l.transition(fail(&a)).await.expect("transition");

    // THEN it is FAILED one version later, its lease attempt counted once, and the order gives
    // back its amount and slot once (not 4 times, not into the negative)
    let TransitionOutcome::Applied(failed) = out else {
        panic!("expected Applied, got {out:?}");
    };
    assert_eq!(failed.status, RefundStatus::Failed);
    assert_eq!((failed.version, failed.attempts), (a.version + 1, 1));
    assert_eq!(stored(&l, "R1").await, Some(failed));
    let b = book(&l).await.expect("order book exists");
    assert_eq!((b.reserved, b.count), (fen(0), 0));
    assert_eq!(faults.requests(Op::TransactWriteItems), 1 + 4);
}

#[tokio::test]
async fn given_throttled_cancellations_when_recording_an_external_refund_then_it_is_recorded_once()
{
    // GIVEN the next 2 transactions throttled
    let faults = Faults::seeded(4);
    let l = ledger(&faults).await;
    faults.add(FaultRule::next(2, Op::TransactWriteItems, THROTTLED));

    // WHEN WeChat reports a refund we never made THEN it is recorded and reserved once
    let ext = ExternalRefund {
        out_refund_no: no("WX-OUTSIDE-1"),
        order: order("ORDER-1"),
        out_trade_no: None,
        transaction_id: None,
        refund_id: Some(RefundId::new("50000000099").expect("refund id")),
        total_fee: fen(100),
        refund_fee: fen(30),
        status: RefundStatus::Processing,
        refund_account: None,
        refund_recv_account: None,
        success_time: None,
        now: T0,
        next_check_at: None,
        accepted_at: None,
        events: Vec::new(),
    };
    let rec = match l.record_external(ext).await {
        Ok(ExternalOutcome::Created(r)) => r,
        other => panic!("expected Created, got {other:?}"),
    };
    assert_eq!(stored(&l, "WX-OUTSIDE-1").await, Some(rec));
    assert_reserved_once(&l, 30, &["WX-OUTSIDE-1"]).await;
}

#[tokio::test]
async fn given_dynamodb_keeps_throttling_when_recording_then_unavailable_and_nothing_is_written() {
    // GIVEN every transaction throttled
    let faults = Faults::seeded(5);
    let l = ledger(&faults).await;
    faults.add(FaultRule::always(Op::TransactWriteItems, THROTTLED));

    // WHEN a refund is recorded
    let err = l.record(new_refund("R1", 100, 40)).await;

    // THEN the ledger gave up after its attempts with Unavailable naming the throttling
    match err {
        Err(LedgerError::Unavailable(m)) => assert!(m.contains("throttled"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(faults.requests(Op::TransactWriteItems), TXN_ATTEMPTS);
    // AND neither the refund nor the order exists
    faults.clear();
    assert_eq!(stored(&l, "R1").await, None);
    assert_eq!(book(&l).await, None);
}

#[tokio::test]
async fn given_dynamodb_keeps_throttling_a_release_then_unavailable_and_nothing_moves() {
    // GIVEN a leased refund and every transaction throttled
    let faults = Faults::seeded(6);
    let l = ledger(&faults).await;
    created(&l, new_refund("R1", 100, 100)).await;
    let a = leased(&l, "R1").await;
    let rule = FaultRule::always(Op::TransactWriteItems, THROTTLED);
    faults.add(rule);

    // WHEN it fails for good THEN Unavailable
    let err = l.transition(fail(&a)).await;
    assert!(
        matches!(err, Err(LedgerError::Unavailable(_))),
        "expected Unavailable, got {err:?}"
    );

    // AND the refund and its order are exactly as before
    faults.clear();
    assert_eq!(stored(&l, "R1").await, Some(a.clone()));
    assert_reserved_once(&l, 100, &["R1"]).await;
    // AND the same transition goes through once DynamoDB recovers (its fence still holds)
    let out = l.transition(fail(&a)).await.expect("transition");
    assert!(matches!(out, TransitionOutcome::Applied(_)), "{out:?}");
    let b = book(&l).await.expect("order book exists");
    assert_eq!((b.reserved, b.count), (fen(0), 0));
}

#[tokio::test]
async fn given_endless_transaction_conflicts_when_recording_then_contention_and_nothing_is_written()
{
    // GIVEN every transaction in conflict with another
    let faults = Faults::seeded(7);
    let l = ledger(&faults).await;
    faults.add(FaultRule::always(Op::TransactWriteItems, CONFLICT));

    // WHEN a refund is recorded THEN Contention, after the same bounded attempts
    let err = l.record(new_refund("R1", 100, 40)).await;
    assert!(
        matches!(err, Err(LedgerError::Contention(_))),
        "expected Contention, got {err:?}"
    );
    assert_eq!(faults.requests(Op::TransactWriteItems), TXN_ATTEMPTS);
    faults.clear();
    assert_eq!(stored(&l, "R1").await, None);
    assert_eq!(book(&l).await, None);
}

#[tokio::test]
async fn given_seeded_random_cancellations_many_records_each_reserve_exactly_once() {
    // GIVEN 40% of transactions cancelled, throttled or in conflict, from a fixed seed
    let faults = Faults::seeded(42);
    let l = ledger(&faults).await;
    faults
        .add(FaultRule::per_mille(250, Op::TransactWriteItems, THROTTLED))
        .add(FaultRule::per_mille(200, Op::TransactWriteItems, CONFLICT));

    // WHEN 12 refunds of 10 are recorded one after the other
    let nos: Vec<String> = (0..12).map(|i| format!("R{i:02}")).collect();
    for n in &nos {
        created(&l, new_refund(n, 1000, 10)).await;
    }

    // THEN faults were met, and the order reserves each refund once
    assert!(!faults.injected().is_empty());
    let names: Vec<&str> = nos.iter().map(String::as_str).collect();
    assert_reserved_once(&l, 120, &names).await;
}

// ---- failures the SDK retries itself -----------------------------------------------------------

#[tokio::test]
async fn given_throughput_and_throttling_exceptions_the_sdk_retries_and_each_write_applies_once() {
    // GIVEN the next 2 transactions refused with ProvisionedThroughputExceededException and the
    // next 2 updates with ThrottlingException (within the SDK's 3 attempts)
    let faults = Faults::seeded(8);
    let l = ledger(&faults).await;
    faults
        .add(FaultRule::next(
            2,
            Op::TransactWriteItems,
            Fault::ProvisionedThroughputExceeded,
        ))
        .add(FaultRule::next(2, Op::UpdateItem, Fault::Throttling));
    let before = l.write_stats();

    // WHEN a refund is recorded and leased THEN both apply once
    let rec = created(&l, new_refund("R1", 100, 40)).await;
    let a = leased(&l, "R1").await;
    assert_eq!((a.version, a.attempts), (rec.version + 1, 1));
    assert_eq!(stored(&l, "R1").await, Some(a));
    assert_reserved_once(&l, 40, &["R1"]).await;
    // AND the retries were the SDK's (one request each for the ledger, three on the wire)
    assert_eq!(l.write_stats().requests - before.requests, 2);
    assert_eq!(faults.requests(Op::TransactWriteItems), 3);
    assert_eq!(faults.requests(Op::UpdateItem), 3);
}

#[tokio::test]
async fn given_internal_server_errors_a_transient_one_is_retried_and_a_lasting_one_is_unavailable()
{
    // GIVEN one HTTP 500 on the next transaction
    let faults = Faults::seeded(9);
    let l = ledger(&faults).await;
    faults.add(FaultRule::next(
        1,
        Op::TransactWriteItems,
        Fault::InternalServerError,
    ));
    // WHEN a refund is recorded THEN it is, once
    created(&l, new_refund("R1", 100, 40)).await;
    assert_reserved_once(&l, 40, &["R1"]).await;

    // GIVEN every transaction answered 500 WHEN another is recorded THEN Unavailable, unwritten
    faults.add(FaultRule::always(
        Op::TransactWriteItems,
        Fault::InternalServerError,
    ));
    let err = l.record(new_refund("R2", 100, 40)).await;
    assert!(
        matches!(err, Err(LedgerError::Unavailable(_))),
        "expected Unavailable, got {err:?}"
    );
    faults.clear();
    assert_eq!(stored(&l, "R2").await, None);
    assert_reserved_once(&l, 40, &["R1"]).await;
}

// ---- written, but the answer did not arrive ----------------------------------------------------

#[tokio::test]
async fn given_a_lost_reply_when_recording_then_the_sdk_retry_is_answered_by_its_token_once() {
    // GIVEN the next transaction committed but its answer lost
    let faults = Faults::seeded(10);
    let l = ledger(&faults).await;
    faults.add(FaultRule::next(1, Op::TransactWriteItems, Fault::ReplyLost));

    // WHEN a refund is recorded THEN Created (not a replay of itself), reserved once: the SDK
    // resent it with the same ClientRequestToken, which DynamoDB answers without applying it again
    let rec = created(&l, new_refund("R1", 100, 40)).await;
    assert_eq!(faults.requests(Op::TransactWriteItems), 2);
    assert_eq!(stored(&l, "R1").await, Some(rec));
    assert_reserved_once(&l, 40, &["R1"]).await;
}

#[tokio::test]
async fn given_lost_replies_to_a_lease_and_a_move_then_each_is_recognised_as_applied_once() {
    // GIVEN a recorded refund, and the next two updates applied but their answers lost (an
    // UpdateItem has no idempotency token: the SDK's resend fails its condition on our own write)
    let faults = Faults::seeded(12);
    let l = ledger(&faults).await;
    let rec = created(&l, new_refund("R1", 100, 40)).await;
    faults.add(FaultRule::next(2, Op::UpdateItem, Fault::ReplyLost));

    // WHEN it is leased THEN Acquired (not Held by itself), one version on, one attempt
    let a = leased(&l, "R1").await;
    assert_eq!((a.version, a.attempts), (rec.version + 1, 1));
    // WHEN its holder moves it to PROCESSING THEN Applied (not a Conflict with itself)
    let p = moved(&l, &a, RefundStatus::Processing).await;
    assert_eq!(
        (p.status, p.version, p.lease.clone()),
        (RefundStatus::Processing, a.version + 1, None)
    );
    // THEN both updates were sent twice, applied once, and the record is the moved one
    assert_eq!(faults.injected().len(), 2);
    assert_eq!(faults.requests(Op::UpdateItem), 4);
    assert_eq!(stored(&l, "R1").await, Some(p.clone()));
    // AND another holder's move from the old version is still a Conflict
    let late = move_of(&a, RefundStatus::Processing, Changes::default());
    assert!(matches!(
        l.transition(Transition {
            now: T0.plus(Duration::from_secs(2)),
            ..late
        })
        .await
        .expect("transition"),
        TransitionOutcome::Conflict(_)
    ));
}

#[tokio::test]
async fn given_an_answer_slower_than_the_attempt_timeout_when_releasing_then_it_is_applied_once() {
    // GIVEN a client giving up on an attempt after 1 s, a leased refund, and the next
    // transaction answered after 1.5 s
    let faults = Faults::seeded(11);
    let l = faulty_dynamo_ledger("faults", &faults, Some(Duration::from_secs(1))).await;
    created(&l, new_refund("R1", 100, 100)).await;
    let a = leased(&l, "R1").await;
    faults.add(FaultRule::next(
        1,
        Op::TransactWriteItems,
        Fault::SlowAnswer(Duration::from_millis(1500)),
    ));

    // WHEN it fails for good THEN Applied, and the order released once
    let out = l.transition(fail(&a)).await.expect("transition");
    assert!(matches!(out, TransitionOutcome::Applied(_)), "{out:?}");
    // The record's, the slow one, and at least one resend by the SDK (the relay serves one
    // request at a time, so a resend can itself time out waiting behind the slow one).
    assert!(faults.requests(Op::TransactWriteItems) >= 3);
    let b = book(&l).await.expect("order book exists");
    assert_eq!((b.reserved, b.count), (fen(0), 0));
    assert_eq!(
        stored(&l, "R1").await.map(|r| (r.status, r.version)),
        Some((RefundStatus::Failed, a.version + 1))
    );
}

// ---- every fault kind at random ----------------------------------------------------------------

/// Retries `op` the way a caller does after a typed store error (the service's next attempt, the
/// poller's next pass), at most 30 times.
async fn until_answered<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    for _ in 0..30 {
        match op().await {
            Ok(v) => return v,
            Err(LedgerError::Unavailable(_) | LedgerError::Contention(_)) => continue,
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
    panic!("{what}: no answer in 30 tries");
}

/// Moves `r` to `to` under faults: applied, also when the answer to the write was lost and the
/// SDK's resend met the write itself (the adapter recognises its own write).
async fn moved(l: &DynamoLedger, r: &RefundRecord, to: RefundStatus) -> RefundRecord {
    let changes = Changes {
        refund_id: Some(RefundId::new("50000000099").expect("refund id")),
        ..Changes::default()
    };
    let t = move_of(r, to, changes);
    match until_answered("transition", || l.transition(t.clone())).await {
        TransitionOutcome::Applied(next) => next,
        other => panic!("{}: → {to:?}: {other:?}", r.out_refund_no.as_str()),
    }
}

#[tokio::test]
async fn given_seeded_random_faults_of_every_kind_a_lifecycle_of_refunds_keeps_the_books_exact() {
    for seed in [101, 202, 303] {
        // GIVEN DynamoDB answering about one request in three with one of its failures, chosen
        // at random from a fixed seed: cancelled transactions (throttled, in conflict), throughput
        // and throttling exceptions, 500s, and writes committed whose answer is lost
        let faults = Faults::seeded(seed);
        let l = ledger(&faults).await;
        faults
            .add(FaultRule::per_mille(100, Op::TransactWriteItems, THROTTLED))
            .add(FaultRule::per_mille(80, Op::TransactWriteItems, CONFLICT))
            .add(FaultRule::per_mille(
                60,
                Op::TransactWriteItems,
                Fault::ReplyLost,
            ))
            .add(FaultRule::per_mille(40, Op::UpdateItem, Fault::ReplyLost))
            .add(FaultRule::per_mille(
                40,
                Op::Any,
                Fault::ProvisionedThroughputExceeded,
            ))
            .add(FaultRule::per_mille(40, Op::Any, Fault::Throttling))
            .add(FaultRule::per_mille(
                30,
                Op::Any,
                Fault::InternalServerError,
            ));

        // WHEN 12 refunds of 50 on one order of 1000 are recorded (with a duplicate of each),
        // leased, and taken to SUCCESS, every third one FAILED instead
        let nos: Vec<String> = (0..12).map(|i| format!("R-RAND-{i:02}")).collect();
        let mut finals = Vec::new();
        for (i, n) in nos.iter().enumerate() {
            for _ in 0..2 {
                match until_answered("record", || l.record(new_refund(n, 1000, 50))).await {
                    RecordOutcome::Created(_) | RecordOutcome::Existing(_) => {}
                    other => panic!("seed {seed} {n}: record: {other:?}"),
                }
            }
            let key = no(n);
            let leased = match until_answered("lease", || {
                l.acquire_lease(&key, "lambda-a", LEASE, T0)
            })
            .await
            {
                LeaseOutcome::Acquired(r) => r,
                other => panic!("seed {seed} {n}: lease: {other:?}"),
            };
            let end = if i % 3 == 2 {
                moved(&l, &leased, RefundStatus::Failed).await
            } else {
                let processing = moved(&l, &leased, RefundStatus::Processing).await;
                moved(&l, &processing, RefundStatus::Success).await
            };
            finals.push((n.clone(), end.status));
        }

        // THEN faults of several kinds were met
        let kinds: std::collections::BTreeSet<String> = faults
            .injected()
            .iter()
            .map(|i| format!("{:?}", i.fault))
            .collect();
        assert!(kinds.len() >= 4, "seed {seed}: only {kinds:?}");
        faults.clear();
        // AND every refund is final as intended, stored as the lifecycle left it
        for (n, status) in &finals {
            let r = stored(&l, n).await.expect("stored");
            assert_eq!(r.status, *status, "seed {seed} {n}");
        }
        // AND the order reserves each successful refund exactly once and none of the failed ones
        let ok: Vec<&str> = finals
            .iter()
            .filter(|(_, s)| *s == RefundStatus::Success)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(ok.len(), 8);
        let b = book(&l).await.expect("order book exists");
        assert_eq!((b.reserved, b.count), (fen(50 * 8), 8), "seed {seed}");
        // (`Ledger::order` lists every refund of the order, released ones included, once each)
        let mut listed: Vec<&str> = b.refunds.iter().map(OutRefundNo::as_str).collect();
        listed.sort_unstable();
        assert_eq!(listed, nos.iter().map(String::as_str).collect::<Vec<_>>());
        println!(
            "seed {seed}: {} faults injected ({kinds:?})",
            faults.injected().len()
        );
    }
}
