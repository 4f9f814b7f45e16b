//! Refund result notification (docs/PROTOCOL.md, "Refund notification"): decrypt `req_info` (AES-256-ECB, PKCS#7, key = lower-case
//! hex MD5 of the APIv2 key as 32 ASCII bytes), check the merchant, type the fields. The notification
//! is unauthenticated ECB: treat it as a hint and confirm by query.

use aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cipher::block_padding::Pkcs7;
use cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit};
use md5::{Digest, Md5};
use thiserror::Error;

use crate::fields::{FieldError, opt, opt_string, req};
use crate::ids::{AppId, MchId, OutRefundNo, OutTradeNo, RefundId, TransactionId};
use crate::merchant::MerchantKeys;
use crate::money::Fen;
use crate::query::WxRefundStatus;
use crate::sign::ApiKey;
use crate::xml::{self, XmlError, XmlMap};

/// The reply WeChat expects when a notification was handled.
pub const SUCCESS_REPLY: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// A refusal reply: WeChat will deliver the notification again later.
pub fn fail_reply(message: &str) -> String {
    let msg: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect::<String>()
        .replace("]]>", "");
    format!(
        "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[{msg}]]></return_msg></xml>"
    )
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NotifyError {
    #[error("notification body: {0}")]
    Xml(XmlError),
    #[error("notification says return_code={0}")]
    ReturnFail(String),
    #[error("notification has no req_info (a payment notification sent to the refund URL?)")]
    MissingReqInfo,
    #[error("req_info is not valid base64")]
    BadBase64,
    #[error("req_info is not a whole number of AES blocks")]
    BadLength,
    #[error("req_info does not decrypt with our key (bad padding: wrong API key or not ours)")]
    BadPadding,
    #[error("decrypted req_info: {0}")]
    InnerXml(XmlError),
    #[error("notification is for another merchant ({field} does not match)")]
    MerchantMismatch { field: &'static str },
    #[error("decrypted req_info: {0}")]
    Field(FieldError),
}

/// The 32 ASCII bytes of the lower-case, zero-padded hex MD5 of the key.
fn aes_key(key: &ApiKey) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest: [u8; 16] = Md5::digest(key.expose().as_bytes()).into();
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    out
}

/// Encrypts a `<root>` document into `req_info` (used by the sandbox and tests).
pub fn encrypt_req_info(plain: &[u8], key: &ApiKey) -> String {
    let k = aes_key(key);
    let enc = ecb::Encryptor::<Aes256>::new(&k.into());
    STANDARD.encode(enc.encrypt_padded_vec::<Pkcs7>(plain))
}

/// Decrypts `req_info` into the `<root>` document bytes.
pub fn decrypt_req_info(req_info: &str, key: &ApiKey) -> Result<Vec<u8>, NotifyError> {
    let cipher_text = STANDARD
        .decode(req_info.trim())
        .map_err(|_| NotifyError::BadBase64)?;
    if cipher_text.is_empty() || cipher_text.len() % 16 != 0 {
        return Err(NotifyError::BadLength);
    }
    if cipher_text.len() > xml::MAX_BODY {
        return Err(NotifyError::Xml(XmlError::TooLarge(cipher_text.len())));
    }
    let k = aes_key(key);
    ecb::Decryptor::<Aes256>::new(&k.into())
        .decrypt_padded_vec::<Pkcs7>(&cipher_text)
        .map_err(|_| NotifyError::BadPadding)
}

/// The decrypted notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundNotification {
    pub appid: AppId,
    pub mch_id: MchId,
    pub transaction_id: TransactionId,
    pub out_trade_no: OutTradeNo,
    pub refund_id: RefundId,
    pub out_refund_no: OutRefundNo,
    pub total_fee: Fen,
    pub settlement_total_fee: Option<Fen>,
    pub refund_fee: Fen,
    pub settlement_refund_fee: Option<Fen>,
    pub refund_status: WxRefundStatus,
    pub success_time: Option<String>,
    /// `refund_recv_accout` [sic].
    pub refund_recv_account: Option<String>,
    pub refund_account: Option<String>,
    /// `API` or `VENDOR_PLATFORM` (made in the merchant platform, unknown to our ledger).
    pub refund_request_source: Option<String>,
    pub cash_refund_fee: Option<Fen>,
    /// Every decrypted field.
    pub fields: XmlMap,
}

