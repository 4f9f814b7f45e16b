//! The daily trade bill of `/pay/downloadbill`, written from the books in WeChat's text format:
//! a header line, one backtick-prefixed line per payment or refund of the Beijing date, then the
//! summary header and values (README "Refund bill"). Amounts are yuan written from integer fen.

use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use md5::{Digest, Md5};
use time::{Date, Month, OffsetDateTime};

use crate::beijing::{BEIJING, wechat_time};
use crate::books::{BookedStatus, Order, Refund, State};

/// `bill_type`: which rows a bill has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BillType {
    /// Payments and refunds (the default).
    All,
    /// Payments only.
    Success,
    /// Refunds only.
    Refund,
    /// Refunds of recharge orders: the sandbox has none, so this bill never exists.
    RechargeRefund,
}

impl BillType {
    /// The wire value (case-sensitive); absent or empty is `ALL`.
    pub fn parse(value: Option<&str>) -> Option<BillType> {
        match value.unwrap_or("") {
            "" | "ALL" => Some(BillType::All),
            "SUCCESS" => Some(BillType::Success),
            "REFUND" => Some(BillType::Refund),
            "RECHARGE_REFUND" => Some(BillType::RechargeRefund),
            _ => None,
        }
    }
}

/// The documented 24-column header of an `ALL` bill.
pub const ALL_HEADER: &str = "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,代金券或立减优惠金额,微信退款单号,商户退款单号,退款金额,代金券或立减优惠退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率";
/// The documented 18-column header of a `SUCCESS` bill.
pub const SUCCESS_HEADER: &str = "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,代金券或立减优惠金额,商品名称,商户数据包,手续费,费率";
/// The documented 26-column header of a `REFUND` bill.
pub const REFUND_HEADER: &str = "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,代金券或立减优惠金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,代金券或立减优惠退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率";
/// The summary header, the same for every bill type.
pub const SUMMARY_HEADER: &str =
    "总交易单数,总交易额,总退款金额,总代金券或立减优惠退款金额,手续费总金额";

/// 商品名称 of every row (the sandbox keeps no order body).
const GOODS: &str = "wxpay-sandbox";
/// 手续费: the sandbox charges no fee; WeChat writes fees with five decimals.
const FEE: &str = "0.00000";
/// 费率: the usual rate, shown but not charged.
const RATE: &str = "0.60%";

/// Yuan with two decimals, exactly, from fen (`123456` → `1234.56`).
pub fn yuan(fen: u128) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// `bill_date`: `yyyyMMdd`, a real calendar date.
pub fn parse_bill_date(s: &str) -> Option<Date> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = s.get(0..4)?.parse().ok()?;
    let month: u8 = s.get(4..6)?.parse().ok()?;
    let day: u8 = s.get(6..8)?.parse().ok()?;
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

/// The Beijing date of an instant.
pub fn beijing_date(t: OffsetDateTime) -> Date {
    t.to_offset(BEIJING).date()
}

/// 用户标识: a made-up openid for the order, the same on every bill (28 characters, like WeChat's
/// `oUpF8uMuAJO_M2pxb1Q9zNjWeS6o`).
pub fn openid(transaction_id: &str) -> String {
    // 16 bytes are 22 characters of URL-safe base64, WeChat's openid alphabet.
    let tail = URL_SAFE_NO_PAD.encode(Md5::digest(transaction_id.as_bytes()));
    format!("oUpF8u{tail}")
}

/// 代金券或立减优惠金额 of an order: its NO_CASH coupons, the part settlement leaves out (so
/// 总金额 − this = `settlement_total_fee`, as 退款金额 + 代金券或立减优惠退款金额 = `refund_fee`).
fn order_coupon_fee(o: &Order) -> u64 {
    o.settlement_total_fee()
        .map_or(0, |s| o.total_fee.saturating_sub(s))
}

/// 代金券或立减优惠退款金额 of a refund: its NO_CASH parts (`refund_fee − settlement_refund_fee`).
fn refund_coupon_fee(r: &Refund) -> u64 {
    r.refund_fee.saturating_sub(r.settlement_refund_fee())
}

