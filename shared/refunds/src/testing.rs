//! Test support shared by this crate's tests and the end-to-end suite: the AWS SDK pointed at the
//! moto server that `scripts/test` starts, through a relay that can also inject DynamoDB's
//! failures ([`Faults`]). Production code never calls it.
//!
//! The helpers panic instead of returning errors: they set up tests, and a test without its moto
//! must fail loudly, never skip.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ledger::dynamo::{DynamoLedger, create_table};

/// The moto endpoint from `MOTO_ENDPOINT`. Tests that need it fail, never skip, without it.
pub fn moto_endpoint() -> String {
    std::env::var("MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "MOTO_ENDPOINT is not set: this test needs a moto server. Run the tests with \
             scripts/test (it starts moto and exports MOTO_ENDPOINT and the AWS_* variables)."
        )
    })
}

/// SDK configuration for moto, through a one-request-at-a-time relay (see [`serial_relay`]).
pub async fn moto_sdk_config() -> SdkConfig {
    let relay = serial_relay(&moto_endpoint()).await;
    sdk_config(&relay, None, None).await
}

/// The SDK's defaults (standard retries, 3.1 s connect timeout) unless overridden.
async fn sdk_config(
    endpoint: &str,
    retry: Option<RetryConfig>,
    timeouts: Option<TimeoutConfig>,
) -> SdkConfig {
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region));
    if let Some(retry) = retry {
        loader = loader.retry_config(retry);
    }
    if let Some(timeouts) = timeouts {
        loader = loader.timeout_config(timeouts);
    }
    loader.load().await
}

/// A [`DynamoLedger`] on an existing `table`, through `endpoint` (a relay in front of moto), with
/// the SDK's default retries and timeouts.
pub async fn dynamo_ledger_via(endpoint: &str, table: &str) -> DynamoLedger {
    let conf = sdk_config(endpoint, None, None).await;
    DynamoLedger::new(aws_sdk_dynamodb::Client::new(&conf), table)
}

/// A [`DynamoLedger`] on a fresh table (`<prefix>-<uuid>`) on moto.
pub async fn fresh_dynamo_ledger(prefix: &str) -> DynamoLedger {
    let client = aws_sdk_dynamodb::Client::new(&moto_sdk_config().await);
    ledger_on_fresh_table(prefix, client.clone(), client).await
}

/// A [`DynamoLedger`] on a fresh moto table whose every request goes through a relay injecting
/// `faults`. The SDK keeps its standard retry policy (3 attempts) with a 10 ms initial backoff so
/// that tests of its retries take milliseconds, and gives up on an attempt after
/// `attempt_timeout` (`None`: never, the SDK's default). The table is created on moto directly,
/// without the relay's faults or the timeout.
pub async fn faulty_dynamo_ledger(
    prefix: &str,
    faults: &Faults,
    attempt_timeout: Option<Duration>,
) -> DynamoLedger {
    faulty_dynamo_ledger_retrying(prefix, faults, attempt_timeout, 3).await
}

/// [`faulty_dynamo_ledger`] whose SDK makes up to `max_attempts` attempts per request: for suites
/// where faults come at random on every request and a test must not meet three in a row.
pub async fn faulty_dynamo_ledger_retrying(
    prefix: &str,
    faults: &Faults,
    attempt_timeout: Option<Duration>,
    max_attempts: u32,
) -> DynamoLedger {
    let relay = fault_relay(&moto_endpoint(), faults.clone()).await;
    let retry = RetryConfig::standard()
        .with_initial_backoff(Duration::from_millis(10))
        .with_max_attempts(max_attempts);
    // The table is created straight on moto: the faults are for the ledger's own requests.
    let setup = moto_sdk_config().await;
    let timeouts = attempt_timeout.map(|t| {
        TimeoutConfig::builder()
            .connect_timeout(SDK_CONNECT_TIMEOUT)
            .operation_attempt_timeout(t)
            .build()
    });
    let conf = sdk_config(&relay, Some(retry), timeouts).await;
    ledger_on_fresh_table(
        prefix,
        aws_sdk_dynamodb::Client::new(&setup),
        aws_sdk_dynamodb::Client::new(&conf),
    )
    .await
}

