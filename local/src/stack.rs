//! The one-process stack: the WeChat Pay sandbox (or another WeChat endpoint), the embedded redb
//! ledger, every HTTP route of the Lambda functions plus `GET /openapi.json`, and the poller. The
//! default run and `bench` both build it with [`Stack::start`], so a benchmark measures exactly what
//! `wxrefund-local` runs.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::events::{JsonlFile, LocalPublisher, Webhook};
use axum::Router;
use axum::http::header;
use axum::routing::get;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use wxpay::client::ClientConfig;
use wxpay_sandbox::{RunningSandbox, Sandbox, SandboxConfig};
use wxrefund::decide::{Escalation, Schedule};
use wxrefund::gateway::WxPayGateway;
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::secrets::SecretSource;
use wxrefund::service::{RefundService, ServiceConfig};
use wxrefund::state::UnixMillis;

/// WeChat's refund apply limit (requests per second), used by the sandbox and the client pacer.
pub const WECHAT_APPLY_QPS: u32 = 150;
/// WeChat's limit on failing requests per second.
pub const WECHAT_FAILURE_QPS: u32 = 6;
/// The webhook secret when `--webhook-secret` is not given (a development stack's, never a
/// production one: production events go to EventBridge).
pub const DEFAULT_WEBHOOK_SECRET: &str = "wxrefund-local-webhook-secret";

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps an error with what was being done.
pub fn context<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> BoxError {
    move |e| format!("{what}: {e}").into()
}

/// Parses `3s`, `500ms`, `2m`, `1h` (a bare number is seconds), refusing zero: the sandbox's
/// parser, so the two command lines speak one syntax.
pub use wxpay_sandbox::duration::parse_positive_duration as parse_duration;

/// Local timings: fast enough to watch a refund settle, with the same relations as production
/// (the lease outlives one leased run of WeChat calls including pacing waits).
pub fn service_config(notify_url: String, escalate_after: Option<Duration>) -> ServiceConfig {
    ServiceConfig {
        // One leased run may make three calls (apply, its repeat after a key reload, the verifying
        // query), each up to the client timeout plus the pacer's longest wait: 3 × (5 + 2) s.
        lease_ttl: Duration::from_secs(25),
        schedule: Schedule {
            first_check: Duration::from_secs(1),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            escalate: escalate_after.map(Escalation::all).unwrap_or_default(),
        },
        notify_url: Some(notify_url),
        // The poller runs every 2 s here: an event a crash kept from its publisher goes out soon.
        redeliver_after: Duration::from_secs(5),
        ..ServiceConfig::default()
    }
}

/// The client timeout is shortened so that one call (5 s) plus the pacer's longest wait (2 s)
/// stays inside the 25 s lease three times over.
pub fn client_config(base_url: &str, ca_pem: Option<Vec<u8>>) -> ClientConfig {
    let mut cfg = ClientConfig::for_base_url(base_url);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.total_timeout = Duration::from_secs(5);
    cfg.extra_root_ca_pem = ca_pem;
    cfg
}

/// The OpenAPI document (generated from the handlers, `wxrefund::http::openapi`) with its
/// `servers` naming where this stack really listens.
pub fn openapi_for(api_addr: SocketAddr) -> Result<String, BoxError> {
    wxrefund::http::openapi_json(&format!("http://{api_addr}"))
        .map_err(context("serialising the OpenAPI document"))
}

/// The address others use to reach `addr`: a wildcard bind is reached over loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// Another WeChat Pay endpoint instead of the built-in sandbox.
#[derive(Clone, Debug)]
pub struct ExternalWxPay {
    pub base_url: String,
    /// The merchant secret JSON (appid, mch_id, api_v2_key, certificate).
    pub secret_file: PathBuf,
    /// An extra trusted root CA (PEM).
    pub ca_file: Option<PathBuf>,
}