/// One row before it is written; `refund` is None for a payment.
struct Row<'a> {
    at: OffsetDateTime,
    order: &'a Order,
    refund: Option<&'a Refund>,
}

/// The bill's totals, summed in u128 so that no number of rows can overflow them.
#[derive(Default)]
struct Totals {
    rows: u128,
    trade: u128,
    refund: u128,
    coupon_refund: u128,
}

/// The bill of Beijing `date` (`\n` line ends, UTF-8), or None when it has no row: WeChat makes
/// no bill then (`No Bill Exist`). Refunds are listed by the day they were applied for (also in
/// the merchant platform), each with its status now; payments by the day they were paid.
pub fn write(st: &State, appid: &str, mch_id: &str, date: Date, kind: BillType) -> Option<String> {
    let (payments, refunds) = match kind {
        BillType::All => (true, true),
        BillType::Success => (true, false),
        BillType::Refund => (false, true),
        BillType::RechargeRefund => return None,
    };
    let mut rows: Vec<Row<'_>> = Vec::new();
    if payments {
        rows.extend(
            st.orders
                .values()
                .filter(|o| beijing_date(o.paid_at) == date)
                .map(|o| Row {
                    at: o.paid_at,
                    order: o,
                    refund: None,
                }),
        );
    }
    if refunds {
        rows.extend(st.refunds.values().filter_map(|r| {
            let o = st.orders.get(&r.out_trade_no)?;
            (beijing_date(r.created_at) == date).then_some(Row {
                at: r.created_at,
                order: o,
                refund: Some(r),
            })
        }));
    }
    if rows.is_empty() {
        return None;
    }
    // In time order; a payment before its refunds, refunds of one instant by number.
    rows.sort_by(|a, b| {
        (a.at, a.refund.is_some(), a.refund.map(|r| &r.out_refund_no)).cmp(&(
            b.at,
            b.refund.is_some(),
            b.refund.map(|r| &r.out_refund_no),
        ))
    });

    let header = match kind {
        BillType::Success => SUCCESS_HEADER,
        BillType::Refund => REFUND_HEADER,
        _ => ALL_HEADER,
    };
    let mut out = String::with_capacity(256 * (rows.len() + 3));
    out.push_str(header);
    out.push('\n');
    let mut totals = Totals::default();
    for row in &rows {
        let fields = fields(row, kind, appid, mch_id, &mut totals);
        let line: Vec<String> = fields.into_iter().map(|f| format!("`{f}")).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out.push_str(SUMMARY_HEADER);
    out.push('\n');
    let summary = [
        totals.rows.to_string(),
        yuan(totals.trade),
        yuan(totals.refund),
        yuan(totals.coupon_refund),
        FEE.to_string(),
    ];
    let line: Vec<String> = summary.iter().map(|f| format!("`{f}")).collect();
    out.push_str(&line.join(","));
    out.push('\n');
    Some(out)
}

/// The fields of one row in the order of `kind`'s header, counted into `totals`.
fn fields(
    row: &Row<'_>,
    kind: BillType,
    appid: &str,
    mch_id: &str,
    totals: &mut Totals,
) -> Vec<String> {
    let o = row.order;
    let time = wechat_time(row.at);
    let mut f: Vec<String> = vec![
        time.clone(),
        appid.to_string(),
        mch_id.to_string(),
        "0".into(),
        String::new(),
        o.transaction_id.clone(),
        o.out_trade_no.clone(),
        openid(&o.transaction_id),
        "JSAPI".into(),
        if row.refund.is_some() {
            "REFUND"
        } else {
            "SUCCESS"
        }
        .into(),
        "OTHERS".into(),
        "CNY".into(),
        yuan(o.total_fee.into()),
        yuan(order_coupon_fee(o).into()),
    ];
    totals.rows += 1;
    // 总交易额 sums the rows of the bill's own kind: payments in ALL and SUCCESS, refunds in REFUND.
    if (kind == BillType::Refund) == row.refund.is_some() {
        totals.trade += u128::from(o.total_fee);
    }
    match (kind, row.refund) {
        (BillType::Refund, Some(r)) => {
            let success = match (r.status, r.success_time) {
                (BookedStatus::Success, Some(t)) => wechat_time(t),
                _ => String::new(),
            };
            f.extend([time, success]);
            f.extend(refund_fields(r, totals));
        }
        (BillType::All, Some(r)) => f.extend(refund_fields(r, totals)),
        // A payment row of an ALL bill: no refund, written as WeChat does.
        (BillType::All, None) => f.extend(
            ["0", "0", "0.00", "0.00", "", ""]
                .iter()
                .map(|s| s.to_string()),
        ),
        _ => {}
    }
    f.extend([GOODS.into(), String::new(), FEE.into(), RATE.into()]);
    f
}

/// 微信退款单号 to 退款状态, counted into `totals`.
fn refund_fields(r: &Refund, totals: &mut Totals) -> [String; 6] {
    let settlement = r.settlement_refund_fee();
    let coupon = refund_coupon_fee(r);
    totals.refund += u128::from(settlement);
    totals.coupon_refund += u128::from(coupon);
    [
        r.refund_id.clone(),
        r.out_refund_no.clone(),
        yuan(settlement.into()),
        yuan(coupon.into()),
        "ORIGINAL".into(),
        r.status.as_str().into(),
    ]
}

/// `tar_type=GZIP`: the bill text gzipped.
pub fn gzip(text: &str) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes())?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_is_written_exactly_from_fen() {
        // GIVEN amounts in fen WHEN written as yuan THEN two decimals, no rounding
        assert_eq!(yuan(0), "0.00");
        assert_eq!(yuan(1), "0.01");
        assert_eq!(yuan(10), "0.10");
        assert_eq!(yuan(100), "1.00");
        assert_eq!(yuan(123_456), "1234.56");
        // AND the largest order total (100 000 000 000 fen) and beyond u64
        assert_eq!(yuan(100_000_000_000), "1000000000.00");
        assert_eq!(yuan(u128::from(u64::MAX) + 1), "184467440737095516.16");
    }

    #[test]
    fn bill_dates_are_real_calendar_days() {
        assert_eq!(
            parse_bill_date("20250228"),
            Some(time::macros::date!(2025 - 02 - 28))
        );
        assert_eq!(
            parse_bill_date("20240229"),
            Some(time::macros::date!(2024 - 02 - 29))
        );
        for bad in [
            "",
            "2025022",
            "202502281",
            "2025-02-28",
            "20250229",
            "20251301",
            "20250100",
            "+2025022",
            "２０２５０２２８",
        ] {
            assert_eq!(parse_bill_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn bill_types_are_case_sensitive_with_all_by_default() {
        assert_eq!(BillType::parse(None), Some(BillType::All));
        assert_eq!(BillType::parse(Some("")), Some(BillType::All));
        assert_eq!(BillType::parse(Some("REFUND")), Some(BillType::Refund));
        assert_eq!(BillType::parse(Some("refund")), None);
        assert_eq!(BillType::parse(Some("FAIL")), None);
    }

    #[test]
    fn openids_are_stable_and_shaped_like_wechats() {
        let a = openid("4200000001202501010000000001");
        assert_eq!(a, openid("4200000001202501010000000001"));
        assert_ne!(a, openid("4200000001202501010000000002"));
        assert_eq!(a.len(), 28);
        assert!(a.starts_with("oUpF8u"));
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn headers_have_the_documented_column_counts() {
        assert_eq!(ALL_HEADER.split(',').count(), 24);
        assert_eq!(SUCCESS_HEADER.split(',').count(), 18);
        assert_eq!(REFUND_HEADER.split(',').count(), 26);
        assert_eq!(SUMMARY_HEADER.split(',').count(), 5);
    }
}
