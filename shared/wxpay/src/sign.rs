//! Request and response signatures (protocol doc §6): MD5 or HMAC-SHA256 over the sorted
//! `k=v&…&key=` string, upper-case hex, verified in constant time.

use std::fmt;
use std::str::FromStr;

use hmac::{KeyInit, Mac};
use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// The `sign_type` wire values. Serialised with the exact wire strings (never enum names: one SDK
/// sent `HMAC_SHA256` and got SIGNERROR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignType {
    #[default]
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256,
}

impl SignType {
    pub const fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }

    /// Length of a signature of this type in hex characters.
    pub const fn hex_len(self) -> usize {
        match self {
            SignType::Md5 => 32,
            SignType::HmacSha256 => 64,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown sign_type {0:?} (expected MD5 or HMAC-SHA256)")]
pub struct UnknownSignType(pub String);

impl FromStr for SignType {
    type Err = UnknownSignType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "MD5" => Ok(SignType::Md5),
            "HMAC-SHA256" => Ok(SignType::HmacSha256),
            other => Err(UnknownSignType(other.chars().take(32).collect())),
        }
    }
}

impl fmt::Display for SignType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The merchant's APIv2 key (32 characters). Never printed: Debug and Display are redacted.
#[derive(Clone)]
pub struct ApiKey(SecretString);

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApiKeyError {
    #[error("api_v2_key must be exactly 32 characters, got {0} (is this the APIv3 key?)")]
    Length(usize),
    #[error("api_v2_key may only contain ASCII letters and digits")]
    Charset,
}

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Result<Self, ApiKeyError> {
        let key: String = key.into();
        if key.chars().count() != 32 {
            return Err(ApiKeyError::Length(key.chars().count()));
        }
        if !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiKeyError::Charset);
        }
        Ok(ApiKey(SecretString::from(key)))
    }

    /// The raw key, for the few places that need it (signing, notification key derivation).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Accumulates the string to sign without building it: both hashes are streaming.
enum Hasher {
    Md5(Md5),
    Hmac(Box<hmac::Hmac<Sha256>>),
}

impl Hasher {
    fn new(key: &ApiKey, sign_type: SignType) -> Self {
        match sign_type {
            SignType::Md5 => Hasher::Md5(Md5::new()),
            SignType::HmacSha256 => {
                match hmac::Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) {
                    Ok(mac) => Hasher::Hmac(Box::new(mac)),
                    // HMAC accepts keys of any length; this arm cannot be reached.
                    Err(_) => Hasher::Md5(Md5::new()),
                }
            }
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => Digest::update(h, bytes),
            Hasher::Hmac(h) => h.update(bytes),
        }
    }

    fn finish_upper_hex(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode_upper(&h.finalize()[..]),
            Hasher::Hmac(h) => hex::encode_upper(&h.finalize().into_bytes()[..]),
        }
    }
}

/// The fields that take part in a signature, sorted by byte order of the name: everything except
/// `sign` and empty values (`"0"` is not empty and is signed).
fn signed_fields<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(&'a str, &'a str)> {
    let mut fields: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(k, v)| *k != "sign" && !v.is_empty())
        .collect();
    fields.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(b.1)));
    fields
}

/// The signature of `params` as upper-case hex.
pub fn sign<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    key: &ApiKey,
    sign_type: SignType,
) -> String {
    let mut h = Hasher::new(key, sign_type);
    for (k, v) in signed_fields(params) {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"&");
    }
    h.update(b"key=");
    h.update(key.expose().as_bytes());
    h.finish_upper_hex()
}

