//! The reply rules every call goes through: `return_code` first, then `result_code`; a SUCCESS reply
//! must carry a valid signature of the request's sign type; FAIL replies may carry none.

use thiserror::Error;

use crate::errors::{WxError, raw_text};
use crate::merchant::MerchantKeys;
use crate::sign::{self, SignType};
use crate::xml::{self, XmlError, XmlMap};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Not a WeChat reply at all (HTML error page, truncated body, …).
    #[error("reply is not a valid WeChat XML message: {0}")]
    Xml(#[from] XmlError),
    /// WeChat refused the request (envelope or business failure).
    #[error(transparent)]
    Rejected(WxError),
    /// A success reply without a signature: we cannot trust it, and the refund may have been taken.
    #[error("reply claims success but carries no signature")]
    MissingSignature { raw: String },
    /// A reply whose signature does not verify with our key and the request's sign type.
    #[error("reply signature does not verify")]
    BadSignature { raw: String },
    /// A reply that is signed but not addressed to us, or misses the envelope fields.
    #[error("reply is malformed: {problem}")]
    Malformed { problem: String, raw: String },
}

impl ReplyError {
    /// True when the request may have taken effect although we cannot tell (the caller must resolve
    /// it by querying): anything except a clean refusal.
    pub fn outcome_unknown(&self) -> bool {
        !matches!(self, ReplyError::Rejected(_))
    }
}

