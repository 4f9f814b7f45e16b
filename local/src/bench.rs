//! `wxrefund-local bench`: the load command of issue 7. It starts the same stack as the default run
//! (sandbox, embedded ledger, axum routes, poller) in-process on free loopback ports, creates paid
//! orders in the sandbox, fires `POST /refunds` over real HTTP at a paced rate, waits until every
//! accepted refund is final, and checks the sandbox's books against the ledger.
//!
//! Pacing is open-loop: request `i` is due at `start + i / rate` whatever happened to the ones
//! before it, and its latency is counted from that due time as well as from the actual send. A
//! closed loop (send the next one when a worker is free) would slow down with the server and hide
//! exactly the queueing a saturated server causes ("coordinated omission").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;
use wxpay::{OrderRef, OutTradeNo};
use wxpay_sandbox::{Books, NewOrder};
use wxrefund::ledger::Ledger;
use wxrefund::state::{MAX_REFUNDS_PER_ORDER, RefundRecord, RefundStatus, UnixMillis};

use crate::stack::{
    BoxError, Stack, StackConfig, WECHAT_APPLY_QPS, WECHAT_FAILURE_QPS, context, parse_duration,
};

/// A request that starts later than this after its due time found no free worker (tokio's timer
/// has a 1 ms resolution, so anything below is timer noise).
const LATE_AFTER: Duration = Duration::from_millis(2);
/// How often the ledger is read while waiting for refunds to settle.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// A request that takes longer than this is counted as an error (the stack's own WeChat timeout
/// plus pacing is 7 s, so a healthy stack never gets near it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The HTTP server gets this long to drain before the bench gives up on a clean stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The saturation criterion: achieved throughput at least this share of the target rate.
const SWEEP_MIN_SHARE: f64 = 0.95;

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

    fn from_args(a: &BenchArgs) -> Self {
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

    fn validate(&self) -> Result<(), String> {
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
    fn order_total(&self) -> Option<u64> {
        let per_order = self.refunds.div_ceil(self.orders.max(1));
        per_order
            .checked_mul(self.refund_fee)
            .filter(|t| *t <= wxpay::money::MAX_FEN)
    }
}

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

/// The sandbox's books against the ledger, after the run.
#[derive(Clone, Debug, Default)]
pub struct BooksCheck {
    pub orders: usize,
    /// Refunds the sandbox holds (refund records at "WeChat").
    pub sandbox_refunds: usize,
    /// Refunds the ledger holds (FAILED ones included).
    pub ledger_refunds: usize,
    /// Sandbox refunds whose number was sent in more than one apply request (idempotent resends).
    pub resent_applies: usize,
    pub max_apply_calls: u32,
    /// Everything that does not match; empty = pass.
    pub problems: Vec<String>,
}

impl BooksCheck {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
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

/// How one POST ended.
#[derive(Clone, Debug)]
enum Answer {
    Http {
        status: u16,
        /// `status` of the refund in a 200/202 answer.
        refund_status: Option<String>,
        /// `last_error.code` of a 200/202 answer, or `error` of an error answer.
        code: Option<String>,
    },
    Failed(String),
}

#[derive(Clone, Debug)]
struct Sample {
    index: u64,
    due: Instant,
    sent: Instant,
    done: Instant,
    sent_wall: UnixMillis,
    answer: Answer,
}

/// Numbers of one run; the tag keeps runs on a reused `--data-dir` apart.
struct Naming {
    tag: u64,
    orders: u64,
}

impl Naming {
    fn order(&self, j: u64) -> String {
        format!("bo{}o{j}", self.tag)
    }
    fn refund(&self, i: u64) -> String {
        format!("bo{}r{i}", self.tag)
    }
    fn order_of(&self, i: u64) -> u64 {
        i % self.orders
    }
}

fn progress_bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    // A bad template is a programming error, but not worth failing a benchmark for.
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

/// Runs one load run on a fresh stack and returns what it measured.
pub async fn run_bench(cfg: &BenchConfig) -> Result<BenchReport, BoxError> {
    cfg.validate()?;
    let order_total = cfg.order_total().ok_or("order total out of range")?;
    // Kept alive until the end of the run: dropping it removes the directory.
    let temp = match &cfg.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("wxrefund-bench-")
                .tempdir()
                .map_err(context("creating a temporary data dir"))?,
        ),
    };
    let data_dir = match (&cfg.data_dir, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => return Err("no data dir".into()),
    };
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let stack = Stack::start(&StackConfig {
        settle_after: cfg.settle_after,
        poll_every: cfg.poll_every,
        sandbox_apply_qps: cfg.sandbox_apply_qps,
        sandbox_failure_qps: cfg.sandbox_failure_qps,
        client_apply_qps: cfg.client_apply_qps,
        sandbox_persist: cfg.sandbox_persist,
        ..StackConfig::new(loopback, loopback, data_dir)
    })
    .await?;
    let books = stack
        .sandbox
        .as_ref()
        .map(|(sb, _)| sb.books().clone())
        .ok_or("the bench needs the built-in sandbox")?;
    let ledger = Arc::clone(stack.svc.ledger());
    let api = format!("http://{}", stack.api_addr);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(stack.serve(async move {
        let _ = stop_rx.await;
    }));

    let result = drive(cfg, order_total, &api, &books, ledger.as_ref()).await;

    let _ = stop_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "bench: the stack stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "bench: the stack's task failed"),
        Err(_) => tracing::warn!("bench: the stack did not stop within 10 s; leaving it"),
    }
    drop(temp);
    result
}