/// The faults a suite meets at random on every DynamoDB request (‰ per request, drawn from
/// `seed`): every kind DynamoDB answers with besides a failed condition, and a write applied whose
/// answer never comes. The adapter must absorb them all: its own retries for cancelled
/// transactions, the SDK's for the rest (see [`random_faulty_dynamo_ledger`]), the
/// `ClientRequestToken` for a transaction resent after its answer was lost, and its write id for
/// an update resent so.
///
/// No `SlowAnswer`: the relay serves one request at a time (moto needs it), so one slow answer
/// would stall every concurrent request of a race past its timeout, which DynamoDB never does.
/// `ledger_faults.rs` injects slow answers where they can be told apart.
pub fn random_dynamo_faults(seed: u64) -> Faults {
    let faults = Faults::seeded(seed);
    let twi = Op::TransactWriteItems;
    for rule in [
        FaultRule::per_mille(
            15,
            twi,
            Fault::TransactionCanceled(CancelCode::TransactionConflict),
        ),
        FaultRule::per_mille(
            15,
            twi,
            Fault::TransactionCanceled(CancelCode::ThrottlingError),
        ),
        FaultRule::per_mille(10, Op::Any, Fault::ProvisionedThroughputExceeded),
        FaultRule::per_mille(10, Op::Any, Fault::Throttling),
        FaultRule::per_mille(10, Op::Any, Fault::InternalServerError),
        FaultRule::per_mille(8, Op::Any, Fault::ReplyLost),
    ] {
        faults.add(rule);
    }
    faults
}

/// A [`DynamoLedger`] on a fresh moto table behind a relay injecting `faults` (usually
/// [`random_dynamo_faults`]), its SDK making up to 6 attempts per request so that a test meets a
/// fault now and then but practically never one on every attempt. No attempt timeout: the relay
/// serves one request at a time and races queue dozens behind each other.
pub async fn random_faulty_dynamo_ledger(prefix: &str, faults: &Faults) -> DynamoLedger {
    faulty_dynamo_ledger_retrying(prefix, faults, None, 6).await
}

/// What `faults` injected, by kind, and over how many requests: one line for a test's output.
pub fn faults_summary(faults: &Faults) -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for i in faults.injected() {
        *kinds.entry(format!("{:?}", i.fault)).or_default() += 1;
    }
    format!("requests={} {kinds:?}", faults.requests(Op::Any))
}

/// The SDK's default connect timeout, kept when a test sets its own timeouts.
const SDK_CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);

async fn ledger_on_fresh_table(
    prefix: &str,
    setup: aws_sdk_dynamodb::Client,
    client: aws_sdk_dynamodb::Client,
) -> DynamoLedger {
    let table = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    if let Err(e) = create_table(&setup, &table).await {
        panic!("create the ledger table on moto: {e}");
    }
    DynamoLedger::new(client, table)
}

/// A one-connection-at-a-time TCP relay in front of moto, returning its endpoint URL. It lives on
/// the calling test's runtime.
///
/// Why: DynamoDB executes each request (a transaction included) atomically and serializably.
/// moto's server is threaded without a lock around DynamoDB, and its TransactWriteItems applies
/// items one by one and, on cancellation, restores a deep copy of the whole table taken when the
/// transaction started, wiping writes other requests made meanwhile. Concurrent requests to moto
/// therefore lose committed writes, which DynamoDB never does. moto answers every request with
/// `Connection: close`, so relaying one connection at a time makes each request atomic again
/// (what DynamoDB guarantees) while our tasks still race each other between requests.
pub async fn serial_relay(endpoint: &str) -> String {
    let (listener, upstream) = bind_relay(endpoint).await;
    let addr = relay_addr(&listener);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                continue;
            };
            // One connection (= one request with moto) at a time.
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        }
    });
    format!("http://{addr}")
}

