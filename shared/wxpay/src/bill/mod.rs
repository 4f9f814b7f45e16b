//! Download bill (`/pay/downloadbill`, docs/PROTOCOL.md "Refund bill"): the signed request, the
//! reply (a gzip or plain-text bill, or an unsigned XML refusal) and a streaming parser of the
//! daily REFUND bill, read by header name and checked against its own summary.
//!
//! WeChat: "微信在次日9点启动生成前一天的对账单，建议商户10点后再获取" (the bill of a day is made
//! from 09:00 the next day; fetch it after 10:00) and "对账单中涉及金额的字段单位为“元”" (amounts
//! are in yuan). The bill is **not signed**: a row is a lead to confirm by a refund query, never a
//! fact to write to the ledger as such.
//!
//! ```no_run
//! # async fn f(client: &wxpay::client::WxPayClient, keys: &wxpay::MerchantKeys) -> Result<(), Box<dyn std::error::Error>> {
//! use wxpay::bill::{self, BillRequest, BillType};
//! let request = BillRequest { bill_date: "2026-11-26".parse()?, bill_type: BillType::Refund, gzip: true };
//! let reply = client.post_for_bytes(bill::PATH, request.to_xml(keys, &wxpay::NonceStr::random())?).await?;
//! let text = bill::read_reply(&reply.body)?; // NoBill / NotReady / Retry / Config / Malformed
//! let mut rows = bill::BillReader::new(text.as_bytes())?;
//! for row in &mut rows {
//!     let row = row?; // confirm row.out_refund_no by a refund query
//! }
//! let summary = rows.finish()?; // the count and the totals add up
//! # Ok(()) }
//! ```

mod columns;
mod date;
mod reader;
mod reply;
mod request;
mod row;
mod yuan;

use thiserror::Error;

use crate::money::Fen;

pub use date::{BillDate, BillDateError};
pub use reader::{BillReader, BillSummary, RefundBill, parse_refund_bill};
pub use reply::{BillRefusal, BillText, BillUnavailable, read_reply};
pub use request::{BillRequest, BillType, UnknownBillType};
pub use row::{BilledRefundStatus, RefundBillRow};
pub use yuan::{YuanError, fen_to_yuan, yuan_to_fen};

pub const PATH: &str = "/pay/downloadbill";

/// The largest bill text we read: far above a real day (a REFUND row is ~400 bytes, so this is
/// over a million refunds), small enough to hold once in a Lambda's memory.
pub const MAX_BILL_BYTES: usize = 512 << 20;
/// The largest gzip reply we decompress (a CSV bill compresses 5–10×, so a larger one would
/// exceed [`MAX_BILL_BYTES`] anyway).
pub const MAX_GZIP_BYTES: usize = 128 << 20;
/// The longest line of a bill (a real row is under 1 KiB; 商品名称 is at most 128 characters).
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// Why a bill text was refused. Messages name the line (1-based, the header is line 1) and the
/// column, never a line's content: rows carry the buyer's openid (用户标识).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BillError {
    #[error("reading the bill failed ({kind:?}): {message}")]
    Io {
        kind: std::io::ErrorKind,
        message: String,
    },
    #[error("the bill is empty: no header line")]
    Empty,
    #[error("line {line} is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong { line: u64 },
    #[error("line {line} is not UTF-8")]
    NotUtf8 { line: u64 },
    #[error("line 1 is not a column header (it starts with a backtick)")]
    NoHeader,
    #[error("column {column} appears twice in the header of line {line}")]
    DuplicateColumn { line: u64, column: String },
    #[error("the bill has no column {}", .names.join(" or "))]
    MissingColumn { names: &'static [&'static str] },
    #[error("the summary has no column {}", .names.join(" or "))]
    MissingSummaryColumn { names: &'static [&'static str] },
    #[error("line {line}: a field does not start with a backtick (`)")]
    NoBacktick { line: u64 },
    #[error("line {line} has {found} fields, the header has {expected}")]
    FieldCount {
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("line {line}, column {column}: {problem}")]
    InvalidField {
        line: u64,
        column: String,
        problem: String,
    },
    #[error("the bill ends before its summary (总交易单数): truncated?")]
    MissingSummary,
    #[error("line {line}: text after the summary")]
    TrailingData { line: u64 },
    #[error("the summary counts {summary} rows ({column}), the bill has {rows}")]
    CountMismatch {
        column: &'static str,
        summary: u64,
        rows: u64,
    },
    #[error(
        "the summary's {column} is {} yuan, the rows' {rows_column} add up to {} yuan",
        fen_to_yuan(*.summary),
        fen_to_yuan(*.rows)
    )]
    TotalMismatch {
        column: String,
        rows_column: String,
        summary: Fen,
        rows: Fen,
    },
    #[error("the rows' {column} add up to more than the largest amount we accept")]
    TotalOverflow { column: &'static str },
}

impl From<std::io::Error> for BillError {
    fn from(e: std::io::Error) -> Self {
        BillError::Io {
            kind: e.kind(),
            message: e.to_string().chars().take(200).collect(),
        }
    }
}

#[cfg(test)]
mod tests;
