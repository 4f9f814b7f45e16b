//! The HTTPS transport to WeChat Pay: one reqwest (rustls) client per merchant identity, built at
//! cold start, with explicit timeouts, failover to the backup domain only when a request was never
//! sent, and client-side pacing under WeChat's rate limits.
//!
//! The transport never retries a request whose outcome is unknown: a refund that may have been
//! taken must be resolved by a query, never by sending it again.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use thiserror::Error;

use crate::cert::{CertError, MerchantIdentity};

pub const DEFAULT_BASE_URL: &str = "https://api.mch.weixin.qq.com";
/// The cross-city backup domain ("跨城冗灾"); every method is available there (docs/PROTOCOL.md, "Endpoints and transport").
pub const DEFAULT_BACKUP_BASE_URL: &str = "https://api2.mch.weixin.qq.com";
/// XML replies larger than this are not WeChat replies; reading stops there.
const MAX_REPLY_BYTES: usize = 1 << 20;
/// A download (`/pay/downloadbill`) may be as large as the largest bill text we parse
/// ([`crate::bill::MAX_BILL_BYTES`], 512 MiB; a gzip bill is 5–10× smaller); reading stops there.
pub const MAX_DOWNLOAD_BYTES: usize = crate::bill::MAX_BILL_BYTES;
/// How much of an unexpected body is kept for diagnostics.
const SNIPPET_CHARS: usize = 200;

/// Client-side rate limits (WeChat: refund apply 150 qps, failing requests 6 qps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacingConfig {
    /// Refund applications (the calls that need the client certificate) per second.
    pub refund_per_sec: NonZeroU32,
    /// Failing requests per second; past it, every request waits until the budget refills.
    pub failing_per_sec: NonZeroU32,
    /// Longest a caller waits for the budget before getting [`TransportError::Paced`].
    pub max_wait: Duration,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            refund_per_sec: NonZeroU32::new(150).unwrap_or(NonZeroU32::MIN),
            failing_per_sec: NonZeroU32::new(6).unwrap_or(NonZeroU32::MIN),
            max_wait: Duration::from_secs(2),
        }
    }
}

/// Transport configuration. `base_url` comes from `WXPAY_BASE_URL` and `extra_root_ca_pem` from
/// the file named by `WXPAY_CA_FILE`, both read by the caller.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: String,
    /// `None` disables failover (tests, the sandbox).
    pub backup_base_url: Option<String>,
    pub connect_timeout: Duration,
    /// Whole-request timeout (connect + send + reply), well inside the Lambda timeout.
    pub total_timeout: Duration,
    /// How long to stay on the backup after the primary could not be reached.
    pub failover_hold: Duration,
    /// Whole-request timeout of a download ([`WxPayClient::post_for_bytes`]): a bill can be tens of
    /// MiB, far more than a 10 s reply allows.
    pub download_timeout: Duration,
    /// Extra trusted root (PEM), added to the system roots: for the sandbox's test CA.
    pub extra_root_ca_pem: Option<Vec<u8>>,
    /// The system's roots, read ahead ([`SystemRoots::load`]); `None`: read while the client is
    /// built (the same roots, by the platform verifier).
    pub system_roots: Option<SystemRoots>,
    pub pacing: PacingConfig,
}

/// The system's trusted root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR`, else the usual
/// bundle paths), read once. Reading and decoding them is most of building a client (~1.5 ms for
/// ~145 roots), and needs nothing from the merchant: a cold start reads them while it waits for
/// the secret, and a key rotation's new client reuses them. Verification is the same as the
/// platform verifier's on Linux: webpki against these roots.
#[derive(Clone)]
pub struct SystemRoots(Arc<Vec<reqwest::Certificate>>);

impl SystemRoots {
    pub fn load() -> Result<SystemRoots, ClientBuildError> {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), ToString::to_string);
            return Err(ClientBuildError::SystemRoots(why));
        }
        // As the platform verifier does, a root webpki cannot read is skipped (it could never
        // anchor a chain), rather than failing every client.
        let certs = found
            .certs
            .into_iter()
            .filter(|der| rustls::RootCertStore::empty().add(der.clone()).is_ok())
            .map(|der| reqwest::Certificate::from_der(der.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientBuildError::SystemRoots(e.to_string()))?;
        if certs.is_empty() {
            return Err(ClientBuildError::SystemRoots("none readable".into()));
        }
        Ok(SystemRoots(Arc::new(certs)))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SystemRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SystemRoots({} certificates)", self.0.len())
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            backup_base_url: Some(DEFAULT_BACKUP_BASE_URL.to_owned()),
            connect_timeout: Duration::from_secs(3),
            total_timeout: Duration::from_secs(10),
            failover_hold: Duration::from_secs(60),
            download_timeout: Duration::from_secs(60),
            extra_root_ca_pem: None,
            system_roots: None,
            pacing: PacingConfig::default(),
        }
    }
}

