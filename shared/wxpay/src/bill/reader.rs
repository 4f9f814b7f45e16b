//! The bill text, streamed: the detail header (line 1), one row per line with every field
//! prefixed by a backtick, then the summary header (recognised by its first field 总交易单数, which
//! has no backtick) and the summary values. One line is held at a time. At the end the summary is
//! checked against the rows: a bill that does not add up is refused.

use std::io::{BufRead, Read};
use std::iter::FusedIterator;

use crate::bill::columns::{Col, DETAIL, Layout, SUMMARY, SUMMARY_FIRST, Slot, SumCol};
use crate::bill::{BillError, MAX_LINE_BYTES, RefundBillRow, yuan_to_fen};
use crate::money::Fen;

/// The summary line, checked: `count` rows, and the totals are the sums of their columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillSummary {
    /// 总交易单数: the number of rows.
    pub count: u64,
    /// 退款总金额 / 总退款金额: the sum of 退款金额 (`settlement_refund_fee`).
    pub refund_fee_total: Fen,
    /// 申请退款总金额 (2018+ header): the sum of `refund_fee`.
    pub applied_refund_total: Option<Fen>,
    /// 充值券退款总金额 / 总代金券或立减优惠退款金额 / 总企业红包退款金额: the sum of
    /// `coupon_refund_fee`.
    pub coupon_refund_total: Option<Fen>,
    /// Every other summary column (总交易额 / 应结订单总金额, 订单总金额, 手续费总金额, new ones) by
    /// header name, as written: not checked.
    pub extra: Vec<(String, String)>,
}

/// A whole bill: its rows and its checked summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundBill {
    pub rows: Vec<RefundBillRow>,
    pub summary: BillSummary,
}

/// Parses a whole REFUND bill text (after [`crate::bill::read_reply`]).
pub fn parse_refund_bill(text: &[u8]) -> Result<RefundBill, BillError> {
    let mut reader = BillReader::new(text)?;
    let rows = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
    let summary = reader.finish()?;
    Ok(RefundBill { rows, summary })
}

/// What the rows add up to.
#[derive(Default)]
struct Tally {
    rows: u64,
    refund_fee: Fen,
    settlement_refund_fee: Fen,
    coupon_refund_fee: Fen,
}

enum State {
    Rows,
    Done(BillSummary),
    Failed(BillError),
}

/// A REFUND bill read row by row from any `BufRead` (a byte slice, a file, a gzip decoder), holding
/// one line at a time. Iterate for the rows, then call [`BillReader::finish`] for the summary. The
/// first error ends the iteration, and `finish` returns it.
pub struct BillReader<R> {
    input: R,
    /// The number of the last line read (1-based).
    line: u64,
    buf: Vec<u8>,
    layout: Layout,
    tally: Tally,
    state: State,
}

impl<R> std::fmt::Debug for BillReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillReader")
            .field("line", &self.line)
            .field("columns", &self.layout.names)
            .field("rows", &self.tally.rows)
            .finish()
    }
}

/// Reads the next line into `buf` without its `\n` / `\r\n` (and, on line 1, a UTF-8 BOM).
/// `None` at the end of the input.
fn read_line<'b, R: BufRead>(
    input: &mut R,
    buf: &'b mut Vec<u8>,
    line: &mut u64,
) -> Result<Option<&'b str>, BillError> {
    buf.clear();
    // Room for the longest line and its "\r\n"; a longer one is refused without reading it all.
    let limit = MAX_LINE_BYTES as u64 + 2;
    let n = input.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    *line += 1;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n as u64 == limit {
        return Err(BillError::LineTooLong { line: *line });
    }
    while buf.last() == Some(&b'\r') {
        buf.pop();
    }
    let bytes = if *line == 1 {
        buf.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(buf)
    } else {
        buf
    };
    std::str::from_utf8(bytes)
        .map(Some)
        .map_err(|_| BillError::NotUtf8 { line: *line })
}

