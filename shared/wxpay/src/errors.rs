//! WeChat's error codes (protocol doc §4) as a typed error with a retry class. The error keeps
//! return_msg, err_code, err_code_des and the raw body, because support tickets need all of them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::xml::XmlMap;

/// What the caller may do after an error. "Retry" always means the SAME out_refund_no and the same
/// parameters: a new number for the same intent is how refunds get paid twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryClass {
    /// Transient; resubmit the same request soon (SYSTEMERROR, BIZERR_NEED_RETRY).
    RetrySame,
    /// Not now; resubmit the same request after a wait (rate limits, balance, order not ready).
    RetryLater,
    /// Definitive business refusal; this refund will never happen (TRADE_OVERDUE, fully refunded…).
    Final,
    /// The request itself is wrong (parameters, signature, unknown order); resending it unchanged
    /// cannot succeed.
    FixRequest,
    /// The queried refund does not exist (REFUNDNOTEXIST).
    NotFound,
    /// Our merchant configuration is wrong (key, certificate, appid/mch_id, permissions): no
    /// request of ours can succeed until an operator fixes it. The refund is kept, not failed, so
    /// it never needs a new number.
    Misconfigured,
}

macro_rules! err_codes {
    ($($variant:ident = $wire:literal => $class:ident,)*) => {
        /// Every `err_code` in the doc, and those seen in practice. Unknown codes are kept verbatim.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum ErrCode {
            $($variant,)*
            Other(String),
        }

        impl ErrCode {
            pub fn parse(code: &str) -> ErrCode {
                match code {
                    $($wire => ErrCode::$variant,)*
                    other => ErrCode::Other(other.chars().take(64).collect()),
                }
            }

            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrCode::$variant => $wire,)*
                    ErrCode::Other(s) => s,
                }
            }

            /// The retry class. Unknown codes are treated as "retry later": the refund stays
            /// unfinished and is re-checked, never released on a guess.
            pub fn class(&self) -> RetryClass {
                match self {
                    $(ErrCode::$variant => RetryClass::$class,)*
                    ErrCode::Other(_) => RetryClass::RetryLater,
                }
            }

            pub const ALL: &'static [&'static str] = &[$($wire,)*];
        }
    };
}

err_codes! {
    SystemError = "SYSTEMERROR" => RetrySame,
    BizErrNeedRetry = "BIZERR_NEED_RETRY" => RetrySame,
    TradeOverdue = "TRADE_OVERDUE" => Final,
    Error = "ERROR" => Final,
    UserAccountAbnormal = "USER_ACCOUNT_ABNORMAL" => Final,
    InvalidReqTooMuch = "INVALID_REQ_TOO_MUCH" => RetryLater,
    NotEnough = "NOTENOUGH" => RetryLater,
    FrequencyLimited = "FREQUENCY_LIMITED" => RetryLater,
    OrderNotReady = "ORDER_NOT_READY" => RetryLater,
    InvalidTransactionId = "INVALID_TRANSACTIONID" => FixRequest,
    ParamError = "PARAM_ERROR" => FixRequest,
    AppIdNotExist = "APPID_NOT_EXIST" => Misconfigured,
    MchIdNotExist = "MCHID_NOT_EXIST" => Misconfigured,
    AppIdMchIdNotMatch = "APPID_MCHID_NOT_MATCH" => Misconfigured,
    RequirePostMethod = "REQUIRE_POST_METHOD" => FixRequest,
    SignError = "SIGNERROR" => Misconfigured,
    XmlFormatError = "XML_FORMAT_ERROR" => FixRequest,
    OrderNotExist = "ORDERNOTEXIST" => FixRequest,
    RefundFeeMismatch = "REFUND_FEE_MISMATCH" => FixRequest,
    InvalidRequest = "INVALID_REQUEST" => FixRequest,
    NoAuth = "NOAUTH" => Misconfigured,
    CertError = "CERT_ERROR" => Misconfigured,
    LackParams = "LACK_PARAMS" => FixRequest,
    NotUtf8 = "NOT_UTF8" => FixRequest,
    PostDataEmpty = "POST_DATA_EMPTY" => FixRequest,
    RefundNotExist = "REFUNDNOTEXIST" => NotFound,
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the refusal came from: the envelope (`return_code=FAIL`: the request was not processed at
/// all) or the business layer (`result_code=FAIL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Return,
    Result,
}

/// A refusal from WeChat, with everything it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WxError {
    pub stage: Stage,
    pub code: ErrCode,
    /// `err_code_des` (business) or `return_msg` (envelope).
    pub description: String,
    pub return_msg: String,
    /// The reply body as received (lossy UTF-8), for support tickets.
    pub raw: String,
}