impl ClientConfig {
    /// Defaults pointed at another base URL, without failover (the sandbox, the local stack).
    pub fn for_base_url(base_url: impl Into<String>) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            backup_base_url: None,
            ..ClientConfig::default()
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientBuildError {
    #[error(transparent)]
    Identity(#[from] CertError),
    #[error("the system's trusted root certificates: {0}")]
    SystemRoots(String),
    #[error("WXPAY_CA_FILE does not hold a PEM certificate: {0}")]
    ExtraRootCa(String),
    #[error("invalid base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: &'static str },
    #[error("cannot build the HTTPS client: {0}")]
    Http(String),
}

/// A reply that arrived: HTTP 200 with an XML body (business errors also arrive as 200), or, for a
/// download, with whatever body WeChat sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportReply {
    pub status: u16,
    pub body: Vec<u8>,
    /// The base URL that answered (primary or backup).
    pub base_url: String,
}

/// Why no usable reply arrived. [`TransportError::outcome_unknown`] says whether the request may
/// have taken effect at WeChat.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// DNS or connect failure on every domain tried: the request never left. Safe to retry.
    #[error("request not sent: {0}")]
    NotSent(String),
    /// Sent (or possibly sent) but no complete reply: read timeout, reset, truncated body.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// A non-200 status (gateway errors, nginx "No required SSL certificate was sent", …).
    #[error("HTTP {status} from WeChat: {snippet}")]
    HttpStatus { status: u16, snippet: String },
    /// HTTP 200 whose body is no XML message (an HTML error page, an empty body).
    #[error("reply is not XML (HTTP {status}): {snippet}")]
    NotXml { status: u16, snippet: String },
    /// The local rate budget is exhausted for longer than the configured wait: not sent.
    #[error("not sent: client-side rate limit ({0})")]
    Paced(&'static str),
    /// The call needs the client certificate and this client has none: not sent.
    #[error("not sent: this call needs the merchant certificate and the client has none")]
    NoIdentity,
}

impl TransportError {
    /// True when the request may have reached WeChat and taken effect (query before acting).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            TransportError::Unknown(_)
                | TransportError::HttpStatus { .. }
                | TransportError::NotXml { .. }
        )
    }
}

struct Pacer {
    refunds: DefaultDirectRateLimiter,
    failing: DefaultDirectRateLimiter,
    /// Set when the failing budget is spent: nothing is sent before it.
    failing_blocked_until: Mutex<Option<Instant>>,
    max_wait: Duration,
}

impl Pacer {
    fn new(cfg: &PacingConfig) -> Self {
        Pacer {
            refunds: RateLimiter::direct(Quota::per_second(cfg.refund_per_sec)),
            failing: RateLimiter::direct(Quota::per_second(cfg.failing_per_sec)),
            failing_blocked_until: Mutex::new(None),
            max_wait: cfg.max_wait,
        }
    }

    /// Waits for the budget, or fails fast when the wait would exceed `max_wait`.
    async fn admit(&self, is_refund: bool) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.max_wait;
        loop {
            let blocked = *self
                .failing_blocked_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(until) = blocked {
                let now = Instant::now();
                if until > now {
                    if until > deadline {
                        return Err(TransportError::Paced("failing requests"));
                    }
                    tokio::time::sleep(until - now).await;
                    continue;
                }
            }
            break;
        }
        if is_refund {
            loop {
                match self.refunds.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        if Instant::now() + wait > deadline {
                            return Err(TransportError::Paced("refund apply"));
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Ok(())
    }

    fn record_failure(&self) {
        if let Err(not_until) = self.failing.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self
                .failing_blocked_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let until = Instant::now() + wait;
            if blocked.is_none_or(|b| b < until) {
                *blocked = Some(until);
            }
        }
    }
}

struct Inner {
    http: reqwest::Client,
    has_identity: bool,
    primary: String,
    backup: Option<String>,
    failover_hold: Duration,
    download_timeout: Duration,
    /// While set and in the future, requests go to the backup first.
    on_backup_until: Mutex<Option<Instant>>,
    pacer: Pacer,
}

/// The WeChat Pay client for one merchant identity. Cheap to clone; clones share the connection
/// pool, failover state and rate budget, so build one per process at cold start.
#[derive(Clone)]
pub struct WxPayClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WxPayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WxPayClient")
            .field("primary", &self.inner.primary)
            .field("backup", &self.inner.backup)
            .field("has_identity", &self.inner.has_identity)
            .finish()
    }
}