/// The fields of a row or summary line: each starts with a backtick, so fields are separated by
/// "," + "`" (a comma inside 商品名称 does not split it).
fn backtick_fields(text: &str, line: u64) -> Result<Vec<&str>, BillError> {
    match text.strip_prefix('`') {
        Some(rest) => Ok(rest.split(",`").collect()),
        None => Err(BillError::NoBacktick { line }),
    }
}

fn check_count(line: u64, expected: usize, found: usize) -> Result<(), BillError> {
    if expected == found {
        Ok(())
    } else {
        Err(BillError::FieldCount {
            line,
            expected,
            found,
        })
    }
}

fn add(total: Fen, v: Fen, column: &'static str) -> Result<Fen, BillError> {
    total
        .checked_add(v)
        .ok_or(BillError::TotalOverflow { column })
}

impl<R: BufRead> BillReader<R> {
    /// Reads and resolves the detail header.
    pub fn new(mut input: R) -> Result<Self, BillError> {
        let mut buf = Vec::new();
        let mut line = 0;
        let layout = loop {
            let Some(text) = read_line(&mut input, &mut buf, &mut line)? else {
                return Err(BillError::Empty);
            };
            if text.trim().is_empty() {
                continue;
            }
            if text.starts_with('`') {
                return Err(BillError::NoHeader);
            }
            let fields: Vec<&str> = text.split(',').collect();
            break Layout::resolve(&fields, &DETAIL, line, |names| BillError::MissingColumn {
                names,
            })?;
        };
        Ok(BillReader {
            input,
            line,
            buf,
            layout,
            tally: Tally::default(),
            state: State::Rows,
        })
    }

    /// Reads the rest of the bill (rows included) and returns its summary, checked against the
    /// rows; or the first error.
    pub fn finish(mut self) -> Result<BillSummary, BillError> {
        for row in self.by_ref() {
            row?;
        }
        match self.state {
            State::Done(summary) => Ok(summary),
            State::Failed(e) => Err(e),
            State::Rows => Err(BillError::MissingSummary),
        }
    }

    /// The next row, `Ok(None)` once the summary is read and checked.
    fn step(&mut self) -> Result<Option<RefundBillRow>, BillError> {
        loop {
            let Some(text) = read_line(&mut self.input, &mut self.buf, &mut self.line)? else {
                return Err(BillError::MissingSummary);
            };
            if text.trim().is_empty() {
                continue;
            }
            if text.split(',').next().map(str::trim) == Some(SUMMARY_FIRST) {
                let header = text.to_string();
                let summary = self.summary(&header)?;
                self.state = State::Done(summary);
                return Ok(None);
            }
            let fields = backtick_fields(text, self.line)?;
            check_count(self.line, self.layout.names.len(), fields.len())?;
            let row = RefundBillRow::from_fields(&self.layout, &fields, self.line)?;
            let t = &mut self.tally;
            t.rows += 1;
            t.refund_fee = add(t.refund_fee, row.refund_fee, "申请退款金额")?;
            t.settlement_refund_fee = add(
                t.settlement_refund_fee,
                row.settlement_refund_fee,
                "退款金额",
            )?;
            t.coupon_refund_fee =
                add(t.coupon_refund_fee, row.coupon_refund_fee, "充值券退款金额")?;
            return Ok(Some(row));
        }
    }

