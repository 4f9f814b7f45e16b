//! Harness for running a built Lambda function binary against real parts: the merchant secret in
//! Secrets Manager and a fresh ledger table (both on moto), the in-process WeChat sandbox, and the
//! [`LambdaEmulator`] as the Lambda service. Used by each function crate's `tests/lambda.rs`.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use aws_config::SdkConfig;
use serde_json::{Value, json};
use tempfile::TempDir;
use wxpay_sandbox::{NewOrder, OrderView, RunningSandbox, Sandbox, SandboxConfig};
use wxrefund::gateway::WxPayGateway;
use wxrefund::http::CreateRefund;
use wxrefund::ledger::Ledger;
use wxrefund::ledger::dynamo::{DynamoLedger, create_table};
use wxrefund::secrets::MerchantConfig;
use wxrefund::service::{RefundService, ServiceConfig, Submitted};
use wxrefund::state::RefundRecord;

use crate::lambda_emulator::{LambdaEmulator, Outcome};

/// The system's CA bundle, given to the functions as `SSL_CERT_FILE` the way template.yaml gives
/// it on Lambda: without it the TLS clients also read every file of `/etc/ssl/certs` (≈ 4 ms each).
fn ca_bundle() -> Option<&'static str> {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
}

/// How long one invocation may take before the test fails (cold start included).
pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(20);

/// The parts a function binary talks to, all real: moto (Secrets Manager, DynamoDB) and the sandbox.
pub struct Parts {
    pub sandbox: RunningSandbox,
    pub secret_id: String,
    pub table: String,
    pub ledger: DynamoLedger,
    /// The raw `MOTO_ENDPOINT` (what the function gets as `AWS_ENDPOINT_URL`).
    pub moto_endpoint: String,
    /// The content of the sandbox's `merchant.json` (the secret's value).
    pub merchant_json: String,
    sdk: SdkConfig,
    _dir: TempDir,
}

impl Parts {
    /// Starts the sandbox, stores its `merchant.json` as a Secrets Manager secret on moto and
    /// creates a fresh ledger table. Fails (never skips) without `MOTO_ENDPOINT`.
    pub async fn start(prefix: &str) -> Parts {
        Parts::start_with(prefix, |_| {}).await
    }

    /// [`Parts::start`] with the sandbox's configuration changed by `configure` first (by default
    /// refunds settle only when a test says so, `settle_now`, and nothing is notified).
    pub async fn start_with(prefix: &str, configure: impl FnOnce(&mut SandboxConfig)) -> Parts {
        let moto_endpoint = wxrefund::testing::moto_endpoint();
        let sdk = wxrefund::testing::moto_sdk_config().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = SandboxConfig {
            state_dir: dir.path().join("sandbox"),
            // Refunds settle when a test says so (`settle_now`), never behind its back.
            settle_after: Duration::from_secs(600),
            notify_retry_factor: 1000.0,
            apply_qps: 10_000,
            failure_qps: 10_000,
            persist: false,
            ..SandboxConfig::default()
        };
        configure(&mut config);
        let sandbox = Sandbox::start(config).await.expect("start the sandbox");
        let merchant_json =
            std::fs::read_to_string(&sandbox.files().merchant_json).expect("read merchant.json");

        let unique = uuid::Uuid::new_v4().simple().to_string();
        let secret_id = format!("{prefix}/merchant-{unique}");
        aws_sdk_secretsmanager::Client::new(&sdk)
            .create_secret()
            .name(&secret_id)
            .secret_string(&merchant_json)
            .send()
            .await
            .expect("create the merchant secret on moto");

        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let table = format!("{prefix}-{unique}");
        create_table(&dynamo, &table)
            .await
            .expect("create the ledger table on moto");
        let ledger = DynamoLedger::new(dynamo, table.clone());
        Parts {
            sandbox,
            secret_id,
            table,
            ledger,
            moto_endpoint,
            merchant_json,
            sdk,
            _dir: dir,
        }
    }

