//! How items are addressed: the `pk` of refunds and orders, the sharded keys of the sparse
//! `pending` index, and the `due` cursor built from them.

use wxpay::{OrderRef, OutRefundNo};

use super::codec::Item;
use super::table::PENDING_SHARDS;
use crate::ledger::{Cursor, LedgerError};
use crate::state::UnixMillis;

pub(super) fn refund_pk(no: &OutRefundNo) -> String {
    format!("REFUND#{no}")
}

/// The refund key from a bare number already validated by its caller (a pending sort key).
pub(super) fn refund_pk_str(no: &str) -> String {
    format!("REFUND#{no}")
}

pub(super) fn order_pk(order: &OrderRef) -> String {
    format!("ORDER#{}", order.key())
}

/// Released (FAILED) numbers of an order per page item: `out_refund_no` is at most 64 bytes, so
/// a page's string set is at most 64 KB (plus its few small attributes), far under DynamoDB's
/// 400 KB item limit.
pub(super) const FAILED_PAGE_SIZE: u64 = 1000;

/// The page item holding the order's released numbers `page * FAILED_PAGE_SIZE ..` (in the order
/// they were released). `#` is in neither id charset, so no order key can end like this.
pub(super) fn failed_page_pk(order: &OrderRef, page: u64) -> String {
    format!("ORDER#{}#FAILED#{page}", order.key())
}

/// The page the `n`-th released number (from 0) of an order goes to.
pub(super) fn failed_page_of(n: u64) -> u64 {
    n / FAILED_PAGE_SIZE
}

/// How many page items hold `released` numbers.
pub(super) fn failed_pages(released: u64) -> u64 {
    released.div_ceil(FAILED_PAGE_SIZE)
}

/// FNV-1a: a stable hash (std's hasher is randomly seeded per process, which would move refunds
/// between shards across Lambda instances).
pub(super) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The `accepted` index partition of a Beijing day (`YYYY-MM-DD`): the refunds WeChat accepted
/// that day, which its refund bill of that day must list.
pub(super) fn accepted_day_pk(day: &str) -> String {
    format!("ACCEPTED#{day}")
}

pub(super) fn accepted_pk(at: UnixMillis) -> String {
    accepted_day_pk(&at.beijing_date())
}

/// The item holding the reconciliation report of a bill date (`YYYY-MM-DD`).
pub(super) fn reconciliation_pk(day: &str) -> String {
    format!("RECONCILIATION#{day}")
}

/// The pending-index partition of a shard.
pub(super) fn shard_pk(shard: u32) -> String {
    format!("PENDING#{shard}")
}

pub(super) fn pending_pk(no: &OutRefundNo) -> String {
    // The modulo keeps the value below PENDING_SHARDS, so the narrowing cannot lose anything.
    shard_pk((fnv1a(no.as_str()) % u64::from(PENDING_SHARDS)) as u32)
}

pub(super) fn pending_sk(no: &OutRefundNo, at: UnixMillis) -> String {
    format!("{:020}#{no}", at.get())
}

/// Every pending sort key of a check due at or before `now` sorts below this ('$' follows '#').
pub(super) fn due_upper_bound(now: UnixMillis) -> String {
    format!("{:020}$", now.get())
}

pub(super) fn no_from_pending_sk(sk: &str) -> Option<&str> {
    sk.get(21..).filter(|no| !no.is_empty())
}

pub(super) fn sk_of(item: &Item) -> Option<String> {
    item.get("gsi1sk").and_then(|v| v.as_s().ok()).cloned()
}

/// Where one shard of the pending index stands in a `due` paging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ShardPos {
    /// Not read yet: start at its first key.
    Start,
    /// Read up to and including this sort key.
    After(String),
    /// Read to its end (for this paging's `now`).
    Done,
}

/// Cursor format tag: every shard's position, `m1,<p0>,...,<p7>`. A position is empty (start),
/// `.` (done) or the last sort key read; `,` and `.` are in neither id charset, and a sort key
/// starts with a digit, so the three cannot be confused.
const CURSOR_TAG: &str = "m1";

/// Where a `due` page stopped, in every shard (the merge must resume each one where it was).
pub(super) fn cursor(positions: &[ShardPos]) -> Cursor {
    let mut s = String::from(CURSOR_TAG);
    for p in positions {
        s.push(',');
        match p {
            ShardPos::Start => {}
            ShardPos::After(sk) => s.push_str(sk),
            ShardPos::Done => s.push('.'),
        }
    }
    Cursor::new(s)
}

