//! WeChat's refund notification route: the body goes to the service, the XML reply comes back.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

pub(super) async fn refund_notify(
    State(svc): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let reply = match body {
        Ok(body) => svc.handle_notification(&body).await,
        Err(r) => wxpay::notify::fail_reply(&r.body_text()),
    };
    let mut resp = (StatusCode::OK, reply).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    resp
}
