//! The ledger contract: one suite, run against both adapters (the embedded redb ledger on a temp
//! file, and the DynamoDB ledger on a fresh table of a moto server per test). Any behaviour the
//! service relies on is pinned here, races included.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, RefundId, TransactionId};
use wxrefund::correction::{Attention, AttentionReason, Correction, CorrectionKind, FactSource};
use wxrefund::ledger::dynamo::DynamoLedger;
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::ledger::{
    Changes, CorrectionWrite, Cursor, ExternalOutcome, ExternalRefund, FlagWrite, LeaseOutcome,
    Ledger, NewRefund, Patch, RecordOutcome, Transition, TransitionOutcome, admin,
};
use wxrefund::reconcile::{
    Discrepancy, DiscrepancyKind, Reconciliation, ReportStatus, Resolution, Side, Totals,
};
use wxrefund::state::{LastError, MAX_REFUNDS_PER_ORDER, RefundRecord, RefundStatus, UnixMillis};
use wxrefund::testing::Faults;

/// A fixed "now" so schedules are deterministic.
const T0: UnixMillis = UnixMillis(1_800_000_000_000);
const LEASE: Duration = Duration::from_secs(30);
/// How many times each race is run (fresh order each time); under faults, per seed.
const RACE_ITERATIONS: usize = 5;
const RACE_ITERATIONS_UNDER_FAULTS: usize = 2;

struct Fixture {
    ledger: Arc<dyn Ledger>,
    /// Set for the DynamoDB adapter, to read its write counters.
    dynamo: Option<DynamoLedger>,
    /// Set when the DynamoDB adapter talks through the fault-injecting relay: what it injects.
    /// Its write counters then also count the retries, so the write-count checks are skipped.
    faults: Option<Faults>,
    /// Set for the embedded adapter, to read its commit counter.
    embedded: Option<EmbeddedLedger>,
    _dir: Option<TempDir>,
}

impl Fixture {
    /// Another empty ledger of the same kind (moto's transactions copy the whole table, so the
    /// race iterations stay fast on small tables).
    async fn fresh(&self) -> Fixture {
        match (&self.faults, &self.dynamo) {
            (Some(faults), _) => faulty_dynamo_with(faults.clone()).await,
            (None, Some(_)) => dynamo().await,
            (None, None) => embedded().await,
        }
    }

    fn race_iterations(&self) -> usize {
        if self.faults.is_some() {
            RACE_ITERATIONS_UNDER_FAULTS
        } else {
            RACE_ITERATIONS
        }
    }

    /// Whether the write counters count exactly this test's logical writes.
    fn counts_writes(&self) -> bool {
        self.faults.is_none()
    }
}

async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = EmbeddedLedger::open(dir.path().join("ledger.redb")).expect("open redb ledger");
    Fixture {
        ledger: Arc::new(ledger.clone()),
        dynamo: None,
        faults: None,
        embedded: Some(ledger),
        _dir: Some(dir),
    }
}

async fn dynamo() -> Fixture {
    let ledger = wxrefund::testing::fresh_dynamo_ledger("ledger").await;
    Fixture {
        ledger: Arc::new(ledger.clone()),
        dynamo: Some(ledger),
        faults: None,
        embedded: None,
        _dir: None,
    }
}

async fn faulty_dynamo_with(faults: Faults) -> Fixture {
    let ledger = wxrefund::testing::random_faulty_dynamo_ledger("ledger-faults", &faults).await;
    Fixture {
        ledger: Arc::new(ledger.clone()),
        dynamo: Some(ledger),
        faults: Some(faults),
        embedded: None,
        _dir: None,
    }
}

/// The seeds the suite under faults runs each test with: `LEDGER_FAULT_SEEDS` (comma-separated;
/// the long mode gives many), else one. Each test mixes its name in, so every test of a run meets
/// its own faults (29 seeds in all).
fn fault_seeds(test: &str) -> Vec<u64> {
    let base: Vec<u64> = std::env::var("LEDGER_FAULT_SEEDS")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .expect("LEDGER_FAULT_SEEDS: comma-separated integers")
                })
                .collect()
        })
        .unwrap_or_else(|| vec![1]);
    // FNV-1a of the test's name.
    let name = test.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    base.into_iter().map(|s| s ^ name).collect()
}

/// What one test under faults met, one line per seed (summed in docs/TESTING.md).
fn report_faults(test: &str, seed: u64, faults: &Faults) {
    eprintln!(
        "faults injected: test={test} seed={seed} {}",
        wxrefund::testing::faults_summary(faults)
    );
}

/// Runs every listed contract test once per adapter.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded_ledger {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = super::embedded().await;
                    super::$name(&f).await;
                }
            )*
        }
        mod dynamo_ledger {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = super::dynamo().await;
                    super::$name(&f).await;
                }
            )*
        }
        /// The same contract with DynamoDB failing at random under the adapter (seeded).
        mod dynamo_ledger_under_faults {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    for seed in super::fault_seeds(stringify!($name)) {
                        let faults = wxrefund::testing::random_dynamo_faults(seed);
                        let f = super::faulty_dynamo_with(faults.clone()).await;
                        super::$name(&f).await;
                        super::report_faults(stringify!($name), seed, &faults);
                    }
                }
            )*
        }
    };
}

contract!(
    record_creates_then_replays_then_rejects_key_reuse,
    record_refuses_amounts_over_the_total,
    fifty_first_refund_is_refused,
    total_fee_mismatch_is_refused,
    a_wrong_first_total_does_not_lock_an_order_whose_refunds_all_failed,
    lease_is_acquired_held_and_taken_over_after_expiry,
    stale_version_and_stale_lease_owner_cannot_write,
    final_failure_releases_the_reservation_for_a_new_refund,
    refundclose_releases_the_amount_but_keeps_the_slot,
    change_holds_the_reservation,
    happy_path_lifecycle_and_its_writes,
    due_pages_cover_every_due_refund_exactly_once,
    external_refund_is_recorded_once_and_reserved_unconditionally,
    concurrent_records_of_one_number_create_exactly_once,
    concurrent_refunds_of_one_order_never_exceed_total_or_count,
    admin_views_list_order_refunds_and_pending_ages,
    a_failed_refund_wechat_paid_is_corrected_with_its_history_and_reserved_as_a_fact,
    a_correction_is_fenced_and_only_corrects_a_final_status,
    due_serves_the_most_overdue_first_across_all_shards,
    an_external_refund_brings_the_orders_true_total,
    refunds_that_need_a_person_are_listed_until_their_flag_clears,
    an_order_with_thousands_of_failed_attempts_still_takes_refunds,
    refunds_are_listed_by_the_beijing_day_wechat_accepted_them,
    a_flag_for_a_person_is_fenced_kept_and_listed,
    reconciliation_reports_are_stored_by_bill_date,
    a_refund_recorded_with_its_lease_takes_three_writes_to_succeed,
    events_are_written_with_their_fact_and_due_until_delivered,
    a_delivery_mark_never_fences_out_a_fact,
    corrections_flags_and_external_refunds_keep_their_events,
);

// ---- helpers -----------------------------------------------------------------------------------

fn no(s: &str) -> OutRefundNo {
    OutRefundNo::new(s).expect("valid out_refund_no")
}

fn order(s: &str) -> OrderRef {
    OrderRef::OutTradeNo(OutTradeNo::new(s).expect("valid out_trade_no"))
}

fn fen(n: u64) -> Fen {
    Fen::new(n).expect("valid amount")
}

fn new_refund(n: &str, o: &str, total: u64, fee: u64, hash: &str) -> NewRefund {
    NewRefund {
        out_refund_no: no(n),
        order: order(o),
        total_fee: fen(total),
        refund_fee: fen(fee),
        refund_desc: Some("商品退款".into()),
        refund_account: None,
        request_hash: hash.into(),
        now: T0,
        next_check_at: T0.plus(Duration::from_secs(60)),
        metadata: Default::default(),
        lease: None,
    }
}

