//! The admin JSON API under `/sandbox/` (no client certificate): create paid orders, read the
//! books, inject and clear faults, settle now, and act as a person in the merchant platform
//! (refund an order, resolve a CHANGE refund). Errors are `{"error","message"}` (plus `err_code`
//! when the refund rules refused).

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::body::TooLarge;
use crate::books::{AdminError, Fault, NewOrder, NewRefund};
use crate::settle::{resolve, settle};

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, &json!({"error": code, "message": message.into()}))
}

fn admin_error(e: &AdminError) -> Response<Full<Bytes>> {
    let status = match e {
        AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        AdminError::Conflict(_) | AdminError::Refused(_) => StatusCode::CONFLICT,
    };
    match e {
        AdminError::Refused(biz) => json_response(
            status,
            &json!({"error": e.code(), "err_code": biz.code, "message": biz.des}),
        ),
        _ => error(status, e.code(), e.to_string()),
    }
}

fn ok<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_value(v) {
        Ok(v) => json_response(status, &v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// `POST /sandbox/refunds/{out_refund_no}/resolve`: the status a person sets; SUCCESS is the only
/// one (a CHANGE refund's money reached someone after all).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolve {
    status: ResolvedStatus,
}

#[derive(Deserialize)]
enum ResolvedStatus {
    #[serde(rename = "SUCCESS")]
    Success,
}

/// One fault or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Faults {
    One(Fault),
    Many(Vec<Fault>),
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response<Full<Bytes>>>> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "bad_request", e.to_string())))
}

pub async fn handle(
    app: &Arc<App>,
    method: &Method,
    path: &str,
    body: Result<Bytes, TooLarge>,
) -> Response<Full<Bytes>> {
    let Ok(body) = body else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body over the size limit",
        );
    };
    let segments: Vec<&str> = path
        .trim_start_matches("/sandbox")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let books = &app.books;
    let not_allowed = || {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not supported on {path}"),
        )
    };
    match segments.as_slice() {
        [] | ["merchant"] => match *method {
            Method::GET => ok(StatusCode::OK, &app.merchant),
            _ => not_allowed(),
        },
        ["orders"] => match *method {
            Method::GET => ok(StatusCode::OK, &json!({"orders": books.orders()})),
            Method::POST => match parse::<NewOrder>(&body) {
                Ok(new) => match books.create_order(new) {
                    Ok(v) => ok(StatusCode::CREATED, &v),
                    Err(e) => admin_error(&e),
                },
                Err(r) => *r,
            },
            _ => not_allowed(),
        },
        ["orders", o] => match *method {
            Method::GET => match books.order(o) {
                Some(v) => ok(StatusCode::OK, &v),
                None => admin_error(&AdminError::NotFound(format!("no order {o}"))),
            },
            _ => not_allowed(),
        },
        ["orders", o, "faults"] => faults(app, method, Some(o), &body),
        ["orders", o, "refunds"] => match *method {
            Method::POST => match parse::<NewRefund>(&body) {
                Ok(new) => match books.create_refund(o, new, app.settle_after) {
                    Ok((v, true)) => ok(StatusCode::CREATED, &v),
                    Ok((v, false)) => ok(StatusCode::OK, &v),
                    Err(e) => admin_error(&e),
                },
                Err(r) => *r,
            },
            _ => not_allowed(),
        },
        ["faults"] => faults(app, method, None, &body),
        ["refunds", n] => match *method {
            Method::GET => match books.refund(n) {
                Some(v) => ok(StatusCode::OK, &v),
                None => admin_error(&AdminError::NotFound(format!("no refund {n}"))),
            },
            _ => not_allowed(),
        },
        ["refunds", n, "resolve"] => match *method {
            Method::POST => match parse::<Resolve>(&body) {
                Ok(Resolve {
                    status: ResolvedStatus::Success,
                }) => match resolve(app, n) {
                    Ok(v) => ok(StatusCode::OK, &v),
                    Err(e) => admin_error(&e),
                },
                Err(r) => *r,
            },
            _ => not_allowed(),
        },
        ["settle"] => match *method {
            Method::POST => ok(StatusCode::OK, &json!({"settled": settle(app, true)})),
            _ => not_allowed(),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin route {path}"),
        ),
    }
}

fn faults(
    app: &Arc<App>,
    method: &Method,
    order: Option<&str>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let books = &app.books;
    let list = |order: Option<&str>| match order {
        Some(o) => books
            .order(o)
            .map(|v| v.faults)
            .ok_or_else(|| AdminError::NotFound(format!("no order {o}"))),
        None => Ok(books.global_faults()),
    };
    let result = match *method {
        Method::GET => list(order),
        Method::POST => {
            let faults = match parse::<Faults>(body) {
                Ok(Faults::One(f)) => vec![f],
                Ok(Faults::Many(v)) => v,
                Err(r) => return *r,
            };
            books.add_faults(order, faults).and_then(|()| list(order))
        }
        Method::DELETE => books.clear_faults(order).and_then(|()| list(order)),
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not supported on faults"),
            );
        }
    };
    match result {
        Ok(f) => ok(StatusCode::OK, &json!({"faults": f})),
        Err(e) => admin_error(&e),
    }
}
