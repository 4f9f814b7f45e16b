//! The built `wxrefund-local` binary, driven over HTTP: the printed walk-through on the built-in
//! sandbox, and SIGKILL in the middle of a burst of refunds followed by a restart on the same data
//! dir, with the sandbox's books as the evidence that every refund was paid exactly once.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpay_sandbox::{Fault, FaultKind, FaultTarget, NewOrder, Sandbox, SandboxConfig};

const BIN: &str = env!("CARGO_BIN_EXE_wxrefund-local");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running `wxrefund-local`; killed on drop, and its output shown if the test failed.
struct Local {
    child: Child,
    log: PathBuf,
    base: String,
}

impl Local {
    fn start(port: u16, args: &[&str], log: PathBuf) -> Local {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(BIN)
            .args(["--listen", &listen])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("wxrefund-local starts");
        Local {
            child,
            log,
            base: format!("http://{listen}"),
        }
    }

    /// Waits until the API answers (or fails the test if the process exits first).
    async fn ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("wxrefund-local exited early with {status}");
            }
            if let Ok(r) = http.get(format!("{}/openapi.json", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "wxrefund-local never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and wait until the process is gone (its port and ledger lock are free again).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("---- {} (last lines) ----", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

async fn post_refund(http: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let r = http
        .post(format!("{base}/refunds"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST /refunds");
    json_of(r).await
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    json_of(http.get(url).send().await.expect("GET")).await
}

/// Polls `GET /refunds/{no}` until it is final; returns the view.
async fn until_final(http: &reqwest::Client, base: &str, no: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, v) = get(http, &format!("{base}/refunds/{no}")).await;
        assert_eq!(status, 200, "{v}");
        let s = v["status"].as_str().unwrap_or_default();
        if ["SUCCESS", "REFUNDCLOSE", "CHANGE", "FAILED"].contains(&s) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{no} still {s} after {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The events `wxrefund-local` appended to `<data-dir>/events.jsonl`, one envelope per line.
fn events_in(data: &Path) -> Vec<Value> {
    match std::fs::read_to_string(data.join("events.jsonl")) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line one JSON envelope"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The distinct event ids of `detail_type` per refund number.
fn event_ids(events: &[Value], detail_type: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["detail-type"] == detail_type) {
        let no = e["detail"]["refund"]["out_refund_no"]
            .as_str()
            .expect("number");
        out.entry(no.to_owned())
            .or_default()
            .insert(e["id"].as_str().expect("id").to_owned());
    }
    out
}

/// What a webhook was sent: (signature header, body) per request.
type Hooked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A merchant's webhook endpoint: what it was sent, with the signature header.
async fn webhook_receiver() -> (String, Hooked) {
    let got: Hooked = Arc::default();
    let seen = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                let sig = headers
                    .get(wxrefund_local::events::SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push((sig, body.to_vec()));
                axum::http::StatusCode::NO_CONTENT
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

fn data_dir_arg(dir: &Path) -> String {
    dir.to_str().expect("utf-8 temp path").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_on_the_built_in_sandbox_then_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (api_port, sb_port) = (free_port(), free_port());
    let sb_listen = format!("127.0.0.1:{sb_port}");
    let (hook_url, hooked) = webhook_receiver().await;
    let mut local = Local::start(
        api_port,
        &[
            "--sandbox-listen",
            &sb_listen,
            "--data-dir",
            &data_dir_arg(&data),
            "--webhook-url",
            &hook_url,
            "--webhook-secret",
            "merchant-secret",
        ],
        dir.path().join("local.log"),
    );
    let http = client();
    local.ready(&http).await;
    let base = local.base.clone();

    // The banner names both URLs and the curl commands.
    let banner = std::fs::read_to_string(&local.log).expect("log");
    assert!(banner.contains(&format!("refund API  {base}")), "{banner}");
    assert!(banner.contains(&format!("https://{sb_listen}")), "{banner}");
    assert!(banner.contains("curl --cacert"), "{banner}");
    assert!(data.join("ledger.redb").exists());

    // 1. a paid order through the sandbox's admin API (HTTPS, its own CA), as printed.
    let ca = std::fs::read(data.join("sandbox").join("ca.pem")).expect("ca.pem");
    let admin = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("ca")])
        .build()
        .expect("admin client");
    let r = admin
        .post(format!("https://{sb_listen}/sandbox/orders"))
        .body(json!({"out_trade_no": "order-walk-1", "total_fee": 1000}).to_string())
        .send()
        .await
        .expect("create order");
    assert_eq!(r.status().as_u16(), 201);

    // 2. refund part of it.
    let body = json!({"out_refund_no": "refund-walk-1", "out_trade_no": "order-walk-1",
                      "total_fee": 1000, "refund_fee": 300});
    let (status, v) = post_refund(&http, &base, &body).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["status"], "PROCESSING", "{v}");

    // 3. it settles (notification from the sandbox, or the poller).
    let v = until_final(&http, &base, "refund-walk-1", Duration::from_secs(20)).await;
    assert_eq!(v["status"], "SUCCESS", "{v}");
    assert_eq!(v["refund_fee"], 300);

    // 3b. the merchant is told once: one `Refund Succeeded` in events.jsonl and at the webhook,
    // with the same id, signed with the webhook secret.
    let deadline = Instant::now() + Duration::from_secs(15);
    let events = loop {
        let events = events_in(&data);
        if !events.is_empty() && !hooked.lock().unwrap().is_empty() {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "no event after SUCCESS: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["source"], "wxrefund");
    assert_eq!(e["detail-type"], "Refund Succeeded");
    assert_eq!(e["detail"]["event_id"], e["id"]);
    assert_eq!(e["detail"]["refund"]["out_refund_no"], "refund-walk-1");
    assert_eq!(e["detail"]["refund"]["status"], "SUCCESS");
    assert_eq!(e["detail"]["previous_status"], "PROCESSING");
    assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    let (sig, hook_body) = hooked.lock().unwrap()[0].clone();
    let sent: Value = serde_json::from_slice(&hook_body).expect("webhook body is JSON");
    assert_eq!(&sent, e);
    let t: u64 = sig
        .strip_prefix("t=")
        .and_then(|r| r.split(',').next())
        .and_then(|t| t.parse().ok())
        .expect("t=<unix seconds>");
    assert_eq!(
        sig,
        wxrefund_local::events::signature("merchant-secret", t, &hook_body).expect("sign")
    );

    // The same request again is a replay of the final refund.
    let (status, again) = post_refund(&http, &base, &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["refund_id"], v["refund_id"]);

    // 4. the order's refunds.
    let (status, list) = get(&http, &format!("{base}/orders/order-walk-1/refunds")).await;
    assert_eq!(status, 200, "{list}");
    let refunds = list["refunds"].as_array().expect("refunds");
    assert_eq!(refunds.len(), 1, "{list}");
    assert_eq!(refunds[0]["status"], "SUCCESS");

    // Ctrl-C / SIGTERM: a clean exit.
    let pid = local.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = local.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "exit status {exit}");

    // And nowhere in the whole run's log: the API key, the private key, the PKCS#12.
    let merchant = std::fs::read_to_string(data.join("sandbox").join("merchant.json"))
        .expect("the built-in sandbox's merchant.json");
    assert_no_secret_in(
        &std::fs::read_to_string(&local.log).expect("log"),
        &merchant,
    );
}

/// Fails the test if `log` holds key material of `merchant_json` (issue 14.5).
fn assert_no_secret_in(log: &str, merchant_json: &str) {
    assert!(
        log.lines().count() > 5,
        "the stack logged almost nothing: {log}"
    );
    for material in wxrefund::testing::secret_material(merchant_json) {
        assert!(
            !log.contains(&material),
            "key material in the local stack's log: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_then_restart_pays_every_refund_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The sandbox lives in the test, so WeChat's books survive the kill like the real ones would.
    let sb = Sandbox::start(SandboxConfig {
        state_dir: dir.path().join("sandbox"),
        settle_after: Duration::from_secs(1),
        // Notifications missed while wxrefund-local is down are retried within seconds.
        notify_retry_factor: 30.0,
        failure_qps: 10_000,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let files = sb.files().clone();
    let data = dir.path().join("data");
    let port = free_port();
    let args = [
        "--data-dir".to_owned(),
        data_dir_arg(&data),
        "--poll-every".to_owned(),
        "500ms".to_owned(),
        "--wxpay-base-url".to_owned(),
        sb.base_url().to_owned(),
        "--secret-file".to_owned(),
        data_dir_arg(&files.merchant_json),
        "--ca-file".to_owned(),
        data_dir_arg(&files.ca_pem),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let http = client();
    let mut local = Local::start(port, &args, dir.path().join("run-1.log"));
    local.ready(&http).await;
    let base = local.base.clone();

    // 4 orders of 1000 fen, 12 refunds of 100 fen each: two per order must be refused, so the
    // reservations are exercised across the kill as well.
    let orders: Vec<String> = (1..=4).map(|i| format!("order-burst-{i}")).collect();
    for o in &orders {
        sb.books()
            .create_order(NewOrder {
                out_trade_no: o.clone(),
                total_fee: 1000,
                ..NewOrder::default()
            })
            .expect("order");
    }
    // Slow refund applies, so that the kill lands while calls to WeChat are in flight.
    sb.books()
        .add_fault(
            None,
            Fault {
                kind: FaultKind::Latency { ms: 300 },
                times: None,
                on: FaultTarget::Apply,
            },
        )
        .expect("fault");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sent = Vec::new();
    for i in 0..12 {
        for o in &orders {
            let no = format!("{o}-r{i:02}");
            sent.push(no.clone());
            let body = json!({"out_refund_no": no, "out_trade_no": o,
                              "total_fee": 1000, "refund_fee": 100});
            let (http, base, tx) = (http.clone(), base.clone(), tx.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/refunds"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                let answer = match r {
                    Ok(r) => Some(json_of(r).await),
                    Err(_) => None,
                };
                let _ = tx.send((no, answer));
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tx);

    // Kill as soon as a few refunds were accepted: the rest are recorded-but-unsent, mid-call, or
    // never arrived.
    let mut answers: BTreeMap<String, Option<(u16, Value)>> = BTreeMap::new();
    let mut accepted_before_kill = 0;
    while accepted_before_kill < 6 {
        let Some((no, answer)) = rx.recv().await else {
            break;
        };
        if matches!(answer, Some((202 | 200, _))) {
            accepted_before_kill += 1;
        }
        answers.insert(no, answer);
    }
    local.kill();
    while let Some((no, answer)) = rx.recv().await {
        answers.insert(no, answer);
    }
    let accepted: BTreeSet<String> = answers
        .iter()
        .filter(|(_, a)| matches!(a, Some((202 | 200, _))))
        .map(|(no, _)| no.clone())
        .collect();
    let unanswered = answers.values().filter(|a| a.is_none()).count();
    for (no, a) in &answers {
        if let Some((s, v)) = a {
            assert!(
                [200, 202, 422].contains(s),
                "{no}: unexpected {s} before the kill: {v}"
            );
        }
    }
    assert!(accepted.len() >= 6, "accepted {accepted:?}");
    assert!(
        unanswered > 0,
        "the kill came after every request was answered: {answers:?}"
    );
    eprintln!(
        "before the kill: {} accepted, {} refused, {} unanswered of {}",
        accepted.len(),
        answers.len() - accepted.len() - unanswered,
        unanswered,
        sent.len()
    );

    // Restart on the same port and data dir; WeChat is fast again.
    sb.books().clear_faults(None).expect("clear faults");
    let mut local = Local::start(port, &args, dir.path().join("run-2.log"));
    local.ready(&http).await;

    // Every refund the ledger holds (the order listing merges WeChat's books with the ledger)
    // reaches SUCCESS; leases of calls cut off by the kill expire after 25 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut ledger_refunds: BTreeMap<String, Value> = BTreeMap::new();
    for o in &orders {
        loop {
            let (status, list) = get(&http, &format!("{base}/orders/{o}/refunds")).await;
            assert_eq!(status, 200, "{list}");
            let refunds = list["refunds"].as_array().expect("refunds").clone();
            if refunds.iter().all(|r| r["status"] == "SUCCESS") {
                for r in refunds {
                    let no = r["out_refund_no"].as_str().expect("no").to_owned();
                    assert_eq!(r["external"], false, "{r}");
                    ledger_refunds.insert(no, r);
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{o} not settled after the restart: {list}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for no in &accepted {
        assert!(
            ledger_refunds.contains_key(no),
            "accepted refund {no} is missing after the restart"
        );
        let (status, v) = get(&http, &format!("{base}/refunds/{no}")).await;
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("SUCCESS")),
            "{v}"
        );
    }

    // WeChat's books: one refund per number, each SUCCESS, exactly the ledger's, within the total.
    let mut apply_calls = 0;
    for o in &orders {
        let book = sb.books().order(o).expect("order in the sandbox");
        let nos: Vec<&str> = book
            .refunds
            .iter()
            .map(|r| r.out_refund_no.as_str())
            .collect();
        let unique: BTreeSet<&str> = nos.iter().copied().collect();
        assert_eq!(nos.len(), unique.len(), "a number refunded twice: {nos:?}");
        let ours: BTreeSet<&str> = ledger_refunds
            .keys()
            .filter(|n| n.starts_with(&format!("{o}-")))
            .map(String::as_str)
            .collect();
        assert_eq!(unique, ours, "sandbox and ledger disagree on {o}");
        for r in &book.refunds {
            assert_eq!(
                r.status,
                wxpay_sandbox::books::BookedStatus::Success,
                "{}",
                r.out_refund_no
            );
            assert_eq!(r.refund_fee, 100);
            apply_calls += r.apply_calls;
        }
        assert!(book.refunded_fee <= book.total_fee, "{o} over-refunded");
        assert_eq!(book.refunded_fee, 100 * book.refunds.len() as u64);
        // Requests cut off before the server read them were never recorded: at most 10 fit.
        assert!(
            book.refunds.len() <= 10,
            "{o}: more refunds than the order holds"
        );
    }
    // The merchant was told of each success under one id, the kill notwithstanding: an event
    // its writer did not get out (killed between the write and the append) is re-published by
    // the poller; one appended twice keeps its id.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let told = event_ids(&events_in(&data), "Refund Succeeded");
        let missing: Vec<&String> = ledger_refunds
            .keys()
            .filter(|no| !told.contains_key(*no))
            .collect();
        for (no, ids) in &told {
            assert_eq!(ids.len(), 1, "{no}: one success, one id: {ids:?}");
            assert!(
                ledger_refunds.contains_key(no),
                "an event for {no}, unknown to the ledger"
            );
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Refund Succeeded event for {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "after the restart: {} refunds SUCCESS, {} apply calls to the sandbox",
        ledger_refunds.len(),
        apply_calls
    );
    // Neither run logged key material.
    let merchant = std::fs::read_to_string(&files.merchant_json).expect("merchant.json");
    for run in ["run-1.log", "run-2.log"] {
        let log = std::fs::read_to_string(dir.path().join(run)).expect("log");
        assert_no_secret_in(&log, &merchant);
    }
}
