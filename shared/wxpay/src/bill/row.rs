//! One refund of the REFUND bill, typed: ids through the crate's newtypes, amounts in fen, times
//! checked as `yyyy-MM-dd HH:mm:ss` (Beijing time). The buyer's openid (用户标识) is never kept.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::bill::columns::{Col, DETAIL, Layout, Slot};
use crate::bill::date::{BillDate, digits};
use crate::bill::{BillError, yuan_to_fen};
use crate::ids::{IdError, OutRefundNo, OutTradeNo, RefundId, TransactionId};
use crate::money::Fen;

/// 退款状态 as the bill reports it, at the time the bill was made (about 10:00 the next day).
/// Unlike a query, the bill may say `FAIL`. Unknown values are kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BilledRefundStatus {
    Success,
    Processing,
    RefundClose,
    Change,
    Fail,
    Other(String),
}

impl BilledRefundStatus {
    pub fn as_str(&self) -> &str {
        match self {
            BilledRefundStatus::Success => "SUCCESS",
            BilledRefundStatus::Processing => "PROCESSING",
            BilledRefundStatus::RefundClose => "REFUNDCLOSE",
            BilledRefundStatus::Change => "CHANGE",
            BilledRefundStatus::Fail => "FAIL",
            BilledRefundStatus::Other(s) => s,
        }
    }
}

impl FromStr for BilledRefundStatus {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "SUCCESS" => BilledRefundStatus::Success,
            "PROCESSING" => BilledRefundStatus::Processing,
            "REFUNDCLOSE" => BilledRefundStatus::RefundClose,
            "CHANGE" => BilledRefundStatus::Change,
            "FAIL" => BilledRefundStatus::Fail,
            other => BilledRefundStatus::Other(other.chars().take(32).collect()),
        })
    }
}

impl fmt::Display for BilledRefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One detail row of a REFUND bill. Optional text columns are `None` when the header lacks them
/// or the field is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundBillRow {
    /// The row's line in the bill (the header is line 1), for reports.
    pub line: u64,
    /// 交易时间: when the order was paid.
    pub trade_time: String,
    /// 公众账号ID.
    pub appid: Option<String>,
    /// 商户号.
    pub mch_id: Option<String>,
    /// 特约商户号 / 子商户号 (`0` when none).
    pub sub_mch_id: Option<String>,
    /// 设备号.
    pub device_info: Option<String>,
    /// 微信订单号.
    pub transaction_id: TransactionId,
    /// 商户订单号.
    pub out_trade_no: OutTradeNo,
    /// 交易类型 (`JSAPI`, `NATIVE`, …).
    pub trade_type: Option<String>,
    /// 交易状态 (`REFUND` in a refund bill).
    pub trade_state: Option<String>,
    /// 付款银行.
    pub bank_type: Option<String>,
    /// 货币种类 (`CNY`).
    pub fee_type: Option<String>,
    /// The order's total, v2 `total_fee`: 订单金额 when the header has it (2018+), else the
    /// settlement total (in the old header 总金额 was the order total; there was no other).
    pub total_fee: Fen,
    /// 应结订单金额 (old header: 总金额): the order total less non-recharge coupons.
    pub settlement_total_fee: Fen,
    /// 代金券金额 / 代金券或立减优惠金额 / 企业红包金额, when the header has it.
    pub coupon_fee: Option<Fen>,
    /// 退款申请时间.
    pub apply_time: String,
    /// 退款成功时间; `None` while the refund was not successful.
    pub success_time: Option<String>,
    /// 微信退款单号.
    pub refund_id: RefundId,
    /// 商户退款单号.
    pub out_refund_no: OutRefundNo,
    /// The refund asked for, v2 `refund_fee`: 申请退款金额 when the header has it (2018+), else
    /// 退款金额 plus the coupon refund column.
    pub refund_fee: Fen,
    /// 退款金额: the settlement refund (v2 `settlement_refund_fee`); what 退款总金额 adds up.
    pub settlement_refund_fee: Fen,
    /// 充值券退款金额 / 代金券或立减优惠退款金额 / 企业红包退款金额; 0 when the header has none.
    pub coupon_refund_fee: Fen,
    /// 退款类型 (`ORIGINAL`, `BALANCE`, …).
    pub refund_type: String,
    /// 退款状态.
    pub refund_status: BilledRefundStatus,
    /// 商品名称.
    pub body: Option<String>,
    /// 商户数据包.
    pub attach: Option<String>,
    /// 手续费, as written: fees are not money we reconcile, and WeChat writes them with up to
    /// 5 decimals (`0.00000`), which no fen amount has.
    pub service_fee: Option<String>,
    /// 费率 (`0.60%`).
    pub rate: Option<String>,
    /// 费率备注.
    pub rate_note: Option<String>,
    /// Every column not in the table, by header name, in header order.
    pub extra: Vec<(String, String)>,
}