fn check_base_url(url: &str) -> Result<String, ClientBuildError> {
    let trimmed = url.trim_end_matches('/');
    if !(trimmed.starts_with("https://") || trimmed.starts_with("http://")) {
        return Err(ClientBuildError::BaseUrl {
            url: url.to_owned(),
            reason: "must start with https:// (or http:// for local tests)",
        });
    }
    Ok(trimmed.to_owned())
}

impl WxPayClient {
    /// Builds the client. `identity` is the merchant certificate for mutual TLS (required by
    /// refund apply); without it only calls with `needs_cert = false` can be made.
    pub fn new(
        config: &ClientConfig,
        identity: Option<&MerchantIdentity>,
    ) -> Result<Self, ClientBuildError> {
        let primary = check_base_url(&config.base_url)?;
        let backup = config
            .backup_base_url
            .as_deref()
            .map(check_base_url)
            .transpose()?;
        // No TLS version pinning and no verification switches: rustls' defaults (TLS 1.2/1.3).
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .user_agent(concat!("wxrefund-wxpay/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(50));
        let mut extra = Vec::new();
        if let Some(ca) = &config.extra_root_ca_pem {
            extra = reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| ClientBuildError::ExtraRootCa(e.to_string()))?;
            if extra.is_empty() {
                return Err(ClientBuildError::ExtraRootCa("no certificate found".into()));
            }
        }
        builder = match &config.system_roots {
            Some(roots) => builder.tls_certs_only(roots.0.iter().cloned().chain(extra)),
            None => builder.tls_certs_merge(extra),
        };
        if let Some(identity) = identity {
            builder = builder.identity(identity.reqwest_identity()?);
        }
        let http = builder
            .build()
            .map_err(|e| ClientBuildError::Http(e.to_string()))?;
        Ok(WxPayClient {
            inner: Arc::new(Inner {
                http,
                has_identity: identity.is_some(),
                primary,
                backup,
                failover_hold: config.failover_hold,
                download_timeout: config.download_timeout,
                on_backup_until: Mutex::new(None),
                pacer: Pacer::new(&config.pacing),
            }),
        })
    }

    /// Counts a failing request against WeChat's failing-request budget (the typed layer calls
    /// this for business FAIL replies; the transport counts its own failures).
    pub fn record_failure(&self) {
        self.inner.pacer.record_failure();
    }

    /// Whether requests currently go to the backup domain first.
    pub fn on_backup(&self) -> bool {
        self.backup_active(Instant::now())
    }

    fn backup_active(&self, now: Instant) -> bool {
        let until = *self
            .inner
            .on_backup_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.inner.backup.is_some() && until.is_some_and(|u| u > now)
    }

    fn set_backup(&self, active: bool) {
        let mut until = self
            .inner
            .on_backup_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *until = active.then(|| Instant::now() + self.inner.failover_hold);
    }

    /// POSTs an XML body to `path` (e.g. `/secapi/pay/refund`). `needs_cert` marks refund apply:
    /// it is paced at the refund rate and refused when the client has no identity. The reply must
    /// be XML and at most 1 MiB.
    ///
    /// Failover: when the chosen domain cannot be reached (DNS/connect — the request never left),
    /// the same request goes once to the other domain, and the backup stays preferred for
    /// `failover_hold`. Nothing else is retried.
    pub async fn post_xml(
        &self,
        path: &str,
        body: String,
        needs_cert: bool,
    ) -> Result<TransportReply, TransportError> {
        self.post(path, body, needs_cert, Expect::Xml).await
    }

    /// POSTs an XML body to a download endpoint (`/pay/downloadbill`, no client certificate) and
    /// returns the body as sent: a bill is not XML (gzip or text), so there is no XML check; the
    /// caller classifies it ([`crate::bill::read_reply`]). Same pacing and failover as
    /// [`WxPayClient::post_xml`]; the reply may be up to [`MAX_DOWNLOAD_BYTES`], within
    /// `download_timeout`.
    pub async fn post_for_bytes(
        &self,
        path: &str,
        body: String,
    ) -> Result<TransportReply, TransportError> {
        self.post(path, body, false, Expect::Bytes).await
    }

    async fn post(
        &self,
        path: &str,
        body: String,
        needs_cert: bool,
        expect: Expect,
    ) -> Result<TransportReply, TransportError> {
        if needs_cert && !self.inner.has_identity {
            return Err(TransportError::NoIdentity);
        }
        self.inner.pacer.admit(needs_cert).await?;
        let result = self.send_with_failover(path, body, expect).await;
        if result.is_err() {
            self.inner.pacer.record_failure();
        }
        result
    }

    async fn send_with_failover(
        &self,
        path: &str,
        body: String,
        expect: Expect,
    ) -> Result<TransportReply, TransportError> {
        let use_backup = self.backup_active(Instant::now());
        let (first, second) = match (&self.inner.backup, use_backup) {
            (Some(b), true) => (b.as_str(), Some(self.inner.primary.as_str())),
            (Some(b), false) => (self.inner.primary.as_str(), Some(b.as_str())),
            (None, _) => (self.inner.primary.as_str(), None),
        };
        match self.send_once(first, path, body.clone(), expect).await {
            Err(Attempt::NotSent(reason)) => {
                let Some(second) = second else {
                    return Err(TransportError::NotSent(reason));
                };
                tracing::warn!(
                    failed = first,
                    next = second,
                    reason = %reason,
                    "WeChat domain unreachable; failing over"
                );
                // Prefer the backup for a while when the primary is down; back to the primary
                // at once when it was the backup that failed.
                self.set_backup(second != self.inner.primary);
                match self.send_once(second, path, body, expect).await {
                    Err(Attempt::NotSent(reason2)) => Err(TransportError::NotSent(format!(
                        "{first}: {reason}; {second}: {reason2}"
                    ))),
                    Err(Attempt::Other(e)) => Err(e),
                    Ok(reply) => Ok(reply),
                }
            }
            Err(Attempt::Other(e)) => Err(e),
            Ok(reply) => Ok(reply),
        }
    }

    async fn send_once(
        &self,
        base: &str,
        path: &str,
        body: String,
        expect: Expect,
    ) -> Result<TransportReply, Attempt> {
        let url = format!("{base}{path}");
        let mut request = self
            .inner
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body);
        if expect == Expect::Bytes {
            request = request.timeout(self.inner.download_timeout);
        }
        let response = request.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let body = read_capped(response, expect.max_bytes()).await?;
        if status != 200 {
            return Err(Attempt::Other(TransportError::HttpStatus {
                status,
                snippet: snippet(&body),
            }));
        }
        if expect == Expect::Xml && !looks_like_xml(&body) {
            return Err(Attempt::Other(TransportError::NotXml {
                status,
                snippet: snippet(&body),
            }));
        }
        Ok(TransportReply {
            status,
            body,
            base_url: base.to_owned(),
        })
    }
}

