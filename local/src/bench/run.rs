//! One load run: a fresh stack, paid orders in its sandbox, `POST /refunds` paced open-loop over
//! real HTTP, then the wait until every accepted refund is final and the books check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;
use wxpay::{OrderRef, OutTradeNo};
use wxpay_sandbox::{Books, NewOrder};
use wxrefund::ledger::Ledger;
use wxrefund::state::{RefundRecord, RefundStatus, UnixMillis};

use super::check::check_books;
use super::config::BenchConfig;
use super::report::{BenchReport, Percentiles};
use crate::stack::{BoxError, Stack, StackConfig, context};

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

/// How one POST ended.
#[derive(Clone, Debug)]
pub(super) enum Answer {
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
pub(super) struct Sample {
    pub(super) index: u64,
    due: Instant,
    sent: Instant,
    done: Instant,
    sent_wall: UnixMillis,
    pub(super) answer: Answer,
}

/// Numbers of one run; the tag keeps runs on a reused `--data-dir` apart.
pub(super) struct Naming {
    tag: u64,
    pub(super) orders: u64,
}

impl Naming {
    pub(super) fn order(&self, j: u64) -> String {
        format!("bo{}o{j}", self.tag)
    }
    pub(super) fn refund(&self, i: u64) -> String {
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

pub(super) fn order_ref(naming: &Naming, j: u64) -> Result<OrderRef, BoxError> {
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
