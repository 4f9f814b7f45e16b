//! The HTTP contract through the real router: WeChat's rate limit is a `429 rate_limited` with
//! `Retry-After` (and a WARN naming the route and the order), unknown and repeated query
//! parameters are refused on every merchant route, bad paths and media types are answered in the
//! JSON envelope, and messages name the field in plain words.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use wxpay::bill::{BillDate, BillRefusal, BillText, BillUnavailable};
use wxpay::errors::Stage;
use wxpay::notify::{NotifyError, RefundNotification};
use wxpay::query::{RefundQueryRequest, RefundQueryResponse};
use wxpay::refund::{RefundRequest, RefundResponse};
use wxpay::{CallOutcome, ErrCode, WxError};
use wxrefund::gateway::{BillFailure, Gateway};
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::service::{RefundService, ServiceConfig};

/// A WeChat that answers every query with `FREQUENCY_LIMITED` and every bill download with the
/// rate-limit refusal (`error_code` 20003, "请求频率过高"), as the sandbox does over its budget.
struct RateLimited;

fn frequency_limited() -> WxError {
    WxError {
        stage: Stage::Result,
        code: ErrCode::FrequencyLimited,
        description: "请求频率过高，请降低频率后重试".into(),
        return_msg: "OK".into(),
        raw: String::new(),
    }
}

#[async_trait::async_trait]
impl Gateway for RateLimited {
    async fn refund(&self, _: &RefundRequest) -> CallOutcome<RefundResponse> {
        CallOutcome::Rejected(frequency_limited())
    }
    async fn query(&self, _: &RefundQueryRequest) -> CallOutcome<RefundQueryResponse> {
        CallOutcome::Rejected(frequency_limited())
    }
    async fn decrypt_notification(&self, _: &[u8]) -> Result<RefundNotification, NotifyError> {
        Err(NotifyError::MissingReqInfo)
    }
    async fn refund_bill(&self, _: BillDate) -> Result<BillText, BillFailure> {
        Err(BillFailure::Unavailable(BillUnavailable::RateLimited(
            BillRefusal {
                return_msg: "请求频率过高，请降低频率后重试".into(),
                error_code: Some("20003".into()),
            },
        )))
    }
}

fn router_with(dir: &tempfile::TempDir, gateway: Arc<dyn Gateway>) -> axum::Router {
    let ledger = EmbeddedLedger::open(dir.path().join("ledger.redb")).expect("ledger");
    let svc = RefundService::new(
        Arc::new(ledger),
        gateway,
        wxrefund::testing::RecordingPublisher::new(),
        ServiceConfig::default(),
    );
    wxrefund::http::router(Arc::new(svc))
}

fn offline(dir: &tempfile::TempDir) -> axum::Router {
    router_with(dir, Arc::new(wxrefund::testing::OfflineGateway))
}

struct Answer {
    status: StatusCode,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
}

async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("infallible");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        content_type,
        retry_after,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A request body that is valid for the route (so only the part under test can refuse it).
fn valid_body(path: &str) -> &'static str {
    match path {
        "/refunds" => {
            r#"{"out_refund_no":"R-HC-1","out_trade_no":"ORDER-HC-1","total_fee":100,"refund_fee":1}"#
        }
        "/reconciliations" => r#"{"bill_date":"2026-01-02"}"#,
        _ => "",
    }
}

/// The route's path with its parameters filled in with valid values.
fn concrete(path: &str) -> String {
    path.replace("{out_refund_no}", "R-HC-1")
        .replace("{out_trade_no}", "ORDER-HC-1")
        .replace("{bill_date}", "2026-01-02")
}

/// Log lines written while `f` runs, on this thread.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn a_wechat_rate_limit_on_the_order_list_is_a_429_with_retry_after_and_a_warn() {
    // GIVEN a WeChat that answers the order's refund query with FREQUENCY_LIMITED
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(&dir, Arc::new(RateLimited));
    // WHEN the merchant lists the order's refunds
    let (answer, logs) = logged(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(call(
                &router,
                Method::GET,
                "/orders/ORDER-RL-1/refunds",
                None,
                "",
            ))
    });
    // THEN 429 rate_limited with Retry-After, in the JSON envelope
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["error"], "rate_limited");
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(answer.content_type, "application/json");
    // AND a WARN line names the route and the order
    let line = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("rate limit"))
        .unwrap_or_else(|| panic!("no WARN line in:\n{logs}"));
    assert!(line.contains("/orders/{out_trade_no}/refunds"), "{line}");
    assert!(line.contains("ORDER-RL-1"), "{line}");
}

