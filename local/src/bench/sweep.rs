//! The sweep: one load run per target rate, each on a fresh stack, and the saturation point (the
//! highest rate that kept up).

use std::time::Duration;

use super::config::BenchConfig;
use super::report::{BenchReport, counts, ms};
use super::run::run_bench;
use crate::stack::BoxError;

/// The saturation criterion: achieved throughput at least this share of the target rate.
pub(super) const SWEEP_MIN_SHARE: f64 = 0.95;

/// One rate of a sweep.
#[derive(Clone, Debug)]
pub struct SweepStep {
    pub config: BenchConfig,
    pub report: BenchReport,
}

/// The sweep as a Markdown table plus the saturation point.
pub fn render_sweep(steps: &[SweepStep], p99_target: Duration) -> String {
    let mut s = String::new();
    s.push_str("| target/s | refunds | achieved/s | late starts | p50 | p99 | max | answer status | error codes met | time to SUCCESS p99 | books | keeps up |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for st in steps {
        let r = &st.report;
        s.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.target_rate,
            r.submitted,
            r.achieved_rate(),
            r.late_starts,
            ms(r.latency_from_due.p50),
            ms(r.latency_from_due.p99),
            ms(r.latency_from_due.max),
            counts(&r.answer_status),
            counts(&r.error_codes_seen),
            if r.time_to_success.count > 0 {
                ms(r.time_to_success.p99)
            } else {
                "n/a".into()
            },
            if r.passed() { "PASS" } else { "FAIL" },
            if r.meets(p99_target) { "yes" } else { "no" },
        ));
    }
    match saturation_point(steps, p99_target) {
        Some(rate) => s.push_str(&format!(
            "\nSaturation point: {rate} refunds/s (the highest rate with achieved >= {:.0}% of target and p99 from due time < {}).\n",
            SWEEP_MIN_SHARE * 100.0,
            ms(p99_target)
        )),
        None => s.push_str(&format!(
            "\nSaturation point: below the lowest rate tried (none reached {:.0}% of target with p99 < {}).\n",
            SWEEP_MIN_SHARE * 100.0,
            ms(p99_target)
        )),
    }
    s
}

/// The highest rate that kept up.
pub fn saturation_point(steps: &[SweepStep], p99_target: Duration) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.report.meets(p99_target))
        .map(|s| s.report.target_rate)
        .reduce(f64::max)
}

/// Runs `base` at each rate for `step` (a fresh stack each time, so one rate's retries do not
/// spill into the next).
pub async fn run_sweep(
    base: &BenchConfig,
    rates: &[f64],
    step: Duration,
    per_order: u64,
) -> Result<Vec<SweepStep>, BoxError> {
    let mut out = Vec::new();
    for (k, &rate) in rates.iter().enumerate() {
        let refunds = ((rate * step.as_secs_f64()).round() as u64).max(1);
        let config = BenchConfig {
            refunds,
            rate,
            orders: refunds.div_ceil(per_order.max(1)),
            data_dir: base.data_dir.as_ref().map(|d| d.join(format!("sweep-{k}"))),
            ..base.clone()
        };
        if base.progress {
            eprintln!("sweep: {rate} refunds/s for {step:?} ({refunds} refunds)");
        }
        let report = run_bench(&config).await?;
        out.push(SweepStep { config, report });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Percentiles;

    #[test]
    fn saturation_is_the_highest_rate_that_keeps_up() {
        let step = |rate: f64, achieved: f64, p99_ms: u64| SweepStep {
            config: BenchConfig::new(100, rate),
            report: BenchReport {
                target_rate: rate,
                submitted: (achieved * 10.0) as u64,
                elapsed: Duration::from_secs(10),
                latency_from_due: Percentiles {
                    p99: Duration::from_millis(p99_ms),
                    ..Percentiles::default()
                },
                ..BenchReport::default()
            },
        };
        let steps = [
            step(50.0, 50.0, 10),
            step(100.0, 99.0, 20),
            step(150.0, 149.0, 40),
            step(200.0, 150.0, 900),
        ];
        let target = Duration::from_millis(50);
        assert_eq!(saturation_point(&steps, target), Some(150.0));
        assert!(!steps[3].report.meets(target));
        assert_eq!(saturation_point(&steps[3..], target), None);
        assert!(render_sweep(&steps, target).contains("Saturation point: 150 refunds/s"));
    }
}
