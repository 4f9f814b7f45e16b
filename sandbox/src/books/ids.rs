//! Generated identifiers shaped like WeChat's: transaction ids, refund ids and coupon ids.

use time::OffsetDateTime;

use crate::beijing::BEIJING;

/// WeChat refund ids look like `50000408942018111511434556789`: "50", then digits (29 in all).
pub fn new_refund_id(now: OffsetDateTime) -> String {
    let t = now.to_offset(BEIJING);
    let r: u64 = rand::random::<u64>() % 10_000_000_000;
    // 2 + 6 + 8 (date) + 3 + 10 = 29 digits, the length of WeChat's example.
    format!(
        "50{:06}{:04}{:02}{:02}{:03}{:010}",
        rand::random::<u32>() % 1_000_000,
        t.year(),
        u8::from(t.month()),
        t.day(),
        rand::random::<u32>() % 1_000,
        r
    )
}

/// A coupon id like WeChat's (digits); the index keeps the ids of one order distinct.
pub fn new_coupon_id(index: usize) -> String {
    format!(
        "{:010}{:02}",
        rand::random::<u64>() % 10_000_000_000,
        index % 100
    )
}

/// A 28-digit transaction id like WeChat's (`4200001234202501011234567890`).
pub fn new_transaction_id(now: OffsetDateTime) -> String {
    let t = now.to_offset(BEIJING);
    format!(
        "42000{:05}{:04}{:02}{:02}{:010}",
        rand::random::<u32>() % 100_000,
        t.year(),
        u8::from(t.month()),
        t.day(),
        rand::random::<u64>() % 10_000_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_wechats_shapes() {
        let now = OffsetDateTime::now_utc();
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let r = new_refund_id(now);
        assert!(
            r.len() == 29 && r.starts_with("50") && all_digits(&r),
            "{r}"
        );
        let t = new_transaction_id(now);
        assert!(
            t.len() == 28 && t.starts_with("42000") && all_digits(&t),
            "{t}"
        );
        let c = new_coupon_id(7);
        assert!(c.len() == 12 && c.ends_with("07") && all_digits(&c), "{c}");
    }
}