/// [`serial_relay`] that reads each request and answers it as `faults` say: forwarded to moto,
/// or one of DynamoDB's failures. It also does what DynamoDB does and moto does not with a
/// TransactWriteItems `ClientRequestToken` (the SDK sets one per call and keeps it across its own
/// retries): a committed transaction sent again with the same token is answered "committed"
/// without being applied twice, and with other parameters `IdempotentParameterMismatchException`.
/// Without that, every lost reply would look like a failed condition on moto.
pub async fn fault_relay(endpoint: &str, faults: Faults) -> String {
    let (listener, upstream) = bind_relay(endpoint).await;
    let addr = relay_addr(&listener);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            // A stuck client must not stop every later request.
            let _ =
                tokio::time::timeout(RELAY_REQUEST_LIMIT, relay_one(inbound, upstream, &faults))
                    .await;
        }
    });
    format!("http://{addr}")
}

/// Longest time one relayed request (with its injected delay) may hold the relay.
const RELAY_REQUEST_LIMIT: Duration = Duration::from_secs(120);

async fn bind_relay(endpoint: &str) -> (TcpListener, SocketAddr) {
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let Some(upstream) = tokio::net::lookup_host(&authority)
        .await
        .ok()
        .and_then(|mut a| a.next())
    else {
        panic!("MOTO_ENDPOINT {endpoint:?} is not http://host:port");
    };
    match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => (l, upstream),
        Err(e) => panic!("bind the moto relay: {e}"),
    }
}

fn relay_addr(listener: &TcpListener) -> SocketAddr {
    match listener.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("moto relay address: {e}"),
    }
}

// ---- secrets in logs ---------------------------------------------------------------------------

/// Strings of a merchant secret (its `merchant.json`) that must never appear in a log: a probe of
/// the API key, of the private key PEM and of the PKCS#12 base64 (a PEM's first body line is
/// unique key material). Not `cert_p12_password`: WeChat sets it to the mch_id, a public
/// identifier that is logged. Panics if the document holds none of them.
pub fn secret_material(merchant_json: &str) -> Vec<String> {
    let doc: serde_json::Value = match serde_json::from_str(merchant_json) {
        Ok(v) => v,
        Err(e) => panic!("merchant.json is not JSON: {e}"),
    };
    let mut out = Vec::new();
    for field in ["api_v2_key", "key_pem", "cert_p12_base64"] {
        if let Some(s) = doc.get(field).and_then(serde_json::Value::as_str) {
            let probe = s
                .lines()
                .find(|l| !l.starts_with("-----") && l.len() >= 16)
                .unwrap_or(s);
            if probe.len() >= 8 {
                out.push(probe.chars().take(40).collect());
            }
        }
    }
    assert!(!out.is_empty(), "merchant.json holds key material");
    out
}

// ---- process memory ----------------------------------------------------------------------------

/// A value in KiB from `/proc/<pid>/status` (`pid` `None`: this process), such as `VmHWM:` (peak
/// resident memory) or `VmRSS:`; `None` off Linux, for a gone process or a missing key.
pub fn proc_status_kib(pid: Option<u32>, key: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

// ---- fault injection ---------------------------------------------------------------------------

/// A DynamoDB operation, as the `X-Amz-Target` header names it; [`Op::Any`] matches them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    TransactWriteItems,
    UpdateItem,
    PutItem,
    GetItem,
    BatchGetItem,
    Query,
    /// EventBridge's `PutEvents` (`X-Amz-Target: AWSEvents.PutEvents`), for [`Fault::EntriesRefused`].
    PutEvents,
    Any,
}

impl Op {
    /// The operation name in `X-Amz-Target: DynamoDB_20120810.<name>` (`*` for [`Op::Any`]).
    pub fn name(self) -> &'static str {
        match self {
            Op::TransactWriteItems => "TransactWriteItems",
            Op::UpdateItem => "UpdateItem",
            Op::PutItem => "PutItem",
            Op::GetItem => "GetItem",
            Op::BatchGetItem => "BatchGetItem",
            Op::Query => "Query",
            Op::PutEvents => "PutEvents",
            Op::Any => "*",
        }
    }

    fn matches(self, operation: &str) -> bool {
        self == Op::Any || self.name() == operation
    }
}

/// A cancellation reason DynamoDB gives for an item that was not a failed condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelCode {
    /// On-demand capacity (table or index) exceeded for the moment.
    ThrottlingError,
    /// Another transaction is writing the item.
    TransactionConflict,
    /// Provisioned capacity exceeded.
    ProvisionedThroughputExceeded,
}

