//! Beijing time (UTC+8), in which WeChat writes every time it reports (`yyyy-MM-dd HH:mm:ss`).

use time::{OffsetDateTime, UtcOffset};

/// UTC+8. China has no daylight saving time, so a constant offset is exact.
pub const BEIJING: UtcOffset = time::macros::offset!(+8);

/// `yyyy-MM-dd HH:mm:ss` in Beijing time.
pub fn wechat_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(BEIJING);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses RFC 3339, or WeChat's `yyyy-MM-dd HH:mm:ss` taken as Beijing time.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Some(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(s, &fmt)
        .ok()
        .map(|p| p.assume_offset(BEIJING))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_and_read_in_beijing_time() {
        // GIVEN midnight UTC WHEN written THEN it is 08:00 in Beijing
        let t = time::macros::datetime!(2025-01-31 16:00:05 UTC);
        assert_eq!(wechat_time(t), "2025-02-01 00:00:05");
        // AND WeChat's form is read back as Beijing time, RFC 3339 with its own offset
        assert_eq!(parse_time("2025-02-01 00:00:05"), Some(t));
        assert_eq!(parse_time("2025-01-31T16:00:05Z"), Some(t));
        assert_eq!(parse_time("31.01.2025"), None);
    }
}
