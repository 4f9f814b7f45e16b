//! `wxrefund-local`: the whole product on one machine. The WeChat Pay sandbox (or another WeChat
//! endpoint), the embedded redb ledger, every HTTP route of the Lambda functions plus
//! `GET /openapi.json`, and the poller, in one process on 127.0.0.1.
//!
//! Killing it at any moment loses nothing: a refund is committed to the ledger (durably) before
//! WeChat is called, and on the next start the poller finishes whatever was in flight.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::routing::get;
use clap::Parser;
use tokio::sync::watch;
use tracing::{info, warn};
use wxpay::client::ClientConfig;
use wxpay_sandbox::{RunningSandbox, Sandbox, SandboxConfig};
use wxrefund::gateway::WxPayGateway;
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::secrets::SecretSource;
use wxrefund::service::{RefundService, ServiceConfig};
use wxrefund::state::UnixMillis;

/// The OpenAPI 3 document of the HTTP API, served at `GET /openapi.json`.
const OPENAPI_JSON: &str = include_str!("../openapi.json");

#[derive(Parser, Debug)]
#[command(
    name = "wxrefund-local",
    version,
    about = "wxrefund on one machine: WeChat Pay sandbox + embedded ledger + HTTP API + poller",
    long_about = "Runs the refund API (the same routes as the Lambda functions, plus GET /openapi.json), \
the poller and, unless --wxpay-base-url is given, an in-process WeChat Pay v2 sandbox. \
State lives in --data-dir: ledger.redb (durable; kill -9 loses nothing) and sandbox/ \
(certificates and merchant.json; the sandbox's books are in memory)."
)]
struct Args {
    /// Address of the refund API (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Address of the built-in WeChat Pay sandbox (HTTPS).
    #[arg(long, default_value = "127.0.0.1:3001")]
    sandbox_listen: SocketAddr,
    /// Where the ledger (ledger.redb) and the sandbox's files (sandbox/) live.
    #[arg(long, default_value = "./.wxrefund")]
    data_dir: PathBuf,
    /// How long sandbox refunds stay PROCESSING, e.g. 2s, 500ms, 1m.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle_after: Duration,
    /// How often the poller drives due refunds, e.g. 2s, 500ms.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    poll_every: Duration,
    /// Use this WeChat Pay endpoint instead of the built-in sandbox (no sandbox is started).
    #[arg(long, requires = "secret_file")]
    wxpay_base_url: Option<String>,
    /// The merchant secret JSON (appid, mch_id, api_v2_key, certificate) for --wxpay-base-url.
    #[arg(long, requires = "wxpay_base_url")]
    secret_file: Option<PathBuf>,
    /// An extra trusted root CA (PEM) for --wxpay-base-url, e.g. a separately run sandbox's ca.pem.
    #[arg(long, requires = "wxpay_base_url")]
    ca_file: Option<PathBuf>,
    /// notify_url sent with every refund [default: http://<listen>/wxpay/refund-notify].
    #[arg(long)]
    notify_url: Option<String>,
}

/// Parses `3s`, `500ms`, `2m`, `1h` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 2s, 500ms or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// Local timings: fast enough to watch a refund settle, with the same relations as production
/// (the lease outlives one WeChat call including pacing waits).
fn service_config(notify_url: String) -> ServiceConfig {
    ServiceConfig {
        lease_ttl: Duration::from_secs(10),
        first_check: Duration::from_secs(1),
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(30),
        notify_url: Some(notify_url),
        ..ServiceConfig::default()
    }
}

/// The client timeout is shortened so that one call (5 s) plus the pacer's longest wait (2 s)
/// stays inside the 10 s lease.
fn client_config(base_url: &str, ca_pem: Option<Vec<u8>>) -> ClientConfig {
    let mut cfg = ClientConfig::for_base_url(base_url);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.total_timeout = Duration::from_secs(5);
    cfg.extra_root_ca_pem = ca_pem;
    cfg
}

