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
    fn sign_type_wire_strings_and_lengths() {
        // GIVEN each sign type (wire string, hex length) THEN printed, parsed and serialised so
        for (st, wire, len) in [
            (SignType::Md5, "MD5", 32),
            (SignType::HmacSha256, "HMAC-SHA256", 64),
        ] {
            assert_eq!(st.as_str(), wire);
            assert_eq!(st.to_string(), wire);
            assert_eq!(st.hex_len(), len);
            assert_eq!(sign(OFFICIAL, &official_key(), st).len(), len);
            assert_eq!(wire.parse::<SignType>(), Ok(st));
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{wire}\""));
            assert_eq!(
                serde_json::from_str::<SignType>(&format!("\"{wire}\"")).unwrap(),
                st
            );
        }
        assert_eq!(SignType::default(), SignType::Md5);
        // GIVEN the enum-name spellings some SDKs send WHEN parsed THEN refused
        for bad in ["HMAC_SHA256", "md5", "HmacSha256", ""] {
            assert_eq!(
                bad.parse::<SignType>(),
                Err(UnknownSignType(bad.into())),
                "{bad:?}"
            );
        }
        assert!(serde_json::from_str::<SignType>("\"HMAC_SHA256\"").is_err());
        // GIVEN an overlong value THEN the error echoes at most 32 characters
        assert_eq!(
            "X".repeat(40).parse::<SignType>(),
            Err(UnknownSignType("X".repeat(32)))
        );
        assert_eq!(
            UnknownSignType("SHA1".into()).to_string(),
            "unknown sign_type \"SHA1\" (expected MD5 or HMAC-SHA256)"
        );
    }

    #[test]
    fn api_key_is_validated_and_redacted() {
        // GIVEN keys of the wrong length or charset THEN refused with the reason
        for (key, want) in [
            ("short".to_owned(), ApiKeyError::Length(5)),
            ("a".repeat(31), ApiKeyError::Length(31)),
            ("a".repeat(33), ApiKeyError::Length(33)),
            ("!".repeat(32), ApiKeyError::Charset),
            ("é".repeat(32), ApiKeyError::Charset), // 32 characters, 64 bytes
            (format!("{}-", "a".repeat(31)), ApiKeyError::Charset),
        ] {
            assert_eq!(ApiKey::new(key.clone()).unwrap_err(), want, "{key}");
        }
        assert_eq!(
            ApiKeyError::Length(5).to_string(),
            "api_v2_key must be exactly 32 characters, got 5 (is this the APIv3 key?)"
        );
        // GIVEN a valid key THEN it is exposed only on request, never printed
        let key = official_key();
        assert_eq!(key.expose(), "192006250b4c09247ec02edce69f6a2d");
        assert_eq!(format!("{key:?}"), "ApiKey([REDACTED])");
        assert_eq!(format!("{key}"), "[REDACTED]");
    }

    #[test]
    fn signed_fields_drop_sign_and_empty_values_and_sort_by_bytes() {
        // GIVEN fields out of order, with `sign`, an empty value, a zero, upper case and a duplicate
        let fields = signed_fields([
            ("b", "2"),
            ("sign", "X"),
            ("a", "1"),
            ("empty", ""),
            ("Z", "upper sorts first"),
            ("coupon_refund_fee", "0"),
            ("a", "0"),
        ]);
        // THEN byte order of the names (ties by value), without `sign` and the empty value
        assert_eq!(
            fields,
            vec![
                ("Z", "upper sorts first"),
                ("a", "0"),
                ("a", "1"),
                ("b", "2"),
                ("coupon_refund_fee", "0"),
            ]
        );
    }

    #[test]
    fn verify_refuses_a_signature_of_the_wrong_length() {
        // GIVEN the official MD5 signature, cut or padded THEN refused before comparing
        let key = official_key();
        assert!(verify(
            OFFICIAL,
            &key,
            SignType::Md5,
            "9A0A8659F005D6984697E2CA0A9CF3B7"
        ));
        for given in [
            "9A0A8659F005D6984697E2CA0A9CF3B",
            "9A0A8659F005D6984697E2CA0A9CF3B70",
            "",
        ] {
            assert!(!verify(OFFICIAL, &key, SignType::Md5, given), "{given:?}");
        }
        // GIVEN the official HMAC signature in lower case THEN accepted
        assert!(verify(
            OFFICIAL,
            &key,
            SignType::HmacSha256,
            "6a9ae1657590fd6257d693a078e1c3e4bb6ba4dc30b23e0ee2496e54170dacd6"
        ));
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
