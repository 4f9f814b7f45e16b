//! Times the daily reconciliation (`RefundService::reconcile_bill_date`) of a day with N refunds
//! accepted today, on the embedded ledger or on DynamoDB (moto), against a fake WeChat serving
//! that day's REFUND bill; prints the wall time, the calls made and the peak RSS, and checks the
//! report.
//!
//! ```sh
//! cargo run --release -p wxrefund --example reconcile_day -- \
//!     --refunds 10000 --ledger embedded|dynamo [--mismatch-every K] [--setup-concurrency C]
//! ```
//!
//! Setup (not timed with the run): N refunds recorded through the `Ledger` port with the
//! recorder's lease (the production path: `NewRefund::leased_by`), moved to PROCESSING (which
//! files them under today's Beijing date in the `accepted` index) and then to SUCCESS, one order
//! each. The fake gateway lists all N as SUCCESS in a 2018-format bill, every K-th with one fen
//! more than the ledger holds when `--mismatch-every K` is given (so that many
//! `amount_mismatch` discrepancies, each confirmed by a query and flagged for a person, are
//! expected), and answers refund queries from the bill's facts.
//!
//! `--ledger dynamo` needs moto: `MOTO_ENDPOINT` and the `AWS_*` variables (see the message
//! printed without them). The DynamoDB requests of the run are counted by a relay in front of moto
//! (`wxrefund::testing::fault_relay`, no faults). moto is not DynamoDB: its times are an upper
//! bound.

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wxpay::bill::{BillDate, BillText};
use wxpay::errors::Stage;
use wxpay::notify::{NotifyError, RefundNotification};
use wxpay::query::{QuerySelector, RefundQueryRequest, RefundQueryResponse};
use wxpay::refund::{RefundRequest, RefundResponse};
use wxpay::{
    CallOutcome, ErrCode, Fen, OrderRef, OutRefundNo, OutTradeNo, QueriedRefund, RefundId,
    TransactionId, WxError, WxRefundStatus, XmlMap,
};
use wxrefund::correction::AttentionReason;
use wxrefund::gateway::{BillFailure, Gateway};
use wxrefund::ledger::dynamo::DynamoLedger;
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::ledger::{
    Changes, CorrectionWrite, Cursor, ExternalOutcome, ExternalRefund, FlagWrite, LeaseOutcome,
    Ledger, LedgerError, NewRefund, Page, RecordOutcome, Transition, TransitionOutcome,
};
use wxrefund::reconcile::{DiscrepancyKind, Reconciliation, ReportStatus, Resolution};
use wxrefund::service::{RefundService, ServiceConfig};
use wxrefund::state::{OrderBook, RefundRecord, RefundStatus, UnixMillis};
use wxrefund::testing::{Faults, Op, RecordingPublisher};

type Res<T> = Result<T, Box<dyn Error>>;

/// Every order's total; each refund takes `fee(i)` of it.
const ORDER_TOTAL: u64 = 10_000;

fn fee(i: usize) -> u64 {
    (i % 5_000) as u64 + 1
}

fn out_refund_no(i: usize) -> String {
    format!("RB-{i:08}")
}

fn out_trade_no(i: usize) -> String {
    format!("ORDER-RB-{i:08}")
}

fn transaction_id(i: usize) -> String {
    format!("4200002026{i:018}")
}

fn refund_id(i: usize) -> String {
    format!("5030002026{i:019}")
}

// ---- arguments ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Embedded,
    Dynamo,
}

struct Args {
    refunds: usize,
    backend: Backend,
    mismatch_every: Option<usize>,
    setup_concurrency: usize,
}

const USAGE: &str = "usage: reconcile_day --refunds N --ledger embedded|dynamo [--mismatch-every K] [--setup-concurrency C]";

