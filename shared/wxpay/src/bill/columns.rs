//! The REFUND bill's columns, in one table: every header name WeChat has used for each column we
//! read (the documented 26-column header, the 2018+ header of merchants on 免充值券 settlement, and
//! the old 企业红包 wording), and how a header line is resolved into positions. Columns are found
//! by name, never by index; a column not in the table is kept as an extra; 用户标识 (the buyer's
//! openid) is dropped.

use crate::bill::BillError;

/// A column we read from the detail rows. The discriminant is the index into [`DETAIL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Col {
    TradeTime,
    AppId,
    MchId,
    SubMchId,
    DeviceInfo,
    TransactionId,
    OutTradeNo,
    TradeType,
    TradeState,
    BankType,
    FeeType,
    SettlementTotalFee,
    CouponFee,
    ApplyTime,
    SuccessTime,
    RefundId,
    OutRefundNo,
    SettlementRefundFee,
    CouponRefundFee,
    RefundType,
    RefundStatus,
    Body,
    Attach,
    ServiceFee,
    Rate,
    TotalFee,
    AppliedRefundFee,
    RateNote,
}

/// A summary column we check. The discriminant is the index into [`SUMMARY`]. Every other summary
/// column (总交易额 / 应结订单总金额, 订单总金额, 手续费总金额, …) is kept as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SumCol {
    Count,
    RefundTotal,
    CouponRefundTotal,
    AppliedRefundTotal,
}

/// One column: every header name it has had (the first is the current or documented one, used in
/// errors) and whether a bill without it is refused.
pub(crate) struct Spec<C> {
    pub col: C,
    pub names: &'static [&'static str],
    pub required: bool,
}

const fn req<C>(col: C, names: &'static [&'static str]) -> Spec<C> {
    Spec {
        col,
        names,
        required: true,
    }
}

const fn opt<C>(col: C, names: &'static [&'static str]) -> Spec<C> {
    Spec {
        col,
        names,
        required: false,
    }
}

/// The detail header. Old = the documented 26 columns; new = the 2018+ header (29 columns);
/// 红包 = old merchants' 企业红包 wording.
pub(crate) const DETAIL: [Spec<Col>; 28] = [
    req(Col::TradeTime, &["交易时间"]),
    opt(Col::AppId, &["公众账号ID"]),
    opt(Col::MchId, &["商户号"]),
    // old: 子商户号; new: 特约商户号
    opt(Col::SubMchId, &["特约商户号", "子商户号"]),
    opt(Col::DeviceInfo, &["设备号"]),
    req(Col::TransactionId, &["微信订单号"]),
    req(Col::OutTradeNo, &["商户订单号"]),
    opt(Col::TradeType, &["交易类型"]),
    opt(Col::TradeState, &["交易状态"]),
    opt(Col::BankType, &["付款银行"]),
    opt(Col::FeeType, &["货币种类"]),
    // new: 应结订单金额 (订单金额 less non-recharge coupons); old: 总金额
    req(Col::SettlementTotalFee, &["应结订单金额", "总金额"]),
    opt(
        Col::CouponFee,
        &["代金券金额", "代金券或立减优惠金额", "企业红包金额"],
    ),
    req(Col::ApplyTime, &["退款申请时间"]),
    req(Col::SuccessTime, &["退款成功时间"]),
    req(Col::RefundId, &["微信退款单号"]),
    req(Col::OutRefundNo, &["商户退款单号"]),
    // the settlement refund: what left the merchant's settled funds
    req(Col::SettlementRefundFee, &["退款金额"]),
    opt(
        Col::CouponRefundFee,
        &[
            "充值券退款金额",
            "代金券或立减优惠退款金额",
            "企业红包退款金额",
        ],
    ),
    req(Col::RefundType, &["退款类型"]),
    req(Col::RefundStatus, &["退款状态"]),
    opt(Col::Body, &["商品名称"]),
    opt(Col::Attach, &["商户数据包"]),
    opt(Col::ServiceFee, &["手续费"]),
    opt(Col::Rate, &["费率"]),
    // new only: the order total (v2 total_fee) and the requested refund (v2 refund_fee)
    opt(Col::TotalFee, &["订单金额"]),
    opt(Col::AppliedRefundFee, &["申请退款金额"]),
    opt(Col::RateNote, &["费率备注"]),
];

