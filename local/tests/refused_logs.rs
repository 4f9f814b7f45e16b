//! A refused request leaves one INFO line with its route, error code and ids, never its body.
//! Alone in its test binary: tracing's per-callsite interest is global, so a test running on
//! another thread without a subscriber could hide the lines this one captures.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::http::{Method, StatusCode};

mod common;

use common::{router, send};

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_refused_request_is_logged_with_route_code_and_ids_but_not_its_body() {
    // GIVEN logs captured at INFO
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().expect("tempdir");
    let router = router(&dir);
    // WHEN a refund with a description CDATA cannot carry is posted, and an unknown route asked
    let body = r#"{"out_refund_no":"R-LOG-1","out_trade_no":"ORDER-LOG-1","total_fee":100,"refund_fee":1,"refund_desc":"secret]]>text"}"#;
    let (status, _) = send(&router, Method::POST, "/refunds", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(&router, Method::GET, "/nowhere", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // THEN one INFO line each, with the route, the code and the ids, and nothing of the body
    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refused.len(), 2, "{text}");
    let first = refused[0];
    for needle in [
        "INFO",
        "route=\"/refunds\"",
        "status=400",
        "error=\"validation_error\"",
        "out_refund_no=\"R-LOG-1\"",
        "out_trade_no=\"ORDER-LOG-1\"",
    ] {
        assert!(first.contains(needle), "{needle} missing in {first}");
    }
    assert!(
        !text.contains("secret"),
        "the body leaked into the logs: {text}"
    );
    assert!(refused[1].contains("error=\"not_found\""), "{}", refused[1]);
}