/// What [`Stack::start`] builds.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The refund API (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The built-in sandbox (HTTPS; port 0 picks a free one).
    pub sandbox_listen: SocketAddr,
    /// `ledger.redb` and the sandbox's files (`sandbox/`).
    pub data_dir: PathBuf,
    /// How long sandbox refunds stay PROCESSING.
    pub settle_after: Duration,
    /// How often the poller drives due refunds.
    pub poll_every: Duration,
    /// `None`: start the built-in sandbox.
    pub external: Option<ExternalWxPay>,
    /// `None`: `http://<listen>/wxpay/refund-notify`.
    pub notify_url: Option<String>,
    /// The sandbox's refund apply limit (requests per second).
    pub sandbox_apply_qps: u32,
    /// The sandbox's failing-request limit (per second).
    pub sandbox_failure_qps: u32,
    /// The WeChat client's own pacing of refund applies (per second).
    pub client_apply_qps: u32,
    /// The sandbox saves its books to `sandbox/books.json` after every change (like WeChat, it
    /// forgets nothing when killed); off keeps them in memory only.
    pub sandbox_persist: bool,
    /// One escalation age for every open status (`--escalate-after`); `None`: production's.
    pub escalate_after: Option<Duration>,
    /// Events are also POSTed here, signed with `webhook_secret` (`--webhook-url`).
    pub webhook_url: Option<String>,
    pub webhook_secret: String,
}

impl StackConfig {
    /// WeChat's real limits on both sides, the other values from the caller.
    pub fn new(listen: SocketAddr, sandbox_listen: SocketAddr, data_dir: PathBuf) -> Self {
        StackConfig {
            listen,
            sandbox_listen,
            data_dir,
            settle_after: Duration::from_secs(2),
            poll_every: Duration::from_secs(2),
            external: None,
            notify_url: None,
            sandbox_apply_qps: WECHAT_APPLY_QPS,
            sandbox_failure_qps: WECHAT_FAILURE_QPS,
            client_apply_qps: WECHAT_APPLY_QPS,
            escalate_after: None,
            sandbox_persist: true,
            webhook_url: None,
            webhook_secret: DEFAULT_WEBHOOK_SECRET.to_owned(),
        }
    }
}

/// A built stack, bound but not yet serving HTTP (the poller and the sandbox already run).
pub struct Stack {
    /// Where the refund API is reached.
    pub api_addr: SocketAddr,
    pub notify_url: String,
    /// The WeChat endpoint the client calls.
    pub wxpay_base_url: String,
    pub ledger_path: PathBuf,
    /// Where merchant events are appended (`<data-dir>/events.jsonl`).
    pub events_path: PathBuf,
    pub poll_every: Duration,
    pub svc: Arc<RefundService>,
    /// The built-in sandbox and its CA file, unless an external endpoint is used.
    pub sandbox: Option<(RunningSandbox, PathBuf)>,
    listener: tokio::net::TcpListener,
    app: Router,
    stop_poller: watch::Sender<bool>,
    poller: JoinHandle<()>,
}

impl Stack {
    /// Creates the data dir, binds the API, starts the sandbox (unless external), opens the ledger
    /// and starts the poller.
    pub async fn start(cfg: &StackConfig) -> Result<Stack, BoxError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(context(format!(
            "creating the data dir {}",
            cfg.data_dir.display()
        )))?;
        // Bound first, so that port 0 works and the notify_url names the real port.
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(context(format!("binding {}", cfg.listen)))?;
        let api_addr = reachable(
            listener
                .local_addr()
                .map_err(context("reading the API address"))?,
        );
        let notify_url = cfg
            .notify_url
            .clone()
            .unwrap_or_else(|| format!("http://{api_addr}/wxpay/refund-notify"));
        wxpay::refund::check_notify_url(&notify_url).map_err(context("--notify-url"))?;

