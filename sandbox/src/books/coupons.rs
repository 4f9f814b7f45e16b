//! Coupons: the coupon types an order can be paid with, their checks, and the proportional split
//! of a refund over what is left of the cash and of each coupon (README "Coupons").

use serde::{Deserialize, Serialize};

/// At most this many coupons per order: enough for any test, and it keeps replies far below the
/// client parser's plausibility limits (50 per query record, 100 per apply reply).
pub const MAX_COUPONS_PER_ORDER: usize = 20;
/// `coupon_refund_id` is String(20) (docs/PROTOCOL.md "Apply refund").
const MAX_COUPON_ID_LEN: usize = 20;

/// `coupon_type` (docs/PROTOCOL.md "Apply refund"). A `CASH` (recharge) coupon is funded by money the merchant loaded in
/// advance; a `NO_CASH` (non-recharge) one is not, so WeChat leaves it out of the settlement
/// amounts (`settlement_total_fee`, `settlement_refund_fee`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CouponType {
    #[serde(rename = "CASH")]
    Cash,
    #[serde(rename = "NO_CASH")]
    NoCash,
}

impl CouponType {
    pub fn as_str(self) -> &'static str {
        match self {
            CouponType::Cash => "CASH",
            CouponType::NoCash => "NO_CASH",
        }
    }
}

/// A coupon that paid part of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coupon {
    /// Also the `coupon_refund_id` of every refund of it: WeChat's 退款代金券ID names the coupon.
    pub coupon_id: String,
    pub coupon_type: CouponType,
    pub fee: u64,
}

/// A coupon in `POST /sandbox/orders`; without `coupon_id` one is generated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCoupon {
    #[serde(default)]
    pub coupon_id: Option<String>,
    pub coupon_type: CouponType,
    pub fee: u64,
}

/// What one refund gave back of one coupon (`coupon_*_$n`, `coupon_*_$n_$m`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponRefund {
    /// The coupon's `coupon_id`.
    pub coupon_refund_id: String,
    pub coupon_type: CouponType,
    pub coupon_refund_fee: u64,
}

/// Sums fen, None on overflow.
pub fn sum_fen(values: impl IntoIterator<Item = u64>) -> Option<u64> {
    values.into_iter().try_fold(0u64, u64::checked_add)
}

/// Checks an order's coupons: ids of 1–20 letters, digits, `-` or `_` (they go into signed XML),
/// unique, each worth something, at most [`MAX_COUPONS_PER_ORDER`], and together less than
/// `total_fee` (WeChat always takes some cash). Used for new orders and for loaded books.
pub fn check_coupons(coupons: &[Coupon], total_fee: u64) -> Result<(), String> {
    if coupons.len() > MAX_COUPONS_PER_ORDER {
        return Err(format!(
            "at most {MAX_COUPONS_PER_ORDER} coupons per order, got {}",
            coupons.len()
        ));
    }
    for (i, c) in coupons.iter().enumerate() {
        let id = &c.coupon_id;
        if id.is_empty()
            || id.len() > MAX_COUPON_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "coupon_id {:?} must be 1 to {MAX_COUPON_ID_LEN} letters, digits, '-' or '_'",
                id.chars().take(40).collect::<String>()
            ));
        }
        if coupons[..i].iter().any(|o| o.coupon_id == *id) {
            return Err(format!("coupon_id {id} appears twice"));
        }
        if c.fee == 0 {
            return Err(format!("coupon {id}: fee must be a positive number of fen"));
        }
    }
    match sum_fen(coupons.iter().map(|c| c.fee)) {
        Some(sum) if sum < total_fee => Ok(()),
        sum => Err(format!(
            "the coupons add up to {} fen; they must be less than total_fee ({total_fee}), \
             the rest being paid in cash",
            sum.map_or_else(|| "more than 2^64".to_string(), |s| s.to_string())
        )),
    }
}