    /// A paid order in the sandbox's books.
    pub fn create_order(&self, out_trade_no: &str, total_fee: u64) -> OrderView {
        self.sandbox
            .books()
            .create_order(NewOrder {
                out_trade_no: out_trade_no.into(),
                total_fee,
                ..NewOrder::default()
            })
            .expect("create a paid order in the sandbox")
    }

    /// The environment the Lambda service (here: `emulator`) and template.yaml give the function.
    pub fn function_env(
        &self,
        emulator: &LambdaEmulator,
        function_name: &str,
    ) -> Vec<(String, String)> {
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
        [
            ("AWS_LAMBDA_RUNTIME_API", emulator.runtime_api()),
            ("AWS_LAMBDA_FUNCTION_NAME", function_name.to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/01/01/[$LATEST]0123456789abcdef".into(),
            ),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function_name}"),
            ),
            ("AWS_REGION", region.clone()),
            ("AWS_DEFAULT_REGION", region),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_SESSION_TOKEN", "testing".into()),
            // aws-config reads it for every service client (Secrets Manager and DynamoDB here).
            ("AWS_ENDPOINT_URL", self.moto_endpoint.clone()),
            ("WXPAY_SECRET_ID", self.secret_id.clone()),
            ("LEDGER_TABLE", self.table.clone()),
            ("WXPAY_BASE_URL", self.sandbox.base_url().to_owned()),
            (
                "WXPAY_CA_FILE",
                self.sandbox.files().ca_pem.to_string_lossy().into_owned(),
            ),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .chain(ca_bundle().map(|path| ("SSL_CERT_FILE", path.to_owned())))
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The ledger's record, if any (read through the test's own `DynamoLedger` on the same table).
    pub async fn record(&self, out_refund_no: &str) -> Option<RefundRecord> {
        let no = wxpay::OutRefundNo::new(out_refund_no).expect("valid out_refund_no");
        self.ledger.get(&no).await.expect("ledger read")
    }

    /// A `RefundService` in this process on the same secret, sandbox and table, whose refunds are
    /// due for their first check at once (the functions' default waits a minute).
    pub fn in_process_service(&self) -> RefundService {
        let merchant =
            MerchantConfig::from_json(&self.merchant_json, SystemTime::now()).expect("merchant");
        let mut client = wxpay::client::ClientConfig::for_base_url(self.sandbox.base_url());
        client.extra_root_ca_pem =
            Some(std::fs::read(&self.sandbox.files().ca_pem).expect("read ca.pem"));
        let gateway = WxPayGateway::new(&merchant, client, None).expect("WeChat gateway");
        let ledger = DynamoLedger::new(aws_sdk_dynamodb::Client::new(&self.sdk), &self.table);
        RefundService::new(
            Arc::new(ledger),
            Arc::new(gateway),
            wxrefund::testing::RecordingPublisher::new(),
            ServiceConfig {
                schedule: wxrefund::decide::Schedule {
                    first_check: Duration::ZERO,
                    ..wxrefund::decide::Schedule::default()
                },
                notify_url: merchant.notify_url.clone(),
                ..ServiceConfig::default()
            },
        )
    }

    /// Submits a refund through an in-process service (see [`Parts::in_process_service`]).
    pub async fn submit_in_process(&self, body: &Value) -> RefundRecord {
        let cmd = serde_json::from_value::<CreateRefund>(body.clone())
            .expect("a refund body")
            .validate()
            .expect("a valid refund");
        match self.in_process_service().submit(cmd).await {
            Ok(Submitted::New(rec) | Submitted::Replay(rec)) => rec,
            Err(e) => panic!("in-process submit failed: {e}"),
        }
    }

    /// The refund notification WeChat would send for `out_refund_no` now: the sandbox's fields,
    /// encrypted with the merchant key by `wxpay::notify::build`.
    pub fn notification_body(&self, out_refund_no: &str) -> String {
        let (_, fields) = self
            .sandbox
            .books()
            .lock()
            .notification(out_refund_no, None)
            .expect("refund in the sandbox's books");
        let merchant =
            MerchantConfig::from_json(&self.merchant_json, SystemTime::now()).expect("merchant");
        let inner: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        wxpay::notify::build(
            &inner,
            &merchant.merchant_keys(),
            &wxpay::NonceStr::random(),
        )
        .expect("build the notification")
    }

    /// Strings from the secret that must never appear in a log (`wxrefund::testing::secret_material`).
    pub fn secret_material(&self) -> Vec<String> {
        wxrefund::testing::secret_material(&self.merchant_json)
    }

    /// Fails the test if `logs` holds any of [`Parts::secret_material`] (issue 14.5: no key,
    /// certificate or private key in any function's logs).
    pub fn assert_no_secret_in(&self, logs: &str) {
        assert!(!logs.is_empty(), "the function logged nothing to search");
        for material in self.secret_material() {
            assert!(
                !logs.contains(&material),
                "key material in the logs: {logs}"
            );
        }
    }
}