async fn created(l: &dyn Ledger, n: NewRefund) -> RefundRecord {
    match l.record(n).await.expect("record") {
        RecordOutcome::Created(r) => r,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn leased(l: &dyn Ledger, n: &str, owner: &str, now: UnixMillis) -> RefundRecord {
    match l
        .acquire_lease(&no(n), owner, LEASE, now)
        .await
        .expect("lease")
    {
        LeaseOutcome::Acquired(r) => r,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn move_to(r: &RefundRecord, to: RefundStatus, now: UnixMillis) -> Transition {
    Transition {
        out_refund_no: r.out_refund_no.clone(),
        expected_status: r.status,
        expected_version: r.version,
        lease_owner: r.lease.as_ref().map(|l| l.owner.clone()),
        to,
        changes: Changes::default(),
        now,
    }
}

async fn applied(l: &dyn Ledger, t: Transition) -> RefundRecord {
    match l.transition(t).await.expect("transition") {
        TransitionOutcome::Applied(r) => r,
        other => panic!("expected Applied, got {other:?}"),
    }
}

async fn book(l: &dyn Ledger, o: &str) -> wxrefund::state::OrderBook {
    l.order(&order(o))
        .await
        .expect("order")
        .expect("order book exists")
}

// ---- the contract ------------------------------------------------------------------------------

async fn record_creates_then_replays_then_rejects_key_reuse(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN nothing recorded WHEN a refund is recorded THEN it is created at version 1, RECORDED
    let rec = created(l, new_refund("R1", "ORDER-1", 100, 30, "h1")).await;
    assert_eq!(rec.status, RefundStatus::Recorded);
    assert_eq!(rec.version, 1);
    assert_eq!(rec.attempts, 0);
    assert_eq!(rec.out_trade_no, Some(OutTradeNo::new("ORDER-1").unwrap()));
    assert!(!rec.external);
    assert_eq!(l.get(&no("R1")).await.unwrap(), Some(rec.clone()));
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.total_fee, b.reserved, b.count), (fen(100), fen(30), 1));
    assert_eq!(b.refunds, vec![no("R1")]);

    // WHEN the same request is replayed THEN the stored record comes back and nothing moves
    match l
        .record(new_refund("R1", "ORDER-1", 100, 30, "h1"))
        .await
        .unwrap()
    {
        RecordOutcome::Existing(r) => assert_eq!(r, rec),
        other => panic!("expected Existing, got {other:?}"),
    }
    // WHEN the number is reused for another request THEN KeyReused, with the stored record
    match l
        .record(new_refund("R1", "ORDER-1", 100, 31, "h2"))
        .await
        .unwrap()
    {
        RecordOutcome::KeyReused(r) => assert_eq!(r, rec),
        other => panic!("expected KeyReused, got {other:?}"),
    }
    // THEN the book did not move
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.reserved, b.count), (fen(30), 1));
    // AND unknown refunds and orders are absent
    assert_eq!(l.get(&no("NOPE")).await.unwrap(), None);
    assert_eq!(l.order(&order("ORDER-NONE")).await.unwrap(), None);
    assert!(
        l.list_by_order(&order("ORDER-NONE"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn record_refuses_amounts_over_the_total(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN a first refund larger than the order WHEN recorded THEN AmountExceeded, nothing written
    match l
        .record(new_refund("R0", "ORDER-1", 100, 101, "h"))
        .await
        .unwrap()
    {
        RecordOutcome::AmountExceeded { book } => {
            assert_eq!((book.total_fee, book.reserved), (fen(100), fen(0)));
        }
        other => panic!("expected AmountExceeded, got {other:?}"),
    }
    assert_eq!(l.get(&no("R0")).await.unwrap(), None);
    // GIVEN 60 + 40 reserved of 100
    created(l, new_refund("R1", "ORDER-1", 100, 60, "h")).await;
    created(l, new_refund("R2", "ORDER-1", 100, 40, "h")).await;
    // WHEN one more fen is asked THEN AmountExceeded with the book, nothing recorded
    match l
        .record(new_refund("R3", "ORDER-1", 100, 1, "h"))
        .await
        .unwrap()
    {
        RecordOutcome::AmountExceeded { book } => {
            assert_eq!((book.reserved, book.count), (fen(100), 2));
        }
        other => panic!("expected AmountExceeded, got {other:?}"),
    }
    assert_eq!(l.get(&no("R3")).await.unwrap(), None);
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.reserved, b.count, b.refunds.len()), (fen(100), 2, 2));
}

async fn fifty_first_refund_is_refused(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN 50 refunds of 1 fen on an order of 1000
    for i in 0..MAX_REFUNDS_PER_ORDER {
        created(l, new_refund(&format!("R{i}"), "ORDER-1", 1000, 1, "h")).await;
    }
    // WHEN the 51st is recorded THEN TooManyRefunds, although the amount would fit
    match l
        .record(new_refund("R50", "ORDER-1", 1000, 1, "h"))
        .await
        .unwrap()
    {
        RecordOutcome::TooManyRefunds { book } => {
            assert_eq!(book.count, MAX_REFUNDS_PER_ORDER);
            assert_eq!(book.reserved, fen(50));
        }
        other => panic!("expected TooManyRefunds, got {other:?}"),
    }
    assert_eq!(l.get(&no("R50")).await.unwrap(), None);
    assert_eq!(l.list_by_order(&order("ORDER-1")).await.unwrap().len(), 50);
}

async fn total_fee_mismatch_is_refused(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN an order first seen with total 100
    created(l, new_refund("R1", "ORDER-1", 100, 10, "h")).await;
    // WHEN a refund claims total 200 THEN TotalFeeMismatch with the stored book
    match l
        .record(new_refund("R2", "ORDER-1", 200, 10, "h"))
        .await
        .unwrap()
    {
        RecordOutcome::TotalFeeMismatch { book } => {
            assert_eq!((book.total_fee, book.reserved), (fen(100), fen(10)));
        }
        other => panic!("expected TotalFeeMismatch, got {other:?}"),
    }
    assert_eq!(l.get(&no("R2")).await.unwrap(), None);
}

async fn a_wrong_first_total_does_not_lock_an_order_whose_refunds_all_failed(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN an order first seen with a wrong total (90), whose refund WeChat refused for good
    created(l, new_refund("R1", "ORDER-1", 90, 10, "h")).await;
    let a = leased(l, "R1", "A", T0).await;
    applied(l, move_to(&a, RefundStatus::Failed, T0)).await;
    // WHEN a refund arrives with the right total (100)
    let rec = created(l, new_refund("R2", "ORDER-1", 100, 95, "h")).await;
    // THEN it is accepted and the order now carries the right total
    assert_eq!(rec.total_fee, fen(100));
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.total_fee, b.reserved, b.count), (fen(100), fen(95), 1));
    // AND once the order holds a refund, its total is fixed again
    assert!(matches!(
        l.record(new_refund("R3", "ORDER-1", 90, 1, "h"))
            .await
            .unwrap(),
        RecordOutcome::TotalFeeMismatch { .. }
    ));
}

async fn lease_is_acquired_held_and_taken_over_after_expiry(f: &Fixture) {
    let l = f.ledger.as_ref();
    created(l, new_refund("R1", "ORDER-1", 100, 10, "h")).await;
    // GIVEN a RECORDED refund WHEN A leases it THEN SUBMITTING, attempt 1, version 2
    let a = leased(l, "R1", "A", T0).await;
    assert_eq!(a.status, RefundStatus::Submitting);
    assert_eq!((a.attempts, a.version), (1, 2));
    let lease = a.lease.clone().unwrap();
    assert_eq!(
        (lease.owner.as_str(), lease.expires_at),
        ("A", T0.plus(LEASE))
    );
    // WHEN B tries before expiry THEN Held, showing A's lease
    let before = T0.plus(LEASE - Duration::from_millis(1));
    match l
        .acquire_lease(&no("R1"), "B", LEASE, before)
        .await
        .unwrap()
    {
        LeaseOutcome::Held(r) => assert_eq!(r, a),
        other => panic!("expected Held, got {other:?}"),
    }
    // WHEN B tries at expiry THEN B takes over: attempt 2, version 3
    let b = leased(l, "R1", "B", T0.plus(LEASE)).await;
    assert_eq!(b.lease.as_ref().unwrap().owner, "B");
    assert_eq!((b.attempts, b.version), (2, 3));
    // WHEN B's attempt is accepted THEN PROCESSING is not leasable
    let p = applied(l, move_to(&b, RefundStatus::Processing, T0.plus(LEASE))).await;
    assert_eq!(p.lease, None);
    match l.acquire_lease(&no("R1"), "C", LEASE, T0).await.unwrap() {
        LeaseOutcome::NotLeasable(r) => assert_eq!(r, p),
        other => panic!("expected NotLeasable, got {other:?}"),
    }
    // AND an unknown number is NotFound
    assert_eq!(
        l.acquire_lease(&no("NOPE"), "C", LEASE, T0).await.unwrap(),
        LeaseOutcome::NotFound
    );
}