#[tokio::test]
async fn a_wechat_rate_limit_on_the_bill_is_a_429_with_retry_after() {
    // GIVEN a WeChat whose bill download answers the rate-limit refusal (20003, 请求频率过高)
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(&dir, Arc::new(RateLimited));
    // WHEN a day is reconciled THEN 429 rate_limited with Retry-After, not a 502
    let a = call(
        &router,
        Method::POST,
        "/reconciliations",
        Some("application/json"),
        valid_body("/reconciliations"),
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert_eq!(a.body["error"], "rate_limited");
    assert_eq!(a.retry_after.as_deref(), Some("1"));
}

#[tokio::test]
async fn unknown_and_repeated_query_parameters_are_refused_on_every_merchant_route() {
    let dir = tempfile::tempdir().unwrap();
    let router = offline(&dir);
    // GIVEN every route of the router but WeChat's notification (which answers in WeChat's XML
    // protocol and does not read the query)
    let routes: Vec<_> = wxrefund::http::routes()
        .into_iter()
        .filter(|(_, p)| *p != "/wxpay/refund-notify")
        .collect();
    assert_eq!(routes.len(), 6);
    for (method, path) in routes {
        let uri = concrete(path);
        let ct = (method == Method::POST).then_some("application/json");
        // the known parameters of the route, to repeat one of them
        let known = match path {
            "/refunds" if method == Method::GET => "needs_person=true",
            "/refunds/{out_refund_no}" => "refresh=false",
            _ => "",
        };
        let base = if path == "/refunds" && method == Method::GET {
            "needs_person=true&"
        } else {
            ""
        };
        let mut queries = vec![format!("{base}verbose=1"), format!("{base}refersh=true")];
        if !known.is_empty() {
            queries.push(format!("{known}&{known}"));
        }
        for q in queries {
            // WHEN asked with an unknown or a repeated parameter
            let a = call(
                &router,
                method.clone(),
                &format!("{uri}?{q}"),
                ct,
                valid_body(path),
            )
            .await;
            // THEN 400 invalid_query naming it, in the JSON envelope
            assert_eq!(
                a.status,
                StatusCode::BAD_REQUEST,
                "{method} {uri}?{q}: {}",
                a.body
            );
            assert_eq!(
                a.body["error"], "invalid_query",
                "{method} {uri}?{q}: {}",
                a.body
            );
            let message = a.body["message"].as_str().unwrap();
            let named = q.rsplit('&').next().unwrap().split('=').next().unwrap();
            assert!(message.contains(named), "{method} {uri}?{q}: {message}");
        }
    }
}

#[tokio::test]
async fn a_path_that_does_not_decode_is_a_json_400() {
    let dir = tempfile::tempdir().unwrap();
    let router = offline(&dir);
    // GIVEN paths whose parameter is not UTF-8 once decoded
    for uri in [
        "/refunds/%FF",
        "/orders/%FF%FE/refunds",
        "/reconciliations/%FF",
    ] {
        // WHEN asked THEN 400 invalid_path in the JSON envelope, not text/plain
        let a = call(&router, Method::GET, uri, None, "").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(a.content_type, "application/json", "{uri}");
        assert_eq!(a.body["error"], "invalid_path", "{uri}: {}", a.body);
        assert!(
            a.body["message"].as_str().unwrap().contains("path"),
            "{}",
            a.body
        );
    }
}

#[tokio::test]
async fn a_post_without_a_json_content_type_is_a_415() {
    let dir = tempfile::tempdir().unwrap();
    let router = offline(&dir);
    for path in ["/refunds", "/reconciliations"] {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            // GIVEN a valid JSON body WHEN posted without saying it is JSON THEN 415
            let a = call(&router, Method::POST, path, ct, valid_body(path)).await;
            assert_eq!(
                a.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{path} {ct:?}: {}",
                a.body
            );
            assert_eq!(a.body["error"], "unsupported_media_type");
            assert_eq!(a.content_type, "application/json");
        }
    }
}

#[tokio::test]
async fn messages_name_the_field_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let router = offline(&dir);
    // GIVEN bodies a deserializer would describe in its own words
    for (path, body, want) in [
        ("/refunds", "{}", "out_refund_no is required"),
        ("/refunds", "[]", "must be a JSON object"),
        (
            "/refunds",
            r#"{"out_refund_no":"R-1","out_trade_no":"ORDER-1","total_fee":"100","refund_fee":1}"#,
            "total_fee must be a whole number of fen",
        ),
        (
            "/refunds",
            r#"{"out_refund_no":"R-1","out_trade_no":"ORDER-1","total_fee":100}"#,
            "refund_fee is required",
        ),
        (
            "/refunds",
            r#"{"out_refund_no":"R-1","out_trade_no":"ORDER-1","total_fee":100,"refund_fee":1,"metadata":{"k":1}}"#,
            "metadata",
        ),
        ("/reconciliations", "{}", "bill_date is required"),
        (
            "/reconciliations",
            r#"{"bill_date":20260102}"#,
            "bill_date must be a string",
        ),
        (
            "/reconciliations",
            r#"{"bill_date":"20260102"}"#,
            "bill_date must be a date written YYYY-MM-DD",
        ),
        (
            "/reconciliations",
            r#"{"day":"2026-01-02"}"#,
            "unknown field \"day\"",
        ),
    ] {
        // WHEN posted THEN 400 and the message names the field, without serde's wording
        let a = call(&router, Method::POST, path, Some("application/json"), body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        let message = a.body["message"].as_str().unwrap();
        assert!(message.contains(want), "{body}: {message}");
        for serde_words in ["expected", "invalid type", "invalid length", "struct"] {
            assert!(!message.contains(serde_words), "{body}: {message}");
        }
    }
}
