//! Chaos in the production topology (issue 14.3): the real Lambda binaries behind the Runtime API
//! emulator, four `refund` and two `refund-query` processes serving API Gateway events at once,
//! the scheduled poll every two seconds, two `refund-notify` processes receiving the sandbox's own
//! notification pushes, all on one moto table through the fault-injecting relay and one sandbox
//! answering with random WeChat faults; events delivered twice, merchants retrying, processes
//! SIGKILLed mid-invocation and restarted. At the end the sandbox's books and the ledger must
//! agree order by order (docs/TESTING.md, "Chaos in the production topology").
//!
//! Size: `CHAOS_REFUNDS` (default 80) refunds over a third as many orders; `CHAOS_SEED` fixes the
//! random choices of the harness and of the DynamoDB faults (default: from the clock, printed).
//! The function binaries must be built first: `cargo build -p refund -p refund-query -p
//! refund-notify` (`cargo test --workspace` builds them).

// Test support: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use wxrefund_e2e::lambda_binary::{FunctionProcess, HttpReply, Parts, http_api_event};
use wxrefund_e2e::lambda_emulator::{LambdaEmulator, Outcome};
use wxrefund_e2e::wxpay::{OrderRef, OutTradeNo};
use wxrefund_e2e::wxpay_sandbox::{BookedStatus, Fault as WxFault, FaultKind, FaultTarget};
use wxrefund_e2e::wxrefund::ledger::Ledger;
use wxrefund_e2e::wxrefund::ledger::dynamo::DynamoLedger;
use wxrefund_e2e::wxrefund::state::{RefundRecord, RefundStatus};
use wxrefund_e2e::wxrefund::testing::{
    CancelCode, Fault as DbFault, FaultRule, Faults, Op, fault_relay,
};

const REFUND_PROCESSES: usize = 4;
const QUERY_PROCESSES: usize = 2;
/// WeChat pushes notifications as refunds settle, so refund-notify scales out too.
const NOTIFY_PROCESSES: usize = 2;
const NOTIFY_PATH: &str = "/wxpay/refund-notify";
/// API Gateway's client gives up on an invocation after this (its integration timeout is 30 s; the
/// WeChat client's own total timeout is 10 s, so only a stuck process gets here).
const API_TIMEOUT: Duration = Duration::from_secs(25);
/// A merchant sends one refund request at most this many times before giving up on an answer.
const MERCHANT_ATTEMPTS: u32 = 10;
/// How often EventBridge Scheduler sends the poll (production: every minute).
const POLL_EVERY: Duration = Duration::from_secs(2);

// ---- size and seed ----------------------------------------------------------------------------

struct Size {
    refunds: usize,
    orders: usize,
    seed: u64,
    /// Merchants sending at once.
    concurrency: usize,
    /// Most processes SIGKILLed during the run.
    max_kills: usize,
}

impl Size {
    fn from_env() -> Size {
        let refunds = std::env::var("CHAOS_REFUNDS")
            .ok()
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .expect("CHAOS_REFUNDS is a number")
            })
            .unwrap_or(80)
            .max(1);
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .map(|s| s.trim().parse::<u64>().expect("CHAOS_SEED is a number"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(1)
            });
        Size {
            refunds,
            orders: refunds.div_ceil(3),
            seed,
            concurrency: 8,
            max_kills: (refunds / 8).clamp(6, 60),
        }
    }
}