    /// Reads the summary values after its header, checks that nothing but blank lines follows,
    /// and that the summary agrees with the rows.
    fn summary(&mut self, header: &str) -> Result<BillSummary, BillError> {
        let header_line = self.line;
        let names: Vec<&str> = header.split(',').collect();
        let layout = Layout::resolve(&names, &SUMMARY, header_line, |names| {
            BillError::MissingSummaryColumn { names }
        })?;
        let values: Vec<String> = loop {
            let Some(text) = read_line(&mut self.input, &mut self.buf, &mut self.line)? else {
                return Err(BillError::MissingSummary);
            };
            if !text.trim().is_empty() {
                let fields = backtick_fields(text, self.line)?;
                check_count(self.line, names.len(), fields.len())?;
                break fields.into_iter().map(str::to_string).collect();
            }
        };
        let values_line = self.line;
        while let Some(text) = read_line(&mut self.input, &mut self.buf, &mut self.line)? {
            if !text.trim().is_empty() {
                return Err(BillError::TrailingData { line: self.line });
            }
        }
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let invalid = |k: SumCol, problem: String| BillError::InvalidField {
            line: values_line,
            column: layout.name(k as usize).unwrap_or_default().to_string(),
            problem,
        };
        let amount = |k: SumCol| -> Result<Option<Fen>, BillError> {
            layout
                .get(&values, k as usize)
                .map(|v| yuan_to_fen(v).map_err(|e| invalid(k, e.to_string())))
                .transpose()
        };
        let count_text = layout.get(&values, SumCol::Count as usize).unwrap_or("");
        let count = if !count_text.is_empty()
            && count_text.len() <= 19
            && count_text.bytes().all(|b| b.is_ascii_digit())
        {
            count_text.parse::<u64>().ok()
        } else {
            None
        }
        .ok_or_else(|| invalid(SumCol::Count, "is not a whole number".into()))?;
        let summary = BillSummary {
            count,
            refund_fee_total: amount(SumCol::RefundTotal)?
                .ok_or_else(|| invalid(SumCol::RefundTotal, "is empty".into()))?,
            applied_refund_total: amount(SumCol::AppliedRefundTotal)?,
            coupon_refund_total: amount(SumCol::CouponRefundTotal)?,
            extra: layout
                .slots
                .iter()
                .zip(&layout.names)
                .zip(&values)
                .filter(|((slot, _), _)| **slot == Slot::Extra)
                .map(|((_, name), value)| (name.clone(), (*value).to_string()))
                .collect(),
        };
        self.check(&summary, &layout)?;
        Ok(summary)
    }

    /// The summary must agree with the rows: count, 退款金额, 申请退款金额, coupon refunds.
    fn check(&self, s: &BillSummary, layout: &Layout) -> Result<(), BillError> {
        let t = &self.tally;
        if s.count != t.rows {
            return Err(BillError::CountMismatch {
                column: SUMMARY_FIRST,
                summary: s.count,
                rows: t.rows,
            });
        }
        let detail = |col: Col| {
            self.layout
                .name(col as usize)
                .unwrap_or(DETAIL[col as usize].names[0])
                .to_string()
        };
        let summed = |k: SumCol| {
            layout
                .name(k as usize)
                .unwrap_or(SUMMARY[k as usize].names[0])
                .to_string()
        };
        let applied_column = if self.layout.name(Col::AppliedRefundFee as usize).is_some() {
            Col::AppliedRefundFee
        } else {
            Col::SettlementRefundFee
        };
        for (summary, rows, k, col) in [
            (
                Some(s.refund_fee_total),
                t.settlement_refund_fee,
                SumCol::RefundTotal,
                Col::SettlementRefundFee,
            ),
            (
                s.applied_refund_total,
                t.refund_fee,
                SumCol::AppliedRefundTotal,
                applied_column,
            ),
            (
                s.coupon_refund_total,
                t.coupon_refund_fee,
                SumCol::CouponRefundTotal,
                Col::CouponRefundFee,
            ),
        ] {
            if let Some(summary) = summary
                && summary != rows
            {
                return Err(BillError::TotalMismatch {
                    column: summed(k),
                    rows_column: detail(col),
                    summary,
                    rows,
                });
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: BillError) -> Option<Result<RefundBillRow, BillError>> {
        self.state = State::Failed(e.clone());
        Some(Err(e))
    }
}

impl<R: BufRead> Iterator for BillReader<R> {
    type Item = Result<RefundBillRow, BillError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !matches!(self.state, State::Rows) {
            return None;
        }
        match self.step() {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => None,
            Err(e) => self.fail(e),
        }
    }
}

impl<R: BufRead> FusedIterator for BillReader<R> {}