/// The summary header (the second-to-last line): the columns checked against the rows.
pub(crate) const SUMMARY: [Spec<SumCol>; 4] = [
    req(SumCol::Count, &["总交易单数"]),
    // the sum of 退款金额
    req(SumCol::RefundTotal, &["退款总金额", "总退款金额"]),
    opt(
        SumCol::CouponRefundTotal,
        &[
            "充值券退款总金额",
            "总代金券或立减优惠退款金额",
            "总企业红包退款金额",
        ],
    ),
    // new only: the sum of 申请退款金额
    opt(SumCol::AppliedRefundTotal, &["申请退款总金额"]),
];

// Entry i of each table is the column with discriminant i: checked when compiling.
const _: () = {
    let mut i = 0;
    while i < DETAIL.len() {
        assert!(DETAIL[i].col as usize == i);
        i += 1;
    }
    let mut i = 0;
    while i < SUMMARY.len() {
        assert!(SUMMARY[i].col as usize == i);
        i += 1;
    }
};

/// The first field of the summary header: how the end of the rows is recognised.
pub(crate) const SUMMARY_FIRST: &str = "总交易单数";

/// A column holding the buyer's openid: never stored, never echoed.
fn is_openid(name: &str) -> bool {
    name.contains("用户标识")
}

/// What a position of the header holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A column of the table, by its index.
    Known(usize),
    /// 用户标识: skipped.
    Dropped,
    /// Not in the table: kept under its header name.
    Extra,
}

/// A resolved header line.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// The header's names, in order.
    pub names: Vec<String>,
    pub slots: Vec<Slot>,
    /// The position of each table column, if the header has it.
    pub pos: Vec<Option<usize>>,
}

