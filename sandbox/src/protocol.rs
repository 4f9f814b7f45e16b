//! `/secapi/pay/refund` and `/pay/refundquery`: request checks in WeChat's order (XML, parameter
//! names, required parameters, signature, merchant), faults, rate limits, the refund rules, and
//! replies signed with the request's sign type (docs/PROTOCOL.md "Apply refund" to "Business rules and limits").

use std::sync::Arc;

use hyper::StatusCode;
use wxpay::{Fen, SignType, XmlMap};

use crate::app::App;
use crate::beijing::wechat_time;
use crate::body::TooLarge;
use crate::books::{
    ApplyRequest, BizError, BookedStatus, DEFAULT_REFUND_ACCOUNT, Endpoint, FaultKind, OrderKey,
    Phase, Refund, RefundSource, Selector,
};

/// What the HTTP layer should do.
#[derive(Debug)]
pub enum Reply {
    /// HTTP 200 with an XML body.
    Xml(String),
    /// Another status with an HTML body (front-end errors).
    Html { status: StatusCode, body: String },
    /// HTTP 200 with a downloaded bill (plain text or gzip) of this content type.
    Bill {
        body: Vec<u8>,
        content_type: &'static str,
    },
    /// Close the connection without answering.
    Drop,
    /// Never answer.
    Hang,
}

const CERT_MISSING_HTML: &str = "<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>No required SSL certificate was sent</center>\r\n<hr><center>stgw</center>\r\n</body>\r\n</html>\r\n";
pub(crate) const BAD_GATEWAY_HTML: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>stgw</center>\r\n</body>\r\n</html>\r\n";

pub const MSG_BAD_SIGN: &str = "签名错误,请检查后再试";
pub const MSG_POST_ONLY: &str = "请使用post方法";
pub const MSG_EMPTY: &str = "post数据为空";
pub const MSG_XML: &str = "XML格式错误";
pub const MSG_CERT_MISMATCH: &str = "证书与商户号不匹配";

const APPLY_FIELDS: &[&str] = &[
    "appid",
    "mch_id",
    "nonce_str",
    "sign",
    "sign_type",
    "transaction_id",
    "out_trade_no",
    "out_refund_no",
    "total_fee",
    "refund_fee",
    "refund_fee_type",
    "refund_desc",
    "refund_account",
    "notify_url",
    // Legacy fields still sent by WxJava / wechatpy / node-tenpay (docs/PROTOCOL.md "Apply refund").
    "op_user_id",
    "device_info",
];
const QUERY_FIELDS: &[&str] = &[
    "appid",
    "mch_id",
    "nonce_str",
    "sign",
    "sign_type",
    "transaction_id",
    "out_trade_no",
    "out_refund_no",
    "refund_id",
    "offset",
    "device_info",
];

fn return_fail(msg: &str) -> Reply {
    xml_reply(&[("return_code", "FAIL"), ("return_msg", msg)])
}

pub(crate) fn xml_reply(fields: &[(&str, &str)]) -> Reply {
    match wxpay::xml::encode(fields.iter().copied()) {
        Ok(x) => Reply::Xml(x),
        // Only reachable if a value contained "]]>"; never let it become a panic or an empty reply.
        Err(_) => Reply::Xml(
            "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[SYSTEMERROR]]></return_msg></xml>"
                .into(),
        ),
    }
}

/// A verified request: what every signed reply needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Signed {
    sign_type: SignType,
}

/// Why the checks every endpoint shares ([`prelude`]) refused a request; each endpoint words
/// the answer its own way.
#[derive(Debug)]
pub(crate) enum Refusal {
    NotPost,
    Empty,
    /// Bad XML, or a body over the size limit.
    BadXml,
    UnknownName(String),
    Missing(String),
    BadSignType,
    UnknownMch,
    BadSign,
    /// From here on the signature was good, so a refund reply is signed.
    AppidMismatch(Signed),
    /// A value with a 4-byte UTF-8 character.
    NotUtf8 {
        name: String,
        signed: Signed,
    },
}

