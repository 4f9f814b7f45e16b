//! The download-bill request: `bill_date`, `bill_type` and `tar_type`, signed like every v2 call
//! (appid, mch_id, nonce_str, sign_type, sign: [`MerchantKeys::signed_xml`]). No client
//! certificate is needed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bill::BillDate;
use crate::ids::NonceStr;
use crate::merchant::MerchantKeys;
use crate::xml::XmlError;

/// `bill_type`: "ALL（默认值），返回当日所有订单信息（不含充值退款订单）; SUCCESS，返回当日成功支付的
/// 订单（不含充值退款订单）; REFUND，返回当日退款订单（不含充值退款订单）". The field is optional on
/// the page (older versions gave SUCCESS as the default), but SDKs found it required in practice:
/// we always send it. (`RECHARGE_REFUND`, refunds of recharge orders, is not used.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BillType {
    #[serde(rename = "ALL")]
    All,
    #[serde(rename = "SUCCESS")]
    Success,
    #[serde(rename = "REFUND")]
    Refund,
}

impl BillType {
    pub const fn as_str(self) -> &'static str {
        match self {
            BillType::All => "ALL",
            BillType::Success => "SUCCESS",
            BillType::Refund => "REFUND",
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown bill_type {0:?} (expected ALL, SUCCESS or REFUND)")]
pub struct UnknownBillType(pub String);

impl FromStr for BillType {
    type Err = UnknownBillType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ALL" => Ok(BillType::All),
            "SUCCESS" => Ok(BillType::Success),
            "REFUND" => Ok(BillType::Refund),
            other => Err(UnknownBillType(other.chars().take(32).collect())),
        }
    }
}

impl fmt::Display for BillType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One day's bill. `gzip` asks for `tar_type=GZIP` ("非必传参数，固定值：GZIP，返回格式为.gzip的
/// 压缩包账单。不传则默认为数据流形式"): the reply is then a gzip file instead of plain text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BillRequest {
    pub bill_date: BillDate,
    pub bill_type: BillType,
    pub gzip: bool,
}

impl BillRequest {
    /// The signed `<xml>` body.
    pub fn to_xml(&self, keys: &MerchantKeys, nonce: &NonceStr) -> Result<String, XmlError> {
        let date = self.bill_date.wire();
        let mut fields = vec![
            ("bill_date", date.as_str()),
            ("bill_type", self.bill_type.as_str()),
        ];
        if self.gzip {
            fields.push(("tar_type", "GZIP"));
        }
        keys.signed_xml(&fields, nonce)
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

    #[test]
    fn golden_request_is_signed_with_every_envelope_field() {
        // GIVEN a REFUND bill request for one day, gzip
        let nonce = NonceStr::new("21417eb9b2e5a2b8e3e6a0a4a5e5a0a5").unwrap();
        let request = BillRequest {
            bill_date: "2026-11-26".parse().unwrap(),
            bill_type: BillType::Refund,
            gzip: true,
        };
        for st in [SignType::Md5, SignType::HmacSha256] {
            // WHEN built
            let body = request.to_xml(&keys(st), &nonce).unwrap();
            let map = xml::decode(body.as_bytes()).unwrap();
            // THEN the wire date, the type, GZIP and the envelope, signed with the sign type
            assert_eq!(map.get("bill_date"), Some("20261126"));
            assert_eq!(map.get("bill_type"), Some("REFUND"));
            assert_eq!(map.get("tar_type"), Some("GZIP"));
            assert_eq!(map.get("appid"), Some("wx2421b1c4370ec43b"));
            assert_eq!(map.get("mch_id"), Some("10000100"));
            assert_eq!(map.get("nonce_str"), Some(nonce.as_str()));
            assert_eq!(map.get("sign_type"), Some(st.as_str()));
            assert_eq!(map.len(), 8);
            assert!(sign::verify(
                map.iter(),
                &keys(st).api_key,
                st,
                map.get("sign").unwrap()
            ));
        }
        let md5 = request.to_xml(&keys(SignType::Md5), &nonce).unwrap();
        assert!(
            md5.starts_with(
                "<xml><appid><![CDATA[wx2421b1c4370ec43b]]></appid><mch_id><![CDATA[10000100]]></mch_id><nonce_str><![CDATA[21417eb9b2e5a2b8e3e6a0a4a5e5a0a5]]></nonce_str><sign_type><![CDATA[MD5]]></sign_type><bill_date><![CDATA[20261126]]></bill_date><bill_type><![CDATA[REFUND]]></bill_type><tar_type><![CDATA[GZIP]]></tar_type><sign>"
            ),
            "{md5}"
        );
    }

    #[test]
    fn plain_text_requests_send_no_tar_type() {
        let request = BillRequest {
            bill_date: "20261126".parse().unwrap(),
            bill_type: BillType::All,
            gzip: false,
        };
        let body = request
            .to_xml(&keys(SignType::Md5), &NonceStr::random())
            .unwrap();
        let map = xml::decode(body.as_bytes()).unwrap();
        assert!(!map.contains("tar_type"));
        assert_eq!(map.get("bill_type"), Some("ALL"));
    }

    #[test]
    fn bill_types_use_their_wire_strings() {
        for (t, wire) in [
            (BillType::All, "ALL"),
            (BillType::Success, "SUCCESS"),
            (BillType::Refund, "REFUND"),
        ] {
            assert_eq!(t.as_str(), wire);
            assert_eq!(t.to_string(), wire);
            assert_eq!(wire.parse::<BillType>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{wire}\""));
        }
        for bad in ["refund", "RECHARGE_REFUND", "Refund", ""] {
            assert_eq!(
                bad.parse::<BillType>(),
                Err(UnknownBillType(bad.into())),
                "{bad:?}"
            );
        }
    }
}