impl Layout {
    /// Resolves header names against a table. Refuses a column named twice (two aliases of one
    /// column count as the same column) and a missing required column.
    pub fn resolve<C>(
        fields: &[&str],
        table: &[Spec<C>],
        line: u64,
        missing: fn(&'static [&'static str]) -> BillError,
    ) -> Result<Layout, BillError> {
        let mut names = Vec::with_capacity(fields.len());
        let mut slots = Vec::with_capacity(fields.len());
        let mut pos = vec![None; table.len()];
        for (i, raw) in fields.iter().enumerate() {
            let name = raw.trim();
            if names.iter().any(|n: &String| n == name) {
                return Err(BillError::DuplicateColumn {
                    line,
                    column: name.to_string(),
                });
            }
            let slot = match table.iter().position(|s| s.names.contains(&name)) {
                Some(k) => {
                    if pos[k].is_some() {
                        return Err(BillError::DuplicateColumn {
                            line,
                            column: name.to_string(),
                        });
                    }
                    pos[k] = Some(i);
                    Slot::Known(k)
                }
                None if is_openid(name) => Slot::Dropped,
                None => Slot::Extra,
            };
            names.push(name.to_string());
            slots.push(slot);
        }
        if let Some(spec) = table
            .iter()
            .zip(&pos)
            .find(|(s, p)| s.required && p.is_none())
            .map(|(s, _)| s)
        {
            return Err(missing(spec.names));
        }
        Ok(Layout { names, slots, pos })
    }

    /// The field of table column `k` in a row, if the header has that column.
    pub fn get<'a>(&self, fields: &[&'a str], k: usize) -> Option<&'a str> {
        self.pos
            .get(k)
            .copied()
            .flatten()
            .and_then(|i| fields.get(i).copied())
    }

    /// The header name of table column `k` as this bill spells it.
    pub fn name(&self, k: usize) -> Option<&str> {
        self.pos
            .get(k)
            .copied()
            .flatten()
            .and_then(|i| self.names.get(i))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_are_indexed_by_their_enums_and_names_are_unique() {
        // GIVEN each table THEN entry i is the column with discriminant i
        for (i, s) in DETAIL.iter().enumerate() {
            assert_eq!(s.col as usize, i, "{:?}", s.col);
        }
        for (i, s) in SUMMARY.iter().enumerate() {
            assert_eq!(s.col as usize, i, "{:?}", s.col);
        }
        // AND no header name belongs to two columns, and none is an openid column
        let all: Vec<&str> = DETAIL
            .iter()
            .flat_map(|s| s.names.iter().copied())
            .collect();
        for (i, n) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(n), "{n} twice");
            assert!(!is_openid(n));
        }
        assert_eq!(SUMMARY[SumCol::Count as usize].names[0], SUMMARY_FIRST);
    }

    fn missing(names: &'static [&'static str]) -> BillError {
        BillError::MissingColumn { names }
    }

    #[test]
    fn a_header_resolves_by_name_whatever_the_order() {
        // GIVEN a header in an unusual order, with an alias, an openid column and an unknown one
        let header = [
            "商户退款单号",
            "新列",
            " 退款金额 ",
            "用户标识",
            "交易时间",
            "微信订单号",
            "商户订单号",
            "总金额",
            "退款申请时间",
            "退款成功时间",
            "微信退款单号",
            "退款类型",
            "退款状态",
        ];
        let layout = Layout::resolve(&header, &DETAIL, 1, missing).unwrap();
        // THEN every column is found where it is, the unknown one kept, the openid dropped
        assert_eq!(layout.slots[0], Slot::Known(Col::OutRefundNo as usize));
        assert_eq!(layout.slots[1], Slot::Extra);
        assert_eq!(layout.slots[3], Slot::Dropped);
        assert_eq!(layout.names[2], "退款金额");
        let row = ["R1", "x", "1.00", "openid", "t"];
        assert_eq!(
            layout.get(&row, Col::SettlementRefundFee as usize),
            Some("1.00")
        );
        assert_eq!(layout.get(&row, Col::TotalFee as usize), None);
        assert_eq!(
            layout.name(Col::SettlementTotalFee as usize),
            Some("总金额")
        );
        assert_eq!(layout.name(Col::TotalFee as usize), None);
    }

    #[test]
    fn duplicates_and_missing_required_columns_are_refused_by_name() {
        let base = [
            "交易时间",
            "微信订单号",
            "商户订单号",
            "应结订单金额",
            "退款申请时间",
            "退款成功时间",
            "微信退款单号",
            "商户退款单号",
            "退款金额",
            "退款类型",
            "退款状态",
        ];
        assert!(Layout::resolve(&base, &DETAIL, 1, missing).is_ok());
        // GIVEN a name twice, or two aliases of one column THEN refused, naming the column
        for extra in ["退款金额", "总金额"] {
            let mut h = base.to_vec();
            h.push(extra);
            assert_eq!(
                Layout::resolve(&h, &DETAIL, 1, missing).unwrap_err(),
                BillError::DuplicateColumn {
                    line: 1,
                    column: extra.into()
                }
            );
        }
        // GIVEN each required column left out THEN refused, naming it (with its aliases)
        for (i, gone) in base.iter().enumerate() {
            let mut h = base.to_vec();
            h.remove(i);
            let err = Layout::resolve(&h, &DETAIL, 1, missing).unwrap_err();
            assert!(err.to_string().contains(gone), "{err}");
        }
        let mut h = base.to_vec();
        h.retain(|n| *n != "应结订单金额");
        assert_eq!(
            Layout::resolve(&h, &DETAIL, 1, missing)
                .unwrap_err()
                .to_string(),
            "the bill has no column 应结订单金额 or 总金额"
        );
    }
}
