//! The embedded ledger survives a process kill: a child process records a refund and takes its
//! lease, reports it, and is killed with SIGKILL; the file then reopens with both writes intact.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo};
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::ledger::{LeaseOutcome, Ledger, NewRefund, RecordOutcome};
use wxrefund::state::{RefundStatus, UnixMillis};

const CHILD_ENV: &str = "WXREFUND_LEDGER_KILL_CHILD";
const TEST_NAME: &str = "embedded_ledger_keeps_acknowledged_writes_across_sigkill";

fn new_refund() -> NewRefund {
    NewRefund {
        out_refund_no: OutRefundNo::new("KILL-1").unwrap(),
        order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-KILL").unwrap()),
        total_fee: Fen::new(100).unwrap(),
        refund_fee: Fen::new(60).unwrap(),
        refund_desc: None,
        refund_account: None,
        request_hash: "h".into(),
        now: UnixMillis(1_000),
        next_check_at: UnixMillis(2_000),
        metadata: Default::default(),
        lease: None,
    }
}

/// In the child: write, acknowledge on stdout, then hang until killed.
async fn child(path: &str) -> ! {
    let l = EmbeddedLedger::open(path).unwrap();
    assert!(matches!(
        l.record(new_refund()).await.unwrap(),
        RecordOutcome::Created(_)
    ));
    let no = OutRefundNo::new("KILL-1").unwrap();
    assert!(matches!(
        l.acquire_lease(&no, "child", Duration::from_secs(30), UnixMillis(1_000))
            .await
            .unwrap(),
        LeaseOutcome::Acquired(_)
    ));
    println!("ACKNOWLEDGED");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_ledger_keeps_acknowledged_writes_across_sigkill() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path).await;
    }
    // GIVEN a child process that recorded and leased a refund and said so
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let acknowledged = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("ACKNOWLEDGED"));
    assert!(acknowledged, "the child never acknowledged its writes");
    // WHEN it is killed without any chance to clean up
    proc.kill().unwrap();
    let status = proc.wait().unwrap();
    assert!(!status.success());
    // THEN the file reopens with both acknowledged writes and the order reservation
    let l = EmbeddedLedger::open(&path).unwrap();
    let rec = l
        .get(&OutRefundNo::new("KILL-1").unwrap())
        .await
        .unwrap()
        .expect("the recorded refund survived");
    assert_eq!(rec.status, RefundStatus::Submitting);
    assert_eq!(rec.lease.map(|l| l.owner), Some("child".to_owned()));
    let book = l
        .order(&OrderRef::OutTradeNo(
            OutTradeNo::new("ORDER-KILL").unwrap(),
        ))
        .await
        .unwrap()
        .expect("the order survived");
    assert_eq!(book.reserved, Fen::new(60).unwrap());
    // AND the pending index survived too: the abandoned attempt is due when its lease runs out
    let due = l.due(UnixMillis(31_000), None, 10).await.unwrap();
    assert_eq!(due.items.len(), 1);
}