/// True when `given` is the signature of `params` (the `sign` entry itself is ignored).
/// Compared in constant time; hex case is not significant.
pub fn verify<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    key: &ApiKey,
    sign_type: SignType,
    given: &str,
) -> bool {
    if given.len() != sign_type.hex_len() {
        return false;
    }
    let expected = sign(params, key, sign_type);
    let given = given.to_ascii_uppercase();
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn official_key() -> ApiKey {
        ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap()
    }

    const OFFICIAL: [(&str, &str); 5] = [
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "10000100"),
        ("device_info", "1000"),
        ("body", "test"),
        ("nonce_str", "ibuaiVcKdpRxkhJA"),
    ];

    #[test]
    fn official_example_md5() {
        assert_eq!(
            sign(OFFICIAL, &official_key(), SignType::Md5),
            "9A0A8659F005D6984697E2CA0A9CF3B7"
        );
    }

    #[test]
    fn official_example_hmac_sha256() {
        assert_eq!(
            sign(OFFICIAL, &official_key(), SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
    }

    #[test]
    fn verify_accepts_own_signature_and_ignores_sign_field() {
        let key = official_key();
        let mut fields: Vec<(&str, &str)> = OFFICIAL.to_vec();
        fields.push(("sign", "WHATEVER"));
        fields.push(("empty", ""));
        assert!(verify(
            fields.iter().copied(),
            &key,
            SignType::Md5,
            "9a0a8659f005d6984697e2ca0a9cf3b7"
        ));
        assert!(!verify(
            fields.iter().copied(),
            &key,
            SignType::Md5,
            "9A0A8659F005D6984697E2CA0A9CF3B8"
        ));
        assert!(!verify(
            fields.iter().copied(),
            &key,
            SignType::HmacSha256,
            "9A0A8659F005D6984697E2CA0A9CF3B7"
        ));
    }

    #[test]
    fn zero_is_signed_but_empty_is_not() {
        let key = official_key();
        let with_zero = sign(
            [("a", "1"), ("coupon_refund_fee", "0")],
            &key,
            SignType::Md5,
        );
        let without = sign([("a", "1")], &key, SignType::Md5);
        let with_empty = sign([("a", "1"), ("coupon_refund_fee", "")], &key, SignType::Md5);
        assert_ne!(with_zero, without);
        assert_eq!(with_empty, without);
    }

    #[test]
    fn sign_type_wire_strings() {
        assert_eq!(SignType::HmacSha256.as_str(), "HMAC-SHA256");
        assert_eq!("HMAC-SHA256".parse::<SignType>(), Ok(SignType::HmacSha256));
        assert!("HMAC_SHA256".parse::<SignType>().is_err());
        assert_eq!(
            serde_json::to_string(&SignType::HmacSha256).unwrap(),
            "\"HMAC-SHA256\""
        );
    }

    #[test]
    fn api_key_is_validated_and_redacted() {
        assert_eq!(ApiKey::new("short").unwrap_err(), ApiKeyError::Length(5));
        assert_eq!(
            ApiKey::new("!".repeat(32)).unwrap_err(),
            ApiKeyError::Charset
        );
        let key = official_key();
        assert!(!format!("{key:?}").contains("192006"));
        assert!(!format!("{key}").contains("192006"));
    }

    proptest! {
        #[test]
        fn order_does_not_matter(mut fields in proptest::collection::btree_map("[a-z_]{1,12}", "[ -~]{1,20}", 1..12)
            .prop_map(|m| m.into_iter().collect::<Vec<_>>()), seed in any::<u64>()) {
            let key = official_key();
            let a = sign(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())), &key, SignType::Md5);
            // a deterministic shuffle
            let n = fields.len();
            for i in 0..n { fields.swap(i, (seed as usize).wrapping_mul(i + 7) % n); }
            let b = sign(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())), &key, SignType::Md5);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn any_value_change_changes_sign(fields in proptest::collection::btree_map("[a-z_]{1,12}", "[ -~]{1,20}", 1..12),
            which in any::<prop::sample::Index>(), extra in "[ -~]{1,4}") {
            let key = official_key();
            let fields: Vec<(String, String)> = fields.into_iter().filter(|(k, _)| k != "sign").collect();
            prop_assume!(!fields.is_empty());
            for st in [SignType::Md5, SignType::HmacSha256] {
                let a = sign(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())), &key, st);
                let i = which.index(fields.len());
                let mut changed = fields.clone();
                changed[i].1.push_str(&extra);
                let b = sign(changed.iter().map(|(k, v)| (k.as_str(), v.as_str())), &key, st);
                prop_assert_ne!(a, b);
            }
        }
    }
}
