//! `wxpay-sandbox`: a local stand-in for api.mch.weixin.qq.com (refund apply and query, the daily
//! bill), built from docs/PROTOCOL.md: mutual TLS on `/secapi/`, signatures, refund rules, query
//! paging, settling with encrypted notifications, rate limits, fault injection and an admin API. Its books are saved
//! in the state dir (`books.json`) after every change and reloaded on start. See README.md.

//!
//! Module dependency order (each uses only modules listed before it; no cycles):
//! `beijing`, `body`, `duration`, `p12`, `persist`, `x509` → `books` → `bill`, `certs`, `notify` →
//! `tls`, `app` → `settle` → `protocol`, `admin` → `download` → `server` → this root.

pub mod admin;
pub mod app;
pub mod beijing;
pub mod bill;
pub mod body;
pub mod books;
pub mod certs;
pub mod download;
pub mod duration;
pub mod notify;
pub mod p12;
pub mod persist;
pub mod protocol;
pub mod server;
pub mod settle;
pub mod tls;
pub mod x509;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use governor::{Quota, RateLimiter};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wxpay::ApiKey;

pub use bill::BillType;
pub use books::{
    AdminError, BookedStatus, Books, Coupon, CouponRefund, CouponType, Fault, FaultKind,
    FaultTarget, NewCoupon, NewOrder, NewRefund, OrderView, Outcome, RefundSource, RefundView,
};
pub use certs::{MerchantJson, StateFiles};
pub use notify::{RetryFactor, decrypt_req_info, encrypt_req_info};
pub use persist::{BOOKS_FILE, PersistError};

pub const DEFAULT_MCH_ID: &str = "1900000109";
pub const DEFAULT_APPID: &str = "wx2421b1c4370ec43b";
/// A fixed 32-character APIv2 key so that no flag is needed (it is a sandbox).
pub const DEFAULT_API_KEY: &str = "wxpaysandboxkey0123456789abcdefX";

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub mch_id: String,
    pub appid: String,
    pub api_key: String,
    /// How long a refund stays PROCESSING.
    pub settle_after: Duration,
    /// WeChat's notification retry delays are divided by this (1 = real schedule); must be finite
    /// and > 0.
    pub notify_retry_factor: f64,
    /// Used when neither the refund nor its order names a notify_url; an `http://` or `https://`
    /// URL.
    pub notify_url: Option<String>,
    /// Refund apply requests per second (WeChat: 150). 0 is refused by [`Sandbox::start`].
    pub apply_qps: u32,
    /// Failing requests per second before FREQUENCY_LIMITED (WeChat: 6). 0 is refused.
    pub failure_qps: u32,
    /// Per-attempt timeout of a notification push; must be > 0.
    pub notify_timeout: Duration,
    /// Save the books to `state_dir/books.json` after every change and load them on start, so a
    /// killed sandbox forgets nothing (like WeChat). False: in memory only; the file is neither
    /// read nor written.
    pub persist: bool,
    /// Discard a saved `books.json` on start (with `persist`) instead of loading it.
    pub fresh: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: std::env::temp_dir().join("wxpay-sandbox"),
            mch_id: DEFAULT_MCH_ID.into(),
            appid: DEFAULT_APPID.into(),
            api_key: DEFAULT_API_KEY.into(),
            settle_after: Duration::from_secs(3),
            notify_retry_factor: 1.0,
            notify_url: None,
            apply_qps: 150,
            failure_qps: 6,
            notify_timeout: Duration::from_secs(5),
            persist: true,
            fresh: false,
        }
    }
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("notification HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Books(#[from] persist::PersistError),
}

/// A rate of at least one request per second: a limiter of 0 would refuse every request, which is
/// a configuration mistake, not a way to turn the limit off.
fn per_second(name: &str, n: u32) -> Result<Quota, SandboxError> {
    NonZeroU32::new(n).map(Quota::per_second).ok_or_else(|| {
        SandboxError::Config(format!(
            "{name} must be at least 1 request per second (0 would refuse every request)"
        ))
    })
}

/// Refuses the settings that would otherwise be bent into something else or fail only later.
fn check_config(config: &SandboxConfig) -> Result<(), SandboxError> {
    if config.notify_timeout.is_zero() {
        return Err(SandboxError::Config(
            "notify_timeout must be more than zero".into(),
        ));
    }
    if let Some(u) = &config.notify_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(SandboxError::Config(format!(
            "notify_url must be an http:// or https:// URL, got {u:?}"
        )));
    }
    Ok(())
}

pub struct Sandbox;