fn args() -> Res<Args> {
    let mut refunds = None;
    let mut backend = None;
    let mut mismatch_every = None;
    let mut setup_concurrency = 8;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--refunds" => refunds = Some(value()?.parse::<usize>()?),
            "--ledger" => {
                backend = Some(match value()?.as_str() {
                    "embedded" => Backend::Embedded,
                    "dynamo" => Backend::Dynamo,
                    other => return Err(format!("unknown ledger {other:?}; {USAGE}").into()),
                })
            }
            "--mismatch-every" => mismatch_every = Some(value()?.parse::<usize>()?),
            "--setup-concurrency" => setup_concurrency = value()?.parse::<usize>()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}").into()),
        }
    }
    let refunds = refunds.filter(|n| *n > 0).ok_or(USAGE)?;
    if mismatch_every == Some(0) || setup_concurrency == 0 {
        return Err(
            format!("--mismatch-every and --setup-concurrency must be > 0; {USAGE}").into(),
        );
    }
    Ok(Args {
        refunds,
        backend: backend.ok_or(USAGE)?,
        mismatch_every,
        setup_concurrency,
    })
}

// ---- /proc/self/status -------------------------------------------------------------------------

/// A `/proc/self/status` value in KiB (`VmHWM:`, `VmRSS:`); 0 where there is none.
fn status_kib(key: &str) -> u64 {
    wxrefund::testing::proc_status_kib(None, key).unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0: `5` into `/proc/self/clear_refs`), so the
/// next reading is the peak of what follows. False where the kernel does not allow it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

// ---- the fake WeChat ---------------------------------------------------------------------------

/// What the bill says of one refund: what the query answers too.
struct Fact {
    out_trade_no: OutTradeNo,
    transaction_id: TransactionId,
    refund_id: RefundId,
    refund_fee: Fen,
}

#[derive(Default)]
struct Calls {
    refund: AtomicU64,
    query: AtomicU64,
    decrypt_notification: AtomicU64,
    refund_bill: AtomicU64,
}

/// The one fake: WeChat serving one day's REFUND bill and answering queries from its facts.
struct FakeWeChat {
    day: BillDate,
    /// The reply body of `/pay/downloadbill` (plain text; `read_reply` runs on each download).
    bill: Vec<u8>,
    facts: HashMap<OutRefundNo, Fact>,
    order_total: Fen,
    calls: Calls,
}

fn refusal(code: &str, description: &str) -> WxError {
    WxError {
        stage: Stage::Result,
        code: ErrCode::parse(code),
        description: description.into(),
        return_msg: "OK".into(),
        raw: String::new(),
    }
}

#[async_trait]
impl Gateway for FakeWeChat {
    async fn refund(&self, _: &RefundRequest) -> CallOutcome<RefundResponse> {
        self.calls.refund.fetch_add(1, Ordering::Relaxed);
        CallOutcome::NotSent("the reconciliation bench applies no refund".into())
    }

    async fn query(&self, request: &RefundQueryRequest) -> CallOutcome<RefundQueryResponse> {
        self.calls.query.fetch_add(1, Ordering::Relaxed);
        let QuerySelector::OutRefundNo(no) = &request.selector else {
            return CallOutcome::Rejected(refusal("PARAM_ERROR", "bench: by out_refund_no only"));
        };
        let Some(f) = self.facts.get(no) else {
            return CallOutcome::Rejected(refusal("REFUNDNOTEXIST", "not exist"));
        };
        CallOutcome::Ok(RefundQueryResponse {
            transaction_id: Some(f.transaction_id.clone()),
            out_trade_no: Some(f.out_trade_no.clone()),
            total_fee: Some(self.order_total),
            settlement_total_fee: None,
            fee_type: None,
            cash_fee: None,
            refund_count: 1,
            total_refund_count: None,
            refunds: vec![QueriedRefund {
                out_refund_no: no.clone(),
                refund_id: f.refund_id.clone(),
                refund_channel: None,
                refund_fee: f.refund_fee,
                settlement_refund_fee: None,
                refund_status: WxRefundStatus::Success,
                refund_account: None,
                refund_recv_account: None,
                refund_success_time: None,
                coupon_refund_fee: None,
                coupons: vec![],
            }],
            fields: XmlMap::new(),
        })
    }

    async fn decrypt_notification(&self, _: &[u8]) -> Result<RefundNotification, NotifyError> {
        self.calls
            .decrypt_notification
            .fetch_add(1, Ordering::Relaxed);
        Err(NotifyError::MissingReqInfo)
    }

    async fn refund_bill(&self, day: BillDate) -> Result<BillText, BillFailure> {
        self.calls.refund_bill.fetch_add(1, Ordering::Relaxed);
        if day != self.day {
            return Err(BillFailure::Transport(format!("bench: no bill for {day}")));
        }
        Ok(wxpay::bill::read_reply(&self.bill)?)
    }
}

