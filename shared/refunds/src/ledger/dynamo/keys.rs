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

/// FNV-1a: a stable hash (std's hasher is randomly seeded per process, which would move refunds
/// between shards across Lambda instances).
pub(super) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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

/// `"<shard>|<gsi1sk>"`: where a `due` page stopped.
pub(super) fn cursor(shard: u32, sk: &str) -> Cursor {
    Cursor::new(format!("{shard}|{sk}"))
}

pub(super) fn parse_cursor(c: &Cursor) -> Result<(u32, String), LedgerError> {
    let bad = || LedgerError::BadCursor(c.as_str().chars().take(100).collect());
    let (shard, sk) = c.as_str().split_once('|').ok_or_else(bad)?;
    let shard: u32 = shard.parse().map_err(|_| bad())?;
    if shard >= PENDING_SHARDS || no_from_pending_sk(sk).is_none() {
        return Err(bad());
    }
    Ok((shard, sk.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_cursor(&cursor(3, &sk)).unwrap(), (3, sk.clone()));
        for bad in ["", "x|y", "8|00000000000000000099#R1", "1|short#"] {
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