impl CancelCode {
    pub fn code(self) -> &'static str {
        match self {
            CancelCode::ThrottlingError => "ThrottlingError",
            CancelCode::TransactionConflict => "TransactionConflict",
            CancelCode::ProvisionedThroughputExceeded => "ProvisionedThroughputExceeded",
        }
    }

    /// The message DynamoDB sends with the code (DynamoDB API reference, TransactWriteItems).
    fn message(self) -> &'static str {
        match self {
            CancelCode::ThrottlingError => {
                "Throughput exceeds the current capacity of your table or index. DynamoDB is \
                 automatically scaling your table or index so please try again shortly. If \
                 exceptions persist, check if you have a hot key: \
                 https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html."
            }
            CancelCode::TransactionConflict => "Transaction is ongoing for the item",
            CancelCode::ProvisionedThroughputExceeded => {
                "The level of configured provisioned throughput for the table was exceeded. \
                 Consider increasing your provisioning level with the UpdateTable API."
            }
        }
    }
}

/// What the relay does to a request instead of relaying it plainly.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// HTTP 400 `TransactionCanceledException`, nothing written: the first item of the
    /// transaction has this reason, every other item `None` (one reason per item, as DynamoDB).
    /// Not retried by the SDK.
    TransactionCanceled(CancelCode),
    /// HTTP 400 `ProvisionedThroughputExceededException`, nothing written (the SDK retries it).
    ProvisionedThroughputExceeded,
    /// HTTP 400 `ThrottlingException`, nothing written (the SDK retries it).
    Throttling,
    /// HTTP 500 `InternalServerError`, nothing written (the SDK retries it).
    InternalServerError,
    /// Relayed to moto (so written), but its answer is held back this long: past the SDK's
    /// attempt timeout the client gives up on a write that happened.
    SlowAnswer(Duration),
    /// Relayed to moto (so written), and the connection closed without an answer.
    ReplyLost,
    /// `PutEvents` answered HTTP 200 with its first `n` entries refused (`ThrottlingException`,
    /// as EventBridge refuses entries over a quota): only the other entries are relayed to moto,
    /// and the answer lists one result per entry in order, with `FailedEntryCount` = `n`.
    EntriesRefused(usize),
}

/// Which of the requests a rule matches it fires on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    /// The next `n` (after the skipped ones).
    Next(u32),
    /// Every one (after the skipped ones) until the rule is cleared.
    Always,
    /// Each with this chance in 1000, drawn from the [`Faults`] seed: the same seed and the same
    /// order of requests give the same faults.
    PerMille(u16),
}

/// One fault rule: `fault` on the requests of `op` that `times` selects, after the first `skip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    pub op: Op,
    pub fault: Fault,
    pub times: Times,
    pub skip: u32,
}

impl FaultRule {
    /// `fault` on the next `n` requests of `op`.
    pub fn next(n: u32, op: Op, fault: Fault) -> Self {
        Self {
            op,
            fault,
            times: Times::Next(n),
            skip: 0,
        }
    }

    /// `fault` on every request of `op`.
    pub fn always(op: Op, fault: Fault) -> Self {
        Self {
            op,
            fault,
            times: Times::Always,
            skip: 0,
        }
    }

    /// `fault` on each request of `op` with a chance of `per_mille` in 1000 (seeded).
    pub fn per_mille(per_mille: u16, op: Op, fault: Fault) -> Self {
        Self {
            op,
            fault,
            times: Times::PerMille(per_mille),
            skip: 0,
        }
    }

    /// Lets the first `skip` matching requests through untouched.
    pub fn after(self, skip: u32) -> Self {
        Self { skip, ..self }
    }
}

/// One fault the relay injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// The operation name (`TransactWriteItems`, ...).
    pub operation: String,
    pub fault: Fault,
}

/// The faults of one relay, shared between the relay and the test steering it. Cheap to clone.
/// Rules are tried in the order they were added; the first that fires decides.
#[derive(Clone, Debug)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

