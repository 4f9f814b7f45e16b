//! The end-to-end harness: one `Stack` per test = a real sandbox (in-process, real mTLS), the
//! production `WxPayGateway` pointed at it, a real ledger (DynamoDB on moto with a fresh table, or
//! the embedded redb ledger on a temp file), `RefundService`, and the axum router driven with
//! `tower::ServiceExt::oneshot` (or served on a loopback port when the sandbox must reach it).

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;
use wxpay::client::{ClientConfig, PacingConfig};
use wxpay::{OutRefundNo, OutTradeNo};
use wxpay_sandbox::{
    Fault, FaultKind, NewOrder, OrderView, Outcome, RunningSandbox, Sandbox, SandboxConfig,
};
use wxrefund::gateway::WxPayGateway;
use wxrefund::ledger::Ledger;
use wxrefund::ledger::dynamo::DynamoLedger;
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::secrets::{MerchantConfig, SecretSource};
use wxrefund::service::{RefundService, ServiceConfig};
use wxrefund::state::{RefundRecord, RefundStatus};

/// How long a single wait-for-something may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// The WeChat client's whole-request timeout: a dropped or hung response times out this fast.
pub const WX_TIMEOUT: Duration = Duration::from_secs(2);
/// The EventBridge Scheduler payload template.yaml configures for the poller (`Input`).
pub const SCHEDULER_PAYLOAD: &str = r#"{"action":"poll"}"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerKind {
    Dynamo,
    Embedded,
}

pub struct Stack {
    pub sandbox: RunningSandbox,
    pub svc: Arc<RefundService>,
    /// Every merchant event the service published.
    pub events: Arc<wxrefund::testing::RecordingPublisher>,
    pub router: Router,
    pub ledger: Arc<dyn Ledger>,
    /// `http://127.0.0.1:PORT` when the stack is served (see [`Stack::served`]).
    pub base_url: Option<String>,
    /// The WeChat client configuration the gateway was built with (for out-of-band calls).
    pub client_config: ClientConfig,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The ledger's fault relay under `E2E_DYNAMO_FAULT_SEED`.
    faults: Option<wxrefund::testing::Faults>,
    _dir: TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
        // Summed in docs/TESTING.md (run with --nocapture).
        if let Some(f) = &self.faults {
            eprintln!("faults injected: {}", wxrefund::testing::faults_summary(f));
        }
        // What this binary logged so far, this stack's run included, holds none of its secret.
        if !std::thread::panicking() {
            let merchant = std::fs::read_to_string(&self.sandbox.files().merchant_json)
                .expect("the sandbox's merchant.json, to search the logs for");
            let logs = captured_logs();
            assert!(!logs.is_empty(), "nothing was logged to search");
            for material in wxrefund::testing::secret_material(&merchant) {
                assert!(!logs.contains(&material), "key material in the logs");
            }
        }
    }
}

/// Every log line of this test binary (every stack's, at DEBUG for our crates), in memory: the
/// production JSON format, searched for key material when each stack is dropped (issue 14.5).
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(
            "info,wxrefund=debug,wxpay=debug,wxpay_sandbox=debug",
        );
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(|| LogSink)
            .try_init();
    });
}