/// The positions of every shard. Also reads the single-shard cursor `"<shard>|<gsi1sk>"` of the
/// earlier shard-by-shard paging (shards before it done, after it not started).
pub(super) fn parse_cursor(c: &Cursor) -> Result<Vec<ShardPos>, LedgerError> {
    let bad = || LedgerError::BadCursor(c.as_str().chars().take(100).collect());
    let shards = PENDING_SHARDS as usize;
    if let Some(rest) = c.as_str().strip_prefix(CURSOR_TAG) {
        let rest = rest.strip_prefix(',').ok_or_else(bad)?;
        let positions = rest
            .split(',')
            .map(|p| match p {
                "" => Ok(ShardPos::Start),
                "." => Ok(ShardPos::Done),
                sk if no_from_pending_sk(sk).is_some()
                    && sk.as_bytes().first().is_some_and(u8::is_ascii_digit) =>
                {
                    Ok(ShardPos::After(sk.to_owned()))
                }
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if positions.len() != shards {
            return Err(bad());
        }
        return Ok(positions);
    }
    let (shard, sk) = c.as_str().split_once('|').ok_or_else(bad)?;
    let shard: usize = shard.parse().map_err(|_| bad())?;
    if shard >= shards || no_from_pending_sk(sk).is_none() {
        return Err(bad());
    }
    Ok((0..shards)
        .map(|s| match s.cmp(&shard) {
            std::cmp::Ordering::Less => ShardPos::Done,
            std::cmp::Ordering::Equal => ShardPos::After(sk.to_owned()),
            std::cmp::Ordering::Greater => ShardPos::Start,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_numbers_fill_pages_in_turn() {
        // GIVEN the released numbers of an order THEN each page holds FAILED_PAGE_SIZE of them
        assert_eq!(
            (failed_page_of(0), failed_page_of(999), failed_page_of(1000)),
            (0, 0, 1)
        );
        assert_eq!(
            (failed_pages(0), failed_pages(1), failed_pages(1000)),
            (0, 1, 1)
        );
        assert_eq!(failed_pages(10_001), 11);
        let o = OrderRef::OutTradeNo(wxpay::OutTradeNo::new("ORDER-1").unwrap());
        assert_eq!(failed_page_pk(&o, 3), "ORDER#out_trade_no:ORDER-1#FAILED#3");
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        // GIVEN many numbers THEN each maps to a shard below PENDING_SHARDS, the same every time,
        // and more than one shard is used
        let mut used = std::collections::HashSet::new();
        for i in 0..200 {
            let no = OutRefundNo::new(format!("R{i}")).unwrap();
            let a = pending_pk(&no);
            assert_eq!(a, pending_pk(&no));
            let shard: u32 = a.trim_start_matches("PENDING#").parse().unwrap();
            assert!(shard < PENDING_SHARDS);
            used.insert(shard);
        }
        assert_eq!(used.len() as u32, PENDING_SHARDS);
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn pending_sort_keys_carry_the_number_and_cursors_round_trip() {
        // GIVEN a pending sort key THEN the number comes back out of it and of its cursor
        let no = OutRefundNo::new("R-1|x@y").unwrap();
        let sk = pending_sk(&no, UnixMillis(99));
        assert_eq!(sk, "00000000000000000099#R-1|x@y");
        assert_eq!(no_from_pending_sk(&sk), Some("R-1|x@y"));
        assert!(sk < due_upper_bound(UnixMillis(99)));
        assert!(sk > due_upper_bound(UnixMillis(98)));
        let mut positions = vec![ShardPos::Start; PENDING_SHARDS as usize];
        positions[1] = ShardPos::Done;
        positions[3] = ShardPos::After(sk.clone());
        let c = cursor(&positions);
        assert_eq!(parse_cursor(&c).unwrap(), positions);
        // The earlier single-shard cursor still reads: shards before it done, after it unread.
        let old = parse_cursor(&Cursor::new(format!("2|{sk}"))).unwrap();
        assert_eq!(
            old[..3],
            [ShardPos::Done, ShardPos::Done, ShardPos::After(sk.clone())]
        );
        assert!(old[3..].iter().all(|p| *p == ShardPos::Start));
        for bad in [
            "",
            "x|y",
            "8|00000000000000000099#R1",
            "1|short#",
            "m1",
            "m1,,,,",
            "m1,,,,,,,,,",
            "m1,x,,,,,,,",
            "m1,00000000000000000099#,,,,,,,",
        ] {
            assert!(
                matches!(
                    parse_cursor(&Cursor::new(bad)),
                    Err(LedgerError::BadCursor(_))
                ),
                "{bad}"
            );
        }
    }
}
