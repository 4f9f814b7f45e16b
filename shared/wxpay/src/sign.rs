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

use crate::xml::XmlMap;

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

    /// The digest as upper-case hex: 32 or 64 characters at the front of the array.
    fn finish_upper_hex(self) -> ([u8; 64], usize) {
        let mut out = [0u8; 64];
        let len = match self {
            Hasher::Md5(h) => upper_hex(&h.finalize()[..], &mut out),
            Hasher::Hmac(h) => upper_hex(&h.finalize().into_bytes()[..], &mut out),
        };
        (out, len)
    }
}

fn upper_hex(digest: &[u8], out: &mut [u8; 64]) -> usize {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (pair, b) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    (digest.len() * 2).min(out.len())
}

/// The `k=v&…&key=` string fed to the hash a buffer at a time: a reply has hundreds of short fields,
/// and one hash update per field, not four, is what keeps verifying them cheap.
struct SignString {
    hasher: Hasher,
    buf: [u8; 256],
    len: usize,
}

impl SignString {
    fn new(key: &ApiKey, sign_type: SignType) -> Self {
        SignString {
            hasher: Hasher::new(key, sign_type),
            buf: [0; 256],
            len: 0,
        }
    }

    fn flush(&mut self) {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
    }

    fn push(&mut self, bytes: &[u8]) {
        if bytes.len() > self.buf.len() - self.len {
            self.flush();
            if bytes.len() > self.buf.len() {
                self.hasher.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// `name=value&`.
    fn field(&mut self, name: &[u8], value: &[u8]) {
        let need = name.len() + value.len() + 2;
        if need > self.buf.len() - self.len {
            self.flush();
        }
        if need > self.buf.len() {
            self.push(name);
            self.push(b"=");
            self.push(value);
            self.push(b"&");
            return;
        }
        let at = self.len;
        self.buf[at..at + name.len()].copy_from_slice(name);
        self.buf[at + name.len()] = b'=';
        let v = at + name.len() + 1;
        self.buf[v..v + value.len()].copy_from_slice(value);
        self.buf[v + value.len()] = b'&';
        self.len += need;
    }

    /// Appends `key=<key>` and hashes.
    fn finish(mut self, key: &ApiKey) -> ([u8; 64], usize) {
        self.push(b"key=");
        self.push(key.expose().as_bytes());
        self.flush();
        self.hasher.finish_upper_hex()
    }
}

/// Whether a field takes part in a signature: everything except `sign` and empty values (`"0"` is
/// not empty and is signed).
fn is_signed(name: &str, value: &str) -> bool {
    name != "sign" && !value.is_empty()
}

/// The fields that take part in a signature, sorted by byte order of the name.
fn signed_fields<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(&'a str, &'a str)> {
    let mut fields: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(k, v)| is_signed(k, v))
        .collect();
    fields.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(b.1)));
    fields
}

/// The signature of fields already in signing order (sorted, `sign` and empty values still in).
fn sign_sorted<'a>(
    sorted: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    key: &ApiKey,
    sign_type: SignType,
) -> ([u8; 64], usize) {
    let mut s = SignString::new(key, sign_type);
    for (k, v) in sorted {
        if k != b"sign" && !v.is_empty() {
            s.field(k, v);
        }
    }
    s.finish(key)
}

/// The signature of `params` as upper-case hex.
pub fn sign<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    key: &ApiKey,
    sign_type: SignType,
) -> String {
    let fields = signed_fields(params);
    let (hex, len) = sign_sorted(
        fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        key,
        sign_type,
    );
    hex[..len].iter().map(|&b| char::from(b)).collect()
}

/// Constant-time comparison of a given signature (any hex case) with the expected upper-case hex.
fn matches(expected: &[u8], sign_type: SignType, given: &str) -> bool {
    if given.len() != sign_type.hex_len() || expected.len() != given.len() {
        return false;
    }
    let mut upper = [0u8; 64];
    for (u, g) in upper.iter_mut().zip(given.bytes()) {
        *u = g.to_ascii_uppercase();
    }
    expected.ct_eq(&upper[..given.len()]).into()
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
    let fields = signed_fields(params);
    let (hex, len) = sign_sorted(
        fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        key,
        sign_type,
    );
    matches(&hex[..len], sign_type, given)
}

/// [`verify`] over every field of a decoded message, unknown ones included. The map is already in
/// signing order and has no duplicate names, so this streams over it without collecting or sorting.
pub fn verify_map(map: &XmlMap, key: &ApiKey, sign_type: SignType, given: &str) -> bool {
    if given.len() != sign_type.hex_len() {
        return false;
    }
    let (hex, len) = sign_sorted(map.raw_iter(), key, sign_type);
    matches(&hex[..len], sign_type, given)
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

    #[test]
    fn long_fields_go_through_the_buffer_unchanged() {
        // GIVEN a value around and over the buffer's size THEN the same as hashing the whole string
        let key = official_key();
        for n in [1usize, 120, 250, 253, 254, 255, 256, 257, 600] {
            let long = "v".repeat(n);
            let plain = format!("a=1&b={long}&c=3&key={}", key.expose());
            assert_eq!(
                sign([("c", "3"), ("b", &long), ("a", "1")], &key, SignType::Md5),
                hex::encode_upper(Md5::digest(plain.as_bytes())),
                "{n}"
            );
        }
    }

    proptest! {
        #[test]
        fn verify_map_agrees_with_verify(
            fields in proptest::collection::btree_map("[a-zA-Z_]{1,12}|sign", "[ -~]{0,40}|中文", 0..40),
            tamper in any::<bool>(),
        ) {
            // GIVEN any fields (with `sign`, empty values, upper case) and their signature
            let key = official_key();
            let map: XmlMap = fields.clone().into_iter().collect();
            for st in [SignType::Md5, SignType::HmacSha256] {
                let mut given = sign(map.iter(), &key, st);
                if tamper {
                    given.replace_range(0..1, if given.starts_with('0') { "1" } else { "0" });
                }
                // THEN the streaming check answers as the general one, in either hex case
                prop_assert_eq!(verify_map(&map, &key, st, &given), !tamper);
                prop_assert_eq!(verify(map.iter(), &key, st, &given), !tamper);
                let lower = given.to_ascii_lowercase();
                prop_assert_eq!(verify_map(&map, &key, st, &lower), !tamper);
            }
        }

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
