//! Test helpers: start a sandbox in a fresh state dir, real HTTPS clients (with and without the
//! merchant certificate), signed requests, and a plain-HTTP notification receiver.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;
use wxpay::{ApiKey, SignType, XmlMap};
use wxpay_sandbox::{NewOrder, RunningSandbox, Sandbox, SandboxConfig};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    // Under target/tmp (Cargo's per-build scratch dir), so test state goes with `cargo clean`
    // instead of piling up in /tmp.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "wxpay-sandbox-test-{}-{}-{tag}-{n}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A config for tests: fresh state dir, generous failure budget (so error-code tests aren't
/// turned into FREQUENCY_LIMITED), short settle delay.
pub fn config(tag: &str) -> SandboxConfig {
    SandboxConfig {
        state_dir: temp_dir(tag),
        settle_after: Duration::from_secs(3600),
        apply_qps: 10_000,
        failure_qps: 10_000,
        ..SandboxConfig::default()
    }
}

pub async fn start(tag: &str) -> RunningSandbox {
    Sandbox::start(config(tag)).await.expect("sandbox starts")
}

fn ca(sb: &RunningSandbox) -> reqwest::Certificate {
    let pem = std::fs::read(&sb.files().ca_pem).expect("ca.pem");
    reqwest::Certificate::from_pem(&pem).expect("ca parses")
}

/// A client trusting only the sandbox CA and presenting the merchant certificate (PEM pair).
pub fn client(sb: &RunningSandbox) -> reqwest::Client {
    let mut pem = std::fs::read(&sb.files().client_cert_pem).expect("cert pem");
    pem.extend(std::fs::read(&sb.files().client_key_pem).expect("key pem"));
    client_with(
        sb,
        Some(reqwest::Identity::from_pem(&pem).expect("identity")),
    )
}

pub fn client_with(sb: &RunningSandbox, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([ca(sb)])
        .timeout(Duration::from_secs(10));
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b.build().expect("client builds")
}

/// A client without a certificate.
pub fn anonymous(sb: &RunningSandbox) -> reqwest::Client {
    client_with(sb, None)
}

pub fn key(sb: &RunningSandbox) -> ApiKey {
    sb.api_key()
}

/// Base fields of an apply request for `out_trade_no`.
pub fn apply_fields(
    sb: &RunningSandbox,
    out_trade_no: &str,
    out_refund_no: &str,
    total: u64,
    refund: u64,
) -> Vec<(String, String)> {
    vec![
        ("appid".into(), sb.merchant().appid.clone()),
        ("mch_id".into(), sb.merchant().mch_id.clone()),
        (
            "nonce_str".into(),
            wxpay::NonceStr::random().as_str().into(),
        ),
        ("out_trade_no".into(), out_trade_no.into()),
        ("out_refund_no".into(), out_refund_no.into()),
        ("total_fee".into(), total.to_string()),
        ("refund_fee".into(), refund.to_string()),
    ]
}

pub fn query_fields(sb: &RunningSandbox, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = vec![
        ("appid".into(), sb.merchant().appid.clone()),
        ("mch_id".into(), sb.merchant().mch_id.clone()),
        (
            "nonce_str".into(),
            wxpay::NonceStr::random().as_str().into(),
        ),
    ];
    f.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    f
}

/// Adds `sign` (and `sign_type` for HMAC) and encodes.
pub fn signed_xml(key: &ApiKey, sign_type: SignType, mut fields: Vec<(String, String)>) -> String {
    if sign_type == SignType::HmacSha256 {
        fields.push(("sign_type".into(), "HMAC-SHA256".into()));
    }
    let sign = wxpay::sign::sign(
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        key,
        sign_type,
    );
    fields.push(("sign".into(), sign));
    wxpay::xml::encode(fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))).expect("encodes")
}