/// Reads typed fields of one row, naming the line and column in every error.
struct Fields<'a> {
    layout: &'a Layout,
    fields: &'a [&'a str],
    line: u64,
}

impl<'a> Fields<'a> {
    fn invalid(&self, col: Col, problem: impl Into<String>) -> BillError {
        let column = self
            .layout
            .name(col as usize)
            .unwrap_or(DETAIL[col as usize].names[0]);
        BillError::InvalidField {
            line: self.line,
            column: column.to_string(),
            problem: problem.into(),
        }
    }

    /// The raw field, `None` when the header has no such column.
    fn raw(&self, col: Col) -> Option<&'a str> {
        self.layout.get(self.fields, col as usize)
    }

    /// The field of a column that must hold a value.
    fn required(&self, col: Col) -> Result<&'a str, BillError> {
        match self.raw(col) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(self.invalid(col, "is empty")),
        }
    }

    fn text(&self, col: Col) -> Option<String> {
        self.raw(col).filter(|v| !v.is_empty()).map(str::to_string)
    }

    fn id<T: FromStr<Err = IdError>>(&self, col: Col) -> Result<T, BillError> {
        self.required(col)?
            .parse()
            .map_err(|e: IdError| self.invalid(col, e.problem))
    }

    fn amount(&self, col: Col) -> Result<Option<Fen>, BillError> {
        match self.raw(col) {
            None | Some("") => Ok(None),
            Some(v) => yuan_to_fen(v)
                .map(Some)
                .map_err(|e| self.invalid(col, e.to_string())),
        }
    }

    fn required_amount(&self, col: Col) -> Result<Fen, BillError> {
        self.amount(col)?
            .ok_or_else(|| self.invalid(col, "is empty"))
    }

    fn time(&self, col: Col) -> Result<Option<String>, BillError> {
        match self.raw(col) {
            None | Some("") => Ok(None),
            Some(v) => check_time(v)
                .map(|()| Some(v.to_string()))
                .map_err(|problem| self.invalid(col, problem)),
        }
    }

    fn required_time(&self, col: Col) -> Result<String, BillError> {
        self.time(col)?.ok_or_else(|| self.invalid(col, "is empty"))
    }
}

/// `yyyy-MM-dd HH:mm:ss` with a real date and a real time of day.
fn check_time(s: &str) -> Result<(), &'static str> {
    const SHAPE: &str = "is not a time yyyy-MM-dd HH:mm:ss";
    let b = s.as_bytes();
    if b.len() != 19 || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return Err(SHAPE);
    }
    s.get(..10)
        .and_then(|d| d.parse::<BillDate>().ok())
        .ok_or(SHAPE)?;
    let part = |r: std::ops::Range<usize>| s.get(r).and_then(digits).ok_or(SHAPE);
    let (h, m, sec) = (part(11..13)?, part(14..16)?, part(17..19)?);
    if h > 23 || m > 59 || sec > 59 {
        return Err(SHAPE);
    }
    Ok(())
}