/// The refund endpoints' answer to a refused request (README checks 2–8).
fn refund_refusal(app: &App, r: Refusal) -> Reply {
    match r {
        Refusal::NotPost => return_fail(MSG_POST_ONLY),
        Refusal::Empty => return_fail(MSG_EMPTY),
        Refusal::BadXml => return_fail(MSG_XML),
        Refusal::UnknownName(n) => return_fail(&format!("不识别的参数{n}")),
        Refusal::Missing(n) => return_fail(&format!("缺少参数{n}")),
        Refusal::BadSignType => return_fail("sign_type参数错误"),
        Refusal::UnknownMch => {
            unsigned_biz_fail(&BizError::new("MCHID_NOT_EXIST", "mch_id参数错误"))
        }
        Refusal::BadSign => return_fail(MSG_BAD_SIGN),
        Refusal::AppidMismatch(s) => biz_fail(
            app,
            &s,
            &BizError::new("APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配"),
        ),
        Refusal::NotUtf8 { name, signed } => biz_fail(
            app,
            &signed,
            &BizError::new(
                "NOT_UTF8",
                format!("参数{name}包含4字节UTF-8字符，仅支持1-3字节的UTF-8字符"),
            ),
        ),
    }
}

/// The envelope of a signed reply followed by `fields`; `bad_sign` corrupts the signature.
fn signed_reply(app: &App, s: &Signed, fields: Vec<(String, String)>, bad_sign: bool) -> Reply {
    let nonce = wxpay::NonceStr::random();
    let mut all: Vec<(String, String)> = vec![
        ("return_code".into(), "SUCCESS".into()),
        ("return_msg".into(), "OK".into()),
        ("appid".into(), app.merchant.appid.clone()),
        ("mch_id".into(), app.merchant.mch_id.clone()),
        ("nonce_str".into(), nonce.as_str().to_string()),
    ];
    all.extend(fields);
    let mut sign = wxpay::sign::sign(
        all.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &app.key,
        s.sign_type,
    );
    if bad_sign {
        // Same length and charset, different value: only a real check notices.
        sign = sign
            .chars()
            .map(|c| if c == '0' { '1' } else { '0' })
            .collect();
    }
    all.push(("sign".into(), sign));
    let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    xml_reply(&refs)
}

fn biz_fail(app: &App, s: &Signed, e: &BizError) -> Reply {
    signed_reply(
        app,
        s,
        vec![
            ("result_code".into(), "FAIL".into()),
            ("err_code".into(), e.code.to_string()),
            ("err_code_des".into(), e.des.clone()),
        ],
        false,
    )
}

/// Some business failures (ORDERNOTEXIST) come back without appid, mch_id or sign (docs/PROTOCOL.md "Checking a reply").
fn unsigned_biz_fail(e: &BizError) -> Reply {
    xml_reply(&[
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("result_code", "FAIL"),
        ("err_code", &e.code),
        ("err_code_des", &e.des),
    ])
}

/// The prelude shared by every endpoint (README checks 2–8): POST, body, XML, names, required
/// fields, sign type, merchant, signature, appid, UTF-8.
pub(crate) fn prelude(
    app: &App,
    is_post: bool,
    body: Result<&[u8], TooLarge>,
    allowed: &[&str],
    required: &[&str],
) -> Result<(XmlMap, Signed), Refusal> {
    if !is_post {
        return Err(Refusal::NotPost);
    }
    // The decoder's own size check would say the same; it never sees an oversize body.
    let body = body.map_err(|TooLarge| Refusal::BadXml)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal::Empty);
    }
    let map = wxpay::xml::decode(body).map_err(|_| Refusal::BadXml)?;
    // Names are case-sensitive; the first unknown one is reported (docs/PROTOCOL.md "Apply refund").
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(k)) {
        return Err(Refusal::UnknownName(unknown.to_string()));
    }
    if let Some(missing) = required.iter().find(|k| map.non_empty(k).is_none()) {
        return Err(Refusal::Missing(missing.to_string()));
    }
    let sign_type = match map.non_empty("sign_type") {
        None => SignType::Md5,
        Some(s) => s.parse::<SignType>().map_err(|_| Refusal::BadSignType)?,
    };
    let given = map.get("sign").unwrap_or("");
    // Without the merchant's key no signature can be checked (and none can be made).
    if map.get("mch_id") != Some(app.merchant.mch_id.as_str()) {
        return Err(Refusal::UnknownMch);
    }
    if !wxpay::sign::verify_map(&map, &app.key, sign_type, given) {
        return Err(Refusal::BadSign);
    }
    let signed = Signed { sign_type };
    if map.get("appid") != Some(app.merchant.appid.as_str()) {
        return Err(Refusal::AppidMismatch(signed));
    }
    if let Some((name, _)) = map
        .iter()
        .find(|(_, v)| v.chars().any(|c| c.len_utf8() > 3))
    {
        return Err(Refusal::NotUtf8 {
            name: name.to_string(),
            signed,
        });
    }
    Ok((map, signed))
}