/// A function binary running as a child process; killed on drop (a failing test included).
/// Its stderr (the function's logs) is collected and echoed to the test's output.
pub struct FunctionProcess {
    child: Child,
    logs: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl FunctionProcess {
    /// Spawns `binary` with exactly `env` (nothing inherited, so the host's AWS settings cannot leak in).
    pub fn spawn(binary: &str, env: &[(String, String)]) -> FunctionProcess {
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let logs = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&logs);
        // Drained continuously so the child never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                eprint!("{text}");
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&text);
            }
        });
        FunctionProcess {
            child,
            logs,
            reader: Some(reader),
        }
    }

    /// The process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (`VmHWM` of `/proc/<pid>/status`), in KiB; `None` off Linux
    /// or once the process is gone.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        wxrefund::testing::proc_status_kib(Some(self.pid()), "VmHWM:")
    }

    /// Everything the function logged so far.
    pub fn logs(&self) -> String {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// SIGKILLs the process (as an out-of-memory kill or a host failure ends a Lambda instance),
    /// reaps it and returns everything it logged.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            // The pipe closed with the process, so the reader ends promptly.
            let _ = r.join();
        }
        self.logs()
    }

    /// The exit status if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit; then returns its status and all its logs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, String)> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_exit() {
                if let Some(r) = self.reader.take() {
                    // The pipe is closed at exit, so the reader ends promptly.
                    let _ = tokio::task::spawn_blocking(move || r.join()).await;
                }
                return Some((status, self.logs()));
            }
            if started.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Invokes the function with `event` and returns its response, failing with the function's logs
/// when it does not answer.
pub async fn invoke(
    emulator: &LambdaEmulator,
    function: &mut FunctionProcess,
    event: &Value,
) -> Outcome {
    match emulator.invoke(event, INVOKE_TIMEOUT).await {
        Ok(outcome) => outcome,
        Err(e) => panic!(
            "{e} (exit status {:?}); function logs:\n{}",
            function.try_exit(),
            function.logs()
        ),
    }
}

/// An API Gateway HTTP API (payload format 2.0) event, as API Gateway sends it to the function.
pub fn http_api_event(method: &str, path: &str, content_type: &str, body: Option<&str>) -> Value {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    json!({
        "version": "2.0",
        "routeKey": format!("{method} {path}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": content_type,
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            "user-agent": "wxrefund-tests",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "wxrefund-tests",
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": format!("{method} {path}"),
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": now,
        },
        "body": body,
        "isBase64Encoded": false,
    })
}

/// An HTTP API (2.0) response as the function returned it: status, a header and the body text.
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl HttpReply {
    pub fn from_outcome(outcome: &Outcome) -> HttpReply {
        let v = outcome.json();
        let status = v["statusCode"]
            .as_u64()
            .unwrap_or_else(|| panic!("no statusCode in the function's response: {v}"));
        assert_eq!(
            v["isBase64Encoded"], false,
            "text replies are not base64-encoded: {v}"
        );
        HttpReply {
            status: u16::try_from(status).expect("a status code"),
            content_type: v["headers"]["content-type"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            body: v["body"].as_str().unwrap_or_default().to_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("reply body is not JSON ({e}): {:?}", self.body))
    }
}
