//! Money in integer fen (1/100 CNY): the only amount type the protocol and the ledger use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest amount we accept anywhere: WeChat's amount fields are signed 32-bit on its side for
/// single payments far below this; anything larger is a bug or an attack, never a real order.
pub const MAX_FEN: u64 = 100_000_000_000; // 1 000 000 000.00 CNY

/// An amount in fen. Never a float; arithmetic is checked.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Fen(u64);

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MoneyError {
    #[error("amount must be a whole number of fen written with digits only, got {0:?}")]
    NotAnInteger(String),
    #[error("amount {0} fen exceeds the maximum of {MAX_FEN} fen")]
    TooLarge(u64),
    #[error("amount must be greater than zero")]
    Zero,
}

impl Fen {
    pub const ZERO: Fen = Fen(0);

    /// Any amount from 0 up to [`MAX_FEN`].
    pub fn new(fen: u64) -> Result<Self, MoneyError> {
        if fen > MAX_FEN {
            return Err(MoneyError::TooLarge(fen));
        }
        Ok(Fen(fen))
    }

    /// An amount that must be strictly positive (order totals, refund amounts).
    pub fn positive(fen: u64) -> Result<Self, MoneyError> {
        if fen == 0 {
            return Err(MoneyError::Zero);
        }
        Self::new(fen)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    pub fn checked_add(self, other: Fen) -> Option<Fen> {
        self.0.checked_add(other.0).and_then(|v| Fen::new(v).ok())
    }

    pub fn checked_sub(self, other: Fen) -> Option<Fen> {
        self.0.checked_sub(other.0).map(Fen)
    }

    pub fn saturating_sub(self, other: Fen) -> Fen {
        Fen(self.0.saturating_sub(other.0))
    }
}

impl FromStr for Fen {
    type Err = MoneyError;

    /// Parses the wire form: ASCII digits only (no sign, no decimal point, no spaces).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let not_an_integer = || MoneyError::NotAnInteger(s.chars().take(24).collect());
        if s.is_empty() || s.len() > 20 {
            return Err(not_an_integer());
        }
        // One pass that checks and converts (a query reply has hundreds of amounts); 19 digits
        // cannot overflow a u64, the 20th is checked.
        let mut v: u64 = 0;
        for (i, b) in s.bytes().enumerate() {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return Err(not_an_integer());
            }
            v = if i < 19 {
                v * 10 + u64::from(d)
            } else {
                v.checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(d)))
                    .ok_or_else(not_an_integer)?
            };
        }
        Fen::new(v)
    }
}

impl fmt::Display for Fen {
    /// The wire form: the integer number of fen.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_plain_digits() {
        assert_eq!("0".parse::<Fen>(), Ok(Fen::ZERO));
        assert_eq!("1999".parse::<Fen>().map(Fen::get), Ok(1999));
        for bad in [
            "",
            "-1",
            "+1",
            "1.5",
            " 1",
            "1e3",
            "１",
            "99999999999999999999999",
        ] {
            assert!(bad.parse::<Fen>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn bounds_and_arithmetic_are_checked() {
        assert_eq!(Fen::positive(0), Err(MoneyError::Zero));
        assert_eq!(
            Fen::new(MAX_FEN + 1),
            Err(MoneyError::TooLarge(MAX_FEN + 1))
        );
        let max = Fen::new(MAX_FEN).unwrap();
        assert_eq!(max.checked_add(Fen::new(1).unwrap()), None);
        assert_eq!(Fen::ZERO.checked_sub(Fen::new(1).unwrap()), None);
        assert_eq!(Fen::new(5).unwrap().to_string(), "5");
    }

    #[test]
    fn the_one_pass_parse_agrees_with_u64_parsing() {
        // GIVEN digit strings around the u64 limit (20 digits: the one pass checks the last)
        for s in [
            "00000000000000000001",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "1999",
            "12a",
        ] {
            // THEN the same answer as the std parse followed by the bound
            let reference = match s.parse::<u64>() {
                Ok(v) if s.bytes().all(|b| b.is_ascii_digit()) => Fen::new(v),
                _ => Err(MoneyError::NotAnInteger(s.into())),
            };
            assert_eq!(s.parse::<Fen>(), reference, "{s:?}");
        }
    }
}
