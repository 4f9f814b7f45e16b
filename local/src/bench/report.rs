//! What a load run measured ([`BenchReport`], nearest-rank [`Percentiles`]) and its Markdown
//! rendering.

use std::collections::BTreeMap;
use std::time::Duration;

use super::check::BooksCheck;
use super::config::BenchConfig;
use super::sweep::SWEEP_MIN_SHARE;

/// Nearest-rank percentiles of a set of durations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    pub fn of(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        let rank = |q: f64| -> Duration {
            if v.is_empty() {
                return Duration::ZERO;
            }
            // Nearest rank: the smallest value with at least q of the samples at or below it.
            let r = (q * v.len() as f64).ceil() as usize;
            v[r.clamp(1, v.len()) - 1]
        };
        Percentiles {
            count: v.len(),
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: v.last().copied().unwrap_or_default(),
        }
    }
}

/// What one load run measured.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    pub target_rate: f64,
    pub concurrency: usize,
    pub orders: u64,
    pub submitted: u64,
    /// 202 Accepted (in flight) and 200 OK (final at once).
    pub accepted_202: u64,
    pub accepted_200: u64,
    /// Other HTTP statuses, by status and error code (`422 too_many_refunds`).
    pub rejected: BTreeMap<String, u64>,
    /// No HTTP answer (connection error, timeout).
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Requests that started more than 2 ms after their due time (no worker was free).
    pub late_starts: u64,
    /// From the first due time to the last answer.
    pub elapsed: Duration,
    /// POST /refunds latency counted from the due time (includes waiting for a worker).
    pub latency_from_due: Percentiles,
    /// POST /refunds latency counted from the actual send.
    pub latency_from_send: Percentiles,
    /// The refund status in the POST answers (`PROCESSING`, `RETRY_WAIT`, ...).
    pub answer_status: BTreeMap<String, u64>,
    /// Refunds whose last_error carried this code at some point (POST answer or while settling).
    pub error_codes_seen: BTreeMap<String, u64>,
    /// Accepted refunds by final ledger status (`PENDING` = not final by the deadline).
    pub final_status: BTreeMap<String, u64>,
    /// Accepted refunds the stack submitted to WeChat more than once (attempts > 1).
    pub retried: u64,
    /// From the send to the ledger's SUCCESS, for refunds that ended SUCCESS.
    pub time_to_success: Percentiles,
    /// From the last answer until every accepted refund was final (or the deadline).
    pub settle_wait: Duration,
    /// Accepted refunds still not final at the deadline.
    pub unsettled: u64,
    pub books: BooksCheck,
}

impl BenchReport {
    pub fn accepted(&self) -> u64 {
        self.accepted_202 + self.accepted_200
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Answers per second over the whole run.
    pub fn achieved_rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            (self.submitted - self.errors) as f64 / s
        } else {
            0.0
        }
    }

    /// Every accepted refund settled and the books match.
    pub fn passed(&self) -> bool {
        self.unsettled == 0 && self.books.passed()
    }

    /// The run kept up: achieved >= 95% of target and p99 (from due time) under `p99_target`.
    pub fn meets(&self, p99_target: Duration) -> bool {
        self.errors == 0
            && self.achieved_rate() >= SWEEP_MIN_SHARE * self.target_rate
            && self.latency_from_due.p99 < p99_target
    }
}

pub(super) fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn pcts(p: &Percentiles) -> String {
    if p.count == 0 {
        return "n/a".into();
    }
    format!(
        "{} / {} / {} / {}",
        ms(p.p50),
        ms(p.p95),
        ms(p.p99),
        ms(p.max)
    )
}

pub(super) fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as a Markdown table (pasteable into BENCHMARKS.md).
pub fn render(cfg: &BenchConfig, r: &BenchReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{} refunds at {}/s, {} workers, {} orders ({} fen per refund); sandbox: settle {:?}, apply {} qps, failing {} qps, books {}; stack pacing {} applies/s; poller every {:?}\n\n",
        cfg.refunds,
        cfg.rate,
        cfg.concurrency,
        cfg.orders,
        cfg.refund_fee,
        cfg.settle_after,
        cfg.sandbox_apply_qps,
        cfg.sandbox_failure_qps,
        if cfg.sandbox_persist {
            "saved to disk"
        } else {
            "in memory"
        },
        cfg.client_apply_qps,
        cfg.poll_every,
    ));
    let rows: Vec<(&str, String)> = vec![
        ("refunds submitted", r.submitted.to_string()),
        (
            "accepted (202 / 200)",
            format!("{} ({} / {})", r.accepted(), r.accepted_202, r.accepted_200),
        ),
        ("rejected, by status", counts(&r.rejected)),
        (
            "errors (no HTTP answer)",
            if r.error_samples.is_empty() {
                r.errors.to_string()
            } else {
                format!("{} (e.g. {})", r.errors, r.error_samples.join("; "))
            },
        ),
        (
            "achieved",
            format!(
                "{:.1} refunds/s (target {}; {} late starts > 2 ms)",
                r.achieved_rate(),
                r.target_rate,
                r.late_starts
            ),
        ),
        (
            "POST /refunds latency from due time p50 / p95 / p99 / max",
            pcts(&r.latency_from_due),
        ),
        (
            "POST /refunds latency from send p50 / p95 / p99 / max",
            pcts(&r.latency_from_send),
        ),
        ("refund status in the POST answer", counts(&r.answer_status)),
        (
            "refunds that met an error code (then retried)",
            counts(&r.error_codes_seen),
        ),
        (
            "re-submitted by the stack (attempts > 1)",
            r.retried.to_string(),
        ),
        (
            "time to SUCCESS (send → ledger SUCCESS) p50 / p95 / p99 / max",
            pcts(&r.time_to_success),
        ),
        ("final status of accepted refunds", counts(&r.final_status)),
        (
            "all final after the last answer in",
            if r.unsettled == 0 {
                format!("{:.1} s", r.settle_wait.as_secs_f64())
            } else {
                format!(
                    "not all: {} still pending after {:.1} s",
                    r.unsettled,
                    r.settle_wait.as_secs_f64()
                )
            },
        ),
        (
            "sandbox books == ledger",
            if r.books.passed() {
                format!(
                    "PASS: {} orders, {} refunds in the sandbox, {} in the ledger; none twice, none over total or 50; {} applies re-sent (max {} calls per number)",
                    r.books.orders,
                    r.books.sandbox_refunds,
                    r.books.ledger_refunds,
                    r.books.resent_applies,
                    r.books.max_apply_calls
                )
            } else {
                format!("FAIL: {}", r.books.problems.join("; "))
            },
        ),
    ];
    s.push_str("| | |\n|---|---|\n");
    for (k, v) in rows {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(v);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p95, Duration::from_millis(95));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
        let one = Percentiles::of(vec![Duration::from_millis(7)]);
        assert_eq!(one.p50, Duration::from_millis(7));
        assert_eq!(one.p99, Duration::from_millis(7));
    }
}