async fn stale_version_and_stale_lease_owner_cannot_write(f: &Fixture) {
    let l = f.ledger.as_ref();
    created(l, new_refund("R1", "ORDER-1", 100, 10, "h")).await;
    let a = leased(l, "R1", "A", T0).await;
    // GIVEN A's lease expired and B took over
    let later = T0.plus(LEASE);
    let b = leased(l, "R1", "B", later).await;
    // WHEN A (stale version, stale owner) reports success THEN Conflict with B's record
    match l
        .transition(move_to(&a, RefundStatus::Success, later))
        .await
        .unwrap()
    {
        TransitionOutcome::Conflict(r) => assert_eq!(r, b),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // WHEN someone has B's version but not B's lease THEN Conflict too (owner fencing)
    let mut wrong_owner = move_to(&b, RefundStatus::Success, later);
    wrong_owner.lease_owner = Some("A".into());
    assert!(matches!(
        l.transition(wrong_owner).await.unwrap(),
        TransitionOutcome::Conflict(_)
    ));
    // WHEN the expected status is wrong THEN Conflict
    let mut wrong_status = move_to(&b, RefundStatus::Success, later);
    wrong_status.expected_status = RefundStatus::Unknown;
    wrong_status.lease_owner = None;
    assert!(matches!(
        l.transition(wrong_status).await.unwrap(),
        TransitionOutcome::Conflict(_)
    ));
    // WHEN a move is outside the table, into SUBMITTING, or anonymous out of SUBMITTING
    // THEN Illegal, and nothing was written
    let mut anonymous = move_to(&b, RefundStatus::Success, later);
    anonymous.lease_owner = None;
    for t in [
        move_to(&b, RefundStatus::Recorded, later),
        move_to(&b, RefundStatus::Submitting, later),
        anonymous,
    ] {
        assert!(matches!(
            l.transition(t).await.unwrap(),
            TransitionOutcome::Illegal { .. }
        ));
    }
    assert_eq!(l.get(&no("R1")).await.unwrap(), Some(b.clone()));
    // WHEN the refund does not exist THEN NotFound
    let mut ghost = move_to(&b, RefundStatus::Processing, later);
    ghost.out_refund_no = no("GHOST");
    assert_eq!(
        l.transition(ghost).await.unwrap(),
        TransitionOutcome::NotFound
    );
    // WHEN B writes with its version and lease THEN Applied, lease cleared, version bumped
    let done = applied(l, move_to(&b, RefundStatus::Processing, later)).await;
    assert_eq!((done.version, done.lease.clone()), (b.version + 1, None));
    // AND replaying B's (now stale) write is a Conflict, not a second change
    assert!(matches!(
        l.transition(move_to(&b, RefundStatus::Processing, later))
            .await
            .unwrap(),
        TransitionOutcome::Conflict(_)
    ));
}

async fn final_failure_releases_the_reservation_for_a_new_refund(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN the whole order reserved by one refund
    created(l, new_refund("R1", "ORDER-1", 100, 100, "h")).await;
    assert!(matches!(
        l.record(new_refund("R2", "ORDER-1", 100, 100, "h"))
            .await
            .unwrap(),
        RecordOutcome::AmountExceeded { .. }
    ));
    // WHEN WeChat refuses it for good (PARAM_ERROR) THEN FAILED, out of the pending index
    let a = leased(l, "R1", "A", T0).await;
    let mut t = move_to(&a, RefundStatus::Failed, T0);
    t.changes.last_error = Patch::Set(LastError {
        code: "PARAM_ERROR".into(),
        message: "bad".into(),
    });
    let failed = applied(l, t).await;
    assert_eq!(failed.status, RefundStatus::Failed);
    assert_eq!(failed.next_check_at, None);
    assert_eq!(failed.last_error.as_ref().unwrap().code, "PARAM_ERROR");
    // THEN its amount and its slot are released, and it stays listed
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.reserved, b.count), (fen(0), 0));
    assert_eq!(b.refunds, vec![no("R1")]);
    // AND a new refund of that amount is accepted
    created(l, new_refund("R2", "ORDER-1", 100, 100, "h")).await;
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.reserved, b.count, b.refunds.len()), (fen(100), 1, 2));
    // AND nothing is ever deleted: the failed record is still readable
    assert_eq!(l.get(&no("R1")).await.unwrap(), Some(failed));
}

async fn refundclose_releases_the_amount_but_keeps_the_slot(f: &Fixture) {
    let l = f.ledger.as_ref();
    created(l, new_refund("R1", "ORDER-1", 100, 70, "h")).await;
    let a = leased(l, "R1", "A", T0).await;
    let p = applied(l, move_to(&a, RefundStatus::Processing, T0)).await;
    // WHEN WeChat closes the refund THEN the amount returns; the slot stays taken (WeChat counts it)
    applied(l, move_to(&p, RefundStatus::RefundClose, T0)).await;
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.reserved, b.count), (fen(0), 1));
}

async fn change_holds_the_reservation(f: &Fixture) {
    let l = f.ledger.as_ref();
    created(l, new_refund("R1", "ORDER-1", 100, 70, "h")).await;
    let a = leased(l, "R1", "A", T0).await;
    let p = applied(l, move_to(&a, RefundStatus::Processing, T0)).await;
    // WHEN the refund ends as CHANGE THEN it is final (not pending) and keeps its amount
    let c = applied(l, move_to(&p, RefundStatus::Change, T0)).await;
    assert!(c.status.is_final() && c.next_check_at.is_none());
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.reserved, b.count), (fen(70), 1));
    assert!(matches!(
        l.record(new_refund("R2", "ORDER-1", 100, 31, "h"))
            .await
            .unwrap(),
        RecordOutcome::AmountExceeded { .. }
    ));
    let far = T0.plus(Duration::from_secs(86_400));
    assert!(l.due(far, None, 10).await.unwrap().items.is_empty());
    // AND the machine cannot move it any more
    assert!(matches!(
        l.transition(move_to(&c, RefundStatus::Success, T0))
            .await
            .unwrap(),
        TransitionOutcome::Illegal { .. }
    ));
}

async fn happy_path_lifecycle_and_its_writes(f: &Fixture) {
    let l = f.ledger.as_ref();
    let before = f.dynamo.as_ref().map(DynamoLedger::write_stats);
    // GIVEN a recorded refund WHEN leased, accepted (PROCESSING) and confirmed (SUCCESS)
    created(l, new_refund("R1", "ORDER-1", 100, 40, "h")).await;
    let a = leased(l, "R1", "A", T0).await;
    let mut t = move_to(&a, RefundStatus::Processing, T0);
    t.changes.refund_id = Some(RefundId::new("50000000012026").unwrap());
    t.changes.transaction_id = Some(TransactionId::new("4200000000202601010001").unwrap());
    t.changes.next_check_at = Some(T0.plus(Duration::from_secs(120)));
    let p = applied(l, t).await;
    assert_eq!(p.next_check_at, Some(T0.plus(Duration::from_secs(120))));
    let mut t = move_to(&p, RefundStatus::Success, T0.plus(Duration::from_secs(120)));
    t.changes.success_time = Some("2027-01-15 08:00:00".into());
    t.changes.refund_recv_account = Some("支付用户零钱".into());
    let s = applied(l, t).await;
    // THEN the record carries what WeChat said, final, at version 4, and the amount stays reserved
    assert_eq!(s.status, RefundStatus::Success);
    assert_eq!(s.version, 4);
    assert_eq!(s.refund_id, Some(RefundId::new("50000000012026").unwrap()));
    assert_eq!(s.success_time.as_deref(), Some("2027-01-15 08:00:00"));
    assert_eq!((s.lease.clone(), s.next_check_at), (None, None));
    assert_eq!(l.get(&no("R1")).await.unwrap(), Some(s.clone()));
    assert_eq!(book(l, "ORDER-1").await.reserved, fen(40));
    assert_eq!(l.list_by_order(&order("ORDER-1")).await.unwrap(), vec![s]);
    // AND on DynamoDB the lifecycle took 4 write requests (5 item writes)
    if let (Some(d), Some(before), true) = (&f.dynamo, before, f.counts_writes()) {
        let after = d.write_stats();
        let (requests, items) = (after.requests - before.requests, after.items - before.items);
        println!("happy path on DynamoDB: {requests} write requests, {items} item writes");
        assert_eq!((requests, items), (4, 5));
    }
}

async fn due_pages_cover_every_due_refund_exactly_once(f: &Fixture) {
    let l = f.ledger.as_ref();
    let now = T0.plus(Duration::from_secs(3600));
    let mut want = HashSet::new();
    // GIVEN 37 refunds due (at various times up to now, one exactly at now) across several orders
    for i in 0..37u64 {
        let mut n = new_refund(
            &format!("DUE{i:02}"),
            &format!("ORDER-{}", i % 7),
            10_000,
            1,
            "h",
        );
        n.next_check_at = UnixMillis(now.get() - i * 1000);
        created(l, n).await;
        want.insert(no(&format!("DUE{i:02}")));
    }
    // AND 6 not due yet, 2 final, 1 SUBMITTING under a live lease, 1 with an expired lease (due)
    for i in 0..6u64 {
        let mut n = new_refund(&format!("LATER{i}"), "ORDER-X", 10_000, 1, "h");
        n.next_check_at = now.plus(Duration::from_secs(1 + i));
        created(l, n).await;
    }
    for i in 0..2 {
        created(
            l,
            new_refund(&format!("DONE{i}"), "ORDER-X", 10_000, 1, "h"),
        )
        .await;
        let a = leased(l, &format!("DONE{i}"), "A", T0).await;
        applied(l, move_to(&a, RefundStatus::Success, T0)).await;
    }
    created(l, new_refund("LIVE", "ORDER-X", 10_000, 1, "h")).await;
    leased(l, "LIVE", "A", now).await;
    created(l, new_refund("STALE", "ORDER-X", 10_000, 1, "h")).await;
    leased(l, "STALE", "A", T0).await;
    want.insert(no("STALE"));

    // WHEN paged with limit 5
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    let mut pages = 0;
    loop {
        let page = l.due(now, cursor.take(), 5).await.unwrap();
        assert!(page.items.len() <= 5, "page over the limit");
        for r in &page.items {
            assert!(r.is_due(now), "{} is not due", r.out_refund_no);
        }
        seen.extend(page.items.into_iter().map(|r| r.out_refund_no));
        pages += 1;
        assert!(pages < 50, "paging does not end");
        match page.next {
            // The cursor survives a round trip through JSON (it travels in events).
            Some(c) => {
                cursor = Some(serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap())
            }
            None => break,
        }
    }
    // THEN every due refund came exactly once, and nothing else
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a refund came twice: {seen:?}");
    assert_eq!(unique, want);
    assert!(
        pages >= 8,
        "38 items in pages of 5 need at least 8 pages, got {pages}"
    );
    // AND a cursor this adapter never made is refused, not panicked on
    assert!(l.due(now, Some(Cursor::new("garbage")), 5).await.is_err());
}