pub async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> Result<(u16, String), reqwest::Error> {
    let resp = client.post(url).body(body).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// POSTs a signed request and decodes the XML reply (HTTP 200 expected).
pub async fn call(
    sb: &RunningSandbox,
    client: &reqwest::Client,
    path: &str,
    sign_type: SignType,
    fields: Vec<(String, String)>,
) -> XmlMap {
    let body = signed_xml(&key(sb), sign_type, fields);
    let (status, text) = post_raw(client, &format!("{}{path}", sb.base_url()), body)
        .await
        .expect("request succeeds");
    assert_eq!(status, 200, "body: {text}");
    wxpay::xml::decode(text.as_bytes()).expect("reply is XML")
}

pub async fn apply(
    sb: &RunningSandbox,
    out_trade_no: &str,
    out_refund_no: &str,
    total: u64,
    refund: u64,
) -> XmlMap {
    let c = client(sb);
    call(
        sb,
        &c,
        "/secapi/pay/refund",
        SignType::Md5,
        apply_fields(sb, out_trade_no, out_refund_no, total, refund),
    )
    .await
}

pub async fn query(sb: &RunningSandbox, extra: &[(&str, &str)]) -> XmlMap {
    let c = anonymous(sb);
    call(
        sb,
        &c,
        "/pay/refundquery",
        SignType::Md5,
        query_fields(sb, extra),
    )
    .await
}

/// Asserts the reply is a signed one with a valid signature of `sign_type`.
pub fn assert_signed(sb: &RunningSandbox, reply: &XmlMap, sign_type: SignType) {
    let sign = reply.get("sign").expect("reply carries a sign");
    assert_eq!(sign.len(), sign_type.hex_len());
    assert!(
        wxpay::sign::verify(reply.iter(), &key(sb), sign_type, sign),
        "reply signature verifies: {reply:?}"
    );
    assert_eq!(reply.get("appid"), Some(sb.merchant().appid.as_str()));
    assert_eq!(reply.get("mch_id"), Some(sb.merchant().mch_id.as_str()));
    assert!(reply.non_empty("nonce_str").is_some());
}

/// Asserts `result_code=FAIL` with `err_code`, signed.
pub fn assert_biz_fail(sb: &RunningSandbox, reply: &XmlMap, err_code: &str) {
    assert_eq!(reply.get("return_code"), Some("SUCCESS"), "{reply:?}");
    assert_eq!(reply.get("result_code"), Some("FAIL"), "{reply:?}");
    assert_eq!(reply.get("err_code"), Some(err_code), "{reply:?}");
    assert_signed(sb, reply, SignType::Md5);
}

pub fn assert_return_fail(reply: &XmlMap, msg_prefix: &str) {
    assert_eq!(reply.get("return_code"), Some("FAIL"), "{reply:?}");
    assert!(
        reply
            .get("return_msg")
            .unwrap_or("")
            .starts_with(msg_prefix),
        "return_msg {:?} starts with {msg_prefix:?}",
        reply.get("return_msg")
    );
    assert!(!reply.contains("sign"), "FAIL replies carry no sign");
    assert_eq!(reply.len(), 2, "only return_code and return_msg: {reply:?}");
}

pub fn order(sb: &RunningSandbox, out_trade_no: &str, total: u64) -> wxpay_sandbox::OrderView {
    sb.books()
        .create_order(NewOrder {
            out_trade_no: out_trade_no.into(),
            total_fee: total,
            ..NewOrder::default()
        })
        .expect("order created")
}

/// A plain-HTTP receiver for refund notifications: records every body; answers FAIL to the first
/// `fail_first` requests and SUCCESS afterwards.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<String>>>,
    fail_first: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let r = Receiver {
            addr: listener.local_addr().expect("addr"),
            bodies: Arc::default(),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
        };
        let r2 = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let r = r2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let r = r.clone();
                            async move {
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                r.bodies
                                    .lock()
                                    .unwrap()
                                    .push(String::from_utf8_lossy(&body).into_owned());
                                let failing = r
                                    .fail_first
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                        n.checked_sub(1)
                                    })
                                    .is_ok();
                                let code = if failing { "FAIL" } else { "SUCCESS" };
                                let xml = format!(
                                    "<xml><return_code><![CDATA[{code}]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
                                );
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from(xml),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        r
    }

    pub fn url(&self) -> String {
        format!("http://{}/wxpay/refund-notify", self.addr)
    }

    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

/// Polls `f` every 50 ms until it returns Some, or panics after `secs`.
pub async fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One admin API call: the HTTP status and the JSON reply.
pub async fn admin(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c.request(method, url);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.expect("admin call");
    let status = resp.status().as_u16();
    let v: Value =
        serde_json::from_slice(&resp.bytes().await.expect("admin call")).expect("admin call");
    (status, v)
}

/// The decrypted `req_info` of a notification body a [`Receiver`] got.
pub fn notification(sb: &RunningSandbox, body: &str) -> XmlMap {
    let outer = wxpay::xml::decode(body.as_bytes()).expect("notification XML");
    wxpay_sandbox::decrypt_req_info(outer.get("req_info").expect("req_info"), &key(sb))
        .expect("req_info decrypts")
}