/// The address others use to reach `addr`: a wildcard bind is reached over loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn context<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> BoxError {
    move |e| format!("{what}: {e}").into()
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No Ctrl-C handler available: rely on SIGTERM (or SIGKILL) only.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Runs `svc.poll` every `every` until `stop` flips. A poll that is under way is finished first:
/// each step is a fenced ledger write, so stopping between polls leaves nothing half done.
async fn run_poller(svc: Arc<RefundService>, every: Duration, mut stop: watch::Receiver<bool>) {
    // Long enough for a page of due refunds; the next tick waits for a long poll to end.
    let budget = every.max(Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        // `poll` logs a line per run; skipping idle runs keeps the console readable.
        match svc.ledger().due(UnixMillis::now(), None, 1).await {
            Ok(page) if page.items.is_empty() => continue,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "poller: reading due refunds failed");
                continue;
            }
        }
        if let Err(e) = svc.poll(budget).await {
            warn!(error = %e, "poller: poll failed");
        }
    }
}

fn banner(
    api: SocketAddr,
    sandbox: Option<(&RunningSandbox, &Path)>,
    wxpay_base_url: &str,
    ledger: &Path,
    notify_url: &str,
    args: &Args,
) -> String {
    let api = format!("http://{api}");
    // A tag per start, so the walk-through can be pasted again after a restart without meeting
    // numbers the ledger already holds.
    let tag = UnixMillis::now().get() / 1000;
    let order = format!("order-{tag}");
    let refund = format!("refund-{tag}-1");
    let mut s = String::new();
    s.push_str("\nwxrefund-local is running (Ctrl-C to stop)\n");
    s.push_str(&format!(
        "  refund API  {api}   (OpenAPI 3: {api}/openapi.json)\n"
    ));
    match sandbox {
        Some((sb, ca)) => s.push_str(&format!(
            "  sandbox     {}  (WeChat Pay v2 stand-in, HTTPS with its own CA {}; admin API under /sandbox/; books in memory)\n",
            sb.base_url(),
            ca.display()
        )),
        None => s.push_str(&format!("  WeChat Pay  {wxpay_base_url}\n")),
    }
    s.push_str(&format!("  ledger      {}\n", ledger.display()));
    s.push_str(&format!(
        "  notify_url  {notify_url}; poller every {:?}\n",
        args.poll_every
    ));
    s.push_str("\nTry it:\n");
    if let Some((sb, ca)) = sandbox {
        let sbu = sb.base_url();
        let ca = ca.display();
        s.push_str(&format!(
            "  # 1. a paid order in the sandbox (1000 fen = 10.00 CNY)\n  \
             curl --cacert {ca} -X POST {sbu}/sandbox/orders \\\n    \
             -d '{{\"out_trade_no\":\"{order}\",\"total_fee\":1000}}'\n"
        ));
    } else {
        s.push_str(&format!(
            "  # 1. refunds need a paid order at {wxpay_base_url}; use its number below\n"
        ));
    }
    s.push_str(&format!(
        "  # 2. refund 300 fen of it (202 Accepted, status PROCESSING)\n  \
         curl -X POST {api}/refunds -H 'content-type: application/json' \\\n    \
         -d '{{\"out_refund_no\":\"{refund}\",\"out_trade_no\":\"{order}\",\"total_fee\":1000,\"refund_fee\":300}}'\n"
    ));
    s.push_str(&format!(
        "  # 3. watch it become SUCCESS (notification or poller); ?refresh=true asks WeChat now\n  \
         curl {api}/refunds/{refund}\n  \
         curl '{api}/refunds/{refund}?refresh=true'\n"
    ));
    s.push_str(&format!(
        "  # 4. every refund of the order (WeChat's list merged with the ledger)\n  \
         curl {api}/orders/{order}/refunds\n"
    ));
    if let Some((sb, ca)) = sandbox {
        s.push_str(&format!(
            "  # 5. the sandbox's books for the order\n  \
             curl --cacert {} {}/sandbox/orders/{order}\n",
            ca.display(),
            sb.base_url()
        ));
    }
    s
}

