//! Apply refund (`/secapi/pay/refund`, docs/PROTOCOL.md "Apply refund"): the typed request, validated before it is
//! signed, and the typed acceptance reply.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fields::{FieldError, opt, opt_string, req};
use crate::ids::{NonceStr, OrderRef, OutRefundNo, OutTradeNo, RefundId, TransactionId};
use crate::merchant::MerchantKeys;
use crate::money::Fen;
use crate::xml::{XmlError, XmlMap};

pub const PATH: &str = "/secapi/pay/refund";

/// `refund_account`: which funds pay the refund (old fund-flow merchants only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefundAccount {
    #[serde(rename = "REFUND_SOURCE_UNSETTLED_FUNDS")]
    UnsettledFunds,
    #[serde(rename = "REFUND_SOURCE_RECHARGE_FUNDS")]
    RechargeFunds,
}

impl RefundAccount {
    pub const fn as_str(self) -> &'static str {
        match self {
            RefundAccount::UnsettledFunds => "REFUND_SOURCE_UNSETTLED_FUNDS",
            RefundAccount::RechargeFunds => "REFUND_SOURCE_RECHARGE_FUNDS",
        }
    }
}

impl FromStr for RefundAccount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "REFUND_SOURCE_UNSETTLED_FUNDS" => Ok(RefundAccount::UnsettledFunds),
            "REFUND_SOURCE_RECHARGE_FUNDS" => Ok(RefundAccount::RechargeFunds),
            other => Err(format!(
                "unknown refund_account {:?} (REFUND_SOURCE_UNSETTLED_FUNDS or REFUND_SOURCE_RECHARGE_FUNDS)",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

impl fmt::Display for RefundAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    #[error("refund_fee ({refund_fee}) must not exceed total_fee ({total_fee})")]
    RefundExceedsTotal { refund_fee: Fen, total_fee: Fen },
    #[error("{field} must be greater than zero")]
    ZeroAmount { field: &'static str },
    #[error("refund_desc must be at most 80 characters")]
    DescTooLong,
    #[error(
        "{field} contains a character WeChat does not accept (4-byte UTF-8 such as emoji, or a control character)"
    )]
    Charset { field: &'static str },
    #[error("notify_url {0}")]
    NotifyUrl(&'static str),
    #[error(transparent)]
    Xml(#[from] XmlError),
}

/// A refund application. `out_refund_no` is the idempotency key: every retry sends the same one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    pub order: OrderRef,
    pub out_refund_no: OutRefundNo,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub refund_desc: Option<String>,
    pub refund_account: Option<RefundAccount>,
    pub notify_url: Option<String>,
}

/// WeChat accepts only 1–3-byte UTF-8 characters (docs/PROTOCOL.md, "Identifiers and amounts"); control characters have no business in a
/// refund description either.
fn wechat_text(s: &str) -> bool {
    s.chars().all(|c| c.len_utf8() <= 3 && !c.is_control())
}

/// The notify_url rules (docs/PROTOCOL.md, "Apply refund"): http(s), at most 256 characters, no query string.
pub fn check_notify_url(url: &str) -> Result<(), RequestError> {
    if url.len() > 256 {
        return Err(RequestError::NotifyUrl("must be at most 256 characters"));
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(RequestError::NotifyUrl("must be an http(s) URL"));
    }
    if url.contains('?') || url.contains('#') {
        return Err(RequestError::NotifyUrl(
            "must not carry a query string or fragment",
        ));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(RequestError::NotifyUrl(
            "must be plain ASCII without spaces",
        ));
    }
    Ok(())
}

/// The `refund_desc` rules: at most 80 characters (String(80), docs/PROTOCOL.md "Apply refund"), 1–3-byte UTF-8 without
/// control characters, and nothing the CDATA encoder must refuse (`]]>`).
pub fn check_refund_desc(desc: &str) -> Result<(), RequestError> {
    if desc.chars().count() > 80 {
        return Err(RequestError::DescTooLong);
    }
    if !wechat_text(desc) {
        return Err(RequestError::Charset {
            field: "refund_desc",
        });
    }
    if desc.contains("]]>") {
        return Err(RequestError::Xml(XmlError::CdataTerminator(
            "refund_desc".into(),
        )));
    }
    Ok(())
}

/// A `refund_desc` that passes [`check_refund_desc`]: validated once, where the merchant's request
/// enters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RefundDesc(String);

impl RefundDesc {
    pub fn new(desc: impl Into<String>) -> Result<Self, RequestError> {
        let desc = desc.into();
        check_refund_desc(&desc)?;
        Ok(RefundDesc(desc))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl RefundRequest {
    /// Every rule we can check before signing.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.total_fee == Fen::ZERO {
            return Err(RequestError::ZeroAmount { field: "total_fee" });
        }
        if self.refund_fee == Fen::ZERO {
            return Err(RequestError::ZeroAmount {
                field: "refund_fee",
            });
        }
        if self.refund_fee > self.total_fee {
            return Err(RequestError::RefundExceedsTotal {
                refund_fee: self.refund_fee,
                total_fee: self.total_fee,
            });
        }
        if let Some(desc) = &self.refund_desc {
            check_refund_desc(desc)?;
        }
        if let Some(url) = &self.notify_url {
            check_notify_url(url)?;
        }
        Ok(())
    }

    /// The signed `<xml>` body.
    pub fn to_xml(&self, keys: &MerchantKeys, nonce: &NonceStr) -> Result<String, RequestError> {
        self.validate()?;
        let total = self.total_fee.to_string();
        let refund = self.refund_fee.to_string();
        let (order_field, order_value) = self.order.field();
        let mut fields: Vec<(&str, &str)> = vec![
            (order_field, order_value),
            ("out_refund_no", self.out_refund_no.as_str()),
            ("total_fee", &total),
            ("refund_fee", &refund),
        ];
        if let Some(d) = &self.refund_desc {
            fields.push(("refund_desc", d));
        }
        if let Some(a) = self.refund_account {
            fields.push(("refund_account", a.as_str()));
        }
        if let Some(u) = &self.notify_url {
            fields.push(("notify_url", u));
        }
        Ok(keys.signed_xml(&fields, nonce)?)
    }
}

/// One coupon inside an apply-refund reply (`coupon_*_$n`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundCoupon {
    pub coupon_type: Option<String>,
    pub coupon_refund_id: Option<String>,
    pub coupon_refund_fee: Option<Fen>,
}

/// The acceptance of a refund. Acceptance is not success: the refund is PROCESSING.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundResponse {
    pub transaction_id: TransactionId,
    pub out_trade_no: OutTradeNo,
    pub out_refund_no: OutRefundNo,
    pub refund_id: RefundId,
    pub refund_fee: Fen,
    pub total_fee: Fen,
    pub cash_fee: Option<Fen>,
    pub settlement_refund_fee: Option<Fen>,
    pub settlement_total_fee: Option<Fen>,
    pub cash_refund_fee: Option<Fen>,
    pub coupon_refund_fee: Option<Fen>,
    pub coupons: Vec<RefundCoupon>,
    /// Every field of the reply, unknown ones included.
    pub fields: XmlMap,
}

