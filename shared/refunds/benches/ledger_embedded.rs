//! Criterion bench: refunds per second through the embedded (redb) ledger, each one a full happy
//! path (record, lease, → PROCESSING, → SUCCESS: 4 durable write transactions).

// Benchmark set-up: a failed step should stop the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo};
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::ledger::{
    Changes, LeaseOutcome, Ledger, NewRefund, RecordOutcome, Transition, TransitionOutcome,
};
use wxrefund::state::{RefundRecord, RefundStatus, UnixMillis};

fn step(l: &EmbeddedLedger, rt: &tokio::runtime::Runtime, i: u64) {
    rt.block_on(async {
        let now = UnixMillis::now();
        let no = OutRefundNo::new(format!("B{i}")).expect("number");
        let new = NewRefund {
            out_refund_no: no.clone(),
            order: OrderRef::OutTradeNo(OutTradeNo::new(format!("BENCH-{i}")).expect("order")),
            total_fee: Fen::new(100).expect("fee"),
            refund_fee: Fen::new(100).expect("fee"),
            refund_desc: None,
            refund_account: None,
            request_hash: "h".into(),
            now,
            next_check_at: now,
            metadata: Default::default(),
            lease: None,
        };
        assert!(matches!(
            l.record(new).await.expect("record"),
            RecordOutcome::Created(_)
        ));
        let LeaseOutcome::Acquired(rec) = l
            .acquire_lease(&no, "bench", Duration::from_secs(30), now)
            .await
            .expect("lease")
        else {
            panic!("lease not acquired");
        };
        let rec = apply(l, &rec, RefundStatus::Processing, now).await;
        apply(l, &rec, RefundStatus::Success, now).await;
    });
}

async fn apply(
    l: &EmbeddedLedger,
    r: &RefundRecord,
    to: RefundStatus,
    now: UnixMillis,
) -> RefundRecord {
    let t = Transition {
        out_refund_no: r.out_refund_no.clone(),
        expected_status: r.status,
        expected_version: r.version,
        lease_owner: r.lease.as_ref().map(|l| l.owner.clone()),
        to,
        changes: Changes::default(),
        now,
    };
    match l.transition(t).await.expect("transition") {
        TransitionOutcome::Applied(r) => r,
        other => panic!("transition refused: {other:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = EmbeddedLedger::open(dir.path().join("bench.redb")).expect("open");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let next = AtomicU64::new(0);
    let mut g = c.benchmark_group("ledger_embedded");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("refund_happy_path", |b| {
        b.iter(|| step(&ledger, &rt, next.fetch_add(1, Ordering::Relaxed)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
