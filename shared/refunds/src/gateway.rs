//! The `Gateway` port: the payment gateway the workflows call (apply refund, query refunds,
//! decrypt a notification, download the refund bill), and its adapter [`WxPayGateway`] on `wxpay::client`. Every
//! implementation returns `CallOutcome`s.

use async_trait::async_trait;
use wxpay::CallOutcome;
use wxpay::bill::{BillDate, BillText, BillUnavailable};
use wxpay::notify::{NotifyError, RefundNotification};
use wxpay::query::{RefundQueryRequest, RefundQueryResponse};
use wxpay::refund::{RefundRequest, RefundResponse};

#[async_trait]
pub trait Gateway: Send + Sync {
    /// `/secapi/pay/refund` with the merchant's client certificate.
    async fn refund(&self, request: &RefundRequest) -> CallOutcome<RefundResponse>;

    /// `/pay/refundquery`.
    async fn query(&self, request: &RefundQueryRequest) -> CallOutcome<RefundQueryResponse>;

    /// Decrypts and checks a refund notification with the current key.
    async fn decrypt_notification(&self, body: &[u8]) -> Result<RefundNotification, NotifyError>;

    /// `/pay/downloadbill` (no client certificate): the REFUND bill of a Beijing day, as text.
    async fn refund_bill(&self, day: BillDate) -> Result<BillText, BillFailure>;
}

/// Why a day's bill could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BillFailure {
    /// WeChat answered without a bill: none that day, not made yet, or a refusal.
    #[error(transparent)]
    Unavailable(#[from] BillUnavailable),
    /// No usable reply arrived.
    #[error("{0}")]
    Transport(String),
}

// ---- the production adapter ---------------------------------------------------------------------

use std::sync::{Arc, RwLock};

use tracing::{info, warn};
use wxpay::bill::{BillRequest, BillType};
use wxpay::client::{ClientBuildError, ClientConfig, TransportError, WxPayClient};
use wxpay::outcome::{self, UnknownReason};
use wxpay::query::PATH as QUERY_PATH;
use wxpay::refund::PATH as REFUND_PATH;
use wxpay::{ErrCode, FieldError, MerchantKeys, NonceStr, SignType, XmlMap};

use crate::secrets::{MerchantConfig, SecretSource, SecretsError};

/// Secret reloads (after a signature failure) happen at most this often.
const MIN_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The merchant's keys and the HTTPS client built from its certificate, swapped as one on rotation.
struct Current {
    keys: MerchantKeys,
    client: WxPayClient,
}

/// [`Gateway`] over `wxpay::client`: signs, sends, checks replies, and on a signature failure reloads
/// the secret once (key rotation) and repeats the same request before the failure counts.
pub struct WxPayGateway {
    current: RwLock<Arc<Current>>,
    client_config: ClientConfig,
    source: Option<SecretSource>,
    /// Serialises reloads so a burst of signature failures fetches the secret once.
    reload_lock: tokio::sync::Mutex<Option<std::time::Instant>>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

impl WxPayGateway {
    /// Builds the client for `config` (at cold start). `source` enables reload on rotation.
    pub fn new(
        config: &MerchantConfig,
        client_config: ClientConfig,
        source: Option<SecretSource>,
    ) -> Result<Self, GatewayError> {
        let client = WxPayClient::new(&client_config, Some(&config.identity))?;
        Ok(WxPayGateway {
            current: RwLock::new(Arc::new(Current {
                keys: config.merchant_keys(),
                client,
            })),
            client_config,
            source,
            reload_lock: tokio::sync::Mutex::new(None),
        })
    }

