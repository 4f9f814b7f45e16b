//! WeChat's refund notification route: the body goes to the service, the XML reply comes back.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// WeChat Pay's refund notification (`req_info`, encrypted with the merchant key). Authenticated by
/// decryption and confirmed by a query; always answered in WeChat's XML protocol, `SUCCESS` or
/// `FAIL` (WeChat sends it again after a `FAIL`). Query parameters are not looked at: this is
/// WeChat's route, and the notify URL is WeChat's to call as configured.
#[utoipa::path(
    post,
    path = "/wxpay/refund-notify",
    operation_id = "refundNotify",
    tag = "wechat",
    // Not required: any body, an empty one included, is answered 200 in WeChat's protocol.
    request_body(content = Option<String>, content_type = "text/xml", description = "WeChat's `<xml>` notification."),
    responses(
        (status = 200, description = "`<xml><return_code>SUCCESS</return_code>…</xml>` or `FAIL` with `return_msg`.",
            body = String, content_type = "text/xml"),
    )
)]
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