async fn external_refund_is_recorded_once_and_reserved_unconditionally(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN an order with 90 of 100 reserved by us
    created(l, new_refund("R1", "ORDER-1", 100, 90, "h")).await;
    let ext = ExternalRefund {
        out_refund_no: no("WX-OUTSIDE-1"),
        order: order("ORDER-1"),
        out_trade_no: None,
        transaction_id: Some(TransactionId::new("4200000000202601010001").unwrap()),
        refund_id: Some(RefundId::new("50000000099").unwrap()),
        total_fee: fen(100),
        refund_fee: fen(50),
        status: RefundStatus::Success,
        refund_account: None,
        refund_recv_account: Some("支付用户零钱".into()),
        success_time: Some("2027-01-15 08:00:00".into()),
        now: T0,
        next_check_at: None,
        accepted_at: None,
        events: Vec::new(),
    };
    // WHEN WeChat reports a 50-fen refund we never made THEN it is recorded, external, final
    let rec = match l.record_external(ext.clone()).await.unwrap() {
        ExternalOutcome::Created(r) => r,
        other => panic!("expected Created, got {other:?}"),
    };
    assert!(rec.external && rec.status == RefundStatus::Success);
    assert_eq!(rec.out_trade_no, Some(OutTradeNo::new("ORDER-1").unwrap()));
    // THEN its amount is reserved even past the total (it is a fact), and it takes a slot
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.reserved, b.count), (fen(140), 2));
    // WHEN reported again THEN Existing, and the book does not move
    assert_eq!(
        l.record_external(ext.clone()).await.unwrap(),
        ExternalOutcome::Existing(rec.clone())
    );
    assert_eq!(book(l, "ORDER-1").await.reserved, fen(140));
    // WHEN a merchant then asks for a refund with that number THEN KeyReused
    assert!(matches!(
        l.record(new_refund("WX-OUTSIDE-1", "ORDER-1", 100, 50, "h"))
            .await
            .unwrap(),
        RecordOutcome::KeyReused(_)
    ));
    // WHEN a PROCESSING one arrives for an order we never saw THEN the order is created and the
    // refund is pending for the poller
    let mut p = ext.clone();
    p.out_refund_no = no("WX-OUTSIDE-2");
    p.order = order("ORDER-NEW");
    p.status = RefundStatus::Processing;
    p.next_check_at = Some(T0);
    assert!(matches!(
        l.record_external(p).await.unwrap(),
        ExternalOutcome::Created(_)
    ));
    let nb = book(l, "ORDER-NEW").await;
    assert_eq!(
        (nb.total_fee, nb.reserved, nb.count),
        (fen(100), fen(50), 1)
    );
    let due = l.due(T0, None, 10).await.unwrap();
    assert!(
        due.items
            .iter()
            .any(|r| r.out_refund_no == no("WX-OUTSIDE-2"))
    );
    // WHEN the status is one WeChat never reports THEN nothing is written
    let mut bad = ext;
    bad.out_refund_no = no("WX-OUTSIDE-3");
    bad.status = RefundStatus::RetryWait;
    assert_eq!(
        l.record_external(bad).await.unwrap(),
        ExternalOutcome::InvalidStatus(RefundStatus::RetryWait)
    );
    assert_eq!(l.get(&no("WX-OUTSIDE-3")).await.unwrap(), None);
}

async fn concurrent_records_of_one_number_create_exactly_once(f: &Fixture) {
    let started = Instant::now();
    for it in 0..f.race_iterations() {
        let f = &f.fresh().await;
        // GIVEN 50 tasks recording the same number on the same order at once
        let n = format!("SAME-{it}");
        let o = format!("ORDER-SAME-{it}");
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let l = Arc::clone(&f.ledger);
                let req = new_refund(&n, &o, 100, 10, "h");
                tokio::spawn(async move { l.record(req).await })
            })
            .collect();
        let (mut created, mut existing) = (0, 0);
        for t in tasks {
            match t.await.expect("task").expect("record") {
                RecordOutcome::Created(_) => created += 1,
                RecordOutcome::Existing(_) => existing += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        // THEN exactly one created it and 49 saw it, reserved once
        assert_eq!((created, existing), (1, 49), "iteration {it}");
        let b = book(f.ledger.as_ref(), &o).await;
        assert_eq!((b.reserved, b.count), (fen(10), 1), "iteration {it}");
    }
    println!(
        "{} iterations of 50 same-number records in {:?}",
        f.race_iterations(),
        started.elapsed()
    );
}

async fn concurrent_refunds_of_one_order_never_exceed_total_or_count(f: &Fixture) {
    let started = Instant::now();
    for it in 0..f.race_iterations() {
        let f = &f.fresh().await;
        // GIVEN 50 tasks asking 30 each of an order of 1000 (1500 in all), and
        // 60 tasks asking 1 each of another order of 1000 (count-bound)
        for (label, tasks_n, fee, expected_ok) in [("AMT", 50u64, 30u64, 33u64), ("CNT", 60, 1, 50)]
        {
            let o = format!("ORDER-{label}-{it}");
            let tasks: Vec<_> = (0..tasks_n)
                .map(|i| {
                    let l = Arc::clone(&f.ledger);
                    let req = new_refund(&format!("{label}-{it}-{i}"), &o, 1000, fee, "h");
                    tokio::spawn(async move { l.record(req).await })
                })
                .collect();
            let (mut ok, mut sum) = (0u64, 0u64);
            for t in tasks {
                match t.await.expect("task").expect("record") {
                    RecordOutcome::Created(r) => {
                        ok += 1;
                        sum += r.refund_fee.get();
                    }
                    RecordOutcome::AmountExceeded { .. } | RecordOutcome::TooManyRefunds { .. } => {
                    }
                    other => panic!("unexpected outcome {other:?}"),
                }
            }
            // THEN the accepted sum fits the total, the count fits 50, and the book agrees
            assert!(sum <= 1000, "{label} iteration {it}: accepted {sum} > 1000");
            assert!(ok <= u64::from(MAX_REFUNDS_PER_ORDER));
            // Refusals are only right when the order was really full: all slots or amount used.
            assert_eq!(ok, expected_ok, "{label} iteration {it}");
            let b = book(f.ledger.as_ref(), &o).await;
            assert_eq!((b.reserved.get(), u64::from(b.count)), (sum, ok));
            assert_eq!(b.refunds.len() as u64, ok);
        }
    }
    println!(
        "{} iterations of the over-refund races in {:?}",
        f.race_iterations(),
        started.elapsed()
    );
}

async fn admin_views_list_order_refunds_and_pending_ages(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN two refunds of an order, one failed, one waiting since T0
    created(l, new_refund("R1", "ORDER-1", 100, 10, "h")).await;
    let mut n2 = new_refund("R2", "ORDER-1", 100, 20, "h");
    n2.now = T0.plus(Duration::from_secs(1));
    n2.next_check_at = T0;
    created(l, n2).await;
    let a = leased(l, "R1", "A", T0).await;
    applied(l, move_to(&a, RefundStatus::Failed, T0)).await;
    let now = T0.plus(Duration::from_secs(600));
    // WHEN the operator views the order THEN both refunds appear, oldest first
    let view = admin::order_view(l, &order("ORDER-1"), now)
        .await
        .unwrap()
        .expect("order view");
    let lines: Vec<_> = view
        .refunds
        .iter()
        .map(|r| (r.out_refund_no.as_str(), r.status))
        .collect();
    assert_eq!(
        lines,
        vec![("R1", RefundStatus::Failed), ("R2", RefundStatus::Recorded)]
    );
    assert_eq!(view.book.reserved, fen(20));
    // WHEN the operator lists pending refunds THEN R2 shows its age and how late its check is
    let pending = admin::pending(l, now, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].out_refund_no, no("R2"));
    assert_eq!(pending[0].age, Duration::from_secs(599));
    assert_eq!(pending[0].overdue, Duration::from_secs(600));
    assert!(
        admin::order_view(l, &order("ORDER-NONE"), now)
            .await
            .unwrap()
            .is_none()
    );
}

