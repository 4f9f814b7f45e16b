//! One outcome type for every WeChat call, and the mapping from an HTTP reply to it. A refund call
//! either was accepted, was cleanly refused, was never sent, or has an unknown outcome (it may have
//! been taken: resolve by querying the same out_refund_no).

use std::fmt;

use crate::errors::WxError;
use crate::fields::FieldError;
use crate::merchant::MerchantKeys;
use crate::reply::{self, ReplyError};
use crate::sign::SignType;
use crate::xml::XmlMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome<T> {
    /// Both codes SUCCESS, signature valid, typed reply (for a refund: accepted, not yet refunded).
    Ok(T),
    /// WeChat refused; `WxError::class()` says what may be done.
    Rejected(WxError),
    /// The request never left (connect/DNS failure on every domain, or the pacing budget said no):
    /// nothing happened at WeChat, retrying the same request is safe.
    NotSent(String),
    /// The request may have been processed: read timeout, reset, 5xx, HTML, bad or missing
    /// signature, an unparseable success reply.
    Unknown(UnknownReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnknownReason {
    Transport(String),
    HttpStatus(u16),
    NotWeChatXml(String),
    BadSignature,
    MissingSignature,
    Malformed(String),
}

impl UnknownReason {
    /// A short machine code for records and logs.
    pub fn code(&self) -> &'static str {
        match self {
            UnknownReason::Transport(_) => "TRANSPORT",
            UnknownReason::HttpStatus(_) => "HTTP_STATUS",
            UnknownReason::NotWeChatXml(_) => "NOT_XML",
            UnknownReason::BadSignature => "BAD_SIGNATURE",
            UnknownReason::MissingSignature => "MISSING_SIGNATURE",
            UnknownReason::Malformed(_) => "MALFORMED_REPLY",
        }
    }
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownReason::Transport(e) => write!(f, "connection failed after sending: {e}"),
            UnknownReason::HttpStatus(s) => write!(f, "WeChat answered HTTP {s}"),
            UnknownReason::NotWeChatXml(e) => write!(f, "reply is not WeChat XML: {e}"),
            UnknownReason::BadSignature => f.write_str("reply signature does not verify"),
            UnknownReason::MissingSignature => f.write_str("success reply without a signature"),
            UnknownReason::Malformed(e) => write!(f, "malformed reply: {e}"),
        }
    }
}

impl<T> CallOutcome<T> {
    /// Whether WeChat's error budget (6 qps of failing requests) was spent by this call.
    pub fn is_failure(&self) -> bool {
        !matches!(self, CallOutcome::Ok(_) | CallOutcome::NotSent(_))
    }
}

/// Maps an HTTP reply (status + body) to an outcome, checking the reply rules and typing the
/// fields with `parse`.
pub fn from_http<T>(
    status: u16,
    body: &[u8],
    keys: &MerchantKeys,
    sign_type: SignType,
    parse: impl FnOnce(&XmlMap) -> Result<T, FieldError>,
) -> CallOutcome<T> {
    if !(200..300).contains(&status) {
        return CallOutcome::Unknown(UnknownReason::HttpStatus(status));
    }
    match reply::check(body, keys, sign_type) {
        Ok(map) => match parse(&map) {
            Ok(t) => CallOutcome::Ok(t),
            Err(e) => CallOutcome::Unknown(UnknownReason::Malformed(e.to_string())),
        },
        Err(ReplyError::Rejected(e)) => CallOutcome::Rejected(e),
        Err(ReplyError::Xml(e)) => CallOutcome::Unknown(UnknownReason::NotWeChatXml(e.to_string())),
        Err(ReplyError::BadSignature { .. }) => CallOutcome::Unknown(UnknownReason::BadSignature),
        Err(ReplyError::MissingSignature { .. }) => {
            CallOutcome::Unknown(UnknownReason::MissingSignature)
        }
        Err(ReplyError::Malformed { problem, .. }) => {
            CallOutcome::Unknown(UnknownReason::Malformed(problem))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refund::RefundResponse;
    use crate::{ApiKey, ErrCode, xml};

    fn keys() -> MerchantKeys {
        MerchantKeys {
            appid: "wx2421b1c4370ec43b".parse().unwrap(),
            mch_id: "10000100".parse().unwrap(),
            api_key: ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap(),
            sign_type: SignType::Md5,
        }
    }

    fn parse(m: &XmlMap) -> Result<RefundResponse, FieldError> {
        RefundResponse::try_from(m)
    }

    #[test]
    fn each_reply_class_maps_to_its_outcome() {
        let k = keys();
        assert_eq!(
            from_http(502, b"<html>bad gateway</html>", &k, SignType::Md5, parse),
            CallOutcome::Unknown(UnknownReason::HttpStatus(502))
        );
        assert!(matches!(
            from_http(200, b"<html>oops</html>", &k, SignType::Md5, parse),
            CallOutcome::Unknown(UnknownReason::NotWeChatXml(_))
        ));
        let refused = xml::encode([
            ("return_code", "SUCCESS"),
            ("result_code", "FAIL"),
            ("err_code", "SYSTEMERROR"),
        ])
        .unwrap();
        match from_http(200, refused.as_bytes(), &k, SignType::Md5, parse) {
            CallOutcome::Rejected(e) => assert_eq!(e.code, ErrCode::SystemError),
            other => panic!("{other:?}"),
        }
        let unsigned_ok =
            xml::encode([("return_code", "SUCCESS"), ("result_code", "SUCCESS")]).unwrap();
        assert_eq!(
            from_http(200, unsigned_ok.as_bytes(), &k, SignType::Md5, parse),
            CallOutcome::Unknown(UnknownReason::MissingSignature)
        );
        // signed, but the typed fields are missing: the refund may exist, so unknown
        let fields = [("return_code", "SUCCESS"), ("result_code", "SUCCESS")];
        let sig = crate::sign::sign(fields, &k.api_key, SignType::Md5);
        let mut all = fields.to_vec();
        all.push(("sign", &sig));
        let body = xml::encode(all).unwrap();
        assert!(matches!(
            from_http(200, body.as_bytes(), &k, SignType::Md5, parse),
            CallOutcome::Unknown(UnknownReason::Malformed(_))
        ));
    }
}
