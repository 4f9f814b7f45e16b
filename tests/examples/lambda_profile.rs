//! Cold start and memory of the four Lambda binaries, measured as Lambda runs them: each release
//! binary started by the Runtime API emulator, with its secret in Secrets Manager and its table in
//! DynamoDB (both on a loopback moto server) and the WeChat sandbox over mutual TLS.
//!
//! Per function it prints exec → the first `GET /runtime/invocation/next` (the end of a cold start,
//! as Lambda counts it) over `--cold-starts` fresh processes, the function's own breakdown of that
//! time (its `cold start ready` log line), and the peak resident memory (`VmHWM`) of one process
//! after `--invocations` invocations of its real work.
//!
//! The cold starts run twice: with the secret from moto, and from a minimal loopback Secrets
//! Manager in this tool (`GetSecretValue` only, answered in microseconds, given to the function
//! as `AWS_ENDPOINT_URL_SECRETS_MANAGER`). moto takes ~5 ms to answer (Python, a new connection
//! per request); the second run shows the function's own cost without that server's.
//!
//! ```sh
//! cargo build --release -p refund -p refund-query -p refund-notify -p refund-reconcile
//! MOTO_ENDPOINT=http://127.0.0.1:5000 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
//!   AWS_REGION=us-east-1 cargo run --release -p wxrefund-e2e --example lambda_profile -- \
//!   [--cold-starts 20] [--invocations 100] [--bin-dir target/release]
//! ```

// A measuring tool: a failed set-up step should stop it with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wxrefund_e2e::lambda_binary::{FunctionProcess, HttpReply, Parts, http_api_event, invoke};
use wxrefund_e2e::lambda_emulator::LambdaEmulator;

const FUNCTIONS: [&str; 4] = [
    "refund",
    "refund-query",
    "refund-notify",
    "refund-reconcile",
];
/// The fields of the `cold start ready` line, in the order the steps run.
const STEPS: [&str; 8] = [
    "before_service_ms",
    "telemetry_ms",
    "aws_config_ms",
    "secret_ms",
    "roots_ms",
    "wechat_client_ms",
    "aws_clients_ms",
    "since_main_ms",
];
/// Refunds per sandbox order (WeChat allows 50).
const PER_ORDER: usize = 40;

