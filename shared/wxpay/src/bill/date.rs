//! `bill_date`: a real calendar date, sent as `yyyyMMdd` ("下载对账单的日期，格式：20140603"), shown
//! and serialised as `YYYY-MM-DD`. The Gregorian rules are small enough to write out exactly here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A bill's day (Beijing time, as WeChat cuts its bills). Ordered by date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BillDate {
    // Field order is the ordering: year, then month, then day.
    year: u16,
    month: u8,
    day: u8,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BillDateError {
    #[error("bill date must be YYYY-MM-DD or yyyyMMdd, got {0:?}")]
    Format(String),
    #[error("bill date year {0} is outside 2000–9999")]
    Year(u16),
    #[error("bill date month {0} is not 1–12")]
    Month(u8),
    #[error("bill date {year:04}-{month:02} has no day {day}")]
    Day { year: u16, month: u8, day: u8 },
}

/// Gregorian leap years: every 4th, except centuries not divisible by 400.
pub(crate) fn is_leap(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

pub(crate) fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// The value of a run of ASCII digits (at most 4, so no overflow); `None` for anything else.
pub(crate) fn digits(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.bytes()
            .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0')),
    )
}

impl BillDate {
    /// A date of the Gregorian calendar, years 2000–9999 (WeChat Pay's bills start in the 2010s).
    pub fn new(year: u16, month: u8, day: u8) -> Result<Self, BillDateError> {
        if !(2000..=9999).contains(&year) {
            return Err(BillDateError::Year(year));
        }
        if !(1..=12).contains(&month) {
            return Err(BillDateError::Month(month));
        }
        if day == 0 || day > days_in_month(year, month) {
            return Err(BillDateError::Day { year, month, day });
        }
        Ok(BillDate { year, month, day })
    }

    pub const fn year(self) -> u16 {
        self.year
    }

    pub const fn month(self) -> u8 {
        self.month
    }

    pub const fn day(self) -> u8 {
        self.day
    }

    /// The wire form, `yyyyMMdd` (e.g. `20261126`).
    pub fn wire(self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `YYYY-MM-DD` (e.g. `2026-11-26`); also what `Display` and serde produce.
    pub fn iso(self) -> String {
        self.to_string()
    }
}

impl FromStr for BillDate {
    type Err = BillDateError;

    /// `YYYY-MM-DD` or `yyyyMMdd`, ASCII digits only, zero-padded.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let format = || BillDateError::Format(s.chars().take(16).collect());
        let (y, m, d) = match s.len() {
            10 if s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-' => {
                (s.get(0..4), s.get(5..7), s.get(8..10))
            }
            8 => (s.get(0..4), s.get(4..6), s.get(6..8)),
            _ => return Err(format()),
        };
        let part = |p: Option<&str>| p.and_then(digits).ok_or_else(format);
        let (year, month, day) = (part(y)?, part(m)?, part(d)?);
        // month and day have two digits, so they fit in u8
        BillDate::new(year, month as u8, day as u8)
    }
}

impl fmt::Display for BillDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl Serialize for BillDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BillDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_to_the_same_day_and_print_both_ways() {
        // GIVEN the ISO and the wire form of one day
        let iso: BillDate = "2026-11-26".parse().unwrap();
        let wire: BillDate = "20261126".parse().unwrap();
        // THEN the same date, sent as yyyyMMdd and shown as YYYY-MM-DD
        assert_eq!(iso, wire);
        assert_eq!(iso.wire(), "20261126");
        assert_eq!(iso.iso(), "2026-11-26");
        assert_eq!(iso.to_string(), "2026-11-26");
        assert_eq!((iso.year(), iso.month(), iso.day()), (2026, 11, 26));
        assert_eq!("2000-01-01".parse::<BillDate>().unwrap().wire(), "20000101");
    }

    #[test]
    fn the_calendar_is_real() {
        // GIVEN leap days of leap years THEN accepted
        for ok in [
            "2024-02-29",
            "2000-02-29",
            "20280229",
            "2026-12-31",
            "2026-04-30",
        ] {
            assert!(ok.parse::<BillDate>().is_ok(), "{ok}");
        }
        // GIVEN days that do not exist THEN refused with the reason
        for (bad, want) in [
            (
                "2026-02-29",
                BillDateError::Day {
                    year: 2026,
                    month: 2,
                    day: 29,
                },
            ),
            (
                "2100-02-29",
                BillDateError::Day {
                    year: 2100,
                    month: 2,
                    day: 29,
                },
            ),
            (
                "2026-04-31",
                BillDateError::Day {
                    year: 2026,
                    month: 4,
                    day: 31,
                },
            ),
            (
                "20260100",
                BillDateError::Day {
                    year: 2026,
                    month: 1,
                    day: 0,
                },
            ),
            ("2026-13-01", BillDateError::Month(13)),
            ("20260001", BillDateError::Month(0)),
            ("1999-12-31", BillDateError::Year(1999)),
        ] {
            assert_eq!(bad.parse::<BillDate>(), Err(want), "{bad}");
        }
        assert!(is_leap(2000) && is_leap(2024) && !is_leap(1900) && !is_leap(2026));
        assert_eq!(days_in_month(2026, 13), 0);
    }

    #[test]
    fn anything_but_the_two_forms_is_refused() {
        for bad in [
            "",
            "2026-1-26",
            "2026/11/26",
            "2026-11-26 ",
            " 20261126",
            "202611260",
            "2026112",
            "+2026-1-26",
            "2026-+1-26",
            "2026-11-2６",
            "２0261126",
            "2026-11-26T00:00:00",
            "abcdefgh",
            "2026年11月2",
        ] {
            assert!(
                matches!(bad.parse::<BillDate>(), Err(BillDateError::Format(_))),
                "{bad:?}"
            );
        }
        // THEN the error echoes at most 16 characters
        assert_eq!(
            "9".repeat(40).parse::<BillDate>(),
            Err(BillDateError::Format("9".repeat(16)))
        );
    }

    #[test]
    fn ordered_by_date_and_serialised_as_iso() {
        let a: BillDate = "2026-11-26".parse().unwrap();
        let b: BillDate = "2026-12-01".parse().unwrap();
        let c: BillDate = "2027-01-01".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"2026-11-26\"");
        assert_eq!(serde_json::from_str::<BillDate>("\"20261126\"").unwrap(), a);
        assert!(serde_json::from_str::<BillDate>("\"2026-02-30\"").is_err());
    }

    #[test]
    fn never_panics_and_round_trips() {
        use proptest::prelude::*;
        proptest!(|(s in "\\PC{0,12}")| {
            let _ = s.parse::<BillDate>();
        });
        proptest!(|(y in 2000u16..=9999, m in 1u8..=12, d in 1u8..=31)| {
            if let Ok(date) = BillDate::new(y, m, d) {
                prop_assert_eq!(date.wire().parse::<BillDate>(), Ok(date));
                prop_assert_eq!(date.iso().parse::<BillDate>(), Ok(date));
            } else {
                prop_assert!(d > days_in_month(y, m));
            }
        });
    }
}