fn param_error(des: impl Into<String>) -> BizError {
    BizError::new("PARAM_ERROR", des)
}

fn fen(map: &XmlMap, name: &str) -> Result<u64, BizError> {
    let v = map.get(name).unwrap_or("");
    v.parse::<Fen>()
        .map(Fen::get)
        .map_err(|_| param_error(format!("{name}参数错误")))
}

fn parse_apply(map: &XmlMap) -> Result<ApplyRequest, BizError> {
    let order = if let Some(t) = map.non_empty("transaction_id") {
        wxpay::TransactionId::new(t).map_err(|e| param_error(e.to_string()))?;
        OrderKey::TransactionId(t.to_string())
    } else if let Some(o) = map.non_empty("out_trade_no") {
        wxpay::OutTradeNo::new(o).map_err(|e| param_error(e.to_string()))?;
        OrderKey::OutTradeNo(o.to_string())
    } else {
        return Err(param_error("transaction_id和out_trade_no不能同时为空"));
    };
    let out_refund_no = map.get("out_refund_no").unwrap_or("");
    wxpay::OutRefundNo::new(out_refund_no).map_err(|e| param_error(e.to_string()))?;
    let total_fee = fen(map, "total_fee")?;
    let refund_fee = fen(map, "refund_fee")?;
    if total_fee == 0 || refund_fee == 0 {
        return Err(param_error("total_fee和refund_fee必须大于0"));
    }
    if refund_fee > total_fee {
        return Err(BizError::new(
            "INVALID_REQUEST",
            "申请退款金额超过订单可退金额",
        ));
    }
    if let Some(c) = map.non_empty("refund_fee_type")
        && c != "CNY"
    {
        return Err(param_error("refund_fee_type与支付币种不一致"));
    }
    let refund_account = match map.non_empty("refund_account") {
        None => DEFAULT_REFUND_ACCOUNT,
        Some(a @ ("REFUND_SOURCE_UNSETTLED_FUNDS" | "REFUND_SOURCE_RECHARGE_FUNDS")) => a,
        Some(_) => return Err(param_error("refund_account参数错误")),
    };
    if map.get("nonce_str").is_some_and(|n| n.len() > 32) {
        return Err(param_error("nonce_str参数长度错误"));
    }
    if map
        .get("refund_desc")
        .is_some_and(|d| d.chars().count() > 80)
    {
        return Err(param_error("refund_desc参数长度错误"));
    }
    let notify_url = match map.non_empty("notify_url") {
        None => None,
        Some(u) if u.len() <= 256 && (u.starts_with("http://") || u.starts_with("https://")) => {
            Some(u.to_string())
        }
        Some(_) => return Err(param_error("notify_url参数错误")),
    };
    Ok(ApplyRequest {
        order,
        out_refund_no: out_refund_no.to_string(),
        total_fee,
        refund_fee,
        refund_account: refund_account.to_string(),
        notify_url,
        refund_desc: map.non_empty("refund_desc").map(str::to_string),
        source: RefundSource::Api,
    })
}