    fn current(&self) -> Arc<Current> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads the secret if it changed since `seen` was current; true when a new key is in place.
    async fn reload(&self, seen: &Arc<Current>) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let mut last = self.reload_lock.lock().await;
        if !Arc::ptr_eq(seen, &self.current()) {
            return true; // someone else reloaded meanwhile
        }
        // The notify route is public: a forged body must not turn into a secret fetch per request.
        if last.is_some_and(|t: std::time::Instant| t.elapsed() < MIN_RELOAD_INTERVAL) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        let config = match source.reload().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "secret reload after a signature failure failed");
                return false;
            }
        };
        if config.api_v2_key.expose() == seen.keys.api_key.expose()
            && config.sign_type == seen.keys.sign_type
        {
            return false;
        }
        match WxPayClient::new(&self.client_config, Some(&config.identity)) {
            Ok(client) => {
                let next = Arc::new(Current {
                    keys: config.merchant_keys(),
                    client,
                });
                match self.current.write() {
                    Ok(mut g) => *g = next,
                    Err(poisoned) => *poisoned.into_inner() = next,
                }
                info!(mch_id = %config.mch_id, "merchant secret rotated");
                true
            }
            Err(e) => {
                warn!(error = %e, "client rebuild after secret rotation failed");
                false
            }
        }
    }

    async fn call<T>(
        &self,
        path: &str,
        needs_cert: bool,
        body: impl Fn(&MerchantKeys) -> Result<String, String>,
        parse: fn(&XmlMap) -> Result<T, FieldError>,
    ) -> CallOutcome<T> {
        let mut cur = self.current();
        let mut reloaded = false;
        let mut earlier_unknown: Option<UnknownReason> = None;
        loop {
            let outcome = self.send(&cur, path, needs_cert, &body, parse).await;
            let signature_problem =
                matches!(
                    &outcome,
                    CallOutcome::Rejected(e) if e.code == ErrCode::SignError
                ) || matches!(&outcome, CallOutcome::Unknown(UnknownReason::BadSignature));
            if signature_problem && !reloaded && self.reload(&cur).await {
                reloaded = true;
                if let CallOutcome::Unknown(reason) = &outcome {
                    earlier_unknown = Some(reason.clone());
                }
                cur = self.current();
                continue;
            }
            // The first try may have been taken (a success reply whose signature we could not
            // verify): a refusal of the repeat says nothing about it, so the outcome stays unknown.
            if let (Some(reason), CallOutcome::Rejected(_)) = (&earlier_unknown, &outcome) {
                return CallOutcome::Unknown(reason.clone());
            }
            return outcome;
        }
    }

    async fn send<T>(
        &self,
        cur: &Current,
        path: &str,
        needs_cert: bool,
        body: &impl Fn(&MerchantKeys) -> Result<String, String>,
        parse: fn(&XmlMap) -> Result<T, FieldError>,
    ) -> CallOutcome<T> {
        let xml = match body(&cur.keys) {
            Ok(xml) => xml,
            // Validation happens before recording; reaching this is a bug, and nothing was sent.
            Err(e) => return CallOutcome::NotSent(format!("request could not be built: {e}")),
        };
        let sign_type: SignType = cur.keys.sign_type;
        let started = std::time::Instant::now();
        let outcome = self
            .post(cur, path, xml, needs_cert, sign_type, parse)
            .await;
        observe(path, started, &outcome, cur.client.on_backup());
        outcome
    }

    async fn post<T>(
        &self,
        cur: &Current,
        path: &str,
        xml: String,
        needs_cert: bool,
        sign_type: SignType,
        parse: fn(&XmlMap) -> Result<T, FieldError>,
    ) -> CallOutcome<T> {
        match cur.client.post_xml(path, xml, needs_cert).await {
            Ok(reply) => {
                let outcome =
                    outcome::from_http(reply.status, &reply.body, &cur.keys, sign_type, parse);
                // Transport failures are counted by the client itself; refusals and unusable
                // replies that did arrive spend WeChat's failing-request budget too.
                if outcome.is_failure() {
                    cur.client.record_failure();
                }
                outcome
            }
            Err(e) => match e {
                TransportError::NotSent(_)
                | TransportError::Paced(_)
                | TransportError::NoIdentity => CallOutcome::NotSent(e.to_string()),
                TransportError::HttpStatus { status, .. } => {
                    CallOutcome::Unknown(UnknownReason::HttpStatus(status))
                }
                TransportError::NotXml { snippet, .. } => {
                    CallOutcome::Unknown(UnknownReason::NotWeChatXml(snippet))
                }
                TransportError::Unknown(s) => CallOutcome::Unknown(UnknownReason::Transport(s)),
            },
        }
    }
}

