//! The `bench` command's load run in-process with tiny numbers: the stack starts, the refunds go
//! over real HTTP, every accepted one settles, the sandbox's books equal the ledger and the
//! report's counts add up. Kept small so it runs in a few seconds in a debug build.

use std::time::Duration;

use wxrefund_local::bench::{BenchConfig, BenchReport, run_bench};

fn quick(refunds: u64, rate: f64) -> BenchConfig {
    BenchConfig {
        concurrency: 4,
        settle_after: Duration::from_millis(100),
        poll_every: Duration::from_millis(200),
        settle_timeout: Duration::from_secs(8),
        ..BenchConfig::new(refunds, rate)
    }
}

fn assert_counts_add_up(r: &BenchReport, refunds: u64) {
    assert_eq!(r.submitted, refunds);
    assert_eq!(
        r.accepted() + r.rejected_total() + r.errors,
        r.submitted,
        "{r:?}"
    );
    assert_eq!(r.latency_from_send.count as u64, r.submitted - r.errors);
    assert_eq!(r.final_status.values().sum::<u64>(), r.accepted(), "{r:?}");
    assert_eq!(r.unsettled, 0, "{r:?}");
    assert!(r.books.passed(), "{:?}", r.books.problems);
    assert!(r.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_refunds_settle_and_the_books_match() {
    let cfg = quick(20, 50.0);
    let r = run_bench(&cfg).await.expect("bench runs");
    assert_counts_add_up(&r, 20);
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert_eq!(r.accepted_202, 20, "{r:?}");
    assert_eq!(r.final_status.get("SUCCESS"), Some(&20), "{r:?}");
    assert_eq!(r.time_to_success.count, 20);
    assert_eq!(r.books.orders, 2);
    assert_eq!(r.books.sandbox_refunds, 20);
    assert_eq!(r.books.ledger_refunds, 20);
    assert!(r.achieved_rate() > 0.0);
    assert!(r.latency_from_due.p99 >= r.latency_from_send.p50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_past_fifty_per_order_are_rejected_and_counted() {
    // One order, 55 refunds that all fit its total: the ledger refuses the 51st to 55th.
    let cfg = BenchConfig {
        orders: 1,
        ..quick(55, 200.0)
    };
    let r = run_bench(&cfg).await.expect("bench runs");
    assert_counts_add_up(&r, 55);
    assert_eq!(r.accepted(), 50, "{r:?}");
    assert_eq!(r.rejected.get("422 too_many_refunds"), Some(&5), "{r:?}");
    assert_eq!(r.books.sandbox_refunds, 50);
}