impl Sandbox {
    /// Writes the state dir files, binds, and serves until [`RunningSandbox::stop`] (or drop).
    pub async fn start(config: SandboxConfig) -> Result<RunningSandbox, SandboxError> {
        let key =
            ApiKey::new(config.api_key.clone()).map_err(|e| SandboxError::Config(e.to_string()))?;
        wxpay::MchId::new(config.mch_id.clone())
            .map_err(|e| SandboxError::Config(e.to_string()))?;
        wxpay::AppId::new(config.appid.clone()).map_err(|e| SandboxError::Config(e.to_string()))?;
        check_config(&config)?;
        let retry_factor =
            RetryFactor::new(config.notify_retry_factor).map_err(SandboxError::Config)?;
        let apply_quota = per_second("apply_qps", config.apply_qps)?;
        let failure_quota = per_second("failure_qps", config.failure_qps)?;
        let files = StateFiles::new(&config.state_dir);
        let (mch_id, appid, api_key) = (
            config.mch_id.clone(),
            config.appid.clone(),
            config.api_key.clone(),
        );
        let files2 = files.clone();
        // RSA key generation and file I/O are blocking.
        let pki = tokio::task::spawn_blocking(move || {
            certs::load_or_create(&files2, &mch_id, &appid, &api_key)
        })
        .await
        .map_err(|e| SandboxError::Config(format!("certificate task: {e}")))??;
        let tls = tls::server_config(&pki)?;

        // Before binding: a start that cannot have its books must not answer anybody.
        let books = if config.persist {
            let store = Arc::new(persist::Store::new(&config.state_dir));
            let state = tokio::task::spawn_blocking({
                let store = store.clone();
                let fresh = config.fresh;
                move || {
                    if fresh {
                        store.discard().map(|()| None)
                    } else {
                        books::snapshot::load(&store)
                    }
                }
            })
            .await
            .map_err(|e| SandboxError::Config(format!("books task: {e}")))??;
            if let Some(st) = &state {
                tracing::info!(
                    path = %store.path().display(),
                    orders = st.orders.len(),
                    refunds = st.refunds.len(),
                    "wxpay-sandbox books loaded"
                );
            }
            Books::new(state.unwrap_or_default(), Some(store))
        } else {
            Books::default()
        };

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SandboxError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: config.listen,
            source,
        })?;
        let notify_client = reqwest::Client::builder()
            .timeout(config.notify_timeout)
            .build()
            .map_err(|e| SandboxError::Client(e.to_string()))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let app = Arc::new(app::App {
            books: books.clone(),
            merchant: pki.merchant.clone(),
            key,
            settle_after: config.settle_after,
            notify_retry_factor: retry_factor,
            default_notify_url: config.notify_url.clone(),
            apply_limiter: RateLimiter::direct(apply_quota),
            failure_limiter: RateLimiter::direct(failure_quota),
            notify_client,
            shutdown: shutdown_rx,
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let server = tokio::spawn(server::serve(listener, acceptor, app.clone()));
        let settler = tokio::spawn(settle::settle_loop(app.clone()));
        // Loaded PROCESSING refunds settle through the loop above; pending pushes restart here.
        let resumed = settle::resume_pushes(&app);
        if resumed > 0 {
            tracing::info!(resumed, "wxpay-sandbox notification pushes resumed");
        }
        tracing::info!(%addr, "wxpay-sandbox listening");
        Ok(RunningSandbox {
            addr,
            base_url: format!("https://{addr}"),
            files,
            merchant: pki.merchant,
            books,
            app,
            shutdown: shutdown_tx,
            tasks: vec![server, settler],
        })
    }
}

/// A started sandbox. Dropping it stops the server too.
pub struct RunningSandbox {
    addr: SocketAddr,
    base_url: String,
    files: StateFiles,
    merchant: MerchantJson,
    books: Books,
    app: Arc<app::App>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningSandbox {
    /// `https://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn files(&self) -> &StateFiles {
        &self.files
    }

    /// The merchant identity (the content of `merchant.json`).
    pub fn merchant(&self) -> &MerchantJson {
        &self.merchant
    }

    pub fn api_key(&self) -> ApiKey {
        self.app.key.clone()
    }

    /// The books, for creating orders and asserting on refunds directly.
    pub fn books(&self) -> &Books {
        &self.books
    }

    /// Settles every PROCESSING refund now and starts its notification; returns their numbers.
    pub fn settle_now(&self) -> Vec<String> {
        settle::settle(&self.app, true)
    }

    /// A refund made in the merchant platform (`POST /sandbox/orders/{o}/refunds`); true when new.
    pub fn vendor_refund(
        &self,
        out_trade_no: &str,
        new: NewRefund,
    ) -> Result<(RefundView, bool), AdminError> {
        self.books
            .create_refund(out_trade_no, new, self.app.settle_after)
    }

    /// Resolves a CHANGE refund to SUCCESS and notifies it (`POST /sandbox/refunds/{n}/resolve`).
    pub fn resolve(&self, out_refund_no: &str) -> Result<RefundView, AdminError> {
        settle::resolve(&self.app, out_refund_no)
    }

    /// The bill `/pay/downloadbill` would answer now for Beijing `date` (None: `No Bill Exist`),
    /// as text; faults aside.
    pub fn bill(&self, date: time::Date, kind: BillType) -> Option<String> {
        bill::write(
            &self.books.read(),
            &self.merchant.appid,
            &self.merchant.mch_id,
            date,
            kind,
        )
    }

    /// Stops accepting, closes connections and ends background tasks.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