/// Orders, load, settle, check: everything between starting and stopping the stack.
async fn drive(
    cfg: &BenchConfig,
    order_total: u64,
    api: &str,
    books: &Books,
    ledger: &dyn Ledger,
) -> Result<BenchReport, BoxError> {
    let naming = Arc::new(Naming {
        tag: UnixMillis::now().get(),
        orders: cfg.orders,
    });
    for j in 0..cfg.orders {
        books
            .create_order(NewOrder {
                out_trade_no: naming.order(j),
                total_fee: order_total,
                ..NewOrder::default()
            })
            .map_err(context(format!("creating order {}", naming.order(j))))?;
    }

    let samples = load(cfg, api, order_total, &naming).await?;
    let mut report = BenchReport {
        target_rate: cfg.rate,
        concurrency: cfg.concurrency,
        orders: cfg.orders,
        submitted: samples.len() as u64,
        ..BenchReport::default()
    };
    summarize_answers(&mut report, &samples);

    // Accepted refunds by order; only these must become final.
    let mut pending: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut sent_wall: HashMap<String, UnixMillis> = HashMap::new();
    let mut codes: HashMap<String, BTreeSet<String>> = HashMap::new();
    for s in &samples {
        if let Answer::Http {
            status: 200 | 202,
            code,
            ..
        } = &s.answer
        {
            let no = naming.refund(s.index);
            pending
                .entry(naming.order_of(s.index))
                .or_default()
                .insert(no.clone());
            sent_wall.insert(no.clone(), s.sent_wall);
            if let Some(c) = code {
                codes.entry(no).or_default().insert(c.clone());
            }
        }
    }
    let accepted = report.accepted();
    let last_answer = Instant::now();
    let finals = settle(cfg, ledger, &naming, pending, accepted, &mut codes).await?;
    report.settle_wait = last_answer.elapsed();

    // The final snapshot: every order's ledger records.
    let mut ledger_by_order: BTreeMap<u64, Vec<RefundRecord>> = BTreeMap::new();
    for j in 0..cfg.orders {
        ledger_by_order.insert(j, ledger.list_by_order(&order_ref(&naming, j)?).await?);
    }
    let mut time_to_success = Vec::new();
    for recs in ledger_by_order.values() {
        for r in recs {
            let Some(sent) = sent_wall.get(r.out_refund_no.as_str()) else {
                continue;
            };
            let name = if r.status.is_final() {
                r.status.as_str()
            } else {
                "PENDING"
            };
            *report.final_status.entry(name.to_string()).or_default() += 1;
            if r.attempts > 1 {
                report.retried += 1;
            }
            if let Some(e) = &r.last_error {
                codes
                    .entry(r.out_refund_no.to_string())
                    .or_default()
                    .insert(e.code.clone());
            }
            if r.status == RefundStatus::Success {
                time_to_success.push(Duration::from_millis(
                    r.updated_at.get().saturating_sub(sent.get()),
                ));
            }
        }
    }
    report.unsettled = accepted.saturating_sub(finals);
    report.time_to_success = Percentiles::of(time_to_success);
    for set in codes.values() {
        for c in set {
            *report.error_codes_seen.entry(c.clone()).or_default() += 1;
        }
    }
    report.books = check_books(books, ledger, &naming, &ledger_by_order, &samples).await?;
    Ok(report)
}

