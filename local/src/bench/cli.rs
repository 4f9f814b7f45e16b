//! The `wxrefund-local bench` command line: its flags, its tracing setup, and the entry point that
//! runs one load run or a sweep and prints the report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::config::BenchConfig;
use super::report::render;
use super::run::run_bench;
use super::sweep::{render_sweep, run_sweep};
use crate::stack::{WECHAT_APPLY_QPS, WECHAT_FAILURE_QPS, parse_duration};

/// `wxrefund-local bench` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Refunds to send (POST /refunds).
    #[arg(long, default_value_t = 3000)]
    pub refunds: u64,
    /// Target refunds per second (open-loop: request i is due at start + i/rate).
    #[arg(long, default_value_t = 150.0)]
    pub rate: f64,
    /// Concurrent HTTP workers (a request due while all are busy starts late).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Paid orders to spread the refunds over [default: refunds / refunds-per-order, rounded up].
    #[arg(long)]
    pub orders: Option<u64>,
    /// Refunds per order when --orders is not given (WeChat allows 50 per order).
    #[arg(long, default_value_t = 10)]
    pub refunds_per_order: u64,
    /// Amount of each refund in fen (each order's total fits all of its refunds).
    #[arg(long, default_value_t = 100)]
    pub refund_fee: u64,
    /// How long sandbox refunds stay PROCESSING.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub settle_after: Duration,
    /// How often the poller drives due refunds.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub poll_every: Duration,
    /// The sandbox's refund apply limit per second (WeChat: 150).
    #[arg(long, default_value_t = WECHAT_APPLY_QPS)]
    pub apply_qps: u32,
    /// The sandbox's failing-request limit per second (WeChat: 6).
    #[arg(long, default_value_t = WECHAT_FAILURE_QPS)]
    pub failure_qps: u32,
    /// The stack's own pacing of refund applies per second [default: --apply-qps]. Set it above
    /// --apply-qps to see the sandbox answer FREQUENCY_LIMITED.
    #[arg(long)]
    pub client_qps: Option<u32>,
    /// Longest wait for every accepted refund to reach a final state.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub settle_timeout: Duration,
    /// Keep the ledger and sandbox files here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Let the sandbox save its books to disk after every change, as the default run does. Off by
    /// default: that file stands in for WeChat's own storage, whose cost is not ours, and on a
    /// small machine its fsyncs compete with the ledger's for the same disk.
    #[arg(long)]
    pub sandbox_persist: bool,
    /// No progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Find the saturation point: one run per rate in --sweep-rates, --sweep-step long each, each
    /// on a fresh stack; reports the highest rate with achieved >= 95% of target and p99 < --p99-target.
    #[arg(long)]
    pub sweep: bool,
    /// Rates (refunds/s) tried by --sweep.
    #[arg(long, value_delimiter = ',', default_value = "50,100,150,200,300,400")]
    pub sweep_rates: Vec<f64>,
    /// How long each --sweep rate is sent for.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub sweep_step: Duration,
    /// The latency target of --sweep (POST /refunds p99, counted from the due time).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub p99_target: Duration,
}

/// Logs to stderr at `error` unless `RUST_LOG` says otherwise: the stack logs a line per refund at
/// `info`, which at hundreds of refunds a second would cost CPU the benchmark is measuring.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// `wxrefund-local bench`: prints the report; fails when the books check fails.
pub async fn main(args: BenchArgs) -> ExitCode {
    let cfg = BenchConfig::from_args(&args);
    if let Err(e) = cfg.validate() {
        eprintln!("wxrefund-local bench: {e}");
        return ExitCode::FAILURE;
    }
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    if args.sweep {
        if args.sweep_rates.is_empty() {
            eprintln!("wxrefund-local bench: --sweep-rates is empty");
            return ExitCode::FAILURE;
        }
        for &r in &args.sweep_rates {
            if let Err(e) = (BenchConfig {
                rate: r,
                ..cfg.clone()
            })
            .validate()
            {
                eprintln!("wxrefund-local bench: --sweep-rates: {e}");
                return ExitCode::FAILURE;
            }
        }
        match run_sweep(
            &cfg,
            &args.sweep_rates,
            args.sweep_step,
            args.refunds_per_order,
        )
        .await
        {
            Ok(steps) => {
                println!(
                    "wxrefund-local bench --sweep ({cpus} CPUs): {:?} per rate, {} workers, sandbox apply {} qps / failing {} qps, stack pacing {} applies/s\n",
                    args.sweep_step,
                    cfg.concurrency,
                    cfg.sandbox_apply_qps,
                    cfg.sandbox_failure_qps,
                    cfg.client_apply_qps
                );
                println!("{}", render_sweep(&steps, args.p99_target));
                if steps.iter().all(|s| s.report.passed()) {
                    ExitCode::SUCCESS
                } else {
                    for s in steps.iter().filter(|s| !s.report.passed()) {
                        eprintln!(
                            "books check failed at {}/s:\n{}",
                            s.report.target_rate,
                            render(&s.config, &s.report)
                        );
                    }
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("wxrefund-local bench: {e}");
                ExitCode::FAILURE
            }
        }
    } else {
        match run_bench(&cfg).await {
            Ok(report) => {
                println!(
                    "wxrefund-local bench ({cpus} CPUs): {}",
                    render(&cfg, &report)
                );
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("wxrefund-local bench: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