fn correction(r: &RefundRecord, to: RefundStatus, at: UnixMillis) -> CorrectionWrite {
    CorrectionWrite {
        out_refund_no: r.out_refund_no.clone(),
        expected_status: r.status,
        expected_version: r.version,
        to,
        changes: Changes {
            refund_id: Some(RefundId::new("50000000009").unwrap()),
            success_time: Some("2026-12-01 10:00:00".into()),
            last_error: Patch::Clear,
            next_check_at: Some(at),
            ..Changes::default()
        },
        source: FactSource::Notification,
        now: at,
    }
}

async fn a_failed_refund_wechat_paid_is_corrected_with_its_history_and_reserved_as_a_fact(
    f: &Fixture,
) {
    let l = f.ledger.as_ref();
    // GIVEN R1 (900 of 1000) FAILED and released, and R2 taking the same 900 since
    created(l, new_refund("R1", "ORDER-1", 1000, 900, "h")).await;
    let a = leased(l, "R1", "A", T0).await;
    let failed = applied(l, move_to(&a, RefundStatus::Failed, T0)).await;
    created(l, new_refund("R2", "ORDER-1", 1000, 900, "h")).await;
    // WHEN WeChat's signed books say R1 was paid
    let at = UnixMillis(T0.get() + 5_000);
    let fixed = match l
        .correct(correction(&failed, RefundStatus::Success, at))
        .await
        .unwrap()
    {
        TransitionOutcome::Applied(r) => r,
        other => panic!("{other:?}"),
    };
    // THEN R1 reads SUCCESS with WeChat's fields, flagged for a person, its history kept
    assert_eq!(fixed.status, RefundStatus::Success);
    assert_eq!(fixed.version, failed.version + 1);
    assert_eq!(fixed.refund_id, Some(RefundId::new("50000000009").unwrap()));
    assert_eq!(fixed.next_check_at, None);
    assert_eq!(
        fixed.attention.as_ref().map(|a| (a.reason, a.since)),
        Some((AttentionReason::Contradiction, at))
    );
    assert_eq!(
        fixed.corrections,
        vec![Correction {
            from: RefundStatus::Failed,
            to: RefundStatus::Success,
            kind: CorrectionKind::Contradiction,
            source: FactSource::Notification,
            at,
        }]
    );
    assert!(fixed.needs_person());
    assert_eq!(l.get(&no("R1")).await.unwrap(), Some(fixed));
    // AND its amount and slot are held again, past the order's total: that is what happened
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.reserved, b.count), (fen(1800), 2));
    // AND nothing more can be refunded on the order
    assert!(matches!(
        l.record(new_refund("R3", "ORDER-1", 1000, 1, "h"))
            .await
            .unwrap(),
        RecordOutcome::AmountExceeded { .. }
    ));
}

async fn a_correction_is_fenced_and_only_corrects_a_final_status(f: &Fixture) {
    let l = f.ledger.as_ref();
    created(l, new_refund("R1", "ORDER-1", 1000, 100, "h")).await;
    let a = leased(l, "R1", "A", T0).await;
    let processing = applied(l, move_to(&a, RefundStatus::Processing, T0)).await;
    // GIVEN a refund still PROCESSING WHEN "corrected" THEN refused: that is a transition's job
    assert_eq!(
        l.correct(correction(&processing, RefundStatus::Success, T0))
            .await
            .unwrap(),
        TransitionOutcome::Illegal {
            from: RefundStatus::Processing,
            to: RefundStatus::Success
        }
    );
    let closed = applied(l, move_to(&processing, RefundStatus::RefundClose, T0)).await;
    // WHEN corrected to the status it has THEN refused as no correction
    assert!(matches!(
        l.correct(correction(&closed, RefundStatus::RefundClose, T0))
            .await
            .unwrap(),
        TransitionOutcome::Illegal { .. }
    ));
    // WHEN corrected from a stale version THEN the stored record is the answer
    let mut stale = correction(&closed, RefundStatus::Success, T0);
    stale.expected_version -= 1;
    assert_eq!(
        l.correct(stale).await.unwrap(),
        TransitionOutcome::Conflict(closed.clone())
    );
    // WHEN WeChat says it is still PROCESSING THEN it is back in the pending index, re-reserved
    let at = UnixMillis(T0.get() + 1_000);
    let reopened = match l
        .correct(correction(&closed, RefundStatus::Processing, at))
        .await
        .unwrap()
    {
        TransitionOutcome::Applied(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(reopened.next_check_at, Some(at));
    let due = l.due(at, None, 10).await.unwrap();
    assert_eq!(
        due.items
            .iter()
            .map(|r| r.out_refund_no.clone())
            .collect::<Vec<_>>(),
        vec![no("R1")]
    );
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.reserved, b.count), (fen(100), 1));
}

/// The pending shard of a number: FNV-1a mod 8, as docs/ARCHITECTURE.md ("The `pending` GSI")
/// specifies, so the test can show its refunds cover every shard.
fn shard_of(no: &str) -> u64 {
    let h = no.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h % 8
}

async fn due_serves_the_most_overdue_first_across_all_shards(f: &Fixture) {
    let l = f.ledger.as_ref();
    let now = T0.plus(Duration::from_secs(86_400));
    // GIVEN 64 refunds over every shard, each overdue by a different number of minutes (1..=64),
    // the ages shuffled against the numbers so no shard holds the oldest ones
    let mut age_of = std::collections::HashMap::new();
    for i in 0..64u64 {
        let n = format!("OVD{i:02}");
        let minutes = (i * 7919) % 64 + 1;
        let mut r = new_refund(&n, &format!("ORDER-{}", i % 5), 10_000, 1, "h");
        r.next_check_at = UnixMillis(now.get() - minutes * 60_000);
        created(l, r).await;
        age_of.insert(no(&n), minutes);
    }
    let shards: HashSet<u64> = age_of.keys().map(|n| shard_of(n.as_str())).collect();
    assert_eq!(shards.len(), 8, "the refunds cover every shard");
    // AND one not due yet
    let mut later = new_refund("NOT-YET", "ORDER-X", 10_000, 1, "h");
    later.next_check_at = now.plus(Duration::from_secs(1));
    created(l, later).await;

    // WHEN the first page of 5 is read THEN it holds exactly the 5 most overdue, most overdue first
    let first = l.due(now, None, 5).await.unwrap();
    let ages: Vec<u64> = first
        .items
        .iter()
        .map(|r| age_of[&r.out_refund_no])
        .collect();
    assert_eq!(ages, vec![64, 63, 62, 61, 60]);
    assert!(first.next.is_some());

    // WHEN every page is read THEN each due refund comes exactly once, in overdue order overall
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    for pages in 1.. {
        assert!(pages < 100, "paging does not end");
        let page = l.due(now, cursor.take(), 7).await.unwrap();
        assert!(page.items.len() <= 7, "page over the limit");
        seen.extend(page.items.into_iter().map(|r| r.out_refund_no));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let ages: Vec<u64> = seen.iter().map(|n| age_of[n]).collect();
    assert_eq!(ages, (1..=64).rev().collect::<Vec<_>>(), "{seen:?}");
}

/// Attempts that fail for good on one order: 10,000 on the embedded ledger; on moto, whose
/// transactions copy the whole table (1,100 took 250 s), as many as fit about 30 s. The bounds of
/// the pages and their filling in turn are unit-tested in `ledger::dynamo`.
const FAILED_ATTEMPTS_EMBEDDED: usize = 10_000;
const FAILED_ATTEMPTS_MOTO: usize = 300;
/// Through the fault relay each request also waits for its injected faults and retries.
const FAILED_ATTEMPTS_UNDER_FAULTS: usize = 40;

async fn an_order_with_thousands_of_failed_attempts_still_takes_refunds(f: &Fixture) {
    let l = f.ledger.as_ref();
    let attempts = if f.faults.is_some() {
        FAILED_ATTEMPTS_UNDER_FAULTS
    } else if f.dynamo.is_some() {
        FAILED_ATTEMPTS_MOTO
    } else {
        FAILED_ATTEMPTS_EMBEDDED
    };
    let started = Instant::now();
    // GIVEN an order whose every refund so far was refused for good (a retry loop with new numbers)
    for i in 0..attempts {
        let n = format!("F{i:05}-{}", "x".repeat(56));
        created(l, new_refund(&n, "ORDER-F", 100, 100, "h")).await;
        let a = leased(l, &n, "A", T0).await;
        applied(l, move_to(&a, RefundStatus::Failed, T0)).await;
    }
    let failing = started.elapsed();
    // WHEN a new refund of the whole amount is asked THEN it is recorded
    let ok = created(l, new_refund("OK-1", "ORDER-F", 100, 100, "h")).await;
    // AND it can go on through its lifecycle (the order is still writable)
    let a = leased(l, "OK-1", "A", T0).await;
    applied(l, move_to(&a, RefundStatus::Processing, T0)).await;
    // THEN the book holds only it, and lists every number ever recorded
    let b = book(l, "ORDER-F").await;
    assert_eq!((b.reserved, b.count), (fen(100), 1));
    assert_eq!(b.refunds.len(), attempts + 1);
    assert_eq!(
        b.refunds[0], ok.out_refund_no,
        "the live refund comes first"
    );
    // AND the order's refunds are all listed, the failed ones included, oldest first
    let listed = l.list_by_order(&order("ORDER-F")).await.unwrap();
    assert_eq!(listed.len(), attempts + 1);
    let failed = listed
        .iter()
        .filter(|r| r.status == RefundStatus::Failed)
        .count();
    assert_eq!(failed, attempts);
    let unique: HashSet<_> = listed.iter().map(|r| r.out_refund_no.clone()).collect();
    assert_eq!(unique.len(), attempts + 1);
    // AND on DynamoDB no item grows with the failures: the order item lists only the live number,
    // and each page of released numbers stays far below the 400 KB item limit
    if let Some(d) = &f.dynamo {
        let client = aws_sdk_dynamodb::Client::new(&wxrefund::testing::moto_sdk_config().await);
        let raw = |pk: String| {
            let client = client.clone();
            let table = d.table().to_owned();
            async move {
                client
                    .get_item()
                    .table_name(table)
                    .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk))
                    .consistent_read(true)
                    .send()
                    .await
                    .unwrap()
                    .item
                    .expect("item exists")
            }
        };
        let order_item = raw("ORDER#out_trade_no:ORDER-F".into()).await;
        assert_eq!(
            order_item.get("refund_nos").unwrap().as_ss().unwrap(),
            &vec!["OK-1".to_owned()]
        );
        let mut paged = 0;
        for page in 0..attempts.div_ceil(1000) {
            let item = raw(format!("ORDER#out_trade_no:ORDER-F#FAILED#{page}")).await;
            let nos = item.get("refund_nos").unwrap().as_ss().unwrap();
            let size: usize = nos.iter().map(String::len).sum();
            assert!(
                nos.len() <= 1000 && size < 100_000,
                "page {page}: {size} bytes"
            );
            paged += nos.len();
        }
        assert_eq!(paged, attempts);
    }
    println!(
        "{attempts} failed attempts in {failing:?}, then the new refund and the listing in {:?}",
        started.elapsed() - failing
    );
}