        let (sandbox, source, base_url, ca_pem) = match &cfg.external {
            Some(ext) => {
                let ca = match &ext.ca_file {
                    Some(p) => Some(
                        std::fs::read(p).map_err(context(format!("reading {}", p.display())))?,
                    ),
                    None => None,
                };
                (
                    None,
                    SecretSource::file(&ext.secret_file),
                    ext.base_url.clone(),
                    ca,
                )
            }
            None => {
                let sb = Sandbox::start(SandboxConfig {
                    listen: cfg.sandbox_listen,
                    state_dir: cfg.data_dir.join("sandbox"),
                    settle_after: cfg.settle_after,
                    notify_url: Some(notify_url.clone()),
                    apply_qps: cfg.sandbox_apply_qps,
                    failure_qps: cfg.sandbox_failure_qps,
                    persist: cfg.sandbox_persist,
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
        let mut client = client_config(&base_url, ca_pem);
        client.pacing.refund_per_sec = NonZeroU32::new(cfg.client_apply_qps)
            .ok_or("the client's apply rate must be more than zero")?;
        let gateway = WxPayGateway::new(&merchant, client, Some(source))
            .map_err(context("building the WeChat client"))?;
        let ledger_path = cfg.data_dir.join("ledger.redb");
        // spawn_blocking: opening may repair the file after a kill, which is blocking I/O.
        let ledger = {
            let p = ledger_path.clone();
            tokio::task::spawn_blocking(move || EmbeddedLedger::open(p))
                .await
                .map_err(context("opening the ledger"))?
                .map_err(context(format!("opening {}", ledger_path.display())))?
        };
        let events_path = cfg.data_dir.join("events.jsonl");
        let webhook = match &cfg.webhook_url {
            Some(url) => Some(
                Webhook::new(url.clone(), cfg.webhook_secret.clone())
                    .map_err(context("building the webhook client"))?,
            ),
            None => None,
        };
        let publisher = LocalPublisher::new(JsonlFile::new(events_path.clone()), webhook);
        let svc = Arc::new(RefundService::new(
            Arc::new(ledger),
            Arc::new(gateway),
            Arc::new(publisher),
            service_config(notify_url.clone(), cfg.escalate_after),
        ));

        let (stop_poller, stop_rx) = watch::channel(false);
        let poller = tokio::spawn(run_poller(Arc::clone(&svc), cfg.poll_every, stop_rx));
        let doc = openapi_for(api_addr)?;
        let app = wxrefund::http::router(Arc::clone(&svc)).route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
        );
        Ok(Stack {
            api_addr,
            notify_url,
            wxpay_base_url: base_url,
            ledger_path,
            events_path,
            poll_every: cfg.poll_every,
            svc,
            sandbox,
            listener,
            app,
            stop_poller,
            poller,
        })
    }

    /// Serves the API until `shutdown` resolves, then stops the poller (after its current poll)
    /// and the sandbox.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let served = wxrefund::http::serve_local(
            self.app,
            self.listener,
            shutdown,
            wxrefund::http::ServeLimits::default(),
        )
        .await;
        info!("shutting down: HTTP server stopped; stopping the poller and the sandbox");
        let _ = self.stop_poller.send(true);
        if let Err(e) = self.poller.await {
            warn!(error = %e, "poller task ended abnormally");
        }
        if let Some((sb, _)) = self.sandbox {
            sb.stop().await;
        }
        served.map_err(context("HTTP server"))?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_timings_keep_a_call_inside_the_lease() {
        let svc = service_config("http://127.0.0.1:3000/wxpay/refund-notify".into(), None);
        let client = client_config("https://127.0.0.1:3001", None);
        let pacing = client.pacing.max_wait;
        // apply, its repeat after a secret reload, and the verifying query, each paced
        assert!((client.total_timeout + pacing) * 3 < svc.lease_ttl);
        assert_eq!(client.backup_base_url, None);
    }

    #[test]
    fn the_served_document_names_the_real_address() {
        let doc: serde_json::Value = serde_json::from_str(
            &openapi_for("127.0.0.1:4321".parse().expect("addr")).expect("doc"),
        )
        .expect("JSON");
        assert_eq!(doc["servers"][0]["url"], "http://127.0.0.1:4321");
        assert!(doc["paths"]["/refunds"].is_object());
    }

    #[test]
    fn wildcard_binds_are_reached_over_loopback() {
        let a: SocketAddr = "0.0.0.0:3000".parse().expect("addr");
        assert_eq!(reachable(a).to_string(), "127.0.0.1:3000");
    }

    #[test]
    fn default_limits_are_wechats() {
        let c = StackConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
            PathBuf::from("x"),
        );
        let client = client_config("https://127.0.0.1:3001", None);
        assert_eq!(client.pacing.refund_per_sec.get(), c.client_apply_qps);
        assert_eq!(c.sandbox_apply_qps, 150);
        assert_eq!(c.sandbox_failure_qps, 6);
    }
}