impl WxError {
    /// From a `return_code=FAIL` envelope. The codes are inferred from `return_msg`, the only field
    /// such replies carry (doc §3.1).
    pub fn from_return_fail(map: &XmlMap, raw: &[u8]) -> WxError {
        let msg = map.get("return_msg").unwrap_or_default().to_string();
        let code = if msg.contains("签名错误") || msg.to_ascii_lowercase().contains("sign") {
            ErrCode::SignError
        } else if msg.contains("缺少参数") {
            ErrCode::LackParams
        } else if msg.contains("不识别的参数") || msg.contains("参数") {
            ErrCode::ParamError
        } else if msg.contains("XML") || msg.contains("xml") {
            ErrCode::XmlFormatError
        } else if msg.to_ascii_lowercase().contains("post") {
            ErrCode::RequirePostMethod
        } else if msg.contains("证书") || msg.to_ascii_lowercase().contains("cert") {
            ErrCode::CertError
        } else {
            ErrCode::Other("RETURN_FAIL".into())
        };
        WxError {
            stage: Stage::Return,
            code,
            description: msg.clone(),
            return_msg: msg,
            raw: raw_text(raw),
        }
    }

    /// From a `result_code=FAIL` reply.
    pub fn from_result_fail(map: &XmlMap, raw: &[u8]) -> WxError {
        WxError {
            stage: Stage::Result,
            code: ErrCode::parse(map.get("err_code").unwrap_or_default()),
            description: map.get("err_code_des").unwrap_or_default().to_string(),
            return_msg: map.get("return_msg").unwrap_or_default().to_string(),
            raw: raw_text(raw),
        }
    }

    pub fn class(&self) -> RetryClass {
        self.code.class()
    }
}

impl fmt::Display for WxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WeChat refused ({}): {}", self.code, self.description)
    }
}

impl std::error::Error for WxError {}

pub(crate) fn raw_text(raw: &[u8]) -> String {
    let cap = raw.len().min(crate::xml::MAX_BODY);
    String::from_utf8_lossy(&raw[..cap]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_round_trips_with_its_class() {
        for wire in ErrCode::ALL {
            let code = ErrCode::parse(wire);
            assert!(!matches!(code, ErrCode::Other(_)), "{wire}");
            assert_eq!(code.as_str(), *wire);
        }
        assert_eq!(ErrCode::parse("SYSTEMERROR").class(), RetryClass::RetrySame);
        assert_eq!(
            ErrCode::parse("BIZERR_NEED_RETRY").class(),
            RetryClass::RetrySame
        );
        assert_eq!(
            ErrCode::parse("FREQUENCY_LIMITED").class(),
            RetryClass::RetryLater
        );
        assert_eq!(ErrCode::parse("NOTENOUGH").class(), RetryClass::RetryLater);
        assert_eq!(ErrCode::parse("TRADE_OVERDUE").class(), RetryClass::Final);
        assert_eq!(
            ErrCode::parse("USER_ACCOUNT_ABNORMAL").class(),
            RetryClass::Final
        );
        assert_eq!(
            ErrCode::parse("ORDERNOTEXIST").class(),
            RetryClass::FixRequest
        );
        assert_eq!(
            ErrCode::parse("REFUND_FEE_MISMATCH").class(),
            RetryClass::FixRequest
        );
        assert_eq!(
            ErrCode::parse("REFUNDNOTEXIST").class(),
            RetryClass::NotFound
        );
        let unknown = ErrCode::parse("SOMETHING_NEW");
        assert_eq!(unknown, ErrCode::Other("SOMETHING_NEW".into()));
        assert_eq!(unknown.class(), RetryClass::RetryLater);
    }

    #[test]
    fn keeps_description_and_raw_body() {
        let raw = "<xml><return_code>SUCCESS</return_code><result_code>FAIL</result_code><err_code>ERROR</err_code><err_code_des>订单已全额退款</err_code_des></xml>";
        let map = crate::xml::decode(raw.as_bytes()).unwrap();
        let e = WxError::from_result_fail(&map, raw.as_bytes());
        assert_eq!(e.code, ErrCode::Error);
        assert_eq!(e.description, "订单已全额退款");
        assert_eq!(e.raw, raw);
        assert_eq!(e.class(), RetryClass::Final);
        assert!(e.to_string().contains("订单已全额退款"));
    }

    #[test]
    fn envelope_failures_are_classified_from_return_msg() {
        for (msg, code) in [
            ("签名错误,请检查后再试", ErrCode::SignError),
            ("缺少参数", ErrCode::LackParams),
            ("不识别的参数appId", ErrCode::ParamError),
            ("系统繁忙", ErrCode::Other("RETURN_FAIL".into())),
        ] {
            let mut map = XmlMap::new();
            map.insert("return_code", "FAIL");
            map.insert("return_msg", msg);
            let e = WxError::from_return_fail(&map, b"");
            assert_eq!(e.code, code, "{msg}");
            assert_eq!(e.stage, Stage::Return);
        }
    }
}
