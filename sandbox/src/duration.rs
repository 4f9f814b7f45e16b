//! Durations on the command line (`--settle-after 500ms`), shared with the local stack's flags.
//!
//! Syntax: a non-negative decimal number, optionally followed by a unit `ms`, `s`, `m` or `h`
//! (no unit = seconds), surrounding whitespace ignored: `3s`, `500ms`, `1.5m`, `2h`, `4`. Negative
//! numbers, other units (`1d`, `us`), a space between number and unit and an empty string are
//! refused. This is the union of what the sandbox and the local stack each accepted; the stack also
//! refused zero, which [`parse_positive_duration`] keeps.

use std::time::Duration;

/// Parses the syntax above; zero (`0s`) is allowed (e.g. refunds that settle at once).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 3s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// [`parse_duration`], refusing zero (for timeouts and intervals that must elapse).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{:?} must be more than zero", s.trim()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        // GIVEN each form of both former copies THEN the same value
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("4"), Ok(Duration::from_secs(4)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        // AND what neither accepted is refused
        for bad in ["x", "1d", "-1s", "", "s", "1 s", "1us", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn positive_durations_refuse_zero() {
        assert_eq!(parse_positive_duration("2s"), Ok(Duration::from_secs(2)));
        for bad in ["0s", "0", "0ms", "x", ""] {
            assert!(parse_positive_duration(bad).is_err(), "{bad:?}");
        }
    }
}
