//! What the router tests share: a service whose WeChat cannot be reached, over an embedded
//! ledger, and one request through the router.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::service::{RefundService, ServiceConfig};

pub use wxrefund::testing::OfflineGateway as Offline;

pub fn router(dir: &tempfile::TempDir) -> axum::Router {
    let ledger = EmbeddedLedger::open(dir.path().join("ledger.redb")).expect("ledger");
    let svc = RefundService::new(
        Arc::new(ledger),
        Arc::new(Offline),
        wxrefund::testing::RecordingPublisher::new(),
        ServiceConfig::default(),
    );
    wxrefund::http::router(Arc::new(svc))
}

/// Status and body of one request through the router.
pub async fn send(
    router: &axum::Router,
    method: Method,
    uri: &str,
    body: &str,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}