#[derive(Debug)]
struct FaultState {
    rules: Vec<RuleState>,
    /// splitmix64 state.
    rng: u64,
    log: Vec<Injection>,
    requests: HashMap<String, u64>,
    /// ClientRequestToken → (request body, moto's answer) of committed transactions.
    committed: HashMap<String, (Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
struct RuleState {
    rule: FaultRule,
    matched: u32,
    fired: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Self::seeded(0)
    }
}

impl Faults {
    /// No rules yet; `seed` drives [`Times::PerMille`].
    pub fn seeded(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(FaultState {
                rules: Vec::new(),
                rng: seed,
                log: Vec::new(),
                requests: HashMap::new(),
                committed: HashMap::new(),
            })),
        }
    }

    /// Adds a rule after the existing ones.
    pub fn add(&self, rule: FaultRule) -> &Self {
        self.lock().rules.push(RuleState {
            rule,
            matched: 0,
            fired: 0,
        });
        self
    }

    /// Drops every rule: from now on requests are relayed plainly.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// Every fault injected so far, in order.
    pub fn injected(&self) -> Vec<Injection> {
        self.lock().log.clone()
    }

    /// Requests of `op` the relay has seen, faulted ones included ([`Op::Any`]: all of them).
    pub fn requests(&self, op: Op) -> u64 {
        self.lock()
            .requests
            .iter()
            .filter(|(name, _)| op.matches(name))
            .map(|(_, n)| n)
            .sum()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A test that panicked while holding the lock left consistent counters behind.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the request and picks its fault, if any rule fires.
    fn decide(&self, operation: &str) -> Option<Fault> {
        let mut st = self.lock();
        *st.requests.entry(operation.to_owned()).or_default() += 1;
        let FaultState { rules, rng, .. } = &mut *st;
        let mut chosen = None;
        for r in rules.iter_mut().filter(|r| r.rule.op.matches(operation)) {
            r.matched = r.matched.saturating_add(1);
            if r.matched <= r.rule.skip {
                continue;
            }
            let fires = match r.rule.times {
                Times::Next(n) => r.fired < n,
                Times::Always => true,
                Times::PerMille(p) => splitmix64(rng) % 1000 < u64::from(p),
            };
            if fires {
                r.fired = r.fired.saturating_add(1);
                chosen = Some(r.rule.fault.clone());
                break;
            }
        }
        if let Some(fault) = &chosen {
            st.log.push(Injection {
                operation: operation.to_owned(),
                fault: fault.clone(),
            });
        }
        chosen
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---- the relay's HTTP ------------------------------------------------------------------------

/// One HTTP/1.1 message as read off the wire: the head (through the blank line) and the body.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(&self.head)
            .ok()?
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    fn status(&self) -> Option<u16> {
        let line = std::str::from_utf8(&self.head).ok()?.lines().next()?;
        line.split(' ').nth(1)?.parse().ok()
    }

    fn bytes(&self) -> Vec<u8> {
        [self.head.as_slice(), self.body.as_slice()].concat()
    }
}

/// Reads one message: up to `Content-Length` bytes of body, or to the end of the stream when
/// there is none (moto closes after every answer).
async fn read_message(s: &mut TcpStream) -> io::Result<Message> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP head too long",
            ));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let body = buf.split_off(head_end);
    let mut m = Message { head: buf, body };
    match m.header("content-length").map(str::parse::<usize>) {
        Some(Ok(len)) => {
            while m.body.len() < len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                m.body.extend_from_slice(&chunk[..n]);
            }
            m.body.truncate(len);
        }
        Some(Err(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad Content-Length",
            ));
        }
        None if m.status().is_some() => {
            s.read_to_end(&mut m.body).await?;
        }
        None => {}
    }
    Ok(m)
}

/// Sends the request to moto and reads its whole answer.
async fn forward(req: &Message, upstream: SocketAddr) -> io::Result<Message> {
    let mut out = TcpStream::connect(upstream).await?;
    out.write_all(&req.bytes()).await?;
    read_message(&mut out).await
}

/// What a TransactWriteItems request says about itself.
struct TxnRequest {
    token: Option<String>,
    items: usize,
}