/// The day's 2018-format REFUND bill (29 columns, backticks, summary) and the facts it states.
fn bill(
    day: &str,
    n: usize,
    mismatch_every: Option<usize>,
) -> Res<(Vec<u8>, HashMap<OutRefundNo, Fact>)> {
    use std::fmt::Write;
    let yuan = |f: u64| format!("{}.{:02}", f / 100, f % 100);
    let mut text = String::with_capacity(n * 400 + 1024);
    text.push_str(
        "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n",
    );
    let mut facts = HashMap::with_capacity(n);
    let mut total = 0u64;
    let order = yuan(ORDER_TOTAL);
    for i in 0..n {
        let mismatched = mismatch_every.is_some_and(|k| (i + 1).is_multiple_of(k));
        let billed = fee(i) + u64::from(mismatched);
        total += billed;
        let y = yuan(billed);
        writeln!(
            text,
            "`{day} 09:00:00,`wx2421b1c4370ec43b,`1900000109,`0,`,`{tx},`{ot},`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`REFUND,`OTHERS,`CNY,`{order},`0.00,`{day} 09:00:00,`{day} 09:00:05,`{rid},`{no},`{y},`0.00,`ORIGINAL,`SUCCESS,`goods,`,`0.00000,`0.60%,`{order},`{y},`\r",
            tx = transaction_id(i),
            ot = out_trade_no(i),
            rid = refund_id(i),
            no = out_refund_no(i),
        )?;
        facts.insert(
            OutRefundNo::new(out_refund_no(i))?,
            Fact {
                out_trade_no: OutTradeNo::new(out_trade_no(i))?,
                transaction_id: TransactionId::new(transaction_id(i))?,
                refund_id: RefundId::new(refund_id(i))?,
                refund_fee: Fen::new(billed)?,
            },
        );
    }
    text.push_str(
        "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n",
    );
    writeln!(
        text,
        "`{n},`0.00,`{t},`0.00,`0.00000,`0.00,`{t}\r",
        t = yuan(total)
    )?;
    Ok((text.into_bytes(), facts))
}

// ---- the ledger, counted -----------------------------------------------------------------------

const LEDGER_OPS: [&str; 15] = [
    "record",
    "get",
    "acquire_lease",
    "transition",
    "due",
    "order",
    "list_by_order",
    "record_external",
    "correct",
    "flag",
    "accepted_on",
    "save_reconciliation",
    "reconciliation",
    "needing_person",
    "mark_delivered",
];

/// The `Ledger` port with every call counted and timed by operation.
struct Counted {
    inner: Arc<dyn Ledger>,
    calls: [AtomicU64; LEDGER_OPS.len()],
    micros: [AtomicU64; LEDGER_OPS.len()],
}

impl Counted {
    fn new(inner: Arc<dyn Ledger>) -> Self {
        Counted {
            inner,
            calls: Default::default(),
            micros: Default::default(),
        }
    }

    /// Runs one call of `op`, counted and timed.
    async fn hit<T>(&self, op: &str, call: impl std::future::Future<Output = T>) -> T {
        let t = Instant::now();
        let out = call.await;
        if let Some(i) = LEDGER_OPS.iter().position(|o| *o == op) {
            self.calls[i].fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.micros[i].fetch_add(us, Ordering::Relaxed);
        }
        out
    }

    /// The operations called: their counts and total time in ms.
    fn counts(&self) -> Vec<(&'static str, u64, f64)> {
        LEDGER_OPS
            .iter()
            .zip(self.calls.iter().zip(&self.micros))
            .map(|(op, (c, us))| {
                let ms = us.load(Ordering::Relaxed) as f64 / 1e3;
                (*op, c.load(Ordering::Relaxed), ms)
            })
            .filter(|(_, c, _)| *c > 0)
            .collect()
    }
}

