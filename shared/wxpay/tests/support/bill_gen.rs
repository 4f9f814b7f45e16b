//! A generated REFUND bill of any size, in WeChat's 2018+ format with CRLF line endings, produced
//! one line at a time (it never holds the bill): for the streaming test, the bench and the
//! memory example (included with `#[path]`).
//!
//! Row `i` (0-based) refunds `i % 9999 + 1` fen of settlement money plus `i % 3` fen of recharge
//! coupons, so the requested refund is their sum; the summary has the matching totals.

#![allow(dead_code)]

use std::io::Read;

pub const HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
pub const SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";

/// The settlement refund (退款金额) of row `i`, in fen.
pub fn settlement_refund(i: u64) -> u64 {
    i % 9_999 + 1
}

/// The recharge-coupon refund (充值券退款金额) of row `i`, in fen.
pub fn coupon_refund(i: u64) -> u64 {
    i % 3
}

/// The order total (订单金额 = 应结订单金额) of row `i`, in fen.
pub fn order_total(i: u64) -> u64 {
    settlement_refund(i) + coupon_refund(i) + 100
}

/// The sums the summary of an `n`-row bill states: (退款总金额, 充值券退款总金额, 申请退款总金额).
pub fn totals(n: u64) -> (u64, u64, u64) {
    let (mut s, mut c) = (0, 0);
    for i in 0..n {
        s += settlement_refund(i);
        c += coupon_refund(i);
    }
    (s, c, s + c)
}

fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// Row `i`, without its line ending.
pub fn row(i: u64) -> String {
    let status = match i % 50 {
        0 => "PROCESSING",
        1 => "CHANGE",
        _ => "SUCCESS",
    };
    let success = if status == "SUCCESS" {
        "2026-11-26 10:00:05"
    } else {
        ""
    };
    let (s, c) = (settlement_refund(i), coupon_refund(i));
    let fields = [
        "2026-11-25 12:00:00".to_string(),
        "wx2421b1c4370ec43b".into(),
        "1900000109".into(),
        "0".into(),
        String::new(),
        format!("42000020261125{i:014}"),
        format!("ORDER-{i:010}"),
        format!("oGEN{i:024}"),
        "JSAPI".into(),
        "REFUND".into(),
        "CMB_CREDIT".into(),
        "CNY".into(),
        yuan(order_total(i)),
        "0.00".into(),
        "2026-11-26 10:00:00".into(),
        success.into(),
        format!("503000020261126{i:014}"),
        format!("R-{i:010}"),
        yuan(s),
        yuan(c),
        "ORIGINAL".into(),
        status.into(),
        "会员月卡,连续包月".into(),
        String::new(),
        "0.00000".into(),
        "0.60%".into(),
        yuan(order_total(i)),
        yuan(s + c),
        String::new(),
    ];
    fields
        .iter()
        .map(|f| format!("`{f}"))
        .collect::<Vec<_>>()
        .join(",")
}

enum Stage {
    Header,
    Row(u64),
    SummaryHeader,
    Summary,
    Done,
}

/// The bill of `n` rows as a `Read`, made line by line.
pub struct GeneratedBill {
    n: u64,
    stage: Stage,
    line: Vec<u8>,
    pos: usize,
    settlement: u64,
    coupon: u64,
    orders: u64,
    /// The longest line it ever held, in bytes.
    pub max_line: usize,
}

impl GeneratedBill {
    pub fn new(n: u64) -> Self {
        GeneratedBill {
            n,
            stage: Stage::Header,
            line: Vec::new(),
            pos: 0,
            settlement: 0,
            coupon: 0,
            orders: 0,
            max_line: 0,
        }
    }

    /// The next line with its CRLF, or `None` at the end.
    fn next_line(&mut self) -> Option<String> {
        let (text, next) = match self.stage {
            Stage::Header => (HEADER.to_string(), first_row(self.n)),
            Stage::Row(i) => {
                self.settlement += settlement_refund(i);
                self.coupon += coupon_refund(i);
                self.orders += order_total(i);
                let next = if i + 1 < self.n {
                    Stage::Row(i + 1)
                } else {
                    Stage::SummaryHeader
                };
                (row(i), next)
            }
            Stage::SummaryHeader => (SUMMARY_HEADER.to_string(), Stage::Summary),
            Stage::Summary => {
                let values = [
                    self.n.to_string(),
                    yuan(self.orders),
                    yuan(self.settlement),
                    yuan(self.coupon),
                    "0.00000".into(),
                    yuan(self.orders),
                    yuan(self.settlement + self.coupon),
                ];
                let text = values
                    .iter()
                    .map(|v| format!("`{v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                (text, Stage::Done)
            }
            Stage::Done => return None,
        };
        self.stage = next;
        Some(text + "\r\n")
    }
}

fn first_row(n: u64) -> Stage {
    if n == 0 {
        Stage::SummaryHeader
    } else {
        Stage::Row(0)
    }
}

impl Read for GeneratedBill {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.line.len() {
            match self.next_line() {
                None => return Ok(0),
                Some(text) => {
                    self.line = text.into_bytes();
                    self.pos = 0;
                    self.max_line = self.max_line.max(self.line.len());
                }
            }
        }
        let n = out.len().min(self.line.len() - self.pos);
        out[..n].copy_from_slice(&self.line[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The whole bill of `n` rows in memory (for the bench).
pub fn bill_bytes(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bill = GeneratedBill::new(n);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match bill.read(&mut chunk) {
            Ok(0) | Err(_) => return out,
            Ok(k) => out.extend_from_slice(&chunk[..k]),
        }
    }
}