async fn run(args: Args) -> Result<(), BoxError> {
    std::fs::create_dir_all(&args.data_dir).map_err(context(format!(
        "creating the data dir {}",
        args.data_dir.display()
    )))?;
    // Bound first, so that port 0 works and the notify_url names the real port.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(context(format!("binding {}", args.listen)))?;
    let api_addr = reachable(
        listener
            .local_addr()
            .map_err(context("reading the API address"))?,
    );
    let notify_url = args
        .notify_url
        .clone()
        .unwrap_or_else(|| format!("http://{api_addr}/wxpay/refund-notify"));
    wxpay::refund::check_notify_url(&notify_url).map_err(context("--notify-url"))?;

    let (sandbox, source, base_url, ca_pem) = match (&args.wxpay_base_url, &args.secret_file) {
        (Some(url), Some(secret)) => {
            let ca = match &args.ca_file {
                Some(p) => {
                    Some(std::fs::read(p).map_err(context(format!("reading {}", p.display())))?)
                }
                None => None,
            };
            (None, SecretSource::file(secret), url.clone(), ca)
        }
        _ => {
            let sb = Sandbox::start(SandboxConfig {
                listen: args.sandbox_listen,
                state_dir: args.data_dir.join("sandbox"),
                settle_after: args.settle_after,
                notify_url: Some(notify_url.clone()),
                ..SandboxConfig::default()
            })
            .await
            .map_err(context("starting the sandbox"))?;
            let files = sb.files().clone();
            let ca = std::fs::read(&files.ca_pem)
                .map_err(context(format!("reading {}", files.ca_pem.display())))?;
            let url = sb.base_url().to_string();
            (
                Some((sb, files.ca_pem)),
                SecretSource::file(files.merchant_json),
                url,
                Some(ca),
            )
        }
    };

    let merchant = source
        .load()
        .await
        .map_err(context("loading the merchant secret"))?;
    info!(merchant = %merchant, "merchant configuration loaded");
    let gateway = WxPayGateway::new(&merchant, client_config(&base_url, ca_pem), Some(source))
        .map_err(context("building the WeChat client"))?;
    let ledger_path = args.data_dir.join("ledger.redb");
    // spawn_blocking: opening may repair the file after a kill, which is blocking I/O.
    let ledger = {
        let p = ledger_path.clone();
        tokio::task::spawn_blocking(move || EmbeddedLedger::open(p))
            .await
            .map_err(context("opening the ledger"))?
            .map_err(context(format!("opening {}", ledger_path.display())))?
    };
    let svc = Arc::new(RefundService::new(
        Arc::new(ledger),
        Arc::new(gateway),
        service_config(notify_url.clone()),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = tokio::spawn(run_poller(Arc::clone(&svc), args.poll_every, stop_rx));

    let app = wxrefund::http::router(Arc::clone(&svc)).route(
        "/openapi.json",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }),
    );
    println!(
        "{}",
        banner(
            api_addr,
            sandbox.as_ref().map(|(sb, ca)| (sb, ca.as_path())),
            &base_url,
            &ledger_path,
            &notify_url,
            &args,
        )
    );

    let served = wxrefund::http::serve_local(app, listener, shutdown_signal()).await;
    info!("shutting down: HTTP server stopped; stopping the poller and the sandbox");
    let _ = stop_tx.send(true);
    if let Err(e) = poller.await {
        warn!(error = %e, "poller task ended abnormally");
    }
    if let Some((sb, _)) = sandbox {
        sb.stop().await;
    }
    served.map_err(context("HTTP server"))?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    wxrefund::runtime::init_tracing();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxrefund-local: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        for bad in ["x", "1d", "-1s", "0s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_parse_and_external_endpoint_needs_a_secret() {
        let a = Args::try_parse_from(["wxrefund-local"]).expect("defaults");
        assert_eq!(a.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(a.sandbox_listen.to_string(), "127.0.0.1:3001");
        assert_eq!(a.poll_every, Duration::from_secs(2));
        assert_eq!(a.settle_after, Duration::from_secs(2));
        assert!(Args::try_parse_from(["wxrefund-local", "--wxpay-base-url", "https://x"]).is_err());
        assert!(Args::try_parse_from(["wxrefund-local", "--ca-file", "ca.pem"]).is_err());
        assert!(
            Args::try_parse_from([
                "wxrefund-local",
                "--wxpay-base-url",
                "https://x",
                "--secret-file",
                "m.json"
            ])
            .is_ok()
        );
    }

    #[test]
    fn local_timings_keep_a_call_inside_the_lease() {
        let svc = service_config("http://127.0.0.1:3000/wxpay/refund-notify".into());
        let client = client_config("https://127.0.0.1:3001", None);
        let pacing = client.pacing.max_wait;
        assert!(client.total_timeout + pacing < svc.lease_ttl);
        assert_eq!(client.backup_base_url, None);
    }

    #[test]
    fn wildcard_binds_are_reached_over_loopback() {
        let a: SocketAddr = "0.0.0.0:3000".parse().expect("addr");
        assert_eq!(reachable(a).to_string(), "127.0.0.1:3000");
    }
}
