//! `/pay/downloadbill`: the checks every endpoint shares, the bill parameters, faults, and the
//! day's bill (plain text or gzip) or WeChat's unsigned `error_code` reply (README "Refund bill").

use std::sync::Arc;

use hyper::StatusCode;

use crate::app::App;
use crate::bill::{self, BillType};
use crate::body::TooLarge;
use crate::books::{Endpoint, FaultKind, Phase};
use crate::protocol::{
    BAD_GATEWAY_HTML, Refusal, Reply, is_failure, prelude, refusal_text, xml_reply,
};

const BILL_FIELDS: &[&str] = &[
    "appid",
    "mch_id",
    "nonce_str",
    "sign",
    "sign_type",
    "bill_date",
    "bill_type",
    "tar_type",
    // In older versions of the documentation.
    "device_info",
];
const BILL_REQUIRED: &[&str] = &["appid", "mch_id", "nonce_str", "sign", "bill_date"];

/// A request WeChat could not take: every parameter and signature error (SDKs' error tables and
/// a seen `invalid bill_date` reply).
pub const CODE_PARAM: &str = "20001";
/// No bill for that day, and (as SDKs read it) the bill not made yet.
pub const CODE_NO_BILL: &str = "20002";
/// 下载失败, 系统超时: try again (SDKs' error tables).
pub const CODE_SYSTEM: &str = "20003";

pub const MSG_NO_BILL: &str = "No Bill Exist";
pub const MSG_BILL_CREATING: &str = "Bill Creating";
pub const MSG_SIGN: &str = "sign error";
pub const MSG_BILL_DATE: &str = "invalid bill_date";
pub const MSG_BILL_TYPE: &str = "invalid bill_type";
pub const MSG_TAR_TYPE: &str = "invalid tar_type, Only GZIP supported";
pub const MSG_SYSTEM: &str = "system error";

pub const CONTENT_TYPE_TEXT: &str = "text/plain;charset=utf-8";
pub const CONTENT_TYPE_GZIP: &str = "application/x-gzip";

/// `<xml><return_code>FAIL</return_code><return_msg>…</return_msg><error_code>…</error_code></xml>`,
/// unsigned, as WeChat answers every failed bill download.
fn bill_fail(msg: &str, error_code: &str) -> Reply {
    xml_reply(&[
        ("return_code", "FAIL"),
        ("return_msg", msg),
        ("error_code", error_code),
    ])
}

/// The words of the bill API for what the shared checks refused.
fn refusal(r: Refusal) -> Reply {
    let msg = match r {
        Refusal::NotPost => "require POST method",
        Refusal::Empty => "empty post data",
        Refusal::BadXml => "data format error",
        Refusal::UnknownName(_) | Refusal::NotUtf8 { .. } => "invalid parameter",
        Refusal::Missing(_) => "missing parameter",
        Refusal::BadSignType | Refusal::BadSign => MSG_SIGN,
        Refusal::UnknownMch => "invalid mch_id",
        Refusal::AppidMismatch(_) => "invalid appid",
    };
    bill_fail(msg, CODE_PARAM)
}

/// The answer of a "before" fault on a bill download.
fn before_fault(kind: &FaultKind) -> Reply {
    match kind {
        FaultKind::Http502 => Reply::Html {
            status: StatusCode::BAD_GATEWAY,
            body: BAD_GATEWAY_HTML.into(),
        },
        FaultKind::BillCreating => bill_fail(MSG_BILL_CREATING, CODE_NO_BILL),
        // Any answer a test needs, e.g. 20007 当前商户号账单API权限已经关闭.
        FaultKind::Refuse {
            err_code,
            err_code_des,
        } => bill_fail(
            err_code_des
                .as_deref()
                .unwrap_or_else(|| refusal_text(err_code)),
            err_code,
        ),
        _ => bill_fail(MSG_SYSTEM, CODE_SYSTEM),
    }
}

pub async fn download(app: &Arc<App>, is_post: bool, body: Result<&[u8], TooLarge>) -> Reply {
    let reply = download_inner(app, is_post, body).await;
    // Failing requests share the budget of every endpoint (README "Rate limits").
    if is_failure(&reply) && app.failure_limiter.check().is_err() {
        return bill_fail("请求频率过高，请降低频率后重试", CODE_SYSTEM);
    }
    reply
}

async fn download_inner(app: &Arc<App>, is_post: bool, body: Result<&[u8], TooLarge>) -> Reply {
    let map = match prelude(app, is_post, body, BILL_FIELDS, BILL_REQUIRED) {
        Ok((map, _signed)) => map,
        Err(r) => return refusal(r),
    };
    if map.get("nonce_str").is_some_and(|n| n.len() > 32) {
        return bill_fail("nonce_str too long", CODE_PARAM);
    }
    let Some(date) = map.get("bill_date").and_then(bill::parse_bill_date) else {
        return bill_fail(MSG_BILL_DATE, CODE_PARAM);
    };
    let Some(kind) = BillType::parse(map.get("bill_type")) else {
        return bill_fail(MSG_BILL_TYPE, CODE_PARAM);
    };
    let gzip = match map.non_empty("tar_type") {
        None => false,
        Some("GZIP") => true,
        Some(_) => return bill_fail(MSG_TAR_TYPE, CODE_PARAM),
    };

    // A bill is the merchant's: only global faults apply.
    let (latency, before) = app.books.update(|st| {
        let latency = st.take_latency(None, Endpoint::Bill);
        let before = st.take_fault_if(None, Endpoint::Bill, |k| k.phase() == Phase::Before);
        (latency, before)
    });
    if let Some(ms) = latency {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(kind) = before {
        return before_fault(&kind);
    }

    // Available at once, today's too (WeChat: from about 10:00 the next day); none for the future.
    let today = bill::beijing_date(time::OffsetDateTime::now_utc());
    let text = if date > today {
        None
    } else {
        bill::write(
            &app.books.read(),
            &app.merchant.appid,
            &app.merchant.mch_id,
            date,
            kind,
        )
    };
    let Some(text) = text else {
        return bill_fail(MSG_NO_BILL, CODE_NO_BILL);
    };
    // A bill that was made can still be lost on the way.
    let after = app
        .books
        .update(|st| st.take_fault_if(None, Endpoint::Bill, |k| k.phase() == Phase::After));
    match after {
        Some(FaultKind::DropResponse) => return Reply::Drop,
        Some(FaultKind::Hang) => return Reply::Hang,
        _ => {}
    }
    if !gzip {
        return Reply::Bill {
            body: text.into_bytes(),
            content_type: CONTENT_TYPE_TEXT,
        };
    }
    match bill::gzip(&text) {
        Ok(body) => Reply::Bill {
            body,
            content_type: CONTENT_TYPE_GZIP,
        },
        Err(_) => bill_fail("CompressGZip Error", CODE_SYSTEM),
    }
}