enum Attempt {
    NotSent(String),
    Other(TransportError),
}

/// What a call's reply must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A WeChat XML message, at most [`MAX_REPLY_BYTES`].
    Xml,
    /// Any body (a bill), at most [`MAX_DOWNLOAD_BYTES`].
    Bytes,
}

impl Expect {
    const fn max_bytes(self) -> usize {
        match self {
            Expect::Xml => MAX_REPLY_BYTES,
            Expect::Bytes => MAX_DOWNLOAD_BYTES,
        }
    }
}

/// Only a connect-phase error (DNS, TCP connect, TLS handshake, connect timeout) proves the
/// request never left; everything else after `send` may have reached WeChat.
fn classify(e: reqwest::Error) -> Attempt {
    let text = error_chain(&e);
    if e.is_connect() {
        Attempt::NotSent(text)
    } else if e.is_timeout() {
        Attempt::Other(TransportError::Unknown(format!("timed out: {text}")))
    } else if e.is_builder() {
        Attempt::NotSent(text)
    } else {
        Attempt::Other(TransportError::Unknown(text))
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, Attempt> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(Attempt::Other(TransportError::Unknown(format!(
                        "reply larger than {max} bytes"
                    ))));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                // The status line arrived, so the request was received: never "not sent".
                let reason = if e.is_timeout() {
                    format!("timed out reading the reply: {}", error_chain(&e))
                } else {
                    format!("reading the reply: {}", error_chain(&e))
                };
                return Err(Attempt::Other(TransportError::Unknown(reason)));
            }
        }
    }
}

fn looks_like_xml(body: &[u8]) -> bool {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let rest = &body[start..];
    rest.starts_with(b"<xml") || (rest.starts_with(b"<?xml") && !contains_html(rest))
}

fn contains_html(body: &[u8]) -> bool {
    body.windows(5).any(|w| w.eq_ignore_ascii_case(b"<html"))
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(SNIPPET_CHARS)
        .collect()
}