#[async_trait]
impl Ledger for Counted {
    async fn record(&self, new: NewRefund) -> Result<RecordOutcome, LedgerError> {
        self.hit("record", self.inner.record(new)).await
    }
    async fn get(&self, no: &OutRefundNo) -> Result<Option<RefundRecord>, LedgerError> {
        self.hit("get", self.inner.get(no)).await
    }
    async fn acquire_lease(
        &self,
        no: &OutRefundNo,
        owner: &str,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<LeaseOutcome, LedgerError> {
        self.hit(
            "acquire_lease",
            self.inner.acquire_lease(no, owner, ttl, now),
        )
        .await
    }
    async fn transition(&self, t: Transition) -> Result<TransitionOutcome, LedgerError> {
        self.hit("transition", self.inner.transition(t)).await
    }
    async fn due(
        &self,
        now: UnixMillis,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        self.hit("due", self.inner.due(now, cursor, limit)).await
    }
    async fn order(&self, order: &OrderRef) -> Result<Option<OrderBook>, LedgerError> {
        self.hit("order", self.inner.order(order)).await
    }
    async fn list_by_order(&self, order: &OrderRef) -> Result<Vec<RefundRecord>, LedgerError> {
        self.hit("list_by_order", self.inner.list_by_order(order))
            .await
    }
    async fn record_external(&self, ext: ExternalRefund) -> Result<ExternalOutcome, LedgerError> {
        self.hit("record_external", self.inner.record_external(ext))
            .await
    }
    async fn correct(&self, c: CorrectionWrite) -> Result<TransitionOutcome, LedgerError> {
        self.hit("correct", self.inner.correct(c)).await
    }
    async fn flag(&self, f: FlagWrite) -> Result<TransitionOutcome, LedgerError> {
        self.hit("flag", self.inner.flag(f)).await
    }
    async fn accepted_on(
        &self,
        day: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        self.hit("accepted_on", self.inner.accepted_on(day, cursor, limit))
            .await
    }
    async fn save_reconciliation(&self, report: &Reconciliation) -> Result<(), LedgerError> {
        self.hit(
            "save_reconciliation",
            self.inner.save_reconciliation(report),
        )
        .await
    }
    async fn reconciliation(&self, day: &str) -> Result<Option<Reconciliation>, LedgerError> {
        self.hit("reconciliation", self.inner.reconciliation(day))
            .await
    }
    async fn needing_person(
        &self,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        self.hit("needing_person", self.inner.needing_person(cursor, limit))
            .await
    }
    async fn mark_delivered(
        &self,
        no: &OutRefundNo,
        ids: &[String],
    ) -> Result<Option<RefundRecord>, LedgerError> {
        self.hit("mark_delivered", self.inner.mark_delivered(no, ids))
            .await
    }
}

// ---- setup -------------------------------------------------------------------------------------

/// Refund `i`, accepted by WeChat at `now` and then SUCCESS, through the `Ledger` port: recorded
/// with the recorder's lease, → PROCESSING (sets `accepted_at`), → SUCCESS.
async fn accepted(ledger: Arc<dyn Ledger>, i: usize, now: UnixMillis) -> Res<()> {
    let owner = format!("bench-{i}");
    let new = NewRefund {
        out_refund_no: OutRefundNo::new(out_refund_no(i))?,
        order: OrderRef::OutTradeNo(OutTradeNo::new(out_trade_no(i))?),
        total_fee: Fen::new(ORDER_TOTAL)?,
        refund_fee: Fen::new(fee(i))?,
        refund_desc: None,
        refund_account: None,
        metadata: Default::default(),
        request_hash: "bench".into(),
        now,
        next_check_at: now,
        lease: None,
    }
    .leased_by(&owner, now.plus(Duration::from_secs(90)));
    let rec = match ledger.record(new).await? {
        RecordOutcome::Created(r) => r,
        other => return Err(format!("refund {i} not recorded: {other:?}").into()),
    };
    let processing = Transition {
        out_refund_no: rec.out_refund_no.clone(),
        expected_status: rec.status,
        expected_version: rec.version,
        lease_owner: Some(owner),
        to: RefundStatus::Processing,
        changes: Changes {
            refund_id: Some(RefundId::new(refund_id(i))?),
            ..Changes::default()
        },
        now,
    };
    let rec = match ledger.transition(processing).await? {
        TransitionOutcome::Applied(r) => r,
        other => return Err(format!("refund {i} not PROCESSING: {other:?}").into()),
    };
    let success = Transition {
        out_refund_no: rec.out_refund_no.clone(),
        expected_status: rec.status,
        expected_version: rec.version,
        lease_owner: None,
        to: RefundStatus::Success,
        changes: Changes::default(),
        now,
    };
    match ledger.transition(success).await? {
        TransitionOutcome::Applied(_) => Ok(()),
        other => Err(format!("refund {i} not SUCCESS: {other:?}").into()),
    }
}

/// Records the `n` refunds, `concurrency` at a time, with progress on stderr.
async fn record_all(
    ledger: &Arc<dyn Ledger>,
    n: usize,
    concurrency: usize,
    now: UnixMillis,
) -> Res<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let step = (n / 10).max(1);
    let mut done = 0usize;
    let mut next = 0usize;
    let started = Instant::now();
    while done < n {
        while next < n && tasks.len() < concurrency {
            let l = Arc::clone(ledger);
            let i = next;
            tasks.spawn(async move { accepted(l, i, now).await.map_err(|e| e.to_string()) });
            next += 1;
        }
        match tasks.join_next().await {
            Some(r) => r??,
            None => break,
        }
        done += 1;
        if done.is_multiple_of(step) {
            eprintln!(
                "  setup: {done}/{n} refunds recorded ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

// ---- the ledgers -------------------------------------------------------------------------------

/// The ledger the run reads and writes, and what it can count of itself.
enum Store {
    Embedded {
        ledger: Arc<EmbeddedLedger>,
        _dir: tempfile::TempDir,
    },
    Dynamo {
        /// The ledger of the run, through a counting relay.
        ledger: Arc<DynamoLedger>,
        faults: Faults,
    },
}

const MOTO_HELP: &str = "--ledger dynamo needs a moto server. Start one and export its endpoint:

  python3 -m venv /tmp/motovenv && /tmp/motovenv/bin/pip install 'moto[server]==5.2.5'
  /tmp/motovenv/bin/moto_server -H 127.0.0.1 -p 5611 &
  export MOTO_ENDPOINT=http://127.0.0.1:5611 AWS_ACCESS_KEY_ID=testing \\
    AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing AWS_REGION=us-east-1 \\
    AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true";

/// The setup ledger and the store of the run (the same table for DynamoDB, through another
/// client whose requests are counted).
async fn open(backend: Backend) -> Res<(Arc<dyn Ledger>, Store)> {
    match backend {
        Backend::Embedded => {
            let dir = tempfile::tempdir()?;
            let ledger = Arc::new(EmbeddedLedger::open(dir.path().join("ledger.redb"))?);
            Ok((
                Arc::clone(&ledger) as Arc<dyn Ledger>,
                Store::Embedded { ledger, _dir: dir },
            ))
        }
        Backend::Dynamo => {
            let endpoint = std::env::var("MOTO_ENDPOINT").unwrap_or_default();
            for v in [
                "MOTO_ENDPOINT",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            ] {
                if std::env::var_os(v).is_none_or(|s| s.is_empty()) {
                    eprintln!("{MOTO_HELP}");
                    return Err(format!("{v} is not set").into());
                }
            }
            let setup = wxrefund::testing::fresh_dynamo_ledger("rbench").await;
            let faults = Faults::default();
            let relay = wxrefund::testing::fault_relay(&endpoint, faults.clone()).await;
            let ledger =
                Arc::new(wxrefund::testing::dynamo_ledger_via(&relay, setup.table()).await);
            Ok((Arc::new(setup), Store::Dynamo { ledger, faults }))
        }
    }
}

impl Store {
    fn ledger(&self) -> Arc<dyn Ledger> {
        match self {
            Store::Embedded { ledger, .. } => Arc::clone(ledger) as Arc<dyn Ledger>,
            Store::Dynamo { ledger, .. } => Arc::clone(ledger) as Arc<dyn Ledger>,
        }
    }

    /// What the store counted of itself so far, in words.
    fn counted(&self) -> String {
        match self {
            Store::Embedded { ledger, .. } => format!("redb write commits {}", ledger.commits()),
            Store::Dynamo { ledger, faults } => {
                let w = ledger.write_stats();
                let ops = [
                    Op::Query,
                    Op::GetItem,
                    Op::BatchGetItem,
                    Op::PutItem,
                    Op::UpdateItem,
                    Op::TransactWriteItems,
                ]
                .iter()
                .map(|op| format!("{} {}", op.name(), faults.requests(*op)))
                .collect::<Vec<_>>()
                .join(", ");
                format!(
                    "DynamoDB requests {} ({ops}); write requests {} / items {} (write_stats)",
                    faults.requests(Op::Any),
                    w.requests,
                    w.items
                )
            }
        }
    }
}

// ---- the run -----------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Res<()> {
    let args = args()?;
    let n = args.refunds;
    let start_hwm = status_kib("VmHWM:");
    let (setup_ledger, store) = open(args.backend).await?;

    let now = UnixMillis::now();
    let iso = now.beijing_date();
    let day: BillDate = iso.parse()?;
    let expected_mismatches = args.mismatch_every.map_or(0, |k| n / k);
    println!(
        "reconcile_day: {n} refunds, ledger {:?}, bill date {iso}, mismatch every {}",
        args.backend,
        args.mismatch_every
            .map_or("-".to_owned(), |k| k.to_string())
    );

    // Setup: the ledger's day, and WeChat's bill of it.
    let t = Instant::now();
    record_all(&setup_ledger, n, args.setup_concurrency, now).await?;
    let setup_ledger_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (bill_body, facts) = bill(&iso, n, args.mismatch_every)?;
    let bill_secs = t.elapsed().as_secs_f64();
    drop(setup_ledger);
    println!(
        "setup: {n} refunds recorded in {setup_ledger_secs:.1} s ({:.0}/s, concurrency {}); bill of {} bytes generated in {:.0} ms",
        n as f64 / setup_ledger_secs,
        args.setup_concurrency,
        bill_body.len(),
        bill_secs * 1e3
    );

    let wechat = Arc::new(FakeWeChat {
        day,
        bill: bill_body,
        facts,
        order_total: Fen::new(ORDER_TOTAL)?,
        calls: Calls::default(),
    });
    let counted = Arc::new(Counted::new(store.ledger()));
    let publisher = RecordingPublisher::new();
    let svc = RefundService::new(
        Arc::clone(&counted) as Arc<dyn Ledger>,
        Arc::clone(&wechat) as Arc<dyn Gateway>,
        Arc::clone(&publisher) as Arc<dyn wxrefund::publish::EventPublisher>,
        ServiceConfig::default(),
    );
    let store_before = store.counted();

    // The run.
    let hwm_before = status_kib("VmHWM:");
    let rss_before = status_kib("VmRSS:");
    let reset = reset_peak_rss();
    let t = Instant::now();
    let report = svc.reconcile_bill_date(&day).await?;
    let wall = t.elapsed();
    let hwm_after = status_kib("VmHWM:");
    let rss_after = status_kib("VmRSS:");
    let ledger_calls = counted.counts();
    let store_after = store.counted();

    // What it did.
    let secs = wall.as_secs_f64();
    println!("wall time: {:.1} ms", secs * 1e3);
    println!("rows/s: {:.0}", n as f64 / secs);
    println!(
        "gateway calls: refund_bill {}, query {}, refund {}, decrypt_notification {}",
        wechat.calls.refund_bill.load(Ordering::Relaxed),
        wechat.calls.query.load(Ordering::Relaxed),
        wechat.calls.refund.load(Ordering::Relaxed),
        wechat.calls.decrypt_notification.load(Ordering::Relaxed),
    );
    println!(
        "ledger port calls: {}",
        ledger_calls
            .iter()
            .map(|(op, c, ms)| format!("{op} {c} ({ms:.1} ms)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("store before the run: {store_before}");
    println!("store after the run:  {store_after}");
    let mut by_kind: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for d in &report.discrepancies {
        *by_kind
            .entry((d.kind.as_str(), format!("{:?}", d.resolution)))
            .or_default() += 1;
    }
    let billed_discrepancies = report
        .discrepancies
        .iter()
        .filter(|d| d.bill.is_some())
        .count() as u64;
    println!(
        "report: {} — bill {} refunds / {} fen, ledger {} refunds / {} fen; matched {}, discrepancies {}{}",
        report.status.as_str(),
        report.bill.refunds,
        report.bill.refund_fee.get(),
        report.ledger.refunds,
        report.ledger.refund_fee.get(),
        report.bill.refunds.saturating_sub(billed_discrepancies),
        report.discrepancies.len(),
        if by_kind.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                by_kind
                    .iter()
                    .map(|((k, r), c)| format!("{k}/{r}: {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    println!("events published: {}", publisher.accepted().len());
    println!(
        "peak RSS (VmHWM): {} at start, {} after setup (before the run), {} after the run{}",
        mib(start_hwm),
        mib(hwm_before),
        mib(hwm_after),
        if reset {
            " (reset to the current RSS just before the run, so this is the run's own peak)"
        } else {
            " (could not reset VmHWM: the larger of setup and run)"
        }
    );
    println!(
        "RSS (VmRSS): {} before the run, {} after",
        mib(rss_before),
        mib(rss_after)
    );

    // Where the time goes: the run's two reads, repeated alone after it.
    let t = Instant::now();
    let text = wxpay::bill::read_reply(&wechat.bill)?;
    let mut reader = wxpay::bill::BillReader::new(text.as_bytes())?;
    let rows = reader
        .by_ref()
        .map(|r| r.map(|r| wxrefund::reconcile::BilledRefund::from(&r)))
        .collect::<Result<Vec<_>, _>>()?;
    reader.finish()?;
    let parse_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let (mut read, mut pages, mut cursor) = (0usize, 0u32, None);
    loop {
        let page = store.ledger().accepted_on(&iso, cursor, 500).await?;
        read += page.items.len();
        pages += 1;
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let accepted_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "breakdown (repeated alone after the run): bill read_reply + BillReader {} rows {parse_ms:.1} ms; ledger accepted_on {read} refunds in {pages} pages of 500 {accepted_ms:.1} ms",
        rows.len()
    );
    drop(rows);

    // Its own check.
    let mut problems = Vec::new();
    let want_status = if expected_mismatches == 0 {
        ReportStatus::Matched
    } else {
        ReportStatus::Mismatched
    };
    if report.status != want_status {
        problems.push(format!(
            "status {} (expected {})",
            report.status.as_str(),
            want_status.as_str()
        ));
    }
    if report.bill.refunds != n as u64 || report.ledger.refunds != n as u64 {
        problems.push(format!(
            "bill lists {} and ledger {} refunds (expected {n} each)",
            report.bill.refunds, report.ledger.refunds
        ));
    }
    let flagged_mismatches = report
        .discrepancies
        .iter()
        .filter(|d| {
            d.kind == DiscrepancyKind::AmountMismatch
                && d.resolution == Resolution::FlaggedForPerson
        })
        .count();
    if report.discrepancies.len() != expected_mismatches
        || flagged_mismatches != expected_mismatches
    {
        problems.push(format!(
            "{} discrepancies, {flagged_mismatches} of them amount mismatches flagged for a person (expected {expected_mismatches}, all such)",
            report.discrepancies.len()
        ));
    }
    let calls = (
        wechat.calls.refund_bill.load(Ordering::Relaxed),
        wechat.calls.query.load(Ordering::Relaxed),
        wechat.calls.refund.load(Ordering::Relaxed),
    );
    if calls != (1, expected_mismatches as u64, 0) {
        problems.push(format!(
            "gateway calls (bill, query, refund) {calls:?} (expected (1, {expected_mismatches}, 0))"
        ));
    }
    // The flags are in the ledger, and the report is stored (read after the timing).
    if let Some(k) = args.mismatch_every {
        let probe = OutRefundNo::new(out_refund_no(k - 1))?;
        let flagged = svc
            .ledger()
            .get(&probe)
            .await?
            .and_then(|r| r.attention)
            .map(|a| a.reason);
        if flagged != Some(AttentionReason::Mismatch) {
            problems.push(format!("{probe} is not flagged mismatch: {flagged:?}"));
        }
    }
    if svc.reconciliation(&day).await?.as_ref() != Some(&report) {
        problems.push("the stored report is not the one returned".into());
    }
    if problems.is_empty() {
        println!(
            "check: PASS ({n} refunds, {expected_mismatches} expected discrepancies, all found)"
        );
        Ok(())
    } else {
        Err(format!("check: FAIL: {}", problems.join("; ")).into())
    }
}