impl TryFrom<&XmlMap> for RefundResponse {
    type Error = FieldError;

    fn try_from(map: &XmlMap) -> Result<Self, FieldError> {
        let coupon_count: u32 = opt(map, "coupon_refund_count")?.unwrap_or(0);
        if coupon_count > 100 {
            return Err(FieldError::Inconsistent(format!(
                "coupon_refund_count {coupon_count} is implausible"
            )));
        }
        let coupons = (0..coupon_count)
            .map(|n| {
                Ok(RefundCoupon {
                    coupon_type: opt_string(map, &format!("coupon_type_{n}")),
                    coupon_refund_id: opt_string(map, &format!("coupon_refund_id_{n}")),
                    coupon_refund_fee: opt(map, &format!("coupon_refund_fee_{n}"))?,
                })
            })
            .collect::<Result<Vec<_>, FieldError>>()?;
        Ok(RefundResponse {
            transaction_id: req(map, "transaction_id")?,
            out_trade_no: req(map, "out_trade_no")?,
            out_refund_no: req(map, "out_refund_no")?,
            refund_id: req(map, "refund_id")?,
            refund_fee: req(map, "refund_fee")?,
            total_fee: req(map, "total_fee")?,
            cash_fee: opt(map, "cash_fee")?,
            settlement_refund_fee: opt(map, "settlement_refund_fee")?,
            settlement_total_fee: opt(map, "settlement_total_fee")?,
            cash_refund_fee: opt(map, "cash_refund_fee")?,
            coupon_refund_fee: opt(map, "coupon_refund_fee")?,
            coupons,
            fields: map.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{self, SignType};
    use crate::xml;

    fn keys(st: SignType) -> MerchantKeys {
        MerchantKeys {
            appid: "wx2421b1c4370ec43b".parse().unwrap(),
            mch_id: "10000100".parse().unwrap(),
            api_key: crate::ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap(),
            sign_type: st,
        }
    }

    fn request() -> RefundRequest {
        RefundRequest {
            order: OrderRef::OutTradeNo("ORDER-0001".parse().unwrap()),
            out_refund_no: "R-0001".parse().unwrap(),
            total_fee: Fen::new(1000).unwrap(),
            refund_fee: Fen::new(250).unwrap(),
            refund_desc: Some("破损 <退货> & 补偿".into()),
            refund_account: None,
            notify_url: Some("https://example.com/wxpay/refund-notify".into()),
        }
    }

    #[test]
    fn golden_xml_is_signed_with_explicit_sign_type() {
        let nonce = NonceStr::new("5K8264ILTKCH16CQ2502SI8ZNMTM67VS").unwrap();
        for st in [SignType::Md5, SignType::HmacSha256] {
            let body = request().to_xml(&keys(st), &nonce).unwrap();
            let map = xml::decode(body.as_bytes()).unwrap();
            assert_eq!(map.get("sign_type"), Some(st.as_str()));
            assert_eq!(map.get("out_trade_no"), Some("ORDER-0001"));
            assert_eq!(map.get("refund_desc"), Some("破损 <退货> & 补偿"));
            assert!(!map.contains("transaction_id"));
            assert!(sign::verify(
                map.iter(),
                &keys(st).api_key,
                st,
                map.get("sign").unwrap()
            ));
        }
        let md5 = request().to_xml(&keys(SignType::Md5), &nonce).unwrap();
        assert!(md5.starts_with(
            "<xml><appid><![CDATA[wx2421b1c4370ec43b]]></appid><mch_id><![CDATA[10000100]]></mch_id><nonce_str><![CDATA[5K8264ILTKCH16CQ2502SI8ZNMTM67VS]]></nonce_str><sign_type><![CDATA[MD5]]></sign_type><out_trade_no><![CDATA[ORDER-0001]]></out_trade_no><out_refund_no><![CDATA[R-0001]]></out_refund_no><total_fee><![CDATA[1000]]></total_fee><refund_fee><![CDATA[250]]></refund_fee>"
        ), "{md5}");
    }

    #[test]
    fn validation_happens_before_signing() {
        let nonce = NonceStr::random();
        let k = keys(SignType::Md5);
        let mut r = request();
        r.refund_fee = Fen::new(1001).unwrap();
        assert!(matches!(
            r.to_xml(&k, &nonce),
            Err(RequestError::RefundExceedsTotal { .. })
        ));
        let mut r = request();
        r.refund_fee = Fen::ZERO;
        assert!(matches!(
            r.validate(),
            Err(RequestError::ZeroAmount {
                field: "refund_fee"
            })
        ));
        let mut r = request();
        r.refund_desc = Some("x".repeat(81));
        assert_eq!(r.validate(), Err(RequestError::DescTooLong));
        let mut r = request();
        r.refund_desc = Some("退款😀".into());
        assert_eq!(
            r.validate(),
            Err(RequestError::Charset {
                field: "refund_desc"
            })
        );
        let mut r = request();
        r.refund_desc = Some("a]]>b".into());
        assert!(matches!(
            r.to_xml(&k, &nonce),
            Err(RequestError::Xml(XmlError::CdataTerminator(_)))
        ));
        for bad in [
            "ftp://x/y",
            "https://x/y?a=1",
            "https://x/ y",
            &format!("https://{}", "a".repeat(260)),
        ] {
            let mut r = request();
            r.notify_url = Some(bad.to_string());
            assert!(
                matches!(r.validate(), Err(RequestError::NotifyUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_acceptance_with_coupons_and_unknown_fields() {
        let map: XmlMap = [
            ("return_code", "SUCCESS"),
            ("result_code", "SUCCESS"),
            ("transaction_id", "4200000001202611270000000001"),
            ("out_trade_no", "ORDER-0001"),
            ("out_refund_no", "R-0001"),
            ("refund_id", "50000000012026112700000000001"),
            ("refund_fee", "250"),
            ("total_fee", "1000"),
            ("cash_fee", "1000"),
            ("coupon_refund_count", "1"),
            ("coupon_type_0", "CASH"),
            ("coupon_refund_fee_0", "10"),
            ("coupon_refund_id_0", "C1"),
            ("refund_channel", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = RefundResponse::try_from(&map).unwrap();
        assert_eq!(r.refund_fee.get(), 250);
        assert_eq!(r.coupons.len(), 1);
        assert_eq!(r.coupons[0].coupon_refund_fee, Some(Fen::new(10).unwrap()));
        assert_eq!(r.fields.get("refund_channel"), Some(""));
        let mut broken = map.clone();
        broken.insert("refund_fee", "2.5");
        assert!(matches!(
            RefundResponse::try_from(&broken),
            Err(FieldError::Invalid { .. })
        ));
        broken.remove("refund_fee");
        assert_eq!(
            RefundResponse::try_from(&broken),
            Err(FieldError::Missing("refund_fee".into()))
        );
    }
}