/// splitmix64: the harness's random choices, reproducible from the seed (timing aside).
struct Rng(Mutex<u64>);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(Mutex::new(seed))
    }

    fn next(&self) -> u64 {
        let mut s = self.0.lock().unwrap();
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `lo..=hi`.
    fn range(&self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    fn millis(&self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

// ---- the function binaries ---------------------------------------------------------------------

/// A function binary from the target profile directory this test was built in
/// (`target/debug/deps/chaos-…` → `target/debug/<name>`): only a package's own binaries get
/// `CARGO_BIN_EXE_*`, and these are other packages'.
fn function_binary(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from <target>/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the function binaries first with \
         `cargo build -p refund -p refund-query -p refund-notify` (`cargo test --workspace` \
         builds them before running the tests)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

// ---- process pools -------------------------------------------------------------------------------

/// One running process of a function, with its own Runtime API endpoint (one Lambda instance).
struct Instance {
    emulator: Arc<LambdaEmulator>,
    process: FunctionProcess,
    /// Invocations handed to this instance and not finished.
    load: Arc<AtomicUsize>,
}

/// The instances of one function: each event goes to the least loaded one, as the Lambda service
/// routes to an idle instance.
struct Pool {
    function: &'static str,
    binary: String,
    parts: Arc<Parts>,
    extra_env: Vec<(String, String)>,
    slots: Vec<Mutex<Instance>>,
    /// Logs of the processes killed so far, or that exited on their own.
    dead_logs: Mutex<Vec<String>>,
    /// Logs of the processes that exited on their own (a failed cold start exits 1).
    exits: Mutex<Vec<String>>,
    kills: AtomicUsize,
    /// Invocations that were running in a process when it was killed.
    killed_in_flight: AtomicUsize,
    restarts: AtomicUsize,
}

impl Pool {
    async fn start(
        function: &'static str,
        parts: &Arc<Parts>,
        extra_env: Vec<(String, String)>,
        size: usize,
    ) -> Arc<Pool> {
        let binary = function_binary(function);
        let mut slots = Vec::new();
        for _ in 0..size {
            slots.push(Mutex::new(
                Self::instance(function, &binary, parts, &extra_env).await,
            ));
        }
        Arc::new(Pool {
            function,
            binary,
            parts: Arc::clone(parts),
            extra_env,
            slots,
            dead_logs: Mutex::new(Vec::new()),
            exits: Mutex::new(Vec::new()),
            kills: AtomicUsize::new(0),
            killed_in_flight: AtomicUsize::new(0),
            restarts: AtomicUsize::new(0),
        })
    }

    async fn instance(
        function: &'static str,
        binary: &str,
        parts: &Parts,
        extra_env: &[(String, String)],
    ) -> Instance {
        let emulator = Arc::new(
            LambdaEmulator::start(function)
                .await
                .expect("start an emulator"),
        );
        let mut env = parts.function_env(&emulator, function);
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        Instance {
            process: FunctionProcess::spawn(binary, &env),
            emulator,
            load: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sends `event` to the least loaded instance and waits for its outcome (or API Gateway's
    /// timeout).
    async fn invoke(&self, event: &Value, rng: &Rng) -> Result<Outcome, String> {
        let start = (rng.next() as usize) % self.slots.len();
        let (invocation, load) = {
            let chosen = (0..self.slots.len())
                .map(|i| (start + i) % self.slots.len())
                .min_by_key(|&i| self.slots[i].lock().unwrap().load.load(Ordering::SeqCst))
                .unwrap_or(0);
            let slot = self.slots[chosen].lock().unwrap();
            slot.load.fetch_add(1, Ordering::SeqCst);
            (slot.emulator.enqueue(event), Arc::clone(&slot.load))
        };
        let result = invocation.outcome(API_TIMEOUT).await;
        load.fetch_sub(1, Ordering::SeqCst);
        result.map_err(|e| e.to_string())
    }

    /// SIGKILLs one process that is running an invocation (none running: nothing happens) and
    /// starts a new one in its place, on a new Runtime API endpoint. True when one was killed.
    async fn kill_one_mid_invocation(&self, rng: &Rng) -> bool {
        let busy: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                !self.slots[i]
                    .lock()
                    .unwrap()
                    .emulator
                    .in_flight()
                    .is_empty()
            })
            .collect();
        if busy.is_empty() {
            return false;
        }
        let victim = busy[(rng.next() as usize) % busy.len()];
        let fresh = Self::instance(self.function, &self.binary, &self.parts, &self.extra_env).await;
        let old = std::mem::replace(&mut *self.slots[victim].lock().unwrap(), fresh);
        let logs = old.process.kill();
        let (in_flight, _queued) = old.emulator.process_died("signal: killed");
        self.dead_logs.lock().unwrap().push(logs);
        self.kills.fetch_add(1, Ordering::SeqCst);
        self.restarts.fetch_add(1, Ordering::SeqCst);
        self.killed_in_flight.fetch_add(in_flight, Ordering::SeqCst);
        true
    }

    /// Starts a new instance in place of each one whose process exited on its own, as Lambda
    /// starts a new instance for the next invocation after a failed init (a cold start that
    /// cannot read its secret in time exits 1). Returns how many.
    async fn revive_exited(&self) -> usize {
        let mut revived = 0;
        for i in 0..self.slots.len() {
            if self.slots[i].lock().unwrap().process.try_exit().is_none() {
                continue;
            }
            let fresh =
                Self::instance(self.function, &self.binary, &self.parts, &self.extra_env).await;
            let old = std::mem::replace(&mut *self.slots[i].lock().unwrap(), fresh);
            let logs = old.process.kill();
            old.emulator.process_died("Runtime exited");
            self.exits.lock().unwrap().push(logs.clone());
            self.dead_logs.lock().unwrap().push(logs);
            self.restarts.fetch_add(1, Ordering::SeqCst);
            revived += 1;
        }
        revived
    }

    /// The logs of every process this pool ran, the killed ones included.
    fn all_logs(&self) -> Vec<String> {
        let mut out = self.dead_logs.lock().unwrap().clone();
        for slot in &self.slots {
            out.push(slot.lock().unwrap().process.logs());
        }
        out
    }

    fn all_alive(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.lock().unwrap().process.try_exit().is_none())
    }
}

// ---- merchants -----------------------------------------------------------------------------------

struct Order {
    out_trade_no: String,
    total_fee: u64,
}

#[derive(Clone)]
struct Intent {
    out_refund_no: String,
    order: usize,
    refund_fee: u64,
}

/// What the merchants saw, summed over all of them.
#[derive(Default)]
struct Tally {
    sends: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    gave_up: AtomicU64,
    /// Answers by HTTP status (0: the invocation failed or timed out).
    by_status: Mutex<BTreeMap<u16, u64>>,
    gets: AtomicU64,
    notifications: AtomicU64,
    notifications_refused: AtomicU64,
    polls: AtomicU64,
    polls_failed: AtomicU64,
    poll_examined: AtomicU64,
    poll_settled: AtomicU64,
    poll_errors: AtomicU64,
}

/// What a merchant learnt about its refund: whether it was answered 2xx at least once.
#[derive(Clone, Debug, Default)]
struct Answered {
    accepted: bool,
}

struct Harness {
    parts: Arc<Parts>,
    refund: Arc<Pool>,
    query: Arc<Pool>,
    notify: Arc<Pool>,
    rng: Rng,
    tally: Tally,
    orders: Vec<Order>,
}

impl Harness {
    fn body(&self, intent: &Intent) -> String {
        let order = &self.orders[intent.order];
        json!({
            "out_refund_no": intent.out_refund_no,
            "out_trade_no": order.out_trade_no,
            "total_fee": order.total_fee,
            "refund_fee": intent.refund_fee,
        })
        .to_string()
    }

    /// One POST /refunds as API Gateway delivers it: the HTTP status (0 when the invocation
    /// failed: the process died, the function errored, or no answer in time) and the body.
    async fn send(&self, body: &str) -> (u16, String) {
        self.tally.sends.fetch_add(1, Ordering::SeqCst);
        let event = http_api_event("POST", "/refunds", "application/json", Some(body));
        let answer = match self.refund.invoke(&event, &self.rng).await {
            Ok(outcome @ Outcome::Response(_)) => {
                let reply = HttpReply::from_outcome(&outcome);
                (reply.status, reply.body)
            }
            Ok(Outcome::Error { error_type, .. }) => (0, format!("{error_type:?}")),
            Err(e) => (0, e),
        };
        *self
            .tally
            .by_status
            .lock()
            .unwrap()
            .entry(answer.0)
            .or_default() += 1;
        answer
    }

    /// A merchant asking for one refund until it gets an answer: some requests delivered twice
    /// at once (API Gateway retrying), some sent again after the answer (the merchant retrying).
    async fn merchant(self: Arc<Self>, intent: Intent) -> Answered {
        let body = self.body(&intent);
        let mut answered = Answered::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (status, text) = if self.rng.chance(250) {
                self.tally.duplicates.fetch_add(1, Ordering::SeqCst);
                let (a, b) = tokio::join!(self.send(&body), self.send(&body));
                // The merchant reads whichever answer is more of an answer.
                if a.0 != 0 && (a.0 / 100 == 2 || b.0 == 0) {
                    note(&mut answered, &b, &intent);
                    a
                } else {
                    note(&mut answered, &a, &intent);
                    b
                }
            } else {
                self.send(&body).await
            };
            note(&mut answered, &(status, text.clone()), &intent);
            let final_answer = matches!(status, 200 | 202 | 400 | 404 | 422)
                || (status == 409 && !text.contains("in_progress"));
            if final_answer {
                break;
            }
            if attempt >= MERCHANT_ATTEMPTS {
                self.tally.gave_up.fetch_add(1, Ordering::SeqCst);
                break;
            }
            self.tally.retries.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.rng.millis(200, 1500)).await;
        }
        // Some merchants send the same request again later (a replay must answer the same).
        if self.rng.chance(150) {
            tokio::time::sleep(self.rng.millis(0, 3000)).await;
            self.tally.duplicates.fetch_add(1, Ordering::SeqCst);
            let again = self.send(&body).await;
            note(&mut answered, &again, &intent);
        }
        // And some read it back through refund-query.
        if self.rng.chance(300) {
            self.tally.gets.fetch_add(1, Ordering::SeqCst);
            let path = format!("/refunds/{}", intent.out_refund_no);
            let event = http_api_event("GET", &path, "application/json", None);
            if let Ok(outcome @ Outcome::Response(_)) = self.query.invoke(&event, &self.rng).await {
                let reply = HttpReply::from_outcome(&outcome);
                if answered.accepted {
                    assert_ne!(
                        reply.status, 404,
                        "{} was accepted but GET does not find it",
                        intent.out_refund_no
                    );
                }
                if reply.status == 200 {
                    let view = reply.json();
                    assert_eq!(view["out_refund_no"], intent.out_refund_no.as_str());
                    assert_eq!(view["refund_fee"], intent.refund_fee, "{view}");
                }
            }
        }
        answered
    }
}

/// Folds one answer into what the merchant knows, failing on answers that must never come.
fn note(answered: &mut Answered, (status, text): &(u16, String), intent: &Intent) {
    match status {
        200 | 202 => {
            let view: Value = serde_json::from_str(text).expect("a refund view");
            assert_eq!(
                view["out_refund_no"],
                intent.out_refund_no.as_str(),
                "{view}"
            );
            assert_eq!(view["refund_fee"], intent.refund_fee, "{view}");
            answered.accepted = true;
        }
        422 => {}
        400 | 404 => panic!(
            "{}: a valid request answered {status}: {text}",
            intent.out_refund_no
        ),
        409 if !text.contains("in_progress") => panic!(
            "{}: the same request refused as another one: {text}",
            intent.out_refund_no
        ),
        _ => {}
    }
}

// ---- WeChat's notification pushes into refund-notify ---------------------------------------------

/// The public route API Gateway serves for WeChat: each push becomes an HTTP API event for the
/// `refund-notify` process, and its answer goes back to the sandbox.
async fn notify_route(State(h): State<Arc<Harness>>, headers: HeaderMap, body: Bytes) -> Response {
    h.tally.notifications.fetch_add(1, Ordering::SeqCst);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/xml")
        .to_owned();
    let text = String::from_utf8_lossy(&body).into_owned();
    let event = http_api_event("POST", NOTIFY_PATH, &content_type, Some(&text));
    match h.notify.invoke(&event, &h.rng).await {
        Ok(outcome @ Outcome::Response(_)) => {
            let reply = HttpReply::from_outcome(&outcome);
            if !reply.body.contains("SUCCESS") {
                h.tally.notifications_refused.fetch_add(1, Ordering::SeqCst);
            }
            let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
            (
                status,
                [(header::CONTENT_TYPE, reply.content_type)],
                reply.body,
            )
                .into_response()
        }
        _ => {
            h.tally.notifications_refused.fetch_add(1, Ordering::SeqCst);
            (StatusCode::BAD_GATEWAY, "Internal server error").into_response()
        }
    }
}

// ---- faults --------------------------------------------------------------------------------------

/// DynamoDB's failures, each at a modest rate (per mille of the requests it can hit).
fn dynamo_faults(faults: &Faults) {
    let throttled = DbFault::TransactionCanceled(CancelCode::ThrottlingError);
    let conflict = DbFault::TransactionCanceled(CancelCode::TransactionConflict);
    let capacity = DbFault::TransactionCanceled(CancelCode::ProvisionedThroughputExceeded);
    faults
        .add(FaultRule::per_mille(20, Op::TransactWriteItems, throttled))
        .add(FaultRule::per_mille(20, Op::TransactWriteItems, conflict))
        .add(FaultRule::per_mille(10, Op::TransactWriteItems, capacity))
        .add(FaultRule::per_mille(
            15,
            Op::TransactWriteItems,
            DbFault::ReplyLost,
        ))
        .add(FaultRule::per_mille(10, Op::UpdateItem, DbFault::ReplyLost))
        .add(FaultRule::per_mille(
            10,
            Op::Any,
            DbFault::ProvisionedThroughputExceeded,
        ))
        .add(FaultRule::per_mille(10, Op::Any, DbFault::Throttling))
        .add(FaultRule::per_mille(
            10,
            Op::Any,
            DbFault::InternalServerError,
        ))
        .add(FaultRule::per_mille(
            3,
            Op::Any,
            DbFault::SlowAnswer(Duration::from_millis(1500)),
        ));
}

fn dynamo_fault_name(f: &DbFault) -> String {
    match f {
        DbFault::TransactionCanceled(c) => format!("cancelled_{}", c.code()),
        DbFault::ProvisionedThroughputExceeded => "provisioned_throughput_exceeded".into(),
        DbFault::Throttling => "throttling".into(),
        DbFault::InternalServerError => "http500".into(),
        DbFault::SlowAnswer(_) => "slow_answer".into(),
        DbFault::ReplyLost => "reply_lost".into(),
        other => format!("{other:?}"),
    }
}

/// A random WeChat fault for the next request it can hit.
fn wechat_fault(rng: &Rng) -> WxFault {
    let (kind, on) = match rng.range(0, 11) {
        0 | 1 => (FaultKind::SystemErrorAfter, FaultTarget::Apply),
        2 | 3 => (FaultKind::DropResponse, FaultTarget::Apply),
        4 => (FaultKind::Hang, FaultTarget::Apply),
        5 => (FaultKind::Http502, FaultTarget::Apply),
        6 => (FaultKind::Http502, FaultTarget::Any),
        7 | 8 => (FaultKind::BadSign, FaultTarget::Apply),
        9 => (
            FaultKind::Latency {
                ms: rng.range(100, 2500),
            },
            FaultTarget::Apply,
        ),
        _ => (
            FaultKind::Latency {
                ms: rng.range(100, 2500),
            },
            FaultTarget::Any,
        ),
    };
    WxFault {
        kind,
        times: Some(1),
        on,
    }
}

// ---- the end: reading both books ---------------------------------------------------------------

/// A `DynamoLedger` on the functions' table through the relay (faults cleared by then), so the
/// checks' reads are serialised with everything else moto is asked.
async fn ledger_through(relay: &str, table: &str) -> DynamoLedger {
    wxrefund_e2e::wxrefund::testing::dynamo_ledger_via(relay, table).await
}

fn order_ref(out_trade_no: &str) -> OrderRef {
    OrderRef::OutTradeNo(OutTradeNo::new(out_trade_no).expect("an out_trade_no"))
}

async fn records_of(ledger: &DynamoLedger, out_trade_no: &str) -> Vec<RefundRecord> {
    ledger
        .list_by_order(&order_ref(out_trade_no))
        .await
        .expect("list the order's refunds")
}

fn wechat_status(s: BookedStatus) -> RefundStatus {
    match s {
        BookedStatus::Processing => RefundStatus::Processing,
        BookedStatus::Success => RefundStatus::Success,
        BookedStatus::Change => RefundStatus::Change,
        BookedStatus::Refundclose => RefundStatus::RefundClose,
    }
}

/// Final, or waiting for a person with the reason recorded.
fn settled_or_flagged(r: &RefundRecord) -> bool {
    r.status.is_final() || r.attention.is_some()
}

// ---- the test ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_chaos_the_production_topology_keeps_wechat_and_the_ledger_in_agreement() {
    let size = Size::from_env();
    let started = Instant::now();
    eprintln!(
        "chaos: seed {} ({} refunds over {} orders; CHAOS_SEED={} reproduces the choices)",
        size.seed, size.refunds, size.orders, size.seed
    );

    // GIVEN the sandbox settling refunds two seconds after it takes them and pushing their
    // notifications (retries 3 times faster than WeChat's: 5 s, 5 s, 10 s, 1 min…) to the route
    // served below
    let notify_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the notification route");
    let notify_url = format!(
        "http://{}{NOTIFY_PATH}",
        notify_listener.local_addr().expect("its address")
    );
    let parts = Arc::new(
        Parts::start_with("chaos", |c| {
            c.settle_after = Duration::from_secs(2);
            c.notify_retry_factor = 3.0;
            c.notify_url = Some(notify_url.clone());
        })
        .await,
    );
    // AND the orders, paid
    let rng = Rng::new(size.seed);
    let orders: Vec<Order> = (0..size.orders)
        .map(|i| {
            let order = Order {
                out_trade_no: format!("CHAOS-{:x}-{i:05}", size.seed % 0xffff),
                total_fee: rng.range(300, 3000),
            };
            parts.create_order(&order.out_trade_no, order.total_fee);
            order
        })
        .collect();
    // AND refund intents, about three per order, whose amounts may add up to more than the order
    let intents: Vec<Intent> = (0..size.refunds)
        .map(|i| {
            let order = i % size.orders;
            let total = orders[order].total_fee;
            Intent {
                out_refund_no: format!("CR-{:x}-{i:05}", size.seed % 0xffff),
                order,
                refund_fee: rng.range(total / 10 + 1, total / 2),
            }
        })
        .collect();
    // AND the functions' DynamoDB traffic through the fault relay (Secrets Manager and
    // EventBridge go to moto directly), the poll kept short so that polls overlap kills
    let faults = Faults::seeded(size.seed);
    let relay = fault_relay(&parts.moto_endpoint, faults.clone()).await;
    let dynamo_env = vec![("AWS_ENDPOINT_URL_DYNAMODB".to_owned(), relay.clone())];
    let mut query_env = dynamo_env.clone();
    query_env.push(("POLL_BUDGET_SECS".into(), "5".into()));
    // AND the processes: four refund, two refund-query, two refund-notify
    let refund = Pool::start("refund", &parts, dynamo_env.clone(), REFUND_PROCESSES).await;
    let query = Pool::start("refund-query", &parts, query_env, QUERY_PROCESSES).await;
    let notify = Pool::start("refund-notify", &parts, dynamo_env, NOTIFY_PROCESSES).await;
    let h = Arc::new(Harness {
        parts: Arc::clone(&parts),
        refund: Arc::clone(&refund),
        query: Arc::clone(&query),
        notify: Arc::clone(&notify),
        rng,
        tally: Tally::default(),
        orders,
    });
    let notify_app = axum::Router::new()
        .route(NOTIFY_PATH, axum::routing::post(notify_route))
        .with_state(Arc::clone(&h));
    let notify_server = tokio::spawn(async move {
        let _ = axum::serve(notify_listener, notify_app).await;
    });

    // AND, from now on, DynamoDB and WeChat failing at random
    dynamo_faults(&faults);
    let chaos_on = Arc::new(AtomicBool::new(true));
    let wechat_added: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    let wechat_task = {
        let (h, on, added) = (
            Arc::clone(&h),
            Arc::clone(&chaos_on),
            Arc::clone(&wechat_added),
        );
        tokio::spawn(async move {
            while on.load(Ordering::SeqCst) {
                let books = h.parts.sandbox.books();
                // At most two waiting at a time, so that most requests still get through.
                if books.global_faults().len() < 2 {
                    let fault = wechat_fault(&h.rng);
                    let name = fault.kind.name();
                    books
                        .add_fault(None, fault)
                        .expect("the sandbox takes the fault");
                    *added.lock().unwrap().entry(name).or_default() += 1;
                }
                tokio::time::sleep(h.rng.millis(100, 700)).await;
            }
        })
    };
    // AND the scheduled poll every two seconds, into whichever refund-query process is free
    let polling = Arc::new(AtomicBool::new(true));
    let poll_task = {
        let (h, on) = (Arc::clone(&h), Arc::clone(&polling));
        tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            while on.load(Ordering::SeqCst) {
                let h = Arc::clone(&h);
                running.spawn(async move {
                    h.tally.polls.fetch_add(1, Ordering::SeqCst);
                    match h.query.invoke(&json!({"action": "poll"}), &h.rng).await {
                        Ok(Outcome::Response(body)) => {
                            let report: Value = serde_json::from_slice(&body).expect("a report");
                            let n = |k: &str| report[k].as_u64().unwrap_or(0);
                            h.tally
                                .poll_examined
                                .fetch_add(n("examined"), Ordering::SeqCst);
                            h.tally
                                .poll_settled
                                .fetch_add(n("settled"), Ordering::SeqCst);
                            h.tally.poll_errors.fetch_add(n("errors"), Ordering::SeqCst);
                        }
                        _ => {
                            h.tally.polls_failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
                tokio::time::sleep(POLL_EVERY).await;
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
        })
    };
    // AND, every few seconds, a refund or refund-query process SIGKILLed mid-invocation and
    // another started in its place
    let killer_task = {
        let (h, on) = (Arc::clone(&h), Arc::clone(&chaos_on));
        let max_kills = size.max_kills;
        tokio::spawn(async move {
            let mut kills = 0;
            while on.load(Ordering::SeqCst) && kills < max_kills {
                tokio::time::sleep(h.rng.millis(1000, 4000)).await;
                let pool = if h.rng.chance(650) {
                    &h.refund
                } else {
                    &h.query
                };
                // A process busy right now, else try again shortly.
                for _ in 0..20 {
                    if pool.kill_one_mid_invocation(&h.rng).await {
                        kills += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };

    // AND the Lambda service starting a new instance whenever a process exits on its own
    let supervising = Arc::new(AtomicBool::new(true));
    let supervisor_task = {
        let (h, on) = (Arc::clone(&h), Arc::clone(&supervising));
        tokio::spawn(async move {
            while on.load(Ordering::SeqCst) {
                for pool in [&h.refund, &h.query, &h.notify] {
                    pool.revive_exited().await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // WHEN the merchants ask for every refund, a few at a time
    let gate = Arc::new(tokio::sync::Semaphore::new(size.concurrency));
    let mut merchants = tokio::task::JoinSet::new();
    for intent in intents.clone() {
        let (h, gate) = (Arc::clone(&h), Arc::clone(&gate));
        merchants.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("the gate stays open");
            let no = intent.out_refund_no.clone();
            (no, h.merchant(intent).await)
        });
    }
    let mut answers: HashMap<String, Answered> = HashMap::new();
    while let Some(done) = merchants.join_next().await {
        let (no, answered) = done.expect("a merchant task panicked");
        answers.insert(no, answered);
    }
    let load_secs = started.elapsed().as_secs_f64();

    // AND then the failures stop and the system is left to finish: WeChat settles what it
    // holds, the poller takes over abandoned attempts (their 90 s leases) and re-checks the
    // unknown ones (a minute after), notifications arrive
    chaos_on.store(false, Ordering::SeqCst);
    wechat_task.await.expect("the WeChat fault task");
    killer_task.await.expect("the killer task");
    faults.clear();
    let books = parts.sandbox.books();
    let wechat_left = books.global_faults();
    books
        .clear_faults(None)
        .expect("clear the sandbox's faults");
    let ledger = ledger_through(&relay, &parts.table).await;
    let drain_deadline = Instant::now()
        + Duration::from_secs(240)
        + Duration::from_millis(100 * size.refunds as u64);
    let mut open: Vec<RefundRecord>;
    loop {
        parts.sandbox.settle_now();
        open = Vec::new();
        for order in &h.orders {
            open.extend(
                records_of(&ledger, &order.out_trade_no)
                    .await
                    .into_iter()
                    .filter(|r| !settled_or_flagged(r)),
            );
        }
        if open.is_empty() || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    polling.store(false, Ordering::SeqCst);
    poll_task.await.expect("the poll task");
    supervising.store(false, Ordering::SeqCst);
    supervisor_task.await.expect("the supervisor task");
    // Notifications still being delivered may settle a refund once more: let them land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let duration = started.elapsed().as_secs_f64();

    // THEN no refund is left open: every one is final or flagged for a person with a reason
    let open_list: Vec<String> = open
        .iter()
        .map(|r| format!("{} {:?} {:?}", r.out_refund_no, r.status, r.last_error))
        .collect();
    assert!(
        open.is_empty(),
        "seed {}: refunds still open after the drain: {open_list:#?}",
        size.seed
    );

    // AND the sandbox's books and the ledger agree, order by order
    let mut paid = 0u64;
    let mut failed = 0u64;
    let mut closed = 0u64;
    let mut flagged = 0u64;
    let mut wechat_refunds = 0u64;
    let mut apply_calls = 0u64;
    let (mut pushes, mut pushed) = (0u64, 0u64);
    let intent_of: HashMap<&str, &Intent> = intents
        .iter()
        .map(|i| (i.out_refund_no.as_str(), i))
        .collect();
    for (index, order) in h.orders.iter().enumerate() {
        let view = books
            .order(&order.out_trade_no)
            .expect("the order is in the sandbox's books");
        let records = records_of(&ledger, &order.out_trade_no).await;
        let ctx = format!("seed {} order {}", size.seed, order.out_trade_no);
        // No refund paid twice: each number at most once in WeChat's books, every one an intent
        // of this order with its amount.
        let mut seen = HashMap::new();
        for r in &view.refunds {
            *seen.entry(r.out_refund_no.as_str()).or_insert(0) += 1;
            let intent = intent_of.get(r.out_refund_no.as_str()).unwrap_or_else(|| {
                panic!("{ctx}: WeChat holds an unknown refund {}", r.out_refund_no)
            });
            assert_eq!(
                intent.order, index,
                "{ctx}: {} on the wrong order",
                r.out_refund_no
            );
            assert_eq!(
                intent.refund_fee, r.refund_fee,
                "{ctx}: {}",
                r.out_refund_no
            );
            apply_calls += u64::from(r.apply_calls);
            pushes += u64::from(r.notify.attempts);
            pushed += u64::from(r.notify.delivered);
        }
        assert!(
            seen.values().all(|&n| n == 1),
            "{ctx}: a number twice: {seen:?}"
        );
        wechat_refunds += view.refunds.len() as u64;
        // No order refunded over its total.
        let wechat_sum: u64 = view
            .refunds
            .iter()
            .filter(|r| r.status != BookedStatus::Refundclose)
            .map(|r| r.refund_fee)
            .sum();
        assert!(
            wechat_sum <= order.total_fee,
            "{ctx}: WeChat refunded {wechat_sum} of {}",
            order.total_fee
        );
        // Every refund WeChat holds is in the ledger, with WeChat's status, amount and id.
        let by_no: HashMap<&str, &RefundRecord> = records
            .iter()
            .map(|r| (r.out_refund_no.as_str(), r))
            .collect();
        for r in &view.refunds {
            let rec = by_no.get(r.out_refund_no.as_str()).unwrap_or_else(|| {
                panic!(
                    "{ctx}: WeChat holds {} but the ledger does not",
                    r.out_refund_no
                )
            });
            assert_eq!(
                rec.status,
                wechat_status(r.status),
                "{ctx}: {} is {:?} in the ledger and {:?} at WeChat ({:?})",
                r.out_refund_no,
                rec.status,
                r.status,
                rec.last_error
            );
            assert_eq!(
                rec.refund_fee.get(),
                r.refund_fee,
                "{ctx}: {}",
                r.out_refund_no
            );
            if let Some(id) = &rec.refund_id {
                assert_eq!(id.to_string(), r.refund_id, "{ctx}: {}", r.out_refund_no);
            }
        }
        // Every ledger record is an intent of this order, final or flagged, and one WeChat does
        // not hold ended FAILED (nothing was paid).
        for rec in &records {
            let no = rec.out_refund_no.as_str();
            let intent = intent_of
                .get(no)
                .unwrap_or_else(|| panic!("{ctx}: the ledger holds an unknown refund {no}"));
            assert_eq!(intent.order, index, "{ctx}: {no} on the wrong order");
            assert_eq!(rec.refund_fee.get(), intent.refund_fee, "{ctx}: {no}");
            assert!(settled_or_flagged(rec), "{ctx}: {no} is {:?}", rec.status);
            if rec.attention.is_some() {
                flagged += 1;
            }
            if !view.refunds.iter().any(|r| r.out_refund_no == no) {
                assert_eq!(
                    rec.status,
                    RefundStatus::Failed,
                    "{ctx}: {no} is {:?} in the ledger but WeChat never took it ({:?})",
                    rec.status,
                    rec.last_error
                );
            }
            match rec.status {
                RefundStatus::Success => paid += 1,
                RefundStatus::Failed => failed += 1,
                RefundStatus::RefundClose => closed += 1,
                _ => {}
            }
        }
        // The ledger's reservation is what WeChat refunded.
        let book = ledger
            .order(&order_ref(&order.out_trade_no))
            .await
            .expect("read the order's book");
        let reserved = book.as_ref().map_or(0, |b| b.reserved.get());
        assert_eq!(
            reserved, wechat_sum,
            "{ctx}: reserved vs WeChat's refunded sum"
        );
        if let Some(b) = &book {
            assert_eq!(b.total_fee.get(), order.total_fee, "{ctx}");
        }
    }
    // AND every refund a merchant was told was accepted is in WeChat's books or FAILED
    for intent in &intents {
        let answered = &answers[&intent.out_refund_no];
        if answered.accepted {
            let rec = h
                .parts
                .record(&intent.out_refund_no)
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "{} was accepted but is not in the ledger",
                        intent.out_refund_no
                    )
                });
            assert!(rec.status.is_final() || rec.attention.is_some());
        }
    }
    // AND the chaos really happened: faults of both kinds, kills mid-invocation, duplicates
    let kills = refund.kills.load(Ordering::SeqCst) + query.kills.load(Ordering::SeqCst);
    let killed_in_flight = refund.killed_in_flight.load(Ordering::SeqCst)
        + query.killed_in_flight.load(Ordering::SeqCst);
    let mut dynamo_injected: BTreeMap<String, u64> = BTreeMap::new();
    for i in faults.injected() {
        *dynamo_injected
            .entry(dynamo_fault_name(&i.fault))
            .or_default() += 1;
    }
    let mut wechat_fired = wechat_added.lock().unwrap().clone();
    for f in &wechat_left {
        if let Some(n) = wechat_fired.get_mut(f.kind.name()) {
            *n = n.saturating_sub(1);
        }
    }
    let by_op: BTreeMap<&str, u64> = [
        Op::TransactWriteItems,
        Op::UpdateItem,
        Op::PutItem,
        Op::GetItem,
        Op::BatchGetItem,
        Op::Query,
    ]
    .into_iter()
    .map(|op| (op.name(), faults.requests(op)))
    .collect();
    assert!(faults.requests(Op::Any) > 0, "the functions used the relay");
    assert!(
        !dynamo_injected.is_empty(),
        "no DynamoDB fault was injected"
    );
    assert!(
        wechat_fired.values().sum::<u64>() > 0,
        "no WeChat fault fired"
    );
    assert!(
        kills > 0 && killed_in_flight > 0,
        "no process was killed mid-invocation"
    );
    assert!(h.tally.duplicates.load(Ordering::SeqCst) > 0);
    assert!(
        h.tally.notifications.load(Ordering::SeqCst) > 0,
        "refund-notify received nothing"
    );
    assert!(paid > 0, "no refund was paid");
    // AND no process died on its own but of a failed cold start (one that exits 1, by design,
    // when its secret cannot be read in time: moto under load can be that slow)
    let mut init_failures = 0;
    for pool in [&refund, &query, &notify] {
        for logs in pool.exits.lock().unwrap().iter() {
            assert!(
                logs.contains("cold start failed"),
                "seed {}: a {} process exited by itself, not at its cold start:\n{logs}",
                size.seed,
                pool.function
            );
            init_failures += 1;
        }
    }
    assert!(refund.all_alive() && query.all_alive() && notify.all_alive());
    // AND no process logged key material
    let mut logged = 0;
    for logs in [refund.all_logs(), query.all_logs(), notify.all_logs()]
        .into_iter()
        .flatten()
        .filter(|l| !l.is_empty())
    {
        parts.assert_no_secret_in(&logs);
        logged += 1;
    }
    assert!(logged >= REFUND_PROCESSES + QUERY_PROCESSES + NOTIFY_PROCESSES);

    let t = &h.tally;
    let ld = |a: &AtomicU64| a.load(Ordering::SeqCst);
    println!(
        "chaos summary: seed={} refunds={} orders={} processes=refund×{}+refund-query×{}+refund-notify×{} \
         restarts={} kills={} (invocations killed in flight {}) failed_cold_starts={} sends={} duplicates={} retries={} \
         gave_up={} answers={:?} gets={} polls={} (failed {}, examined {}, settled {}, errors {}) \
         notifications={} (answered FAIL or not at all {}; sandbox: {} pushes, {} refunds acknowledged in time) dynamo_requests={} {:?} dynamo_faults={:?} \
         wechat_faults={:?} wechat_apply_calls={} load={:.1}s duration={:.1}s books: {} orders \
         agree, {} refunds at WeChat, ledger {} SUCCESS {} REFUNDCLOSE {} FAILED {} flagged",
        size.seed,
        size.refunds,
        size.orders,
        REFUND_PROCESSES,
        QUERY_PROCESSES,
        NOTIFY_PROCESSES,
        [&refund, &query, &notify]
            .iter()
            .map(|p| p.restarts.load(Ordering::SeqCst))
            .sum::<usize>(),
        kills,
        killed_in_flight,
        init_failures,
        ld(&t.sends),
        ld(&t.duplicates),
        ld(&t.retries),
        ld(&t.gave_up),
        t.by_status.lock().unwrap(),
        ld(&t.gets),
        ld(&t.polls),
        ld(&t.polls_failed),
        ld(&t.poll_examined),
        ld(&t.poll_settled),
        ld(&t.poll_errors),
        ld(&t.notifications),
        ld(&t.notifications_refused),
        pushes,
        pushed,
        faults.requests(Op::Any),
        by_op,
        dynamo_injected,
        wechat_fired,
        apply_calls,
        load_secs,
        duration,
        h.orders.len(),
        wechat_refunds,
        paid,
        closed,
        failed,
        flagged,
    );
    notify_server.abort();
}