fn txn_request(body: &[u8]) -> TxnRequest {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    TxnRequest {
        token: json
            .get("ClientRequestToken")
            .and_then(|t| t.as_str())
            .map(str::to_owned),
        items: json
            .get("TransactItems")
            .and_then(|i| i.as_array())
            .map_or(1, Vec::len)
            .max(1),
    }
}

async fn relay_one(mut inbound: TcpStream, upstream: SocketAddr, faults: &Faults) {
    let Ok(req) = read_message(&mut inbound).await else {
        return;
    };
    let operation = req
        .header("x-amz-target")
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_owned();
    let txn = (operation == Op::TransactWriteItems.name()).then(|| txn_request(&req.body));
    let token = txn.as_ref().and_then(|t| t.token.clone());
    if let Some(token) = &token {
        let replay = {
            let mut st = faults.lock();
            let replay = st.committed.get(token).cloned();
            if replay.is_some() {
                *st.requests.entry(operation.clone()).or_default() += 1;
            }
            replay
        };
        if let Some((body, answer)) = replay {
            // DynamoDB: same token, same request → "committed" again, nothing applied twice.
            let answer = if body == req.body {
                answer
            } else {
                error_response(
                    400,
                    "com.amazonaws.dynamodb.v20120810#IdempotentParameterMismatchException",
                    "Request parameters do not match the parameters of the original request",
                    None,
                )
            };
            let _ = inbound.write_all(&answer).await;
            return;
        }
    }
    let fault = faults.decide(&operation);
    let injected = match &fault {
        Some(Fault::TransactionCanceled(code)) => Some(cancellation_response(
            *code,
            txn.as_ref().map_or(1, |t| t.items),
        )),
        Some(Fault::ProvisionedThroughputExceeded) => Some(error_response(
            400,
            "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            CancelCode::ProvisionedThroughputExceeded.message(),
            None,
        )),
        Some(Fault::Throttling) => Some(error_response(
            400,
            "com.amazon.coral.availability#ThrottlingException",
            "Rate of requests exceeds the allowed throughput.",
            None,
        )),
        Some(Fault::InternalServerError) => Some(error_response(
            500,
            "com.amazonaws.dynamodb.v20120810#InternalServerError",
            "Internal server error",
            None,
        )),
        Some(Fault::EntriesRefused(n)) => Some(refuse_entries(&req, upstream, *n).await),
        Some(Fault::SlowAnswer(_) | Fault::ReplyLost) | None => None,
    };
    if let Some(answer) = injected {
        let _ = inbound.write_all(&answer).await;
        return;
    }
    let Ok(answer) = forward(&req, upstream).await else {
        return;
    };
    if let (Some(token), Some(200)) = (token, answer.status()) {
        faults
            .lock()
            .committed
            .insert(token, (req.body.clone(), answer.bytes()));
    }
    match fault {
        Some(Fault::ReplyLost) => drop(inbound),
        Some(Fault::SlowAnswer(d)) => {
            tokio::time::sleep(d).await;
            let _ = inbound.write_all(&answer.bytes()).await;
        }
        _ => {
            let _ = inbound.write_all(&answer.bytes()).await;
        }
    }
}