/// One call's metrics: its outcome, its time and WeChat's refusal code (`crate::telemetry`).
fn observe<T>(path: &str, started: std::time::Instant, outcome: &CallOutcome<T>, on_backup: bool) {
    use crate::telemetry::{WECHAT_CALL_MS, WECHAT_CALLS, WECHAT_ERR_CODES, WECHAT_ON_BACKUP};
    let call = if path == REFUND_PATH {
        "refund"
    } else {
        "query"
    };
    let result = match outcome {
        CallOutcome::Ok(_) => "ok",
        CallOutcome::Rejected(e) => {
            metrics::counter!(WECHAT_ERR_CODES, "code" => e.code.as_str().to_owned()).increment(1);
            "rejected"
        }
        CallOutcome::NotSent(_) => "not_sent",
        CallOutcome::Unknown(_) => "unknown",
    };
    metrics::counter!(WECHAT_CALLS, "call" => call, "outcome" => result).increment(1);
    metrics::histogram!(WECHAT_CALL_MS, "call" => call)
        .record(started.elapsed().as_secs_f64() * 1000.0);
    metrics::gauge!(WECHAT_ON_BACKUP).set(if on_backup { 1.0 } else { 0.0 });
}

fn parse_refund(m: &XmlMap) -> Result<RefundResponse, FieldError> {
    RefundResponse::try_from(m)
}

fn parse_query(m: &XmlMap) -> Result<RefundQueryResponse, FieldError> {
    RefundQueryResponse::try_from(m)
}

#[async_trait]
impl Gateway for WxPayGateway {
    async fn refund(&self, request: &RefundRequest) -> CallOutcome<RefundResponse> {
        self.call(
            REFUND_PATH,
            true,
            |keys| {
                request
                    .to_xml(keys, &NonceStr::random())
                    .map_err(|e| e.to_string())
            },
            parse_refund,
        )
        .await
    }

    async fn query(&self, request: &RefundQueryRequest) -> CallOutcome<RefundQueryResponse> {
        self.call(
            QUERY_PATH,
            false,
            |keys| {
                request
                    .to_xml(keys, &NonceStr::random())
                    .map_err(|e| e.to_string())
            },
            parse_query,
        )
        .await
    }

    async fn refund_bill(&self, day: BillDate) -> Result<BillText, BillFailure> {
        let request = BillRequest {
            bill_date: day,
            bill_type: BillType::Refund,
            gzip: true,
        };
        let mut cur = self.current();
        let mut reloaded = false;
        loop {
            let xml = request
                .to_xml(&cur.keys, &NonceStr::random())
                .map_err(|e| BillFailure::Transport(format!("request could not be built: {e}")))?;
            let reply = cur
                .client
                .post_for_bytes(wxpay::bill::PATH, xml)
                .await
                .map_err(|e| BillFailure::Transport(e.to_string()))?;
            match wxpay::bill::read_reply(&reply.body) {
                Ok(text) => return Ok(text),
                // A signature refusal after a key rotation: reload once and ask again.
                Err(BillUnavailable::Config(r))
                    if r.error_code.as_deref() == Some("20001")
                        && !reloaded
                        && self.reload(&cur).await =>
                {
                    reloaded = true;
                    cur = self.current();
                }
                Err(e @ (BillUnavailable::NoBill(_) | BillUnavailable::NotReady(_))) => {
                    return Err(e.into());
                }
                // Refusals and broken replies spend WeChat's failing-request budget too.
                Err(e) => {
                    cur.client.record_failure();
                    return Err(e.into());
                }
            }
        }
    }

    async fn decrypt_notification(&self, body: &[u8]) -> Result<RefundNotification, NotifyError> {
        let cur = self.current();
        match wxpay::notify::decrypt(body, &cur.keys) {
            Err(NotifyError::BadPadding) if self.reload(&cur).await => {
                wxpay::notify::decrypt(body, &self.current().keys)
            }
            other => other,
        }
    }
}