fn order_ref(naming: &Naming, j: u64) -> Result<OrderRef, BoxError> {
    let no = OutTradeNo::new(naming.order(j)).map_err(context("order number"))?;
    Ok(OrderRef::OutTradeNo(no))
}

/// Fires the refunds: `concurrency` workers take the next index, wait for its due time, send.
async fn load(
    cfg: &BenchConfig,
    api: &str,
    order_total: u64,
    naming: &Arc<Naming>,
) -> Result<Vec<Sample>, BoxError> {
    // One client for all workers: one connection pool, as a real caller would have.
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(cfg.concurrency)
        .build()
        .map_err(context("building the HTTP client"))?;
    let url = Arc::new(format!("{api}/refunds"));
    let next = Arc::new(AtomicU64::new(0));
    let pb = progress_bar(cfg.progress, cfg.refunds, "refunds");
    // A short lead so that the first requests are not late because the workers were being spawned.
    let start = Instant::now() + Duration::from_millis(20);
    let mut workers = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let (client, url, next, naming, pb) = (
            client.clone(),
            Arc::clone(&url),
            Arc::clone(&next),
            Arc::clone(naming),
            pb.clone(),
        );
        let (n, rate, fee) = (cfg.refunds, cfg.rate, cfg.refund_fee);
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let offset = Duration::try_from_secs_f64(i as f64 / rate).unwrap_or(Duration::MAX);
                let due = start.checked_add(offset).unwrap_or(start);
                tokio::time::sleep_until(due).await;
                let body = serde_json::json!({
                    "out_refund_no": naming.refund(i),
                    "out_trade_no": naming.order(naming.order_of(i)),
                    "total_fee": order_total,
                    "refund_fee": fee,
                })
                .to_string();
                let sent = Instant::now();
                let sent_wall = UnixMillis::now();
                let answer = post(&client, &url, body).await;
                out.push(Sample {
                    index: i,
                    due,
                    sent,
                    done: Instant::now(),
                    sent_wall,
                    answer,
                });
                pb.inc(1);
            }
            out
        }));
    }
    let mut samples = Vec::with_capacity(usize::try_from(cfg.refunds).unwrap_or(0));
    for w in workers {
        samples.extend(w.await.map_err(context("a load worker failed"))?);
    }
    pb.finish_and_clear();
    samples.sort_by_key(|s| s.index);
    Ok(samples)
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> Answer {
    let resp = match client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let status = resp.status().as_u16();
    // Reading the whole body lets the connection go back to the pool.
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Answer::Failed(format!("reading the {status} answer: {e}")),
    };
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    Answer::Http {
        status,
        refund_status: text(json.get("status")),
        code: text(json.pointer("/last_error/code")).or_else(|| text(json.get("error"))),
    }
}