/// [`Fault::EntriesRefused`]: the first `n` entries refused, the rest relayed to moto.
async fn refuse_entries(req: &Message, upstream: SocketAddr, n: usize) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
    let entries = json
        .get("Entries")
        .and_then(|e| e.as_array())
        .cloned()
        .unwrap_or_default();
    let refused = n.min(entries.len());
    let mut results: Vec<serde_json::Value> = (0..refused)
        .map(|_| {
            serde_json::json!({
                "ErrorCode": "ThrottlingException",
                "ErrorMessage": "Rate exceeded (injected)",
            })
        })
        .collect();
    if refused < entries.len() {
        json["Entries"] = serde_json::Value::Array(entries[refused..].to_vec());
        let body = json.to_string().into_bytes();
        let head = String::from_utf8_lossy(&req.head)
            .split("\r\n")
            .map(|line| {
                if line.to_ascii_lowercase().starts_with("content-length:") {
                    format!("Content-Length: {}", body.len())
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        let relayed = Message {
            head: head.into_bytes(),
            body,
        };
        let answer = forward(&relayed, upstream).await.ok();
        let theirs: serde_json::Value = answer
            .and_then(|a| serde_json::from_slice(&a.body).ok())
            .unwrap_or_default();
        let mut rest = theirs
            .get("Entries")
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default();
        rest.resize(
            entries.len() - refused,
            serde_json::json!({"ErrorCode": "InternalFailure"}),
        );
        results.extend(rest);
    }
    let failed = results
        .iter()
        .filter(|r| r.get("ErrorCode").is_some())
        .count();
    let body = serde_json::json!({"FailedEntryCount": failed, "Entries": results}).to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\n\
         x-amzn-RequestId: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        uuid::Uuid::new_v4().simple(),
        body.len()
    )
    .into_bytes()
}

/// DynamoDB's answer to a transaction cancelled for `code` on its first item.
fn cancellation_response(code: CancelCode, items: usize) -> Vec<u8> {
    let codes: Vec<&str> = (0..items)
        .map(|i| if i == 0 { code.code() } else { "None" })
        .collect();
    let reasons: Vec<String> = (0..items)
        .map(|i| {
            if i == 0 {
                format!(
                    r#"{{"Code":"{}","Message":"{}"}}"#,
                    code.code(),
                    code.message()
                )
            } else {
                r#"{"Code":"None"}"#.to_owned()
            }
        })
        .collect();
    error_response(
        400,
        "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        &format!(
            "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
            codes.join(", ")
        ),
        Some(&format!(r#""CancellationReasons":[{}]"#, reasons.join(","))),
    )
}

/// An error answer as DynamoDB sends it (JSON 1.0 with `__type` and `message`, a request id, the
/// body's CRC32), closing the connection like moto so that the relay stays one request at a time.
fn error_response(status: u16, ty: &str, message: &str, extra: Option<&str>) -> Vec<u8> {
    let body = match extra {
        Some(extra) => format!(r#"{{"__type":"{ty}","message":"{message}",{extra}}}"#),
        None => format!(r#"{{"__type":"{ty}","message":"{message}"}}"#),
    };
    let reason = if status == 500 {
        "Internal Server Error"
    } else {
        "Bad Request"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.0\r\n\
         x-amzn-RequestId: {}\r\nx-amz-crc32: {}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        uuid::Uuid::new_v4().simple(),
        crc32(body.as_bytes()),
        body.len()
    )
    .into_bytes()
}

/// CRC-32 (IEEE), as in DynamoDB's `x-amz-crc32` header.
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| {
        (0..8).fold(crc ^ u32::from(b), |c, _| {
            if c & 1 == 1 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(resp: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(resp).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains(&format!("x-amz-crc32: {}", crc32(body.as_bytes()))));
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn a_throttled_cancellation_is_shaped_like_dynamodbs() {
        // GIVEN a 2-item transaction throttled on its first item
        let resp = cancellation_response(CancelCode::ThrottlingError, 2);
        // THEN it is a 400 TransactionCanceledException with one reason per item
        assert!(resp.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
        let json = body_json(&resp);
        assert_eq!(
            json["__type"],
            "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"
        );
        assert_eq!(
            json["message"],
            "Transaction cancelled, please refer cancellation reasons for specific reasons \
             [ThrottlingError, None]"
        );
        let reasons = json["CancellationReasons"].as_array().unwrap();
        assert_eq!(reasons.len(), 2);
        assert_eq!(reasons[0]["Code"], "ThrottlingError");
        assert!(
            reasons[0]["Message"]
                .as_str()
                .unwrap()
                .contains("Throughput exceeds")
        );
        assert_eq!(reasons[1], serde_json::json!({"Code": "None"}));
    }

    #[test]
    fn rules_fire_in_order_after_their_skips_and_stop_when_cleared() {
        // GIVEN a rule for the 2nd and 3rd transactions and one for every update
        let f = Faults::seeded(1);
        f.add(
            FaultRule::next(
                2,
                Op::TransactWriteItems,
                Fault::TransactionCanceled(CancelCode::TransactionConflict),
            )
            .after(1),
        )
        .add(FaultRule::always(
            Op::UpdateItem,
            Fault::InternalServerError,
        ));
        // WHEN requests arrive THEN exactly those are faulted, and nothing once cleared
        let txn = || f.decide("TransactWriteItems").is_some();
        assert_eq!([txn(), txn(), txn(), txn()], [false, true, true, false]);
        assert_eq!(f.decide("GetItem"), None);
        assert_eq!(f.decide("UpdateItem"), Some(Fault::InternalServerError));
        f.clear();
        assert_eq!(f.decide("UpdateItem"), None);
        assert_eq!(f.requests(Op::TransactWriteItems), 4);
        assert_eq!(f.requests(Op::Any), 7);
        assert_eq!(f.injected().len(), 3);
    }

    #[test]
    fn chance_rules_repeat_with_their_seed() {
        // GIVEN two relays with the same seed and one with another WHEN 200 requests arrive
        let run = |seed| {
            let f = Faults::seeded(seed);
            f.add(FaultRule::per_mille(300, Op::Any, Fault::Throttling));
            (0..200)
                .map(|_| f.decide("Query").is_some())
                .collect::<Vec<_>>()
        };
        // THEN the same seed faults the same requests, about 30% of them
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let hits = run(7).into_iter().filter(|h| *h).count();
        assert!((30..=90).contains(&hits), "{hits}");
    }

    #[test]
    fn crc32_is_ieee() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }
}

/// A WeChat that cannot be reached: every call is "not sent" (the routes answer without it).
pub struct OfflineGateway;

#[async_trait::async_trait]
impl crate::gateway::Gateway for OfflineGateway {
    async fn refund(
        &self,
        _: &wxpay::refund::RefundRequest,
    ) -> wxpay::CallOutcome<wxpay::refund::RefundResponse> {
        wxpay::CallOutcome::NotSent("offline".into())
    }
    async fn query(
        &self,
        _: &wxpay::query::RefundQueryRequest,
    ) -> wxpay::CallOutcome<wxpay::query::RefundQueryResponse> {
        wxpay::CallOutcome::NotSent("offline".into())
    }
    async fn decrypt_notification(
        &self,
        _: &[u8],
    ) -> Result<wxpay::notify::RefundNotification, wxpay::notify::NotifyError> {
        Err(wxpay::notify::NotifyError::MissingReqInfo)
    }
    async fn refund_bill(
        &self,
        _: wxpay::bill::BillDate,
    ) -> Result<wxpay::bill::BillText, crate::gateway::BillFailure> {
        Err(crate::gateway::BillFailure::Transport("offline".into()))
    }
}

/// The record `Ledger::record` would write for `n` (to build a record in tests).
pub fn record_of(n: &crate::ledger::NewRefund) -> crate::state::RefundRecord {
    crate::ledger::new_record(n)
}

/// An EventBridge client on moto through a relay injecting `faults` (e.g.
/// [`Fault::EntriesRefused`]).
pub async fn faulty_eventbridge(faults: &Faults) -> aws_sdk_eventbridge::Client {
    let relay = fault_relay(&moto_endpoint(), faults.clone()).await;
    aws_sdk_eventbridge::Client::new(&sdk_config(&relay, None, None).await)
}

/// An event publisher for tests: keeps every event it accepts, in order, and refuses every
/// event while [`RecordingPublisher::refuse`] is on (a destination that is down).
#[derive(Default)]
pub struct RecordingPublisher {
    accepted: Mutex<Vec<crate::events::Envelope>>,
    refusing: std::sync::atomic::AtomicBool,
}

impl RecordingPublisher {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Everything accepted so far, oldest first (re-deliveries included).
    pub fn accepted(&self) -> Vec<crate::events::Envelope> {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl crate::publish::EventPublisher for RecordingPublisher {
    async fn publish(&self, events: &[crate::events::Envelope]) -> crate::publish::Delivery {
        if self.refusing.load(std::sync::atomic::Ordering::SeqCst) {
            return crate::publish::Delivery::all_failed(events, "refusing (test)");
        }
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(events.iter().cloned());
        crate::publish::Delivery {
            accepted: events.iter().map(|e| e.id.clone()).collect(),
            failed: Vec::new(),
        }
    }
}