/// Decrypts and checks a notification body addressed to `keys`' merchant.
pub fn decrypt(body: &[u8], keys: &MerchantKeys) -> Result<RefundNotification, NotifyError> {
    let outer = xml::decode(body).map_err(NotifyError::Xml)?;
    match outer.get("return_code") {
        Some("SUCCESS") => {}
        other => {
            return Err(NotifyError::ReturnFail(
                other.unwrap_or("(missing)").chars().take(32).collect(),
            ));
        }
    }
    let req_info = outer
        .non_empty("req_info")
        .ok_or(NotifyError::MissingReqInfo)?;
    let plain = decrypt_req_info(req_info, &keys.api_key)?;
    let inner = xml::decode_root(&plain, "root").map_err(NotifyError::InnerXml)?;
    // The outer envelope names the merchant; WeChat's decrypted document does not always repeat it.
    for (field, ours) in [
        ("appid", keys.appid.as_str()),
        ("mch_id", keys.mch_id.as_str()),
    ] {
        let theirs = inner.non_empty(field).or_else(|| outer.non_empty(field));
        if theirs != Some(ours) {
            return Err(NotifyError::MerchantMismatch { field });
        }
    }
    let f = |e| NotifyError::Field(e);
    Ok(RefundNotification {
        appid: keys.appid.clone(),
        mch_id: keys.mch_id.clone(),
        transaction_id: req(&inner, "transaction_id").map_err(f)?,
        out_trade_no: req(&inner, "out_trade_no").map_err(f)?,
        refund_id: req(&inner, "refund_id").map_err(f)?,
        out_refund_no: req(&inner, "out_refund_no").map_err(f)?,
        total_fee: req(&inner, "total_fee").map_err(f)?,
        settlement_total_fee: opt(&inner, "settlement_total_fee").map_err(f)?,
        refund_fee: req(&inner, "refund_fee").map_err(f)?,
        settlement_refund_fee: opt(&inner, "settlement_refund_fee").map_err(f)?,
        refund_status: req(&inner, "refund_status").map_err(f)?,
        success_time: opt_string(&inner, "success_time"),
        refund_recv_account: opt_string(&inner, "refund_recv_accout"),
        refund_account: opt_string(&inner, "refund_account"),
        refund_request_source: opt_string(&inner, "refund_request_source"),
        cash_refund_fee: opt(&inner, "cash_refund_fee").map_err(f)?,
        fields: inner,
    })
}

