//! Validated identifiers of the refund protocol (lengths and charsets: docs/PROTOCOL.md, "Identifiers and amounts").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{field} {problem}")]
pub struct IdError {
    pub field: &'static str,
    pub problem: String,
}

/// `[0-9A-Za-z_-|*]`, the charset of `out_trade_no`.
const fn trade_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*')
}

/// `[0-9A-Za-z_-|*@]`, the charset of `out_refund_no`.
const fn refund_char(b: u8) -> bool {
    trade_char(b) || b == b'@'
}

const fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// A charset as a table of the 256 byte values: one load per byte where the tests above take up
/// to seven comparisons (a 50-record query reply checks a hundred ids).
type Charset = [bool; 256];

macro_rules! charset {
    ($test:ident) => {{
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            t[c] = $test(c as u8);
            c += 1;
        }
        t
    }};
}

const TRADE_CHARS: Charset = charset!(trade_char);
const REFUND_CHARS: Charset = charset!(refund_char);
const ALNUM: Charset = charset!(alnum);

fn check(
    field: &'static str,
    s: &str,
    min: usize,
    max: usize,
    ok: &Charset,
    charset: &str,
) -> Result<(), IdError> {
    let err = |problem: String| Err(IdError { field, problem });
    if s.len() < min || s.len() > max {
        return err(format!(
            "must be {min} to {max} characters long, got {}",
            s.len()
        ));
    }
    if let Some(bad) = s.bytes().find(|&b| !ok[usize::from(b)]) {
        return err(if bad.is_ascii_graphic() || bad == b' ' {
            format!("may only contain {charset}, found {:?}", bad as char)
        } else {
            format!("may only contain {charset}, found a non-printable or non-ASCII character")
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:expr, $max:expr, $ok:expr, $charset:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const FIELD: &'static str = $field;
            pub const MAX_LEN: usize = $max;

            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($field, &s, $min, $max, &$ok, $charset)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The merchant's refund number: the idempotency key of a refund, 1–64 of `[0-9A-Za-z_-|*@]`.
    OutRefundNo, "out_refund_no", 1, 64, REFUND_CHARS, "0-9 A-Z a-z _ - | * @"
);
id_type!(
    /// The merchant's order number, 6–32 of `[0-9A-Za-z_-|*]`.
    OutTradeNo, "out_trade_no", 6, 32, TRADE_CHARS, "0-9 A-Z a-z _ - | *"
);
id_type!(
    /// WeChat's payment number (28 digits in practice; String(32) in the doc).
    TransactionId, "transaction_id", 1, 32, ALNUM, "letters and digits"
);
id_type!(
    /// WeChat's refund number, String(32).
    RefundId, "refund_id", 1, 32, ALNUM, "letters and digits"
);
id_type!(
    /// The merchant's (or sub-merchant's) app id, String(32).
    AppId, "appid", 1, 32, REFUND_CHARS, "0-9 A-Z a-z _ - | * @"
);
id_type!(
    /// The merchant number, String(32).
    MchId, "mch_id", 1, 32, ALNUM, "letters and digits"
);
id_type!(
    /// A request nonce, at most 32 characters.
    NonceStr, "nonce_str", 1, 32, ALNUM, "letters and digits"
);

impl NonceStr {
    /// 32 random alphanumeric characters from the OS-seeded thread RNG.
    pub fn random() -> Self {
        use rand::Rng;
        use rand::distr::Alphanumeric;
        let s: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        NonceStr(s)
    }
}

/// Which order a refund is for: WeChat accepts either number (`transaction_id` wins if both are sent,
/// so we only ever send one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderRef {
    OutTradeNo(OutTradeNo),
    TransactionId(TransactionId),
}

impl OrderRef {
    /// The wire field name and value.
    pub fn field(&self) -> (&'static str, &str) {
        match self {
            OrderRef::OutTradeNo(n) => (OutTradeNo::FIELD, n.as_str()),
            OrderRef::TransactionId(n) => (TransactionId::FIELD, n.as_str()),
        }
    }

    /// A stable key for storage: `out_trade_no:<n>` or `transaction_id:<n>`.
    pub fn key(&self) -> String {
        let (f, v) = self.field();
        format!("{f}:{v}")
    }
}

impl fmt::Display for OrderRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k, v) = self.field();
        write!(f, "{k}={v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_refund_no_rules() {
        assert!(OutRefundNo::new("R-2026|11*27_x@1").is_ok());
        assert!(OutRefundNo::new("a".repeat(64)).is_ok());
        assert!(OutRefundNo::new("a".repeat(65)).is_err());
        assert!(OutRefundNo::new("").is_err());
        let e = OutRefundNo::new("bad no").unwrap_err();
        assert_eq!(e.field, "out_refund_no");
        assert!(e.to_string().contains("' '"), "{e}");
        assert!(OutRefundNo::new("退款1").is_err());
    }

    #[test]
    fn out_trade_no_rules() {
        assert!(OutTradeNo::new("123456").is_ok());
        assert!(OutTradeNo::new("12345").is_err());
        assert!(OutTradeNo::new("a".repeat(33)).is_err());
        assert!(OutTradeNo::new("order@1").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: Result<OutTradeNo, _> = serde_json::from_str("\"ORDER-0001\"");
        assert!(ok.is_ok());
        let bad: Result<OutTradeNo, _> = serde_json::from_str("\"<x>\"");
        assert!(bad.is_err());
    }

    #[test]
    fn random_nonce_is_valid() {
        let n = NonceStr::random();
        assert_eq!(n.as_str().len(), 32);
        assert!(NonceStr::new(n.as_str()).is_ok());
        assert_ne!(n, NonceStr::random());
    }
}
