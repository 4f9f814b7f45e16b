//! Bill amounts: "对账单中涉及金额的字段单位为“元”" (amounts in a bill are in yuan), written as
//! decimals such as `0.01`, `12.3`, `0.0`. Converted to integer fen exactly, with integer
//! arithmetic only: never a float.

use thiserror::Error;

use crate::money::{Fen, MAX_FEN};

/// At most this many characters: `1000000000.00` (the largest amount, [`MAX_FEN`]) has 13; extra
/// room for trailing zeros.
const MAX_LEN: usize = 24;

/// Why a bill amount was refused. Never echoes the value (it is read from a row).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum YuanError {
    #[error("amount is empty")]
    Empty,
    #[error(
        "amount is not a plain decimal in yuan (digits, at most one point, no sign, spaces or exponent)"
    )]
    NotDecimal,
    #[error("amount has a leading zero")]
    LeadingZero,
    #[error("amount has a non-zero digit past the fen (third decimal)")]
    SubFen,
    #[error("amount exceeds the maximum of {MAX_FEN} fen")]
    TooLarge,
}

/// Parses a yuan amount from a bill into fen, exactly.
///
/// Accepted: `0`, `0.0`, `0.01`, `12.3`, `1234.56`, and trailing zeros past the fen (`1.230`,
/// `0.00000`). Refused: empty, a sign (`-1`, `+1`), an exponent, spaces, a point without digits on
/// both sides (`.5`, `1.`), a leading zero (`01.00`), a non-zero third decimal (`0.001`), and
/// anything above [`MAX_FEN`]. The bill's leading backtick must already be stripped.
pub fn yuan_to_fen(s: &str) -> Result<Fen, YuanError> {
    if s.is_empty() {
        return Err(YuanError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(YuanError::TooLarge);
    }
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return Err(YuanError::NotDecimal);
    }
    if int.len() > 1 && int.starts_with('0') {
        return Err(YuanError::LeadingZero);
    }
    let frac = frac.unwrap_or("").as_bytes();
    if frac.iter().skip(2).any(|&b| b != b'0') {
        return Err(YuanError::SubFen);
    }
    let digit = |i: usize| frac.get(i).map_or(0, |b| u64::from(b - b'0'));
    // At most 24 digits cannot overflow u128; the bound is checked before narrowing.
    let yuan = int
        .bytes()
        .fold(0u128, |acc, b| acc * 10 + u128::from(b - b'0'));
    let fen = yuan * 100 + u128::from(digit(0) * 10 + digit(1));
    u64::try_from(fen)
        .ok()
        .and_then(|f| Fen::new(f).ok())
        .ok_or(YuanError::TooLarge)
}

/// The bill's form of an amount: yuan with two decimals (`0.01`, `1234.50`).
pub fn fen_to_yuan(fen: Fen) -> String {
    let f = fen.get();
    format!("{}.{:02}", f / 100, f % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fen(s: &str) -> Result<u64, YuanError> {
        yuan_to_fen(s).map(Fen::get)
    }

    #[test]
    fn decimals_in_yuan_become_exact_fen() {
        // GIVEN the shapes WeChat writes (and trailing zeros past the fen)
        for (yuan, want) in [
            ("0", 0),
            ("0.0", 0),
            ("0.00", 0),
            ("0.00000", 0),
            ("0.01", 1),
            ("0.1", 10),
            ("0.10", 10),
            ("12.3", 1230),
            ("1234.56", 123_456),
            ("1.230", 123),
            ("100", 10_000),
            ("1000000000.00", MAX_FEN),
            ("1000000000", MAX_FEN),
            // the classic float traps are exact here
            ("0.29", 29),
            ("1.15", 115),
            ("19.99", 1999),
        ] {
            // THEN exactly that many fen
            assert_eq!(fen(yuan), Ok(want), "{yuan}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        for (bad, why) in [
            ("", YuanError::Empty),
            ("0.001", YuanError::SubFen),
            ("1.005", YuanError::SubFen),
            ("0.0001", YuanError::SubFen),
            ("0.010001", YuanError::SubFen),
            ("-1", YuanError::NotDecimal),
            ("-0.01", YuanError::NotDecimal),
            ("+1", YuanError::NotDecimal),
            ("1e3", YuanError::NotDecimal),
            ("1E3", YuanError::NotDecimal),
            (" 1", YuanError::NotDecimal),
            ("1 ", YuanError::NotDecimal),
            ("1,000.00", YuanError::NotDecimal),
            (".5", YuanError::NotDecimal),
            ("1.", YuanError::NotDecimal),
            (".", YuanError::NotDecimal),
            ("1.2.3", YuanError::NotDecimal),
            ("`1.00", YuanError::NotDecimal),
            ("１.00", YuanError::NotDecimal),
            ("0x10", YuanError::NotDecimal),
            ("NaN", YuanError::NotDecimal),
            ("inf", YuanError::NotDecimal),
            ("¥1.00", YuanError::NotDecimal),
            ("01.00", YuanError::LeadingZero),
            ("00", YuanError::LeadingZero),
            ("1000000000.01", YuanError::TooLarge),
            ("99999999999999999999.99", YuanError::TooLarge),
            ("1".repeat(25).as_str(), YuanError::TooLarge),
        ] {
            assert_eq!(fen(bad), Err(why), "{bad:?}");
        }
        // THEN no message echoes the value
        assert_eq!(
            YuanError::SubFen.to_string(),
            "amount has a non-zero digit past the fen (third decimal)"
        );
    }

    #[test]
    fn fen_print_as_two_decimal_yuan() {
        for (f, yuan) in [(0, "0.00"), (1, "0.01"), (10, "0.10"), (123_456, "1234.56")] {
            assert_eq!(fen_to_yuan(Fen::new(f).unwrap()), yuan);
        }
    }

    #[test]
    fn round_trips_and_never_panics() {
        use proptest::prelude::*;
        proptest!(|(f in 0..=MAX_FEN)| {
            let fen = Fen::new(f).unwrap();
            prop_assert_eq!(yuan_to_fen(&fen_to_yuan(fen)), Ok(fen));
        });
        proptest!(|(s in "[-+0-9.eE ]{0,30}")| {
            let _ = yuan_to_fen(&s);
        });
        proptest!(|(s in "\\PC{0,30}")| {
            let _ = yuan_to_fen(&s);
        });
    }
}