/// Builds a whole notification body (outer envelope + encrypted `<root>`), as WeChat sends it.
pub fn build(
    inner_fields: &[(&str, &str)],
    keys: &MerchantKeys,
    nonce: &crate::ids::NonceStr,
) -> Result<String, XmlError> {
    let root = xml::encode_root("root", inner_fields.iter().copied())?;
    let req_info = encrypt_req_info(root.as_bytes(), &keys.api_key);
    xml::encode([
        ("return_code", "SUCCESS"),
        ("appid", keys.appid.as_str()),
        ("mch_id", keys.mch_id.as_str()),
        ("nonce_str", nonce.as_str()),
        ("req_info", &req_info),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NonceStr;
    use crate::sign::SignType;

    fn keys_with(api_key: &str) -> MerchantKeys {
        MerchantKeys {
            appid: "wx2421b1c4370ec43b".parse().unwrap(),
            mch_id: "10000100".parse().unwrap(),
            api_key: ApiKey::new(api_key).unwrap(),
            sign_type: SignType::Md5,
        }
    }

    const INNER: [(&str, &str); 11] = [
        ("out_refund_no", "R-0001"),
        ("out_trade_no", "ORDER-0001"),
        ("refund_account", "REFUND_SOURCE_UNSETTLED_FUNDS"),
        ("refund_fee", "250"),
        ("refund_id", "50000000012026112700000000001"),
        ("refund_recv_accout", "支付用户零钱"),
        ("refund_request_source", "API"),
        ("refund_status", "SUCCESS"),
        ("settlement_refund_fee", "250"),
        ("success_time", "2026-11-27 10:00:00"),
        ("transaction_id", "4200000001202611270000000001"),
    ];

    fn inner() -> Vec<(&'static str, &'static str)> {
        let mut v = INNER.to_vec();
        v.push(("total_fee", "1000"));
        v
    }

    /// A key whose MD5 hex starts with "0": catches implementations that drop leading zeros.
    fn zero_led_key() -> String {
        (0u64..)
            .map(|i| format!("{i:032}"))
            .find(|k| hex::encode(Md5::digest(k.as_bytes())).starts_with('0'))
            .unwrap()
    }

    #[test]
    fn round_trip_including_a_zero_led_key() {
        for api_key in [
            "192006250b4c09247ec02edce69f6a2d".to_string(),
            zero_led_key(),
        ] {
            let keys = keys_with(&api_key);
            assert_eq!(aes_key(&keys.api_key).len(), 32);
            let body = build(&inner(), &keys, &NonceStr::random()).unwrap();
            let n = decrypt(body.as_bytes(), &keys).unwrap();
            assert_eq!(n.out_refund_no.as_str(), "R-0001");
            assert_eq!(n.refund_status, WxRefundStatus::Success);
            assert_eq!(n.refund_fee.get(), 250);
            assert_eq!(n.refund_recv_account.as_deref(), Some("支付用户零钱"));
            assert_eq!(n.refund_request_source.as_deref(), Some("API"));
        }
        assert!(hex::encode(Md5::digest(zero_led_key().as_bytes())).starts_with('0'));
    }

    #[test]
    fn the_key_is_the_hex_string_not_the_raw_digest() {
        let keys = keys_with("192006250b4c09247ec02edce69f6a2d");
        let hex_key = hex::encode(Md5::digest(b"192006250b4c09247ec02edce69f6a2d"));
        let k: [u8; 32] = hex_key.as_bytes().try_into().unwrap();
        let manual = STANDARD.encode(
            ecb::Encryptor::<Aes256>::new(&k.into()).encrypt_padded_vec::<Pkcs7>(b"<root></root>"),
        );
        assert_eq!(manual, encrypt_req_info(b"<root></root>", &keys.api_key));
    }

    #[test]
    fn distinct_errors() {
        let keys = keys_with("192006250b4c09247ec02edce69f6a2d");
        let other = keys_with("00000000000000000000000000000000");
        let body = build(&inner(), &keys, &NonceStr::random()).unwrap();
        assert_eq!(
            decrypt(body.as_bytes(), &other).unwrap_err(),
            NotifyError::BadPadding
        );

        let no_req_info =
            xml::encode([("return_code", "SUCCESS"), ("appid", "wx2421b1c4370ec43b")]).unwrap();
        assert_eq!(
            decrypt(no_req_info.as_bytes(), &keys).unwrap_err(),
            NotifyError::MissingReqInfo
        );

        let bad_b64 =
            xml::encode([("return_code", "SUCCESS"), ("req_info", "!!!not base64!!!")]).unwrap();
        assert_eq!(
            decrypt(bad_b64.as_bytes(), &keys).unwrap_err(),
            NotifyError::BadBase64
        );

        let short = xml::encode([("return_code", "SUCCESS"), ("req_info", "AAAA")]).unwrap();
        assert_eq!(
            decrypt(short.as_bytes(), &keys).unwrap_err(),
            NotifyError::BadLength
        );

        let mut foreign = keys.clone();
        foreign.mch_id = "99999999".parse().unwrap();
        let body = build(&inner(), &foreign, &NonceStr::random()).unwrap();
        // same key, other merchant in the envelope
        assert_eq!(
            decrypt(body.as_bytes(), &keys).unwrap_err(),
            NotifyError::MerchantMismatch { field: "mch_id" }
        );

        let xxe = "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><req_info>&e;</req_info></xml>";
        assert_eq!(
            decrypt(xxe.as_bytes(), &keys).unwrap_err(),
            NotifyError::Xml(XmlError::Doctype)
        );

        let missing_field: Vec<_> = inner()
            .into_iter()
            .filter(|(k, _)| *k != "refund_fee")
            .collect();
        let body = build(&missing_field, &keys, &NonceStr::random()).unwrap();
        assert_eq!(
            decrypt(body.as_bytes(), &keys).unwrap_err(),
            NotifyError::Field(FieldError::Missing("refund_fee".into()))
        );
    }

    #[test]
    fn replies() {
        assert!(SUCCESS_REPLY.contains("SUCCESS"));
        let f = fail_reply("bad]]>\nthing");
        assert!(xml::decode(f.as_bytes()).is_ok());
        assert!(f.contains("FAIL"));
    }
}