/// Checks a reply body and returns its fields when both codes are SUCCESS and the signature is valid.
pub fn check(body: &[u8], keys: &MerchantKeys, sign_type: SignType) -> Result<XmlMap, ReplyError> {
    let map = xml::decode(body)?;
    let malformed = |problem: &str| ReplyError::Malformed {
        problem: problem.to_string(),
        raw: raw_text(body),
    };
    match map.get("return_code") {
        Some("SUCCESS") => {}
        Some("FAIL") => return Err(ReplyError::Rejected(WxError::from_return_fail(&map, body))),
        Some(_) => return Err(malformed("return_code is neither SUCCESS nor FAIL")),
        None => return Err(malformed("return_code is missing")),
    }
    // A FAIL reply may be unsigned (ORDERNOTEXIST often is); a signature that IS present must verify,
    // or a forged refusal could make us give up on a refund.
    let signature = map.non_empty("sign");
    if let Some(given) = signature
        && !sign::verify_map(&map, &keys.api_key, sign_type, given)
    {
        return Err(ReplyError::BadSignature {
            raw: raw_text(body),
        });
    }
    for (field, ours) in [
        ("appid", keys.appid.as_str()),
        ("mch_id", keys.mch_id.as_str()),
    ] {
        if let Some(theirs) = map.non_empty(field)
            && theirs != ours
        {
            return Err(malformed(&format!("{field} in the reply is not ours")));
        }
    }
    match map.get("result_code") {
        Some("SUCCESS") => {
            if signature.is_none() {
                return Err(ReplyError::MissingSignature {
                    raw: raw_text(body),
                });
            }
            Ok(map)
        }
        Some("FAIL") => Err(ReplyError::Rejected(WxError::from_result_fail(&map, body))),
        Some(_) => Err(malformed("result_code is neither SUCCESS nor FAIL")),
        None => Err(malformed("result_code is missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::{ErrCode, RetryClass};
    use crate::ids::{AppId, MchId};
    use crate::sign::ApiKey;

    pub(crate) fn keys(sign_type: SignType) -> MerchantKeys {
        MerchantKeys {
            appid: AppId::new("wx2421b1c4370ec43b").unwrap(),
            mch_id: MchId::new("10000100").unwrap(),
            api_key: ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap(),
            sign_type,
        }
    }

    fn signed(fields: &[(&str, &str)], st: SignType) -> Vec<u8> {
        let k = keys(st);
        let sig = sign::sign(fields.iter().copied(), &k.api_key, st);
        let mut all = fields.to_vec();
        all.push(("sign", &sig));
        xml::encode(all).unwrap().into_bytes()
    }

    const OK: [(&str, &str); 5] = [
        ("return_code", "SUCCESS"),
        ("result_code", "SUCCESS"),
        ("appid", "wx2421b1c4370ec43b"),
        ("mch_id", "10000100"),
        ("brand_new_field", "kept and signed"),
    ];

    #[test]
    fn success_needs_a_valid_signature_of_the_request_sign_type() {
        for st in [SignType::Md5, SignType::HmacSha256] {
            let body = signed(&OK, st);
            let map = check(&body, &keys(st), st).unwrap();
            assert_eq!(map.get("brand_new_field"), Some("kept and signed"));
        }
        // signed with MD5 but the request was HMAC → not trusted
        let body = signed(&OK, SignType::Md5);
        let err = check(&body, &keys(SignType::HmacSha256), SignType::HmacSha256).unwrap_err();
        assert!(matches!(err, ReplyError::BadSignature { .. }));
        assert!(err.outcome_unknown());
    }

    #[test]
    fn tampered_or_unsigned_success_is_not_trusted() {
        let body = String::from_utf8(signed(&OK, SignType::Md5)).unwrap();
        let tampered = body.replace("kept and signed", "kept and changed");
        assert!(matches!(
            check(tampered.as_bytes(), &keys(SignType::Md5), SignType::Md5),
            Err(ReplyError::BadSignature { .. })
        ));
        let unsigned = xml::encode(OK).unwrap();
        assert!(matches!(
            check(unsigned.as_bytes(), &keys(SignType::Md5), SignType::Md5),
            Err(ReplyError::MissingSignature { .. })
        ));
    }

    #[test]
    fn return_fail_without_sign_is_a_clean_refusal() {
        let body = xml::encode([
            ("return_code", "FAIL"),
            ("return_msg", "签名错误,请检查后再试"),
        ])
        .unwrap();
        match check(body.as_bytes(), &keys(SignType::Md5), SignType::Md5) {
            Err(ReplyError::Rejected(e)) => {
                assert_eq!(e.code, ErrCode::SignError);
                assert_eq!(e.class(), RetryClass::Misconfigured);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_sign_counts_as_no_signature() {
        // GIVEN a refusal with an empty <sign/> THEN it is an unsigned refusal, not a bad signature
        let body = xml::encode([
            ("return_code", "SUCCESS"),
            ("result_code", "FAIL"),
            ("err_code", "ORDERNOTEXIST"),
            ("sign", ""),
        ])
        .unwrap();
        assert!(matches!(
            check(body.as_bytes(), &keys(SignType::Md5), SignType::Md5),
            Err(ReplyError::Rejected(_))
        ));
        // GIVEN a success with an empty <sign/> THEN it is missing its signature
        let mut fields = OK.to_vec();
        fields.push(("sign", ""));
        let body = xml::encode(fields).unwrap();
        assert!(matches!(
            check(body.as_bytes(), &keys(SignType::Md5), SignType::Md5),
            Err(ReplyError::MissingSignature { .. })
        ));
    }

    #[test]
    fn result_fail_unsigned_is_accepted_as_refusal_with_details() {
        let body = xml::encode([
            ("return_code", "SUCCESS"),
            ("result_code", "FAIL"),
            ("err_code", "ORDERNOTEXIST"),
            ("err_code_des", "订单不存在"),
        ])
        .unwrap();
        match check(body.as_bytes(), &keys(SignType::Md5), SignType::Md5) {
            Err(ReplyError::Rejected(e)) => {
                assert_eq!(e.code, ErrCode::OrderNotExist);
                assert_eq!(e.description, "订单不存在");
                assert!(e.raw.contains("ORDERNOTEXIST"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn signed_fail_with_wrong_signature_is_not_trusted() {
        let mut body = String::from_utf8(signed(
            &[
                ("return_code", "SUCCESS"),
                ("result_code", "FAIL"),
                ("err_code", "ERROR"),
            ],
            SignType::Md5,
        ))
        .unwrap();
        body = body.replace(
            "<err_code><![CDATA[ERROR]]>",
            "<err_code><![CDATA[TRADE_OVERDUE]]>",
        );
        assert!(matches!(
            check(body.as_bytes(), &keys(SignType::Md5), SignType::Md5),
            Err(ReplyError::BadSignature { .. })
        ));
    }

    #[test]
    fn html_and_foreign_replies_are_unknown_outcomes() {
        let err = check(
            b"<html><body>502 Bad Gateway</body></html>",
            &keys(SignType::Md5),
            SignType::Md5,
        )
        .unwrap_err();
        assert!(matches!(err, ReplyError::Xml(_)));
        assert!(err.outcome_unknown());
        let other_merchant = signed(
            &[
                ("return_code", "SUCCESS"),
                ("result_code", "SUCCESS"),
                ("mch_id", "999"),
            ],
            SignType::Md5,
        );
        assert!(matches!(
            check(&other_merchant, &keys(SignType::Md5), SignType::Md5),
            Err(ReplyError::Malformed { .. })
        ));
    }

    fn malformed_problem(body: &[u8]) -> String {
        match check(body, &keys(SignType::Md5), SignType::Md5) {
            Err(ReplyError::Malformed { problem, raw }) => {
                assert_eq!(raw.as_bytes(), body);
                problem
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn envelope_codes_must_be_success_or_fail() {
        // GIVEN (return_code, result_code, expected problem), signed correctly
        for (ret, res, problem) in [
            (None, Some("SUCCESS"), "return_code is missing"),
            (
                Some("OK"),
                Some("SUCCESS"),
                "return_code is neither SUCCESS nor FAIL",
            ),
            (Some("SUCCESS"), None, "result_code is missing"),
            (
                Some("SUCCESS"),
                Some("OK"),
                "result_code is neither SUCCESS nor FAIL",
            ),
        ] {
            let mut fields = vec![("mch_id", "10000100")];
            fields.extend(ret.map(|v| ("return_code", v)));
            fields.extend(res.map(|v| ("result_code", v)));
            // WHEN checked THEN malformed, with the problem named and the body kept
            let body = signed(&fields, SignType::Md5);
            assert_eq!(malformed_problem(&body), problem, "{ret:?}/{res:?}");
        }
    }

    #[test]
    fn a_reply_for_another_appid_or_mch_id_is_malformed() {
        // GIVEN a correctly signed success naming another appid or mch_id THEN refused by name
        for (field, problem) in [
            ("appid", "appid in the reply is not ours"),
            ("mch_id", "mch_id in the reply is not ours"),
        ] {
            let fields: Vec<(&str, &str)> = OK
                .iter()
                .map(|&(k, v)| if k == field { (k, "wxother") } else { (k, v) })
                .collect();
            assert_eq!(malformed_problem(&signed(&fields, SignType::Md5)), problem);
        }
        // GIVEN the ids absent or empty THEN nothing to compare: accepted
        let bare = signed(
            &[
                ("return_code", "SUCCESS"),
                ("result_code", "SUCCESS"),
                ("appid", ""),
            ],
            SignType::Md5,
        );
        assert!(check(&bare, &keys(SignType::Md5), SignType::Md5).is_ok());
    }

    #[test]
    fn a_signed_refusal_is_verified_and_then_reported() {
        // GIVEN a correctly signed business refusal THEN it is a clean refusal with its code
        let body = signed(
            &[
                ("return_code", "SUCCESS"),
                ("result_code", "FAIL"),
                ("err_code", "SYSTEMERROR"),
                ("mch_id", "10000100"),
            ],
            SignType::HmacSha256,
        );
        match check(&body, &keys(SignType::HmacSha256), SignType::HmacSha256) {
            Err(e @ ReplyError::Rejected(_)) => {
                assert!(!e.outcome_unknown());
                let ReplyError::Rejected(wx) = e else {
                    unreachable!()
                };
                assert_eq!(wx.code, ErrCode::SystemError);
                assert_eq!(wx.class(), RetryClass::RetrySame);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_clean_refusal_has_a_known_outcome() {
        // GIVEN one error of each kind THEN only Rejected says the request did not take effect
        let wx = WxError::from_result_fail(&XmlMap::new(), b"");
        for (err, unknown) in [
            (ReplyError::Rejected(wx), false),
            (ReplyError::Xml(XmlError::TooLarge(1)), true),
            (ReplyError::MissingSignature { raw: String::new() }, true),
            (ReplyError::BadSignature { raw: String::new() }, true),
            (
                ReplyError::Malformed {
                    problem: "p".into(),
                    raw: String::new(),
                },
                true,
            ),
        ] {
            assert_eq!(err.outcome_unknown(), unknown, "{err:?}");
        }
    }
}
