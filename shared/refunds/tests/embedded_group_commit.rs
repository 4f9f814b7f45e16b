//! The embedded ledger's group commit: concurrent writes share fsyncs, a refusal in a batch rolls
//! back only itself, and what was answered is in the file when it is opened again.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo};
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::ledger::{Ledger, NewRefund, RecordOutcome};
use wxrefund::state::UnixMillis;

const T0: UnixMillis = UnixMillis(1_800_000_000_000);

fn new_refund(no: &str, order: &str, total: u64, fee: u64) -> NewRefund {
    NewRefund {
        out_refund_no: OutRefundNo::new(no).expect("valid out_refund_no"),
        order: OrderRef::OutTradeNo(OutTradeNo::new(order).expect("valid out_trade_no")),
        total_fee: Fen::new(total).expect("amount"),
        refund_fee: Fen::new(fee).expect("amount"),
        refund_desc: None,
        refund_account: None,
        request_hash: format!("hash-{no}"),
        now: T0,
        next_check_at: T0.plus(Duration::from_secs(60)),
        metadata: Default::default(),
        lease: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_fsyncs_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.redb");
    let ledger = Arc::new(EmbeddedLedger::open(&path).expect("open"));
    let fsyncs_before = ledger.fsyncs();

    // GIVEN 400 refunds asked at once on 20 orders of 1000 fen, 60 fen each: 16 fit an order
    // (960), the other 4 must be refused, wherever they fall in a batch
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let l = Arc::clone(&ledger);
            let req = new_refund(
                &format!("GC-{i}"),
                &format!("ORDER-GC-{}", i % 20),
                1000,
                60,
            );
            tokio::spawn(async move { l.record(req).await })
        })
        .collect();
    let mut created = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("task").expect("record") {
            RecordOutcome::Created(r) => created.push(r),
            RecordOutcome::AmountExceeded { .. } => refused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    // THEN 16 per order were created and 4 per order refused
    assert_eq!((created.len(), refused), (320, 80));
    // AND each created refund is one commit, while the fsyncs were shared between them
    assert_eq!(ledger.commits(), 320);
    let fsyncs = ledger.fsyncs() - fsyncs_before;
    assert!(
        fsyncs < 320 / 2,
        "{fsyncs} fsyncs for 320 concurrent commits: not grouped"
    );
    println!("320 concurrent commits in {fsyncs} fsyncs");

    // WHEN the ledger is closed and the file opened again at once
    drop(ledger);
    let reopened = EmbeddedLedger::open(&path).expect("reopen right after the last handle");

    // THEN every answered refund is there as answered, and every order's book is exact
    for r in &created {
        assert_eq!(
            reopened.get(&r.out_refund_no).await.expect("get").as_ref(),
            Some(r)
        );
    }
    for o in 0..20 {
        let order = OrderRef::OutTradeNo(OutTradeNo::new(format!("ORDER-GC-{o}")).expect("no"));
        let book = reopened.order(&order).await.expect("order").expect("book");
        assert_eq!((book.reserved.get(), book.count), (960, 16), "order {o}");
    }
}

#[tokio::test]
async fn a_lone_write_is_one_durable_commit() {
    // GIVEN an idle ledger
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = EmbeddedLedger::open(dir.path().join("ledger.redb")).expect("open");
    let before = ledger.fsyncs();
    // WHEN one refund is recorded, then the same request again (a replay writes nothing)
    let first = ledger.record(new_refund("GC-1", "ORDER-1", 100, 10)).await;
    let again = ledger.record(new_refund("GC-1", "ORDER-1", 100, 10)).await;
    // THEN the first was one commit and one fsync, and the replay neither
    assert!(matches!(first, Ok(RecordOutcome::Created(_))));
    assert!(matches!(again, Ok(RecordOutcome::Existing(_))));
    assert_eq!((ledger.commits(), ledger.fsyncs() - before), (1, 1));
}
