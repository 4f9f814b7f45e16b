//! [`BenchConfig`]: one load run's parameters, from the flags or from a test, and their checks.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use super::cli::BenchArgs;
use crate::stack::{WECHAT_APPLY_QPS, WECHAT_FAILURE_QPS};

/// One load run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub refunds: u64,
    pub rate: f64,
    pub concurrency: usize,
    pub orders: u64,
    pub refund_fee: u64,
    pub settle_after: Duration,
    pub poll_every: Duration,
    pub sandbox_apply_qps: u32,
    pub sandbox_failure_qps: u32,
    pub client_apply_qps: u32,
    pub sandbox_persist: bool,
    pub settle_timeout: Duration,
    /// `None`: a temporary directory, removed afterwards.
    pub data_dir: Option<PathBuf>,
    pub progress: bool,
}

impl BenchConfig {
    /// `refunds` at `rate`, 10 refunds per order, WeChat's limits, no progress bars.
    pub fn new(refunds: u64, rate: f64) -> Self {
        BenchConfig {
            refunds,
            rate,
            concurrency: 32,
            orders: refunds.div_ceil(10).max(1),
            refund_fee: 100,
            settle_after: Duration::from_millis(200),
            poll_every: Duration::from_millis(500),
            sandbox_apply_qps: WECHAT_APPLY_QPS,
            sandbox_failure_qps: WECHAT_FAILURE_QPS,
            client_apply_qps: WECHAT_APPLY_QPS,
            sandbox_persist: false,
            settle_timeout: Duration::from_secs(60),
            data_dir: None,
            progress: false,
        }
    }

    pub(super) fn from_args(a: &BenchArgs) -> Self {
        let per_order = a.refunds_per_order.max(1);
        BenchConfig {
            refunds: a.refunds,
            rate: a.rate,
            concurrency: a.concurrency,
            orders: a.orders.unwrap_or(a.refunds.div_ceil(per_order)).max(1),
            refund_fee: a.refund_fee,
            settle_after: a.settle_after,
            poll_every: a.poll_every,
            sandbox_apply_qps: a.apply_qps,
            sandbox_failure_qps: a.failure_qps,
            client_apply_qps: a.client_qps.unwrap_or(a.apply_qps),
            sandbox_persist: a.sandbox_persist,
            settle_timeout: a.settle_timeout,
            data_dir: a.data_dir.clone(),
            progress: !a.quiet && std::io::stderr().is_terminal(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if self.refunds == 0 {
            return Err("--refunds must be at least 1".into());
        }
        // Below 0.1/s a run takes hours; above 1e6/s the schedule is finer than the timer.
        if !(0.1..=1e6).contains(&self.rate) {
            return Err(format!(
                "--rate must be between 0.1 and 1000000, got {}",
                self.rate
            ));
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if self.refund_fee == 0 || self.refund_fee > wxpay::money::MAX_FEN {
            return Err("--refund-fee must be a positive number of fen".into());
        }
        if self.order_total().is_none() {
            return Err("--refund-fee times refunds per order is more than WeChat allows".into());
        }
        if self.sandbox_apply_qps == 0 || self.sandbox_failure_qps == 0 {
            return Err("--apply-qps and --failure-qps must be at least 1".into());
        }
        if self.client_apply_qps == 0 {
            return Err("--client-qps must be at least 1".into());
        }
        Ok(())
    }

    /// Each order's total: enough for every refund the run sends to it.
    pub(super) fn order_total(&self) -> Option<u64> {
        let per_order = self.refunds.div_ceil(self.orders.max(1));
        per_order
            .checked_mul(self.refund_fee)
            .filter(|t| *t <= wxpay::money::MAX_FEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_fit_their_refunds_and_bad_flags_are_refused() {
        let c = BenchConfig::new(25, 50.0);
        assert_eq!(c.orders, 3);
        assert_eq!(c.order_total(), Some(900));
        assert!(c.validate().is_ok());
        for bad in [
            BenchConfig {
                rate: 0.0,
                ..c.clone()
            },
            BenchConfig {
                rate: f64::NAN,
                ..c.clone()
            },
            BenchConfig {
                concurrency: 0,
                ..c.clone()
            },
            BenchConfig {
                refunds: 0,
                ..c.clone()
            },
            BenchConfig {
                refund_fee: u64::MAX,
                ..c.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