async fn an_external_refund_brings_the_orders_true_total(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN an order whose first refund was sent with a wrong total (1000 of a 2000 order) and
    // failed
    created(l, new_refund("R1", "ORDER-1", 1000, 100, "h")).await;
    let a = leased(l, "R1", "A", T0).await;
    applied(l, move_to(&a, RefundStatus::Failed, T0)).await;
    // AND a second wrong-total refund still holding its amount, so the order does not hold nothing
    created(l, new_refund("R2", "ORDER-1", 1000, 100, "h")).await;
    assert!(matches!(
        l.record(new_refund("R3", "ORDER-1", 2000, 100, "h"))
            .await
            .unwrap(),
        RecordOutcome::TotalFeeMismatch { .. }
    ));
    // WHEN a refund made in the merchant platform is learned from WeChat's signed reply, which
    // names the order's true total
    let ext = ExternalRefund {
        out_refund_no: no("WX-PLATFORM-1"),
        order: order("ORDER-1"),
        out_trade_no: None,
        transaction_id: None,
        refund_id: Some(RefundId::new("50000000077").unwrap()),
        total_fee: fen(2000),
        refund_fee: fen(300),
        status: RefundStatus::Processing,
        refund_account: None,
        refund_recv_account: None,
        success_time: None,
        now: T0,
        next_check_at: None,
        accepted_at: None,
        events: Vec::new(),
    };
    assert!(matches!(
        l.record_external(ext).await.unwrap(),
        ExternalOutcome::Created(_)
    ));
    // THEN the order takes WeChat's total, and a request with the true total is accepted
    let b = book(l, "ORDER-1").await;
    assert_eq!((b.total_fee, b.reserved, b.count), (fen(2000), fen(400), 2));
    assert!(matches!(
        l.record(new_refund("R3", "ORDER-1", 2000, 100, "h"))
            .await
            .unwrap(),
        RecordOutcome::Created(_)
    ));
}

async fn refunds_that_need_a_person_are_listed_until_their_flag_clears(f: &Fixture) {
    let l = f.ledger.as_ref();
    let listed = |page: wxrefund::ledger::Page| {
        page.items
            .iter()
            .map(|r| r.out_refund_no.to_string())
            .collect::<Vec<_>>()
    };
    // GIVEN R-A in CHANGE, R-B flagged as stuck while UNKNOWN, R-C an ordinary PROCESSING refund
    for n in ["R-A", "R-B", "R-C"] {
        created(l, new_refund(n, &format!("ORDER-{n}"), 100, 10, "h")).await;
    }
    let a = leased(l, "R-A", "x", T0).await;
    let a = applied(l, move_to(&a, RefundStatus::Processing, T0)).await;
    applied(l, move_to(&a, RefundStatus::Change, T0)).await;
    let b = leased(l, "R-B", "x", T0).await;
    let mut t = move_to(&b, RefundStatus::Unknown, T0);
    t.changes.attention = Patch::Set(Attention {
        reason: AttentionReason::Stuck,
        since: T0,
    });
    let b = applied(l, t).await;
    assert!(b.needs_person());
    let c = leased(l, "R-C", "x", T0).await;
    applied(l, move_to(&c, RefundStatus::Processing, T0)).await;
    // WHEN listed THEN exactly the two, by number
    assert_eq!(
        listed(l.needing_person(None, 10).await.unwrap()),
        vec!["R-A", "R-B"]
    );
    // AND paged one at a time, each once
    let first = l.needing_person(None, 1).await.unwrap();
    assert_eq!(listed(first.clone()), vec!["R-A"]);
    let mut rest = Vec::new();
    let mut cursor = first.next;
    while let Some(c) = cursor {
        let page = l.needing_person(Some(c), 1).await.unwrap();
        cursor = page.next.clone();
        rest.extend(listed(page));
    }
    assert_eq!(rest, vec!["R-B"]);
    // WHEN R-B's refund finishes by itself and its stuck flag clears THEN it leaves the list
    let mut t = move_to(&b, RefundStatus::Success, T0);
    t.changes.attention = Patch::Clear;
    let done = applied(l, t).await;
    assert!(!done.needs_person());
    assert_eq!(
        listed(l.needing_person(None, 10).await.unwrap()),
        vec!["R-A"]
    );
}