fn summarize_answers(report: &mut BenchReport, samples: &[Sample]) {
    let mut from_due = Vec::with_capacity(samples.len());
    let mut from_send = Vec::with_capacity(samples.len());
    let first_due = samples.iter().map(|s| s.due).min();
    let last_done = samples.iter().map(|s| s.done).max();
    if let (Some(a), Some(b)) = (first_due, last_done) {
        report.elapsed = b.saturating_duration_since(a);
    }
    for s in samples {
        if s.sent.saturating_duration_since(s.due) > LATE_AFTER {
            report.late_starts += 1;
        }
        match &s.answer {
            Answer::Http {
                status,
                refund_status,
                code,
            } => {
                from_due.push(s.done.saturating_duration_since(s.due));
                from_send.push(s.done.saturating_duration_since(s.sent));
                match status {
                    202 => report.accepted_202 += 1,
                    200 => report.accepted_200 += 1,
                    other => {
                        let key = match code {
                            Some(c) => format!("{other} {c}"),
                            None => other.to_string(),
                        };
                        *report.rejected.entry(key).or_default() += 1;
                    }
                }
                if let Some(st) = refund_status {
                    *report.answer_status.entry(st.clone()).or_default() += 1;
                }
            }
            Answer::Failed(e) => {
                report.errors += 1;
                if report.error_samples.len() < 5 {
                    report.error_samples.push(e.clone());
                }
            }
        }
    }
    report.latency_from_due = Percentiles::of(from_due);
    report.latency_from_send = Percentiles::of(from_send);
}