/// The answer of a "before" fault: WeChat's reply for it, nothing recorded. On a query the
/// apply-only business errors become the `SYSTEMERROR` a query can get.
fn before_fault(app: &App, s: &Signed, kind: &FaultKind, endpoint: Endpoint) -> Reply {
    let apply = endpoint == Endpoint::Apply;
    let e = match kind {
        FaultKind::Http502 => {
            return Reply::Html {
                status: StatusCode::BAD_GATEWAY,
                body: BAD_GATEWAY_HTML.into(),
            };
        }
        FaultKind::Refuse {
            err_code,
            err_code_des,
        } => {
            let des = err_code_des
                .clone()
                .unwrap_or_else(|| refusal_text(err_code).into());
            let e = BizError::new(err_code.clone(), des);
            // The rules' own ORDERNOTEXIST comes unsigned; an injected one looks the same.
            if apply && e.code == "ORDERNOTEXIST" {
                return unsigned_biz_fail(&e);
            }
            e
        }
        FaultKind::RefundNotExist => BizError::new("REFUNDNOTEXIST", "not exist"),
        FaultKind::BizErrNeedRetry if apply => BizError::new(
            "BIZERR_NEED_RETRY",
            "并发情况下，业务被拒绝，商户重试即可解决",
        ),
        FaultKind::NotEnough if apply => BizError::new("NOTENOUGH", "基本账户余额不足"),
        _ if apply => BizError::new("SYSTEMERROR", "系统超时，请使用相同参数重试"),
        _ => BizError::new("SYSTEMERROR", "系统错误"),
    };
    biz_fail(app, s, &e)
}

/// WeChat's `err_code_des` for a code a `refuse` fault names without one; the code itself for a
/// code whose text is not known here.
pub(crate) fn refusal_text(err_code: &str) -> &str {
    match err_code {
        "SYSTEMERROR" => "系统超时，请使用相同参数重试",
        "BIZERR_NEED_RETRY" => "并发情况下，业务被拒绝，商户重试即可解决",
        "TRADE_OVERDUE" => "订单已经超过退款期限",
        "USER_ACCOUNT_ABNORMAL" => "退款请求失败，用户帐号注销",
        "NOTENOUGH" => "基本账户余额不足",
        "ORDERNOTEXIST" => "订单不存在",
        "REFUND_FEE_MISMATCH" => "订单金额或退款金额与之前请求不一致，请核实后再试",
        "INVALID_REQUEST" => "申请退款金额超过订单可退金额",
        "FREQUENCY_LIMITED" => "请求频率过高，请降低频率后重试",
        "REFUNDNOTEXIST" => "not exist",
        other => other,
    }
}

pub(crate) fn is_failure(reply: &Reply) -> bool {
    match reply {
        Reply::Xml(x) => x.contains("<![CDATA[FAIL]]>"),
        Reply::Html { .. } => true,
        Reply::Bill { .. } | Reply::Drop | Reply::Hang => false,
    }
}

/// Failing requests share a 6 qps budget (docs/PROTOCOL.md "Business rules and limits"): over it, the failure is reported as
/// FREQUENCY_LIMITED instead.
fn limit_failures(app: &App, signed: Option<&Signed>, reply: Reply) -> Reply {
    if !is_failure(&reply) || app.failure_limiter.check().is_ok() {
        return reply;
    }
    let e = BizError::new("FREQUENCY_LIMITED", "请求频率过高，请降低频率后重试");
    match signed {
        Some(s) => biz_fail(app, s, &e),
        None => return_fail("请求频率过高，请降低频率后重试"),
    }
}

pub async fn apply(
    app: &Arc<App>,
    is_post: bool,
    body: Result<&[u8], TooLarge>,
    client_cn: Option<&str>,
) -> Reply {
    let mut signed = None;
    let reply = apply_inner(app, is_post, body, client_cn, &mut signed).await;
    limit_failures(app, signed.as_ref(), reply)
}