/// Every page of `accepted_on(day)`, as numbers.
async fn accepted_numbers(l: &dyn Ledger, day: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = l.accepted_on(day, cursor, limit).await.unwrap();
        out.extend(page.items.iter().map(|r| r.out_refund_no.to_string()));
        match page.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

async fn refunds_are_listed_by_the_beijing_day_wechat_accepted_them(f: &Fixture) {
    let l = f.ledger.as_ref();
    // T0 = 2027-01-15 08:00 UTC = 16:00 Beijing; 8 h later it is the next day in Beijing.
    let day0 = T0.beijing_date();
    let next_day = T0.plus(Duration::from_secs(8 * 3600)).beijing_date();
    assert_ne!(day0, next_day);
    // GIVEN R-1..R-3 accepted by WeChat on day 0 (R-3 then finishing), R-4 the next Beijing
    // day, R-5 refused for good (never accepted) and R-6 only recorded
    for n in ["R-1", "R-2", "R-3", "R-4", "R-5", "R-6"] {
        created(l, new_refund(n, &format!("ORDER-{n}"), 100, 10, "h")).await;
    }
    for (n, to, at) in [
        ("R-1", RefundStatus::Processing, T0),
        ("R-2", RefundStatus::Success, T0),
        ("R-3", RefundStatus::Processing, T0),
        (
            "R-4",
            RefundStatus::Processing,
            T0.plus(Duration::from_secs(8 * 3600)),
        ),
        ("R-5", RefundStatus::Failed, T0),
    ] {
        let r = leased(l, n, "x", at).await;
        let r = applied(l, move_to(&r, to, at)).await;
        // THEN the first move into a status WeChat reports is when it was accepted
        let want = to.reported_by_wechat().then_some(at);
        assert_eq!(r.accepted_at, want, "{n}");
    }
    // WHEN R-3 finishes a day later THEN it keeps the time it was accepted
    let r3 = l.get(&no("R-3")).await.unwrap().unwrap();
    let later = T0.plus(Duration::from_secs(86_400));
    let r3 = applied(l, move_to(&r3, RefundStatus::Success, later)).await;
    assert_eq!(r3.accepted_at, Some(T0));
    // THEN each day lists exactly its refunds, by number, also one at a time
    assert_eq!(
        accepted_numbers(l, &day0, 100).await,
        vec!["R-1", "R-2", "R-3"]
    );
    assert_eq!(
        accepted_numbers(l, &day0, 1).await,
        vec!["R-1", "R-2", "R-3"]
    );
    assert_eq!(accepted_numbers(l, &next_day, 100).await, vec!["R-4"]);
    assert!(accepted_numbers(l, "2000-01-01", 100).await.is_empty());
    // AND an external refund found in a bill is listed on the day of its apply time
    let ext = ExternalRefund {
        out_refund_no: no("R-EXT"),
        order: order("ORDER-EXT"),
        out_trade_no: None,
        transaction_id: None,
        refund_id: Some(RefundId::new("50000001").unwrap()),
        total_fee: fen(100),
        refund_fee: fen(10),
        status: RefundStatus::Success,
        refund_account: None,
        refund_recv_account: None,
        success_time: None,
        now: later,
        next_check_at: None,
        accepted_at: Some(T0),
        events: Vec::new(),
    };
    assert!(matches!(
        l.record_external(ext).await.unwrap(),
        ExternalOutcome::Created(_)
    ));
    assert_eq!(
        accepted_numbers(l, &day0, 2).await,
        vec!["R-1", "R-2", "R-3", "R-EXT"]
    );
}

async fn a_flag_for_a_person_is_fenced_kept_and_listed(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN a refund WeChat paid
    created(l, new_refund("R-F", "ORDER-F", 100, 10, "h")).await;
    let r = leased(l, "R-F", "x", T0).await;
    let r = applied(l, move_to(&r, RefundStatus::Success, T0)).await;
    let flag = |version, reason, now| FlagWrite {
        out_refund_no: no("R-F"),
        expected_version: version,
        reason,
        now,
        events: Vec::new(),
    };
    // WHEN flagged at a stale version THEN refused with the record as it is
    match l
        .flag(flag(r.version - 1, AttentionReason::Mismatch, T0))
        .await
        .unwrap()
    {
        TransitionOutcome::Conflict(now) => assert_eq!(now, r),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // WHEN flagged at its version THEN it needs a person, status untouched, version bumped
    let later = T0.plus(Duration::from_secs(5));
    let flagged = match l
        .flag(flag(r.version, AttentionReason::Mismatch, later))
        .await
        .unwrap()
    {
        TransitionOutcome::Applied(x) => x,
        other => panic!("expected Applied, got {other:?}"),
    };
    assert_eq!(flagged.status, RefundStatus::Success);
    assert_eq!(flagged.version, r.version + 1);
    assert_eq!(
        flagged.attention,
        Some(Attention {
            reason: AttentionReason::Mismatch,
            since: later
        })
    );
    assert_eq!(l.get(&no("R-F")).await.unwrap(), Some(flagged.clone()));
    let listed = l.needing_person(None, 10).await.unwrap();
    assert_eq!(listed.items, vec![flagged.clone()]);
    // WHEN flagged again (a re-run) THEN nothing is written and the first flag's time stays
    match l
        .flag(flag(
            flagged.version,
            AttentionReason::Mismatch,
            later.plus(LEASE),
        ))
        .await
        .unwrap()
    {
        TransitionOutcome::Applied(x) => assert_eq!(x, flagged),
        other => panic!("expected Applied, got {other:?}"),
    }
    assert_eq!(l.get(&no("R-F")).await.unwrap(), Some(flagged));
    // AND an unknown refund is NotFound
    assert!(matches!(
        l.flag(FlagWrite {
            out_refund_no: no("R-NONE"),
            expected_version: 1,
            reason: AttentionReason::Mismatch,
            now: T0,
            events: Vec::new(),
        })
        .await
        .unwrap(),
        TransitionOutcome::NotFound
    ));
}

async fn reconciliation_reports_are_stored_by_bill_date(f: &Fixture) {
    let l = f.ledger.as_ref();
    let report = |day: &str, status| Reconciliation {
        bill_date: day.into(),
        status,
        bill: Totals {
            refunds: 2,
            refund_fee: fen(30),
        },
        ledger: Totals {
            refunds: 1,
            refund_fee: fen(10),
        },
        discrepancies: vec![Discrepancy {
            kind: DiscrepancyKind::MissingInLedger,
            out_refund_no: no("R-PLATFORM"),
            out_trade_no: Some(OutTradeNo::new("ORDER-P").unwrap()),
            bill: Some(Side {
                status: "SUCCESS".into(),
                refund_fee: fen(20),
            }),
            ledger: None,
            resolution: Resolution::RecordedExternal,
            detail: "query confirmed it".into(),
        }],
        started_at: T0,
        finished_at: T0.plus(LEASE),
    };
    // GIVEN nothing stored THEN no report
    assert_eq!(l.reconciliation("2027-01-14").await.unwrap(), None);
    // WHEN a report is saved THEN it reads back exactly, and other dates have none
    let first = report("2027-01-14", ReportStatus::Mismatched);
    l.save_reconciliation(&first).await.unwrap();
    assert_eq!(l.reconciliation("2027-01-14").await.unwrap(), Some(first));
    assert_eq!(l.reconciliation("2027-01-15").await.unwrap(), None);
    // WHEN the date is reconciled again THEN the new report replaces the old one
    let mut second = report("2027-01-14", ReportStatus::Matched);
    second.discrepancies.clear();
    l.save_reconciliation(&second).await.unwrap();
    assert_eq!(l.reconciliation("2027-01-14").await.unwrap(), Some(second));
}

async fn a_refund_recorded_with_its_lease_takes_three_writes_to_succeed(f: &Fixture) {
    let l = f.ledger.as_ref();
    let before = f.dynamo.as_ref().map(DynamoLedger::write_stats);
    let commits_before = f.embedded.as_ref().map(EmbeddedLedger::commits);
    // GIVEN a refund recorded with the recorder's lease (one write, with its reservation)
    let expires = T0.plus(LEASE);
    let n = new_refund("R-3W", "ORDER-3W", 100, 10, "h").leased_by("recorder", expires);
    let rec = created(l, n.clone()).await;
    let recorded = f.dynamo.as_ref().map(DynamoLedger::write_stats);
    let commits_recorded = f.embedded.as_ref().map(EmbeddedLedger::commits);
    // THEN it is SUBMITTING under that lease, attempt 1, reserved on its order
    assert_eq!(rec.status, RefundStatus::Submitting);
    assert_eq!(rec.attempts, 1);
    assert_eq!(
        rec.lease.as_ref().map(|x| x.owner.as_str()),
        Some("recorder")
    );
    assert_eq!(book(l, "ORDER-3W").await.reserved, fen(10));
    // AND nobody else can take it while the lease lasts, and a replay is the same record
    assert!(matches!(
        l.acquire_lease(&no("R-3W"), "other", LEASE, T0)
            .await
            .unwrap(),
        LeaseOutcome::Held(_)
    ));
    assert!(matches!(l.record(n).await.unwrap(), RecordOutcome::Existing(r) if r == rec));
    // AND a stranger's move is fenced off
    let mut stranger = move_to(&rec, RefundStatus::Processing, T0);
    stranger.lease_owner = Some("other".into());
    assert!(matches!(
        l.transition(stranger).await.unwrap(),
        TransitionOutcome::Conflict(_)
    ));
    // WHEN its holder moves it to PROCESSING, then SUCCESS
    let refused = f.dynamo.as_ref().map(DynamoLedger::write_stats);
    let commits_refused = f.embedded.as_ref().map(EmbeddedLedger::commits);
    let p = applied(l, move_to(&rec, RefundStatus::Processing, T0)).await;
    assert!(p.lease.is_none());
    let done = applied(l, move_to(&p, RefundStatus::Success, T0)).await;
    assert_eq!(done.status, RefundStatus::Success);
    // THEN on DynamoDB the happy path was 3 write requests (4 items): the record (refund and
    // order in one transaction) and the two moves; the refused attempts in between aside
    if let (Some(d), Some(before), Some(recorded), Some(refused), true) =
        (&f.dynamo, before, recorded, refused, f.counts_writes())
    {
        let after = d.write_stats();
        let requests = (recorded.requests - before.requests) + (after.requests - refused.requests);
        let items = (recorded.items - before.items) + (after.items - refused.items);
        assert_eq!(requests, 3, "write requests");
        assert_eq!(items, 4, "items written");
    }
    // AND on redb 3 commits (the refused attempts wrote nothing)
    if let (Some(e), Some(before), Some(recorded), Some(refused)) = (
        &f.embedded,
        commits_before,
        commits_recorded,
        commits_refused,
    ) {
        assert_eq!(refused, recorded, "a refusal commits nothing");
        assert_eq!((recorded - before) + (e.commits() - refused), 3, "commits");
    }
    // AND when the recorder dies, its lease runs out and the poller finds it due then
    let n2 = new_refund("R-3W-DEAD", "ORDER-3W-2", 100, 10, "h").leased_by("dead", expires);
    created(l, n2).await;
    let due = l.due(expires, None, 10).await.unwrap();
    assert!(
        due.items.iter().any(|r| r.out_refund_no == no("R-3W-DEAD")),
        "{due:?}"
    );
    assert!(matches!(
        l.acquire_lease(&no("R-3W-DEAD"), "poller", LEASE, expires)
            .await
            .unwrap(),
        LeaseOutcome::Acquired(_)
    ));
}

// ---- the outbox ----------------------------------------------------------------------------------

/// The record a transition writes, as the service computes it to derive the events.
fn after_move(r: &RefundRecord, to: RefundStatus, now: UnixMillis) -> RefundRecord {
    let mut after = r.clone();
    after.status = to;
    after.version = r.version + 1;
    after.updated_at = now;
    after.lease = None;
    after
}

fn ids(r: &RefundRecord) -> Vec<String> {
    r.outbox.iter().map(|e| e.id().to_owned()).collect()
}

async fn due_numbers(l: &dyn Ledger, now: UnixMillis) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = l.due(now, cursor, 50).await.unwrap();
        out.extend(page.items.iter().map(|r| r.out_refund_no.to_string()));
        match page.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

async fn events_are_written_with_their_fact_and_due_until_delivered(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN a PROCESSING refund
    created(l, new_refund("R-EV", "ORDER-EV", 100, 10, "h")).await;
    let r = leased(l, "R-EV", "x", T0).await;
    let r = applied(l, move_to(&r, RefundStatus::Processing, T0)).await;
    // WHEN it moves into SUCCESS with its event
    let now = T0.plus(Duration::from_secs(10));
    let redeliver = now.plus(Duration::from_secs(60));
    let events = wxrefund::events::of_change(
        Some(&r),
        &after_move(&r, RefundStatus::Success, now),
        redeliver,
    );
    let mut t = move_to(&r, RefundStatus::Success, now);
    t.changes.events = events.clone();
    let done = applied(l, t).await;
    // THEN the event is stored with the fact, in the same write
    assert_eq!(done.outbox, events);
    assert_eq!(ids(&done), vec![format!("R-EV:{}:succeeded", done.version)]);
    assert_eq!(l.get(&no("R-EV")).await.unwrap(), Some(done.clone()));
    // AND the final refund is not due before its re-delivery time, and due from then on
    assert!(due_numbers(l, now).await.is_empty());
    assert_eq!(due_numbers(l, redeliver).await, vec!["R-EV".to_owned()]);
    // WHEN a publisher took it
    let marked = l
        .mark_delivered(&no("R-EV"), &ids(&done))
        .await
        .unwrap()
        .unwrap();
    // THEN the outbox is empty, nothing else changed (the version neither), and it is no longer due
    assert!(marked.outbox.is_empty());
    assert_eq!(marked.version, done.version);
    assert_eq!(
        RefundRecord {
            outbox: done.outbox.clone(),
            ..marked.clone()
        },
        done
    );
    assert_eq!(l.get(&no("R-EV")).await.unwrap(), Some(marked.clone()));
    assert!(
        due_numbers(l, redeliver.plus(Duration::from_secs(3600)))
            .await
            .is_empty()
    );
    // AND marking it again (a re-delivery raced the first) writes nothing
    let again = l.mark_delivered(&no("R-EV"), &ids(&done)).await.unwrap();
    assert_eq!(again, Some(marked));
    assert_eq!(l.mark_delivered(&no("R-NONE"), &[]).await.unwrap(), None);
}

async fn a_delivery_mark_never_fences_out_a_fact(f: &Fixture) {
    let l = f.ledger.as_ref();
    // GIVEN an UNKNOWN refund escalated to a person, with its event, next checked in an hour
    created(l, new_refund("R-EM", "ORDER-EM", 100, 10, "h")).await;
    let r = leased(l, "R-EM", "x", T0).await;
    let check = T0.plus(Duration::from_secs(3600));
    let redeliver = T0.plus(Duration::from_secs(60));
    let mut t = move_to(&r, RefundStatus::Unknown, T0);
    t.changes.next_check_at = Some(check);
    t.changes.attention = Patch::Set(Attention {
        reason: AttentionReason::Stuck,
        since: T0,
    });
    let mut after = after_move(&r, RefundStatus::Unknown, T0);
    after.attention = Some(Attention {
        reason: AttentionReason::Stuck,
        since: T0,
    });
    t.changes.events = wxrefund::events::of_change(Some(&r), &after, redeliver);
    assert_eq!(t.changes.events.len(), 1);
    let stuck = applied(l, t).await;
    // THEN it is due at the re-delivery time, before its next check
    assert_eq!(due_numbers(l, redeliver).await, vec!["R-EM".to_owned()]);
    // WHEN the event is delivered
    l.mark_delivered(&no("R-EM"), &ids(&stuck)).await.unwrap();
    // THEN it waits for its next check again
    assert_eq!(due_numbers(l, check).await, vec!["R-EM".to_owned()]);
    assert!(due_numbers(l, UnixMillis(check.get() - 1)).await.is_empty());
    // AND a move computed from the record read before the mark still applies
    let moved = applied(l, move_to(&stuck, RefundStatus::Processing, check)).await;
    assert_eq!(moved.version, stuck.version + 1);
    assert!(moved.outbox.is_empty());
}

async fn corrections_flags_and_external_refunds_keep_their_events(f: &Fixture) {
    let l = f.ledger.as_ref();
    let at = T0.plus(Duration::from_secs(5));
    let redeliver = at.plus(Duration::from_secs(60));
    // GIVEN a FAILED refund WeChat's books say was paid, corrected with its events
    created(l, new_refund("R-EC", "ORDER-EC", 100, 10, "h")).await;
    let r = leased(l, "R-EC", "x", T0).await;
    let failed = applied(l, move_to(&r, RefundStatus::Failed, T0)).await;
    let mut c = correction(&failed, RefundStatus::Success, at);
    let mut after = after_move(&failed, RefundStatus::Success, at);
    after.corrections.push(Correction {
        from: RefundStatus::Failed,
        to: RefundStatus::Success,
        kind: CorrectionKind::Contradiction,
        source: FactSource::Notification,
        at,
    });
    c.changes.events = wxrefund::events::of_change(Some(&failed), &after, redeliver);
    assert_eq!(c.changes.events.len(), 2);
    let corrected = match l.correct(c.clone()).await.unwrap() {
        TransitionOutcome::Applied(x) => x,
        other => panic!("expected Applied, got {other:?}"),
    };
    // THEN both are in its outbox and it is due for them
    assert_eq!(corrected.outbox, c.changes.events);
    assert_eq!(l.get(&no("R-EC")).await.unwrap(), Some(corrected.clone()));
    assert!(due_numbers(l, redeliver).await.contains(&"R-EC".to_owned()));
    // GIVEN a paid refund flagged for a mismatch, with its event
    created(l, new_refund("R-EF", "ORDER-EF", 100, 10, "h")).await;
    let r = leased(l, "R-EF", "x", T0).await;
    let paid = applied(l, move_to(&r, RefundStatus::Success, T0)).await;
    let mut after = paid.clone();
    after.version += 1;
    after.updated_at = at;
    after.attention = Some(Attention {
        reason: AttentionReason::Mismatch,
        since: at,
    });
    let events = wxrefund::events::of_change(Some(&paid), &after, redeliver);
    assert_eq!(events.len(), 1);
    let flagged = match l
        .flag(FlagWrite {
            out_refund_no: no("R-EF"),
            expected_version: paid.version,
            reason: AttentionReason::Mismatch,
            now: at,
            events: events.clone(),
        })
        .await
        .unwrap()
    {
        TransitionOutcome::Applied(x) => x,
        other => panic!("expected Applied, got {other:?}"),
    };
    // THEN the event is in its outbox and it is due for it
    assert_eq!(flagged.outbox, events);
    assert_eq!(l.get(&no("R-EF")).await.unwrap(), Some(flagged));
    assert!(due_numbers(l, redeliver).await.contains(&"R-EF".to_owned()));
    // GIVEN an external SUCCESS refund with its event
    let ext = ExternalRefund {
        out_refund_no: no("R-EX"),
        order: order("ORDER-EX"),
        out_trade_no: None,
        transaction_id: None,
        refund_id: None,
        total_fee: fen(100),
        refund_fee: fen(30),
        status: RefundStatus::Success,
        refund_account: None,
        refund_recv_account: None,
        success_time: None,
        now: at,
        next_check_at: None,
        accepted_at: None,
        events: Vec::new(),
    };
    let mut with_events = ext.clone();
    let ExternalOutcome::Created(probe) =
        f.fresh().await.ledger.record_external(ext).await.unwrap()
    else {
        panic!("expected Created");
    };
    with_events.events = wxrefund::events::of_change(None, &probe, redeliver);
    let ExternalOutcome::Created(rec) = l.record_external(with_events.clone()).await.unwrap()
    else {
        panic!("expected Created");
    };
    // THEN it is recorded with its event and due for it
    assert_eq!(rec.outbox, with_events.events);
    assert_eq!(ids(&rec), vec!["R-EX:1:succeeded".to_owned()]);
    assert_eq!(l.get(&no("R-EX")).await.unwrap(), Some(rec));
    assert!(due_numbers(l, redeliver).await.contains(&"R-EX".to_owned()));
}