fn captured_logs() -> String {
    String::from_utf8_lossy(
        &LOGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}

impl Stack {
    /// The default stack: DynamoDB ledger on moto, router driven in-process.
    pub async fn new() -> Stack {
        Stack::build(LedgerKind::Dynamo, false, false).await
    }

    /// A stack whose refunds are flagged for a person as soon as they are not final at a look
    /// (every escalation age `age`).
    pub async fn with_escalation(age: Duration) -> Stack {
        Stack::build_with(LedgerKind::Dynamo, false, false, Some(age)).await
    }

    /// A stack whose in-memory merchant key is stale (rotated away) while the secret source already
    /// holds the current one: the first signed call fails and the gateway must reload.
    pub async fn with_stale_key() -> Stack {
        Stack::build(LedgerKind::Dynamo, false, true).await
    }

    pub async fn with_ledger(kind: LedgerKind) -> Stack {
        Stack::build(kind, false, false).await
    }

    /// The router served on a loopback port, and `notify_url` pointing at its
    /// `/wxpay/refund-notify`, so the sandbox's notifications reach the service.
    pub async fn served() -> Stack {
        Stack::build(LedgerKind::Dynamo, true, false).await
    }

    async fn build(kind: LedgerKind, serve: bool, stale_key: bool) -> Stack {
        Stack::build_with(kind, serve, stale_key, None).await
    }

    async fn build_with(
        kind: LedgerKind,
        serve: bool,
        stale_key: bool,
        escalate: Option<Duration>,
    ) -> Stack {
        capture_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = if serve {
            Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the stack's port"),
            )
        } else {
            None
        };
        let base_url = listener
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().expect("local addr")));
        let notify_url = base_url
            .as_ref()
            .map(|b| format!("{b}/wxpay/refund-notify"));

        let sandbox = Sandbox::start(SandboxConfig {
            state_dir: dir.path().join("sandbox"),
            // Refunds settle when a test says so (`settle_now`), never behind its back.
            settle_after: Duration::from_secs(600),
            notify_retry_factor: 1000.0,
            notify_url: None,
            apply_qps: 10_000,
            failure_qps: 10_000,
            notify_timeout: Duration::from_secs(5),
            ..SandboxConfig::default()
        })
        .await
        .expect("start the sandbox");

        let files = sandbox.files().clone();
        let json = std::fs::read_to_string(&files.merchant_json).expect("read merchant.json");
        let mut merchant =
            MerchantConfig::from_json(&json, SystemTime::now()).expect("merchant.json is valid");
        if stale_key {
            merchant.api_v2_key =
                wxpay::ApiKey::new("0ldKeyRotatedAway000000000000000").expect("a 32-char key");
        }
        let mut client = ClientConfig::for_base_url(sandbox.base_url());
        client.extra_root_ca_pem = Some(std::fs::read(&files.ca_pem).expect("read ca.pem"));
        client.connect_timeout = Duration::from_secs(1);
        client.total_timeout = WX_TIMEOUT;
        client.pacing = PacingConfig {
            refund_per_sec: NonZeroU32::new(10_000).unwrap(),
            failing_per_sec: NonZeroU32::new(10_000).unwrap(),
            max_wait: Duration::from_secs(2),
        };
        let gateway = WxPayGateway::new(
            &merchant,
            client.clone(),
            Some(SecretSource::file(files.merchant_json.clone())),
        )
        .expect("build the WeChat gateway");

        let (ledger, faults): (Arc<dyn Ledger>, _) = match kind {
            LedgerKind::Dynamo => {
                let (ledger, faults) = dynamo_ledger().await;
                (Arc::new(ledger), faults)
            }
            LedgerKind::Embedded => (
                Arc::new(
                    EmbeddedLedger::open(dir.path().join("ledger.redb")).expect("open redb ledger"),
                ),
                None,
            ),
        };
        let events = wxrefund::testing::RecordingPublisher::new();
        let svc = Arc::new(RefundService::new(
            Arc::clone(&ledger),
            Arc::new(gateway),
            Arc::clone(&events) as Arc<dyn wxrefund::publish::EventPublisher>,
            ServiceConfig {
                lease_ttl: Duration::from_secs(5),
                schedule: wxrefund::decide::Schedule {
                    first_check: Duration::ZERO,
                    min_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    escalate: escalate
                        .map(wxrefund::decide::Escalation::all)
                        .unwrap_or_default(),
                },
                page_size: 10,
                notify_url,
                redeliver_after: Duration::from_millis(200),
            },
        ));
        let router = wxrefund::http::router_with_poller(Arc::clone(&svc), Duration::from_secs(10));
        let server = listener.map(|l| {
            let app = router.clone();
            tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
            })
        });
        Stack {
            sandbox,
            svc,
            events,
            router,
            ledger,
            base_url,
            client_config: client,
            server,
            faults,
            _dir: dir,
        }
    }

    // ---- the sandbox's books -----------------------------------------------------------------

    pub fn create_order(&self, out_trade_no: &str, total_fee: u64) -> OrderView {
        self.create_order_with(out_trade_no, total_fee, None)
    }

    pub fn create_order_with(
        &self,
        out_trade_no: &str,
        total_fee: u64,
        outcome: Option<Outcome>,
    ) -> OrderView {
        self.sandbox
            .books()
            .create_order(NewOrder {
                out_trade_no: out_trade_no.into(),
                total_fee,
                outcome,
                ..NewOrder::default()
            })
            .expect("create a paid order in the sandbox")
    }

    pub fn fault_once(&self, order: &str, kind: FaultKind) {
        self.sandbox
            .books()
            .add_fault(
                Some(order),
                Fault {
                    kind,
                    times: Some(1),
                    on: wxpay_sandbox::books::FaultTarget::Apply,
                },
            )
            .expect("add a fault");
    }

    pub fn apply_calls(&self, out_refund_no: &str) -> u32 {
        self.sandbox.books().apply_calls(out_refund_no)
    }

    pub fn order_books(&self, out_trade_no: &str) -> OrderView {
        self.sandbox
            .books()
            .order(out_trade_no)
            .expect("order in the sandbox")
    }

    /// A refund made outside our API (as in the merchant platform): a signed refund apply sent
    /// straight to the sandbox with the merchant's own client, bypassing the service and ledger.
    pub async fn external_refund(
        &self,
        out_refund_no: &str,
        out_trade_no: &str,
        total_fee: u64,
        refund_fee: u64,
        notify_url: Option<String>,
    ) {
        let json =
            std::fs::read_to_string(&self.sandbox.files().merchant_json).expect("merchant.json");
        let merchant = MerchantConfig::from_json(&json, SystemTime::now()).expect("merchant.json");
        let client = wxpay::client::WxPayClient::new(&self.client_config, Some(&merchant.identity))
            .expect("a separate WeChat client");
        let request = wxpay::refund::RefundRequest {
            order: wxpay::OrderRef::OutTradeNo(OutTradeNo::new(out_trade_no).expect("valid")),
            out_refund_no: OutRefundNo::new(out_refund_no).expect("valid"),
            total_fee: wxpay::Fen::positive(total_fee).expect("fen"),
            refund_fee: wxpay::Fen::positive(refund_fee).expect("fen"),
            refund_desc: Some("made in the merchant platform".into()),
            refund_account: None,
            notify_url,
        };
        let xml = request
            .to_xml(&merchant.merchant_keys(), &wxpay::NonceStr::random())
            .expect("signed refund XML");
        let reply = client
            .post_xml(wxpay::refund::PATH, xml, true)
            .await
            .expect("the sandbox answers");
        let body = String::from_utf8_lossy(&reply.body);
        assert_eq!(reply.status, 200, "{body}");
        let map = wxpay::xml::decode(&reply.body).expect("XML reply");
        assert_eq!(map.get("result_code"), Some("SUCCESS"), "{body}");
        assert!(self.sandbox.books().refund(out_refund_no).is_some());
    }

    // ---- HTTP ----------------------------------------------------------------------------------

    /// Sends one request through the router; returns the status and the JSON body.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let (status, bytes) = self.call_raw(method, uri, body, "application/json").await;
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{uri}: reply is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, json)
    }

    pub async fn call_raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> (StatusCode, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("request");
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("router is infallible");
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("read reply body")
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    /// `POST /refunds` with this JSON.
    pub async fn post_refund(&self, body: &Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/refunds",
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn get_refund(&self, out_refund_no: &str) -> (StatusCode, Value) {
        self.call(Method::GET, &format!("/refunds/{out_refund_no}"), None)
            .await
    }

    /// The scheduled poll, as Lambda delivers it: the scheduler's payload parsed by lambda_http
    /// (pass-through) into an HTTP request, handed to the router through lambda_http's own adapter,
    /// and the pass-through response it would return to the Lambda runtime.
    pub async fn scheduled_poll(&self) -> Value {
        use lambda_http::Service;
        let payload: lambda_http::request::LambdaRequest =
            serde_json::from_str(SCHEDULER_PAYLOAD).expect("lambda_http parses the payload");
        let event = lambda_http::LambdaEvent::new(payload, lambda_http::Context::default());
        let mut adapter = lambda_http::Adapter::from(self.router.clone());
        let resp = adapter.call(event).await.expect("router is infallible");
        serde_json::to_value(&resp).expect("the Lambda response serializes")
    }

    /// One poll through `POST /events` (the scheduler's payload converted by lambda_http).
    pub async fn poll(&self) -> Value {
        let payload: lambda_http::request::LambdaRequest =
            serde_json::from_str(SCHEDULER_PAYLOAD).expect("lambda_http parses the payload");
        let req: lambda_http::Request = payload.into();
        assert_eq!(req.uri().path(), wxrefund::http::EVENTS_PATH);
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("router is infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&bytes).expect("poll report is JSON");
        assert_eq!(status, StatusCode::OK, "poll failed: {v}");
        v
    }

    /// Polls until the refund reaches `want` (or the deadline); returns its record.
    pub async fn poll_until(&self, out_refund_no: &str, want: RefundStatus) -> RefundRecord {
        let started = Instant::now();
        loop {
            let report = self.poll().await;
            assert_eq!(report["errors"], 0, "poll reported errors: {report}");
            let rec = self.record(out_refund_no).await;
            if rec.status == want {
                return rec;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{out_refund_no} did not reach {want} in time; it is {} ({:?})",
                rec.status,
                rec.last_error
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ledger's record (fails when missing).
    pub async fn record(&self, out_refund_no: &str) -> RefundRecord {
        let no = OutRefundNo::new(out_refund_no).expect("valid out_refund_no");
        self.ledger
            .get(&no)
            .await
            .expect("ledger read")
            .unwrap_or_else(|| panic!("{out_refund_no} is not in the ledger"))
    }

    pub async fn maybe_record(&self, out_refund_no: &str) -> Option<RefundRecord> {
        let no = OutRefundNo::new(out_refund_no).expect("valid out_refund_no");
        self.ledger.get(&no).await.expect("ledger read")
    }

    pub async fn ledger_order(&self, out_trade_no: &str) -> Vec<RefundRecord> {
        let order = wxpay::OrderRef::OutTradeNo(OutTradeNo::new(out_trade_no).expect("valid"));
        self.ledger
            .list_by_order(&order)
            .await
            .expect("ledger list")
    }
}

/// A `POST /refunds` body.
pub fn refund_body(
    out_refund_no: &str,
    out_trade_no: &str,
    total_fee: u64,
    refund_fee: u64,
) -> Value {
    json!({
        "out_refund_no": out_refund_no,
        "out_trade_no": out_trade_no,
        "total_fee": total_fee,
        "refund_fee": refund_fee,
    })
}

/// Waits for `check` to hold, with a deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A DynamoDB ledger on a fresh table of the moto server named by `MOTO_ENDPOINT`. With
/// `E2E_DYNAMO_FAULT_SEED` set, its requests go through the fault relay and meet DynamoDB's
/// failures at random from that seed (`wxrefund::testing::random_dynamo_faults`; returned, to
/// report): the workflows must come out the same (`scripts/test` runs the workflow suites so too).
pub async fn dynamo_ledger() -> (DynamoLedger, Option<wxrefund::testing::Faults>) {
    match std::env::var("E2E_DYNAMO_FAULT_SEED") {
        Ok(seed) => {
            let seed: u64 = seed.parse().expect("E2E_DYNAMO_FAULT_SEED: an integer");
            // Each ledger of the run meets its own faults: mix in a per-process counter.
            let nth = LEDGERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let seed = seed.wrapping_add(nth * 7919);
            eprintln!("ledger under faults, seed {seed}");
            let faults = wxrefund::testing::random_dynamo_faults(seed);
            let ledger =
                wxrefund::testing::random_faulty_dynamo_ledger("e2e-faults", &faults).await;
            (ledger, Some(faults))
        }
        Err(_) => (wxrefund::testing::fresh_dynamo_ledger("e2e").await, None),
    }
}

static LEDGERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