async fn apply_inner(
    app: &Arc<App>,
    is_post: bool,
    body: Result<&[u8], TooLarge>,
    client_cn: Option<&str>,
    signed_out: &mut Option<Signed>,
) -> Reply {
    let (map, signed) = match prelude(
        app,
        is_post,
        body,
        APPLY_FIELDS,
        &[
            "appid",
            "mch_id",
            "nonce_str",
            "sign",
            "out_refund_no",
            "total_fee",
            "refund_fee",
        ],
    ) {
        Ok(v) => v,
        Err(r) => return refund_refusal(app, r),
    };
    let s = signed_out.insert(signed);
    // The certificate must belong to the merchant named in the request.
    if let Some(cn) = client_cn
        && cn != app.merchant.mch_id
    {
        return return_fail(MSG_CERT_MISMATCH);
    }
    if map.non_empty("transaction_id").is_none() && map.non_empty("out_trade_no").is_none() {
        return return_fail("缺少参数out_trade_no");
    }
    if let Some(n) = map.non_empty("out_refund_no") {
        app.books.update(|st| st.count_apply_call(n));
    }
    if app.apply_limiter.check().is_err() {
        return biz_fail(
            app,
            s,
            &BizError::new("FREQUENCY_LIMITED", "请求频率过高，请降低频率后重试"),
        );
    }
    let req = match parse_apply(&map) {
        Ok(r) => r,
        Err(e) => return biz_fail(app, s, &e),
    };

    let (order_name, latency, before) = app.books.update(|st| {
        let name = st.find_order(&req.order).map(|o| o.out_trade_no.clone());
        let latency = st.take_latency(name.as_deref(), Endpoint::Apply);
        // An "after" fault first in line stays there until a request is accepted.
        let before = st.take_fault_if(name.as_deref(), Endpoint::Apply, |k| {
            k.phase() == Phase::Before
        });
        (name, latency, before)
    });
    if let Some(ms) = latency {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(kind) = before {
        return before_fault(app, s, &kind, Endpoint::Apply);
    }

    let now = time::OffsetDateTime::now_utc();
    let settle_at = tokio::time::Instant::now() + app.settle_after;
    // `update` returns only once a taken refund is saved: the reply below may not promise more
    // than a restarted sandbox would remember.
    let (result, after) = app.books.update(|st| {
        let result = st.apply(&req, now, settle_at);
        // "After" faults need a taken (or idempotently re-found) refund to be meaningful.
        let after = if result.is_ok() {
            st.take_fault_if(order_name.as_deref(), Endpoint::Apply, |k| {
                k.phase() == Phase::After
            })
        } else {
            None
        };
        (result, after)
    });
    let accepted = match result {
        Ok(a) => a,
        Err(e) if e.code == "ORDERNOTEXIST" => return unsigned_biz_fail(&e),
        Err(e) => return biz_fail(app, s, &e),
    };
    let bad_sign = match after {
        Some(FaultKind::SystemErrorAfter) => {
            return biz_fail(
                app,
                s,
                &BizError::new("SYSTEMERROR", "系统超时，请使用相同参数重试"),
            );
        }
        Some(FaultKind::DropResponse) => return Reply::Drop,
        Some(FaultKind::Hang) => return Reply::Hang,
        Some(FaultKind::BadSign) => true,
        _ => false,
    };
    let o = &accepted.order;
    let r = &accepted.refund;
    // The settlement amounts differ from the plain ones only when NO_CASH coupons paid part of
    // the order, and WeChat sends them only then.
    let settlement_total = o.settlement_total_fee();
    let mut fields: Vec<(String, String)> = vec![
        ("result_code".into(), "SUCCESS".into()),
        ("transaction_id".into(), o.transaction_id.clone()),
        ("out_trade_no".into(), o.out_trade_no.clone()),
        ("out_refund_no".into(), r.out_refund_no.clone()),
        ("refund_id".into(), r.refund_id.clone()),
        // Seen empty in real replies.
        ("refund_channel".into(), String::new()),
        ("refund_fee".into(), r.refund_fee.to_string()),
    ];
    if settlement_total.is_some() {
        fields.push((
            "settlement_refund_fee".into(),
            r.settlement_refund_fee().to_string(),
        ));
    }
    fields.push((
        "coupon_refund_fee".into(),
        r.coupon_refund_fee().to_string(),
    ));
    fields.push(("total_fee".into(), o.total_fee.to_string()));
    if let Some(t) = settlement_total {
        fields.push(("settlement_total_fee".into(), t.to_string()));
    }
    fields.push(("cash_fee".into(), o.cash_fee().to_string()));
    fields.push(("coupon_refund_count".into(), r.coupons.len().to_string()));
    fields.push(("cash_refund_fee".into(), r.cash_refund_fee().to_string()));
    for (n, c) in r.coupons.iter().enumerate() {
        fields.push((format!("coupon_type_{n}"), c.coupon_type.as_str().into()));
        fields.push((
            format!("coupon_refund_fee_{n}"),
            c.coupon_refund_fee.to_string(),
        ));
        fields.push((format!("coupon_refund_id_{n}"), c.coupon_refund_id.clone()));
    }
    signed_reply(app, s, fields, bad_sign)
}

/// At most this many records per query reply.
pub const PAGE: usize = 10;

pub async fn query(app: &Arc<App>, is_post: bool, body: Result<&[u8], TooLarge>) -> Reply {
    let mut signed = None;
    let reply = query_inner(app, is_post, body, &mut signed).await;
    limit_failures(app, signed.as_ref(), reply)
}

async fn query_inner(
    app: &Arc<App>,
    is_post: bool,
    body: Result<&[u8], TooLarge>,
    signed_out: &mut Option<Signed>,
) -> Reply {
    let (map, signed) = match prelude(
        app,
        is_post,
        body,
        QUERY_FIELDS,
        &["appid", "mch_id", "nonce_str", "sign"],
    ) {
        Ok(v) => v,
        Err(r) => return refund_refusal(app, r),
    };
    let s = signed_out.insert(signed);
    // Priority when several are sent: refund_id > out_refund_no > transaction_id > out_trade_no.
    let selector = if let Some(v) = map.non_empty("refund_id") {
        Selector::RefundId(v.into())
    } else if let Some(v) = map.non_empty("out_refund_no") {
        Selector::OutRefundNo(v.into())
    } else if let Some(v) = map.non_empty("transaction_id") {
        Selector::TransactionId(v.into())
    } else if let Some(v) = map.non_empty("out_trade_no") {
        Selector::OutTradeNo(v.into())
    } else {
        return return_fail("缺少参数out_trade_no");
    };
    let by_order = matches!(
        selector,
        Selector::TransactionId(_) | Selector::OutTradeNo(_)
    );
    let offset = match map.non_empty("offset") {
        None => None,
        Some(v) => match v.parse::<Fen>() {
            Ok(n) => Some(usize::try_from(n.get()).unwrap_or(usize::MAX)),
            Err(_) => return biz_fail(app, s, &param_error("offset参数错误")),
        },
    };

    let (latency, before) = app.books.update(|st| {
        let name = match &selector {
            Selector::TransactionId(t) => st
                .find_order(&OrderKey::TransactionId(t.clone()))
                .map(|o| o.out_trade_no.clone()),
            Selector::OutTradeNo(o) => Some(o.clone()),
            Selector::OutRefundNo(n) => st.refunds.get(n).map(|r| r.out_trade_no.clone()),
            Selector::RefundId(id) => st.refund_by_id(id).map(|r| r.out_trade_no.clone()),
        };
        // A lagging "not exist" is only spent on a query that would have found something.
        let holds = st.selects_any(&selector);
        let latency = st.take_latency(name.as_deref(), Endpoint::Query);
        let before = st.take_fault_if(name.as_deref(), Endpoint::Query, |k| {
            k.phase() == Phase::Before && (holds || *k != FaultKind::RefundNotExist)
        });
        (latency, before)
    });
    if let Some(ms) = latency {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(kind) = before {
        return before_fault(app, s, &kind, Endpoint::Query);
    }

    let (order, records) = match app.books.read().query(&selector) {
        Ok(v) => v,
        Err(e) => return biz_fail(app, s, &e),
    };
    let total = records.len();
    // offset=N returns records N..N+9 (0-based). N ≥ total is PARAM_ERROR: the doc only says
    // "greater than", but an empty page helps nobody and a loop `while offset < total` never asks.
    let start = offset.unwrap_or(0);
    if start >= total {
        return biz_fail(app, s, &param_error("offset参数超出范围"));
    }
    let page: Vec<&Refund> = records.iter().skip(start).take(PAGE).collect();
    let page_fee: u64 = page.iter().map(|r| r.refund_fee).sum();

    let mut f: Vec<(String, String)> = vec![
        ("result_code".into(), "SUCCESS".into()),
        ("transaction_id".into(), order.transaction_id.clone()),
        ("out_trade_no".into(), order.out_trade_no.clone()),
        ("total_fee".into(), order.total_fee.to_string()),
    ];
    if let Some(t) = order.settlement_total_fee() {
        f.push(("settlement_total_fee".into(), t.to_string()));
    }
    f.extend([
        ("cash_fee".into(), order.cash_fee().to_string()),
        ("fee_type".into(), "CNY".into()),
        ("refund_count".into(), page.len().to_string()),
        // Reportedly the sum of the records returned, not of the order.
        ("refund_fee".into(), page_fee.to_string()),
    ]);
    // Present when offset was sent, and (docs/PROTOCOL.md "Refund query") when an order-number query was cut at 10 records.
    if offset.is_some() || (by_order && total > PAGE) {
        f.push(("total_refund_count".into(), total.to_string()));
    }
    for (n, r) in page.iter().enumerate() {
        let mut push = |k: &str, v: String| f.push((format!("{k}_{n}"), v));
        push("out_refund_no", r.out_refund_no.clone());
        push("refund_id", r.refund_id.clone());
        push("refund_channel", "ORIGINAL".into());
        push("refund_fee", r.refund_fee.to_string());
        push(
            "settlement_refund_fee",
            r.settlement_refund_fee().to_string(),
        );
        push("refund_status", r.status.as_str().into());
        push("refund_account", r.refund_account.clone());
        push("refund_recv_accout", r.recv_account().into());
        if r.status == BookedStatus::Success
            && let Some(t) = r.success_time
        {
            push("refund_success_time", wechat_time(t));
        }
        push("coupon_refund_fee", r.coupon_refund_fee().to_string());
        push("coupon_refund_count", r.coupons.len().to_string());
        for (m, c) in r.coupons.iter().enumerate() {
            f.push((
                format!("coupon_type_{n}_{m}"),
                c.coupon_type.as_str().into(),
            ));
            f.push((
                format!("coupon_refund_id_{n}_{m}"),
                c.coupon_refund_id.clone(),
            ));
            f.push((
                format!("coupon_refund_fee_{n}_{m}"),
                c.coupon_refund_fee.to_string(),
            ));
        }
    }
    signed_reply(app, s, f, false)
}

/// The endpoint a path names and whether it needs a client certificate: the apply endpoint
/// always does except on the legacy sandbox `/sandboxnew/pay/refund`, which never did; query and
/// bill never do.
pub fn route(path: &str) -> Option<(Endpoint, bool)> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let stripped = path
        .strip_prefix("/sandboxnew")
        .or_else(|| path.strip_prefix("/xdc/apiv2sandbox"))
        .unwrap_or(path);
    match stripped {
        "/secapi/pay/refund" => Some((Endpoint::Apply, true)),
        "/pay/refund" if stripped.len() != path.len() => Some((Endpoint::Apply, false)),
        "/pay/refundquery" => Some((Endpoint::Query, false)),
        "/pay/downloadbill" => Some((Endpoint::Bill, false)),
        _ => None,
    }
}

pub fn cert_missing() -> Reply {
    Reply::Html {
        status: StatusCode::BAD_REQUEST,
        body: CERT_MISSING_HTML.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_prefixes_and_cert_requirement() {
        assert_eq!(route("/secapi/pay/refund"), Some((Endpoint::Apply, true)));
        assert_eq!(
            route("/sandboxnew/secapi/pay/refund"),
            Some((Endpoint::Apply, true))
        );
        assert_eq!(
            route("/xdc/apiv2sandbox/secapi/pay/refund"),
            Some((Endpoint::Apply, true))
        );
        assert_eq!(
            route("/sandboxnew/pay/refund"),
            Some((Endpoint::Apply, false))
        );
        assert_eq!(route("/pay/refund"), None);
        assert_eq!(route("/pay/refundquery"), Some((Endpoint::Query, false)));
        assert_eq!(
            route("/xdc/apiv2sandbox/pay/refundquery"),
            Some((Endpoint::Query, false))
        );
        assert_eq!(route("/secapi/pay/refundx"), None);
        assert_eq!(route("/pay/downloadbill"), Some((Endpoint::Bill, false)));
        assert_eq!(
            route("/sandboxnew/pay/downloadbill/"),
            Some((Endpoint::Bill, false))
        );
        assert_eq!(route("/secapi/pay/downloadbill"), None);
    }
}