/// Splits a refund of `refund_fee` over what is left of the order's cash and of each coupon.
///
/// Each coupon refunds `floor(left_c * refund_fee / left_total)` (`left_total` = cash left + all
/// coupons left), cash the rest. Should that take more cash than is left (rounding down several
/// coupons can leave up to one fen per coupon over), the excess comes from the coupons in order,
/// up to what is left of each. So no part is ever overdrawn, and the refund that completes the
/// order (`refund_fee == left_total`) refunds exactly what is left of each coupon and of the
/// cash: the sums always come out exact. Proportional to what is *left* (not to the original
/// amounts) so that a run of small refunds cannot drain the cash before the coupons.
///
/// Returns (cash part, coupon parts in `coupons_left` order); None when `refund_fee` exceeds what
/// is left.
pub fn split_refund(
    refund_fee: u64,
    cash_left: u64,
    coupons_left: &[u64],
) -> Option<(u64, Vec<u64>)> {
    let left_total = cash_left.checked_add(sum_fen(coupons_left.iter().copied())?)?;
    if refund_fee > left_total {
        return None;
    }
    if left_total == 0 {
        return Some((0, vec![0; coupons_left.len()]));
    }
    let mut parts = coupons_left
        .iter()
        .map(|&left| {
            // u128: the product of two u64 cannot overflow; the quotient is ≤ left.
            let p = u128::from(left) * u128::from(refund_fee) / u128::from(left_total);
            u64::try_from(p).ok()
        })
        .collect::<Option<Vec<u64>>>()?;
    let mut cash = refund_fee.checked_sub(sum_fen(parts.iter().copied())?)?;
    let mut excess = cash.saturating_sub(cash_left);
    if excess > 0 {
        cash = cash_left;
        for (part, &left) in parts.iter_mut().zip(coupons_left) {
            let take = excess.min(left.checked_sub(*part)?);
            *part = part.checked_add(take)?;
            excess -= take;
        }
    }
    (excess == 0).then_some((cash, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies refunds of `amounts` to cash/coupons through [`split_refund`], checking the
    /// invariants after each; returns what was refunded of the cash and of each coupon.
    fn run(cash: u64, coupons: &[u64], amounts: &[u64]) -> (u64, Vec<u64>) {
        let (mut cash_left, mut left) = (cash, coupons.to_vec());
        for &r in amounts {
            let (c, parts) = split_refund(r, cash_left, &left).expect("refund fits");
            assert_eq!(
                c + parts.iter().sum::<u64>(),
                r,
                "parts add up to the refund"
            );
            cash_left = cash_left.checked_sub(c).expect("cash never overdrawn");
            for (l, p) in left.iter_mut().zip(&parts) {
                *l = l.checked_sub(*p).expect("coupon never overdrawn");
            }
        }
        (
            cash - cash_left,
            coupons.iter().zip(&left).map(|(c, l)| c - l).collect(),
        )
    }

    #[test]
    fn split_is_proportional_and_the_completing_refund_takes_the_rest() {
        // GIVEN 850 cash + coupons of 100 and 50 WHEN 300 then 700 are refunded
        let (mut cash, mut left) = (850, vec![100, 50]);
        let (c, parts) = split_refund(300, cash, &left).unwrap();
        // THEN 300 = 30 + 15 coupons + 255 cash
        assert_eq!((c, parts.clone()), (255, vec![30, 15]));
        cash -= c;
        left = left.iter().zip(&parts).map(|(l, p)| l - p).collect();
        // AND the completing 700 refunds exactly what is left of each
        assert_eq!(split_refund(700, cash, &left), Some((595, vec![70, 35])));
        // AND more than is left is refused
        assert_eq!(split_refund(701, cash, &left), None);
    }

    #[test]
    fn small_refunds_never_overdraw_cash_and_sums_come_out_exact() {
        // GIVEN 1 fen of cash and coupons of 500 and 499 (rounding down both leaves no cash)
        // WHEN the order is refunded 1 fen at a time, then with uneven amounts
        let ones = vec![1; 1000];
        // THEN nothing is overdrawn (checked in `run`) and everything is refunded exactly
        assert_eq!(run(1, &[500, 499], &ones), (1, vec![500, 499]));
        let uneven = [7, 333, 1, 1, 2, 250, 99, 307];
        assert_eq!(uneven.iter().sum::<u64>(), 1000);
        assert_eq!(run(850, &[100, 50], &uneven), (850, vec![100, 50]));
        assert_eq!(run(3, &[331, 333, 333], &uneven), (3, vec![331, 333, 333]));
        // AND without coupons everything is cash
        assert_eq!(split_refund(5, 10, &[]), Some((5, vec![])));
    }

    #[test]
    fn split_handles_the_largest_amounts_without_overflow() {
        // GIVEN amounts near the money limit, whose products exceed u64
        let max = wxpay::money::MAX_FEN;
        // WHEN a refund of almost everything is split THEN parts are exact and within bounds
        let (c, parts) = split_refund(max - 1, 1, &[max / 2, max / 2 - 1]).unwrap();
        assert_eq!(c + parts.iter().sum::<u64>(), max - 1);
        assert!(parts[0] <= max / 2 && parts[1] < max / 2 && c <= 1);
        // AND an overflowing "left" total is refused, not wrapped
        assert_eq!(split_refund(1, u64::MAX, &[1]), None);
    }

    #[test]
    fn coupons_are_checked() {
        let c = |id: &str, fee| Coupon {
            coupon_id: id.into(),
            coupon_type: CouponType::Cash,
            fee,
        };
        // GIVEN valid coupons THEN accepted
        assert_eq!(check_coupons(&[c("C1", 100), c("C2", 50)], 1000), Ok(()));
        // WHEN they reach the total, repeat an id, are worth nothing, or have a bad id THEN refused
        let e = check_coupons(&[c("C1", 600), c("C2", 400)], 1000).unwrap_err();
        assert!(e.contains("less than total_fee"), "{e}");
        assert!(check_coupons(&[c("C1", u64::MAX), c("C2", 1)], 1000).is_err());
        let e = check_coupons(&[c("C1", 1), c("C1", 1)], 1000).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(check_coupons(&[c("C1", 0)], 1000).is_err());
        for bad in ["", "a]]>b", "x".repeat(21).as_str(), "券"] {
            assert!(check_coupons(&[c(bad, 1)], 1000).is_err(), "{bad:?}");
        }
        let many: Vec<Coupon> = (0..21).map(|i| c(&format!("C{i}"), 1)).collect();
        assert!(check_coupons(&many, 1000).is_err());
    }
}