/// Reads the ledger until every accepted refund is final or the deadline passes; returns how many
/// are final. Error codes met on the way are added to `codes` (a refund that went through
/// RETRY_WAIT has its last_error cleared once WeChat accepts it).
async fn settle(
    cfg: &BenchConfig,
    ledger: &dyn Ledger,
    naming: &Naming,
    mut pending: BTreeMap<u64, BTreeSet<String>>,
    accepted: u64,
    codes: &mut HashMap<String, BTreeSet<String>>,
) -> Result<u64, BoxError> {
    let deadline = Instant::now() + cfg.settle_timeout;
    let pb = progress_bar(cfg.progress, accepted, "settling");
    let mut finals = 0u64;
    loop {
        let mut done_orders = Vec::new();
        for (j, nos) in pending.iter_mut() {
            for r in ledger.list_by_order(&order_ref(naming, *j)?).await? {
                if !nos.contains(r.out_refund_no.as_str()) {
                    continue;
                }
                if let Some(e) = &r.last_error {
                    codes
                        .entry(r.out_refund_no.to_string())
                        .or_default()
                        .insert(e.code.clone());
                }
                if r.status.is_final() {
                    nos.remove(r.out_refund_no.as_str());
                    finals += 1;
                    pb.inc(1);
                }
            }
            if nos.is_empty() {
                done_orders.push(*j);
            }
        }
        for j in done_orders {
            pending.remove(&j);
        }
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    pb.finish_and_clear();
    Ok(finals)
}

/// The sandbox's books must equal the ledger, order by order.
async fn check_books(
    books: &Books,
    ledger: &dyn Ledger,
    naming: &Naming,
    ledger_by_order: &BTreeMap<u64, Vec<RefundRecord>>,
    samples: &[Sample],
) -> Result<BooksCheck, BoxError> {
    let mut c = BooksCheck::default();
    let mut owner_of: HashMap<String, String> = HashMap::new();
    let empty = Vec::new();
    for j in 0..naming.orders {
        let no = naming.order(j);
        c.orders += 1;
        let Some(view) = books.order(&no) else {
            problem(&mut c, format!("{no}: missing from the sandbox"));
            continue;
        };
        let recs = ledger_by_order.get(&j).unwrap_or(&empty);
        c.sandbox_refunds += view.refunds.len();
        c.ledger_refunds += recs.len();

        let mut sandbox: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
        for r in &view.refunds {
            if sandbox
                .insert(&r.out_refund_no, (r.refund_fee, r.status.as_str()))
                .is_some()
            {
                problem(
                    &mut c,
                    format!("{no}: {} twice in the sandbox", r.out_refund_no),
                );
            }
            if let Some(other) = owner_of.insert(r.out_refund_no.clone(), no.clone()) {
                problem(
                    &mut c,
                    format!("{}: refunded on {other} and {no}", r.out_refund_no),
                );
            }
            if r.apply_calls > 1 {
                c.resent_applies += 1;
            }
            c.max_apply_calls = c.max_apply_calls.max(r.apply_calls);
        }
        // FAILED refunds were refused by WeChat: they hold no record there.
        let mut ours: BTreeMap<&str, (u64, RefundStatus)> = BTreeMap::new();
        for r in recs {
            if r.status != RefundStatus::Failed {
                ours.insert(r.out_refund_no.as_str(), (r.refund_fee.get(), r.status));
            }
        }
        for (rno, (fee, st)) in &sandbox {
            match ours.get(rno) {
                None => problem(
                    &mut c,
                    format!("{no}: {rno} in the sandbox, not in the ledger"),
                ),
                Some((lfee, _)) if lfee != fee => problem(
                    &mut c,
                    format!("{no}: {rno} is {fee} fen in the sandbox, {lfee} in the ledger"),
                ),
                // Only a final ledger status must agree: a pending one may lag behind WeChat.
                Some((_, lst)) if lst.is_final() && lst.as_str() != *st => problem(
                    &mut c,
                    format!("{no}: {rno} is {st} in the sandbox, {lst} in the ledger"),
                ),
                Some(_) => {}
            }
        }
        for (rno, (_, st)) in &ours {
            // A refund the ledger never got to send (RECORDED / RETRY_WAIT) is legitimately absent.
            let may_be_unsent = matches!(
                st,
                RefundStatus::Recorded | RefundStatus::RetryWait | RefundStatus::Unknown
            );
            if !sandbox.contains_key(rno) && !may_be_unsent {
                problem(
                    &mut c,
                    format!("{no}: {rno} ({st}) in the ledger, not in the sandbox"),
                );
            }
        }
        if view.refunded_fee > view.total_fee {
            problem(
                &mut c,
                format!(
                    "{no}: the sandbox refunded {} of {} fen",
                    view.refunded_fee, view.total_fee
                ),
            );
        }
        if view.refund_count > MAX_REFUNDS_PER_ORDER as usize {
            problem(
                &mut c,
                format!("{no}: {} refunds in the sandbox", view.refund_count),
            );
        }
        let kept: u64 = recs
            .iter()
            .filter(|r| !r.status.releases_reservation())
            .map(|r| r.refund_fee.get())
            .sum();
        if kept > view.total_fee {
            problem(
                &mut c,
                format!(
                    "{no}: the ledger keeps {kept} of {} fen refunded",
                    view.total_fee
                ),
            );
        }
        if let Some(book) = ledger.order(&order_ref(naming, j)?).await? {
            if book.count > MAX_REFUNDS_PER_ORDER {
                problem(
                    &mut c,
                    format!("{no}: {} refunds in the ledger", book.count),
                );
            }
            if book.reserved > book.total_fee {
                problem(
                    &mut c,
                    format!(
                        "{no}: the ledger reserves {} of {}",
                        book.reserved, book.total_fee
                    ),
                );
            }
        }
    }
    // Every accepted refund is in the ledger; no refused one reached the sandbox.
    let in_ledger: BTreeSet<&str> = ledger_by_order
        .values()
        .flatten()
        .map(|r| r.out_refund_no.as_str())
        .collect();
    for s in samples {
        let rno = naming.refund(s.index);
        match &s.answer {
            Answer::Http {
                status: 200 | 202, ..
            } if !in_ledger.contains(rno.as_str()) => {
                problem(&mut c, format!("{rno}: accepted but not in the ledger"));
            }
            Answer::Http { status, .. }
                if !matches!(status, 200 | 202) && owner_of.contains_key(&rno) =>
            {
                problem(
                    &mut c,
                    format!("{rno}: answered {status} but refunded in the sandbox"),
                );
            }
            _ => {}
        }
    }
    Ok(c)
}

/// Notes a mismatch; the first 20 are enough to see what is wrong without flooding the report.
fn problem(c: &mut BooksCheck, p: String) {
    if c.problems.len() < 20 {
        c.problems.push(p);
    }
}

fn ms(d: Duration) -> String {
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

fn counts(m: &BTreeMap<String, u64>) -> String {
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
