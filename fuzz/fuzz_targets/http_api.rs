//! Fuzz target: the HTTP API through the axum router (every route, on an embedded ledger, with
//! WeChat unreachable): method, path + query string and body from the input. No input may make a
//! route panic or answer 5xx other than 502/503 (WeChat or the ledger), and every error is JSON.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = wxrefund::ledger::embedded::EmbeddedLedger::open(dir.path().join("l.redb"))
            .expect("ledger");
        let svc = wxrefund::service::RefundService::new(
            Arc::new(ledger),
            Arc::new(wxrefund::testing::OfflineGateway),
            wxrefund::testing::RecordingPublisher::new(),
            wxrefund::service::ServiceConfig::default(),
        );
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            app: wxrefund::http::router(Arc::new(svc)),
            _dir: dir,
        }
    })
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fuzz_target!(|data: &[u8]| {
    // byte 0: method; then the URI up to the first '\n'; the rest is the body.
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let (uri, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(uri) = std::str::from_utf8(uri) else {
        return;
    };
    let uri = format!("/{}", uri.trim_start_matches('/'));
    let Ok(req) = axum::http::Request::builder()
        .method(METHODS[usize::from(m) % METHODS.len()])
        .uri(&uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
    else {
        return;
    };
    let w = world();
    let (status, bytes) = w.rt.block_on(async {
        let resp = w.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, bytes)
    });
    assert!(
        !status.is_server_error() || status == 502 || status == 503,
        "{uri}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    if status.is_client_error() && !uri.starts_with("/wxpay/") {
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).expect("a client error is a JSON body");
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }
});