struct Args {
    cold_starts: usize,
    invocations: usize,
    bin_dir: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        cold_starts: 20,
        invocations: 100,
        bin_dir: PathBuf::from("target/release"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--cold-starts" => a.cold_starts = value.parse().expect("--cold-starts N"),
            "--invocations" => a.invocations = value.parse().expect("--invocations N"),
            "--bin-dir" => a.bin_dir = PathBuf::from(value),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn binary(a: &Args, function: &str) -> String {
    let path = a.bin_dir.join(function);
    assert!(
        path.exists(),
        "{} is missing: cargo build --release -p {function}",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The function's `cold start ready` line, once it has been logged.
async fn ready_line(function: &FunctionProcess) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = function.logs();
        if let Some(line) = logs.lines().find(|l| l.contains("cold start ready")) {
            return serde_json::from_str(line).expect("the cold start line is JSON");
        }
        assert!(Instant::now() < deadline, "no cold start line:\n{logs}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A Secrets Manager that answers `GetSecretValue` for `secret_id` with `secret` and nothing
/// else (HTTP/1.1, keep-alive, plain HTTP on loopback as moto is): its endpoint URL.
async fn loopback_secrets_manager(secret_id: String, secret: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answer = json!({
        "ARN": format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{secret_id}-AbCdEf"),
        "Name": secret_id,
        "VersionId": "00000000-0000-4000-8000-000000000001",
        "SecretString": secret,
        "VersionStages": ["AWSCURRENT"],
        "CreatedDate": 1_767_225_600.0,
    })
    .to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One request: headers, then Content-Length bytes of body.
                    let (head_end, body_len) = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            assert!(
                                head.contains("x-amz-target: secretsmanager.getsecretvalue"),
                                "the loopback Secrets Manager only answers GetSecretValue:\n{head}"
                            );
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, len);
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + body_len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + body_len);
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\n\
                         x-amzn-requestid: 00000000-0000-4000-8000-000000000002\r\n\
                         content-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Starts `function` in a fresh process `n` times and times exec → first poll; with
/// `secrets_endpoint`, the secret comes from there instead of moto.
async fn cold_starts(
    a: &Args,
    parts: &Parts,
    function: &str,
    secrets_endpoint: Option<&str>,
) -> BTreeMap<&'static str, f64> {
    let bin = binary(a, function);
    let mut totals = Vec::new();
    let mut steps: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for _ in 0..a.cold_starts {
        let emulator = LambdaEmulator::start(function).await.expect("emulator");
        let mut env = parts.function_env(&emulator, function);
        if let Some(url) = secrets_endpoint {
            env.push(("AWS_ENDPOINT_URL_SECRETS_MANAGER".into(), url.to_owned()));
        }
        let spawned = Instant::now();
        let process = FunctionProcess::spawn(&bin, &env);
        let polled = emulator
            .first_poll(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{function} never polled:\n{}", process.logs()));
        let total = polled.duration_since(spawned).as_secs_f64() * 1000.0;
        totals.push(total);
        let line = ready_line(&process).await;
        for step in STEPS {
            steps
                .entry(step)
                .or_default()
                .push(line[step].as_f64().unwrap_or(f64::NAN));
        }
        let since_main = line["since_main_ms"].as_f64().unwrap_or(f64::NAN);
        steps
            .entry("outside_main_ms")
            .or_default()
            .push(total - since_main);
    }
    let mut out: BTreeMap<&'static str, f64> = steps
        .into_iter()
        .map(|(k, mut v)| (k, median(&mut v)))
        .collect();
    let min = totals.iter().copied().fold(f64::INFINITY, f64::min);
    let max = totals.iter().copied().fold(0.0, f64::max);
    out.insert("total_median_ms", median(&mut totals));
    out.insert("total_min_ms", min);
    out.insert("total_max_ms", max);
    out
}

fn http(method: &str, path: &str, body: Option<&Value>) -> Value {
    let text = body.map(Value::to_string);
    http_api_event(method, path, "application/json", text.as_deref())
}

/// One warm process of `function` serving `events` in turn; returns its peak RSS in KiB and how
/// many answers were 2xx.
async fn serve(a: &Args, parts: &Parts, function: &str, events: &[Value]) -> (u64, usize, usize) {
    let emulator = LambdaEmulator::start(function).await.expect("emulator");
    let mut process = FunctionProcess::spawn(
        &binary(a, function),
        &parts.function_env(&emulator, function),
    );
    let after_start = {
        emulator
            .first_poll(Duration::from_secs(10))
            .await
            .expect("the function polls");
        process.peak_rss_kib().unwrap_or(0)
    };
    let mut ok = 0;
    for e in events {
        let outcome = invoke(&emulator, &mut process, e).await;
        let good = match &outcome {
            wxrefund_e2e::lambda_emulator::Outcome::Response(body) => {
                match serde_json::from_slice::<Value>(body) {
                    Ok(v) if v.get("statusCode").is_some() => {
                        (200..300).contains(&HttpReply::from_outcome(&outcome).status)
                    }
                    Ok(_) => true,
                    Err(_) => false,
                }
            }
            wxrefund_e2e::lambda_emulator::Outcome::Error { .. } => false,
        };
        ok += usize::from(good);
    }
    let peak = process.peak_rss_kib().unwrap_or(0);
    println!(
        "  {function:<17} VmHWM after start {:>6.1} MiB, after {} invocations {:>6.1} MiB ({ok} answered 2xx/ok)",
        after_start as f64 / 1024.0,
        events.len(),
        peak as f64 / 1024.0
    );
    (peak, ok, events.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {model}, {} CPUs, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let parts = Parts::start("profile").await;

    let loopback =
        loopback_secrets_manager(parts.secret_id.clone(), parts.merchant_json.clone()).await;
    for (source, endpoint) in [
        ("moto", None),
        (
            "a minimal loopback Secrets Manager",
            Some(loopback.as_str()),
        ),
    ] {
        println!(
            "\ncold start, secret from {source}: exec -> first GET /invocation/next, {} fresh processes each (ms, median unless named; roots and aws_clients run during aws_config + secret)",
            a.cold_starts
        );
        let mut header = format!(
            "  {:<17} {:>7} {:>7} {:>7}",
            "function", "median", "min", "max"
        );
        for s in STEPS {
            header.push_str(&format!(" {:>10}", s.trim_end_matches("_ms")));
        }
        header.push_str(&format!(" {:>12}", "outside_main"));
        println!("{header}");
        for function in FUNCTIONS {
            let r = cold_starts(&a, &parts, function, endpoint).await;
            let mut row = format!(
                "  {function:<17} {:>7.2} {:>7.2} {:>7.2}",
                r["total_median_ms"], r["total_min_ms"], r["total_max_ms"]
            );
            for s in STEPS {
                row.push_str(&format!(" {:>10.2}", r[s]));
            }
            row.push_str(&format!(" {:>12.2}", r["outside_main_ms"]));
            println!("{row}");
        }
    }

    println!("\npeak RSS, one warm process per function:");
    let n = a.invocations;
    let orders = n.div_ceil(PER_ORDER);
    for o in 0..orders {
        parts.create_order(&format!("ORDER-PROFILE-{o}"), 1_000_000);
    }
    let refunds: Vec<Value> = (0..n)
        .map(|i| {
            let body = json!({
                "out_refund_no": format!("R-PROFILE-{i}"),
                "out_trade_no": format!("ORDER-PROFILE-{}", i / PER_ORDER),
                "total_fee": 1_000_000,
                "refund_fee": 100,
            });
            http("POST", "/refunds", Some(&body))
        })
        .collect();
    let mut peaks = BTreeMap::new();
    peaks.insert("refund", serve(&a, &parts, "refund", &refunds).await);
    // Reads of those refunds, with a scheduled poll every tenth invocation.
    let queries: Vec<Value> = (0..n)
        .map(|i| {
            if i % 10 == 9 {
                json!({"action": "poll"})
            } else {
                http("GET", &format!("/refunds/R-PROFILE-{i}"), None)
            }
        })
        .collect();
    peaks.insert(
        "refund-query",
        serve(&a, &parts, "refund-query", &queries).await,
    );
    parts.sandbox.settle_now();
    let notifications: Vec<Value> = (0..n)
        .map(|i| {
            let xml = parts.notification_body(&format!("R-PROFILE-{i}"));
            http_api_event("POST", "/wxpay/refund-notify", "text/xml", Some(&xml))
        })
        .collect();
    peaks.insert(
        "refund-notify",
        serve(&a, &parts, "refund-notify", &notifications).await,
    );
    let today = wxrefund_e2e::wxrefund::state::UnixMillis::now().beijing_date();
    let reconciles: Vec<Value> = (0..n)
        .map(|i| {
            if i % 10 == 0 {
                http(
                    "POST",
                    "/reconciliations",
                    Some(&json!({ "bill_date": today })),
                )
            } else {
                http("GET", &format!("/reconciliations/{today}"), None)
            }
        })
        .collect();
    peaks.insert(
        "refund-reconcile",
        serve(&a, &parts, "refund-reconcile", &reconciles).await,
    );
    let worst = peaks.values().map(|(kib, _, _)| *kib).max().unwrap_or(0);
    println!("  largest peak {:.1} MiB", worst as f64 / 1024.0);
}