impl RefundBillRow {
    /// Types one row whose fields (backticks stripped) follow `layout`.
    pub(crate) fn from_fields(
        layout: &Layout,
        fields: &[&str],
        line: u64,
    ) -> Result<RefundBillRow, BillError> {
        let f = Fields {
            layout,
            fields,
            line,
        };
        let settlement_total_fee = f.required_amount(Col::SettlementTotalFee)?;
        let settlement_refund_fee = f.required_amount(Col::SettlementRefundFee)?;
        let coupon_refund_fee = f.amount(Col::CouponRefundFee)?.unwrap_or(Fen::ZERO);
        // Without 申请退款金额 (bills before 2018) the refund asked for is the settlement refund
        // plus its coupon part, as v2 defines it (settlement_refund_fee = refund_fee minus the
        // coupon refund).
        let refund_fee = match f.amount(Col::AppliedRefundFee)? {
            Some(applied) => applied,
            None => settlement_refund_fee
                .checked_add(coupon_refund_fee)
                .ok_or_else(|| {
                    f.invalid(
                        Col::SettlementRefundFee,
                        "退款金额 plus its coupon part overflows",
                    )
                })?,
        };
        let Ok(refund_status) = f.required(Col::RefundStatus)?.parse::<BilledRefundStatus>();
        let extra = layout
            .slots
            .iter()
            .zip(fields)
            .zip(&layout.names)
            .filter(|((slot, _), _)| **slot == Slot::Extra)
            .map(|((_, value), name)| (name.clone(), (*value).to_string()))
            .collect();
        Ok(RefundBillRow {
            line,
            trade_time: f.required_time(Col::TradeTime)?,
            appid: f.text(Col::AppId),
            mch_id: f.text(Col::MchId),
            sub_mch_id: f.text(Col::SubMchId),
            device_info: f.text(Col::DeviceInfo),
            transaction_id: f.id(Col::TransactionId)?,
            out_trade_no: f.id(Col::OutTradeNo)?,
            trade_type: f.text(Col::TradeType),
            trade_state: f.text(Col::TradeState),
            bank_type: f.text(Col::BankType),
            fee_type: f.text(Col::FeeType),
            total_fee: f.amount(Col::TotalFee)?.unwrap_or(settlement_total_fee),
            settlement_total_fee,
            coupon_fee: f.amount(Col::CouponFee)?,
            apply_time: f.required_time(Col::ApplyTime)?,
            success_time: f.time(Col::SuccessTime)?,
            refund_id: f.id(Col::RefundId)?,
            out_refund_no: f.id(Col::OutRefundNo)?,
            refund_fee,
            settlement_refund_fee,
            coupon_refund_fee,
            refund_type: f.required(Col::RefundType)?.to_string(),
            refund_status,
            body: f.text(Col::Body),
            attach: f.text(Col::Attach),
            service_fee: f.text(Col::ServiceFee),
            rate: f.text(Col::Rate),
            rate_note: f.text(Col::RateNote),
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_must_be_real_beijing_timestamps() {
        for ok in [
            "2026-11-26 10:00:00",
            "2024-02-29 23:59:59",
            "2026-01-01 00:00:00",
        ] {
            assert_eq!(check_time(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "2026-11-26",
            "2026-11-26T10:00:00",
            "2026-11-26 24:00:00",
            "2026-11-26 10:60:00",
            "2026-11-26 10:00:60",
            "2026-02-30 10:00:00",
            "2026-11-26 1:00:000",
            "2026-11-26 10:00:0x",
            "2026/11/26 10:00:00",
            "2026-11-26 10:00:00 ",
            "2026-11-26 10：00:0",
        ] {
            assert!(check_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn statuses_include_fail_and_keep_unknown_values() {
        for (wire, status) in [
            ("SUCCESS", BilledRefundStatus::Success),
            ("PROCESSING", BilledRefundStatus::Processing),
            ("REFUNDCLOSE", BilledRefundStatus::RefundClose),
            ("CHANGE", BilledRefundStatus::Change),
            ("FAIL", BilledRefundStatus::Fail),
            ("NEW_ONE", BilledRefundStatus::Other("NEW_ONE".into())),
        ] {
            let parsed: BilledRefundStatus = wire.parse().unwrap();
            assert_eq!(parsed, status);
            assert_eq!(parsed.as_str(), wire);
            assert_eq!(parsed.to_string(), wire);
        }
        assert_eq!(
            "X".repeat(40).parse::<BilledRefundStatus>().unwrap(),
            BilledRefundStatus::Other("X".repeat(32))
        );
    }
}
