//! Refund query (`/pay/refundquery`, docs/PROTOCOL.md "Refund query"): the four selectors with their priority,
//! `offset` paging, and the reply's `_$n` / `_$n_$m` lists parsed generically into records.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::fields::{FieldError, opt, opt_string, req};
use crate::ids::{NonceStr, OutRefundNo, OutTradeNo, RefundId, TransactionId};
use crate::merchant::MerchantKeys;
use crate::money::Fen;
use crate::xml::{XmlError, XmlMap};

pub const PATH: &str = "/pay/refundquery";
/// Records WeChat returns per page of a query by order.
pub const PAGE_SIZE: u32 = 10;

/// Exactly one selector is sent. When a request carries several, WeChat uses the first present in
/// the order refund_id > out_refund_no > transaction_id > out_trade_no.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum QuerySelector {
    RefundId(RefundId),
    OutRefundNo(OutRefundNo),
    TransactionId(TransactionId),
    OutTradeNo(OutTradeNo),
}

impl QuerySelector {
    /// The selector names in priority order.
    pub const PRIORITY: [&'static str; 4] = [
        "refund_id",
        "out_refund_no",
        "transaction_id",
        "out_trade_no",
    ];

    pub fn field(&self) -> (&'static str, &str) {
        match self {
            QuerySelector::RefundId(v) => ("refund_id", v.as_str()),
            QuerySelector::OutRefundNo(v) => ("out_refund_no", v.as_str()),
            QuerySelector::TransactionId(v) => ("transaction_id", v.as_str()),
            QuerySelector::OutTradeNo(v) => ("out_trade_no", v.as_str()),
        }
    }

    /// The selector WeChat would use for a request carrying these fields (priority rule).
    pub fn from_request(map: &XmlMap) -> Result<Option<QuerySelector>, FieldError> {
        Ok(if let Some(v) = opt(map, "refund_id")? {
            Some(QuerySelector::RefundId(v))
        } else if let Some(v) = opt(map, "out_refund_no")? {
            Some(QuerySelector::OutRefundNo(v))
        } else if let Some(v) = opt(map, "transaction_id")? {
            Some(QuerySelector::TransactionId(v))
        } else {
            opt(map, "out_trade_no")?.map(QuerySelector::OutTradeNo)
        })
    }

    /// Whether the query is by order (pages of 10 with `offset`) rather than by one refund.
    pub fn is_by_order(&self) -> bool {
        matches!(
            self,
            QuerySelector::TransactionId(_) | QuerySelector::OutTradeNo(_)
        )
    }
}

/// A refund query; `offset` pages through an order's refunds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundQueryRequest {
    pub selector: QuerySelector,
    pub offset: Option<u32>,
}

impl RefundQueryRequest {
    pub fn to_xml(&self, keys: &MerchantKeys, nonce: &NonceStr) -> Result<String, XmlError> {
        let offset = self.offset.map(|o| o.to_string());
        let mut fields = vec![self.selector.field()];
        if let Some(o) = &offset {
            fields.push(("offset", o));
        }
        keys.signed_xml(&fields, nonce)
    }
}

/// `refund_status(_$n)` (docs/PROTOCOL.md, "Refund status values"). Unknown values are kept and treated as not final.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WxRefundStatus {
    Processing,
    Success,
    RefundClose,
    Change,
    Other(String),
}

impl WxRefundStatus {
    pub fn as_str(&self) -> &str {
        match self {
            WxRefundStatus::Processing => "PROCESSING",
            WxRefundStatus::Success => "SUCCESS",
            WxRefundStatus::RefundClose => "REFUNDCLOSE",
            WxRefundStatus::Change => "CHANGE",
            WxRefundStatus::Other(s) => s,
        }
    }

    /// SUCCESS, REFUNDCLOSE and CHANGE end the refund on WeChat's side (CHANGE needs a person).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            WxRefundStatus::Success | WxRefundStatus::RefundClose | WxRefundStatus::Change
        )
    }
}

impl FromStr for WxRefundStatus {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "PROCESSING" => WxRefundStatus::Processing,
            "SUCCESS" => WxRefundStatus::Success,
            "REFUNDCLOSE" => WxRefundStatus::RefundClose,
            "CHANGE" => WxRefundStatus::Change,
            other => WxRefundStatus::Other(other.chars().take(32).collect()),
        })
    }
}

impl fmt::Display for WxRefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One coupon of one refund (`coupon_*_$n_$m`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRefund {
    pub coupon_type: Option<String>,
    pub coupon_refund_id: Option<String>,
    pub coupon_refund_fee: Option<Fen>,
}

/// One refund of the order (`*_$n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueriedRefund {
    pub out_refund_no: OutRefundNo,
    pub refund_id: RefundId,
    pub refund_channel: Option<String>,
    pub refund_fee: Fen,
    pub settlement_refund_fee: Option<Fen>,
    pub refund_status: WxRefundStatus,
    pub refund_account: Option<String>,
    /// `refund_recv_accout_$n` [sic]: where the money went.
    pub refund_recv_account: Option<String>,
    pub refund_success_time: Option<String>,
    pub coupon_refund_fee: Option<Fen>,
    pub coupons: Vec<CouponRefund>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundQueryResponse {
    pub transaction_id: Option<TransactionId>,
    pub out_trade_no: Option<OutTradeNo>,
    pub total_fee: Option<Fen>,
    pub settlement_total_fee: Option<Fen>,
    pub fee_type: Option<String>,
    pub cash_fee: Option<Fen>,
    /// Records in this reply.
    pub refund_count: u32,
    /// All refunds of the order; only present when `offset` was sent.
    pub total_refund_count: Option<u32>,
    pub refunds: Vec<QueriedRefund>,
    /// Every field of the reply, unknown ones included.
    pub fields: XmlMap,
}

const RECORD_FIELDS: [&str; 11] = [
    "out_refund_no",
    "refund_id",
    "refund_channel",
    "refund_fee",
    "settlement_refund_fee",
    "refund_status",
    "refund_account",
    "refund_recv_accout",
    "refund_success_time",
    "coupon_refund_fee",
    "coupon_refund_count",
];
const COUPON_FIELDS: [&str; 3] = ["coupon_type", "coupon_refund_id", "coupon_refund_fee"];
/// No real page holds more; a larger count is a corrupt or hostile reply.
const MAX_RECORDS: u32 = 100;
const MAX_COUPONS: u32 = 50;

/// Splits `name_12` into (`name`, 12): the part after the last `_`, when it is 1–4 ASCII digits.
fn split_index(b: &[u8]) -> Option<(&[u8], u32)> {
    let mut i = b.len();
    let mut n = 0u32;
    let mut scale = 1u32;
    while i > 0 && b[i - 1].is_ascii_digit() && b.len() - i < 4 {
        n += u32::from(b[i - 1] - b'0') * scale;
        scale *= 10;
        i -= 1;
    }
    // Stopped on a fifth digit, or on something other than the `_` that must precede the index.
    if i == b.len() || i == 0 || b[i - 1] != b'_' {
        return None;
    }
    Some((&b[..i - 1], n))
}

fn record_base(base: &[u8]) -> Option<usize> {
    RECORD_FIELDS.iter().position(|b| b.as_bytes() == base)
}

fn coupon_base(base: &[u8]) -> Option<usize> {
    COUPON_FIELDS.iter().position(|b| b.as_bytes() == base)
}

/// Indexes of the names in [`RECORD_FIELDS`] that are read by position.
const OUT_REFUND_NO: usize = 0;
const REFUND_ID: usize = 1;
const REFUND_CHANNEL: usize = 2;
const REFUND_FEE: usize = 3;
const SETTLEMENT_REFUND_FEE: usize = 4;
const REFUND_STATUS: usize = 5;
const REFUND_ACCOUNT: usize = 6;
const REFUND_RECV_ACCOUT: usize = 7;
const REFUND_SUCCESS_TIME: usize = 8;
const COUPON_REFUND_FEE: usize = 9;
const COUPON_REFUND_COUNT: usize = 10;

/// One `coupon_*_$n_$m` field of a record that exists (`n` < `refund_count`).
#[derive(Clone, Copy)]
struct CouponField<'a> {
    n: u32,
    m: u32,
    base: usize,
    value: &'a str,
}

/// The indexed fields, grouped in one pass over the (sorted) map: each record's values by position
/// in [`RECORD_FIELDS`], and the coupon fields ordered by (n, m). Fields with unknown bases stay only
/// in the flat map. Where two names give the same index (`_1` and `_01`), the later name in byte
/// order wins, as it did when the groups were maps filled in that order.
struct Grouped<'a> {
    /// An absent field is `""`: the typing treats an empty value as absent, so the two need no
    /// telling apart, and the table is then filled rather than cleared (an `Option` table costs
    /// a zeroed block of 176 bytes a record).
    records: Vec<[&'a str; RECORD_FIELDS.len()]>,
    coupons: Vec<CouponField<'a>>,
    /// The smallest record index at or above `refund_count`.
    record_over: Option<u32>,
    /// The smallest coupon index (n, m) whose record is at or above `refund_count`.
    coupon_over: Option<(u32, u32)>,
}

fn group(map: &XmlMap, refund_count: u32) -> Grouped<'_> {
    let mut g = Grouped {
        records: vec![[""; RECORD_FIELDS.len()]; refund_count as usize],
        // A guess that saves regrowing: with coupons, about a fifth of a reply's fields are theirs.
        coupons: Vec::with_capacity(map.len() / 4),
        record_over: None,
        coupon_over: None,
    };
    for (key, value) in map.iter_byte_names() {
        let Some((base1, last)) = split_index(key) else {
            continue;
        };
        if let Some((base, n)) = split_index(base1)
            && let Some(base) = coupon_base(base)
        {
            if n < refund_count {
                g.coupons.push(CouponField {
                    n,
                    m: last,
                    base,
                    value,
                });
            } else if g.coupon_over.is_none_or(|over| (n, last) < over) {
                g.coupon_over = Some((n, last));
            }
            continue;
        }
        if let Some(base) = record_base(base1) {
            match g.records.get_mut(last as usize) {
                Some(rec) => rec[base] = value,
                None => {
                    if g.record_over.is_none_or(|over| last < over) {
                        g.record_over = Some(last);
                    }
                }
            }
        }
    }
    g.coupons = by_record(&g.coupons, refund_count);
    // Stable: among fields of one coupon, name order is kept, so the later name still wins. The
    // fields are in record order already, and in `m` order within most records, so this sort only
    // checks the runs (sorting them from name order was a tenth of a 50-record reply's typing).
    g.coupons.sort_by_key(|c| (c.n, c.m));
    g
}

/// The coupon fields (each of a record `n < refund_count`) in record order, stably: a counting
/// sort on `n`, since name order scatters the records (`_1`, `_10`, `_11`, …, `_2`).
fn by_record<'a>(fields: &[CouponField<'a>], refund_count: u32) -> Vec<CouponField<'a>> {
    let Some(&first) = fields.first() else {
        return Vec::new();
    };
    // starts[n]: where record n's fields go, then (after the pass) where they end.
    let mut starts = vec![0usize; refund_count as usize + 1];
    for c in fields {
        starts[c.n as usize + 1] += 1;
    }
    for n in 1..starts.len() {
        starts[n] += starts[n - 1];
    }
    // Every slot is overwritten below: each field has one place.
    let mut out = vec![first; fields.len()];
    for c in fields {
        let at = &mut starts[c.n as usize];
        out[*at] = *c;
        *at += 1;
    }
    out
}

/// The wire name of an indexed field, for errors: `base_n` or `base_n_m`.
fn wire_name(base: &str, n: u32, m: Option<u32>) -> String {
    match m {
        None => format!("{base}_{n}"),
        Some(m) => format!("{base}_{n}_{m}"),
    }
}

/// An indexed field's value parsed; empty counts as absent.
fn indexed<T>(
    value: Option<&str>,
    base: &str,
    n: u32,
    m: Option<u32>,
) -> Result<Option<T>, FieldError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|e: T::Err| FieldError::Invalid {
                field: wire_name(base, n, m),
                problem: e.to_string(),
            }),
    }
}

fn record_field<T>(rec: &[&str], i: usize, n: u32) -> Result<Option<T>, FieldError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    indexed(Some(rec[i]), RECORD_FIELDS[i], n, None)
}

fn required<T>(rec: &[&str], i: usize, n: u32) -> Result<T, FieldError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    record_field(rec, i, n)?
        .ok_or_else(|| FieldError::Missing(wire_name(RECORD_FIELDS[i], n, None)))
}

/// The coupons of record `n`, from its fields (sorted by `m`), checked against its count.
fn coupons_of(
    fields: &[CouponField<'_>],
    n: u32,
    count: u32,
) -> Result<Vec<CouponRefund>, FieldError> {
    if let Some(c) = fields.iter().find(|c| c.m >= count) {
        return Err(FieldError::Inconsistent(format!(
            "coupon _{n}_{m} present but coupon_refund_count_{n} is {count}",
            m = c.m
        )));
    }
    let mut rest = fields;
    // Sized by the count (checked against MAX_COUPONS): collecting a `Result` iterator would start
    // at four coupons, a block four times too large for the usual one.
    let mut coupons = Vec::with_capacity(count as usize);
    for m in 0..count {
        let mut values = [None; COUPON_FIELDS.len()];
        while let Some((c, tail)) = rest.split_first()
            && c.m == m
        {
            values[c.base] = Some(c.value);
            rest = tail;
        }
        coupons.push(CouponRefund {
            coupon_type: indexed(values[0], COUPON_FIELDS[0], n, Some(m))?,
            coupon_refund_id: indexed(values[1], COUPON_FIELDS[1], n, Some(m))?,
            coupon_refund_fee: indexed(values[2], COUPON_FIELDS[2], n, Some(m))?,
        });
    }
    Ok(coupons)
}

impl TryFrom<&XmlMap> for RefundQueryResponse {
    type Error = FieldError;

    fn try_from(map: &XmlMap) -> Result<Self, FieldError> {
        let refund_count: u32 = req(map, "refund_count")?;
        if refund_count > MAX_RECORDS {
            return Err(FieldError::Inconsistent(format!(
                "refund_count {refund_count} is implausible"
            )));
        }
        let g = group(map, refund_count);
        if let Some(n) = g.record_over {
            return Err(FieldError::Inconsistent(format!(
                "record _{n} present but refund_count is {refund_count}"
            )));
        }
        if let Some((n, m)) = g.coupon_over {
            return Err(FieldError::Inconsistent(format!(
                "coupon _{n}_{m} present but refund_count is {refund_count}"
            )));
        }
        let mut refunds = Vec::with_capacity(refund_count as usize);
        let mut coupon_fields = g.coupons.as_slice();
        for (n, rec) in (0..refund_count).zip(&g.records) {
            let here = coupon_fields.partition_point(|c| c.n == n);
            let (mine, later) = coupon_fields.split_at(here);
            coupon_fields = later;
            let coupon_count: u32 = record_field(rec, COUPON_REFUND_COUNT, n)?.unwrap_or(0);
            if coupon_count > MAX_COUPONS {
                return Err(FieldError::Inconsistent(format!(
                    "coupon_refund_count_{n} {coupon_count} is implausible"
                )));
            }
            let coupons = coupons_of(mine, n, coupon_count)?;
            refunds.push(QueriedRefund {
                out_refund_no: required(rec, OUT_REFUND_NO, n)?,
                refund_id: required(rec, REFUND_ID, n)?,
                refund_channel: record_field(rec, REFUND_CHANNEL, n)?,
                refund_fee: required(rec, REFUND_FEE, n)?,
                settlement_refund_fee: record_field(rec, SETTLEMENT_REFUND_FEE, n)?,
                refund_status: required(rec, REFUND_STATUS, n)?,
                refund_account: record_field(rec, REFUND_ACCOUNT, n)?,
                refund_recv_account: record_field(rec, REFUND_RECV_ACCOUT, n)?,
                refund_success_time: record_field(rec, REFUND_SUCCESS_TIME, n)?,
                coupon_refund_fee: record_field(rec, COUPON_REFUND_FEE, n)?,
                coupons,
            });
        }
        let total_refund_count: Option<u32> = opt(map, "total_refund_count")?;
        if let Some(total) = total_refund_count
            && total < refund_count
        {
            return Err(FieldError::Inconsistent(format!(
                "total_refund_count {total} is less than refund_count {refund_count}"
            )));
        }
        Ok(RefundQueryResponse {
            transaction_id: opt(map, "transaction_id")?,
            out_trade_no: opt(map, "out_trade_no")?,
            total_fee: opt(map, "total_fee")?,
            settlement_total_fee: opt(map, "settlement_total_fee")?,
            fee_type: opt_string(map, "fee_type"),
            cash_fee: opt(map, "cash_fee")?,
            refund_count,
            total_refund_count,
            refunds,
            // A reference count: the map's text and index are shared.
            fields: map.clone(),
        })
    }
}

impl RefundQueryResponse {
    /// The offset of the next page of an order query, if there is one.
    pub fn next_offset(&self, offset: u32) -> Option<u32> {
        let total = self.total_refund_count?;
        let next = offset.checked_add(self.refund_count)?;
        (self.refund_count > 0 && next < total).then_some(next)
    }
}

/// Builds the reply fields of a query page (used by the sandbox and the tests; the real reply has
/// the same shape). Records are numbered from 0 within the page.
pub fn record_fields(records: &[QueriedRefund]) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(records.len() * 10);
    for (n, r) in records.iter().enumerate() {
        let mut put = |base: &str, v: String| out.push((format!("{base}_{n}"), v));
        put("out_refund_no", r.out_refund_no.to_string());
        put("refund_id", r.refund_id.to_string());
        if let Some(c) = &r.refund_channel {
            put("refund_channel", c.clone());
        }
        put("refund_fee", r.refund_fee.to_string());
        if let Some(s) = r.settlement_refund_fee {
            put("settlement_refund_fee", s.to_string());
        }
        put("refund_status", r.refund_status.to_string());
        if let Some(a) = &r.refund_account {
            put("refund_account", a.clone());
        }
        if let Some(a) = &r.refund_recv_account {
            put("refund_recv_accout", a.clone());
        }
        if let Some(t) = &r.refund_success_time {
            put("refund_success_time", t.clone());
        }
        if let Some(c) = r.coupon_refund_fee {
            put("coupon_refund_fee", c.to_string());
        }
        put("coupon_refund_count", r.coupons.len().to_string());
        for (m, c) in r.coupons.iter().enumerate() {
            if let Some(t) = &c.coupon_type {
                out.push((format!("coupon_type_{n}_{m}"), t.clone()));
            }
            if let Some(i) = &c.coupon_refund_id {
                out.push((format!("coupon_refund_id_{n}_{m}"), i.clone()));
            }
            if let Some(f) = c.coupon_refund_fee {
                out.push((format!("coupon_refund_fee_{n}_{m}"), f.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typing as it was (a `BTreeMap` per record and per coupon): the reference the one-pass
    /// grouping must agree with, errors included.
    mod reference {
        use std::collections::BTreeMap;
        use std::fmt;
        use std::str::FromStr;

        use super::super::*;

        /// Splits `name_12` into (`name`, 12).
        fn split_index(key: &str) -> Option<(&str, u32)> {
            let (base, idx) = key.rsplit_once('_')?;
            if idx.is_empty() || idx.len() > 4 || !idx.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((base, idx.parse().ok()?))
        }

        /// Indexed fields grouped by record: `n → base → value` and `(n, m) → base → value`. Fields with
        /// unknown bases stay only in the flat map.
        type Records<'a> = BTreeMap<u32, BTreeMap<&'a str, &'a str>>;
        type Coupons<'a> = BTreeMap<(u32, u32), BTreeMap<&'a str, &'a str>>;

        fn group(map: &XmlMap) -> (Records<'_>, Coupons<'_>) {
            let mut records: Records = BTreeMap::new();
            let mut coupons: Coupons = BTreeMap::new();
            for (key, value) in map.iter() {
                let Some((base1, last)) = split_index(key) else {
                    continue;
                };
                if let Some((base, n)) = split_index(base1)
                    && COUPON_FIELDS.contains(&base)
                {
                    coupons.entry((n, last)).or_default().insert(base, value);
                    continue;
                }
                if RECORD_FIELDS.contains(&base1) {
                    records.entry(last).or_default().insert(base1, value);
                }
            }
            (records, coupons)
        }

        fn field_of<T>(
            rec: &BTreeMap<&str, &str>,
            base: &str,
            n: u32,
        ) -> Result<Option<T>, FieldError>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            indexed_field(rec, base, &format!("_{n}"))
        }

        /// A field of one group, its wire name (for errors) being `base` + `suffix` (`_3`, `_3_1`).
        fn indexed_field<T>(
            group: &BTreeMap<&str, &str>,
            base: &str,
            suffix: &str,
        ) -> Result<Option<T>, FieldError>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            match group.get(base).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|e: T::Err| FieldError::Invalid {
                        field: format!("{base}{suffix}"),
                        problem: e.to_string(),
                    }),
            }
        }

        fn required<T>(rec: &BTreeMap<&str, &str>, base: &str, n: u32) -> Result<T, FieldError>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            field_of(rec, base, n)?.ok_or_else(|| FieldError::Missing(format!("{base}_{n}")))
        }

        pub(super) fn try_from(map: &XmlMap) -> Result<RefundQueryResponse, FieldError> {
            {
                let refund_count: u32 = req(map, "refund_count")?;
                if refund_count > MAX_RECORDS {
                    return Err(FieldError::Inconsistent(format!(
                        "refund_count {refund_count} is implausible"
                    )));
                }
                let (records, coupons) = group(map);
                if let Some((&n, _)) = records.iter().find(|(n, _)| **n >= refund_count) {
                    return Err(FieldError::Inconsistent(format!(
                        "record _{n} present but refund_count is {refund_count}"
                    )));
                }
                if let Some(((n, m), _)) = coupons.iter().find(|((n, _), _)| *n >= refund_count) {
                    return Err(FieldError::Inconsistent(format!(
                        "coupon _{n}_{m} present but refund_count is {refund_count}"
                    )));
                }
                let empty = BTreeMap::new();
                let mut refunds = Vec::with_capacity(refund_count as usize);
                for n in 0..refund_count {
                    let rec = records.get(&n).unwrap_or(&empty);
                    let coupon_count: u32 = field_of(rec, "coupon_refund_count", n)?.unwrap_or(0);
                    if coupon_count > MAX_COUPONS {
                        return Err(FieldError::Inconsistent(format!(
                            "coupon_refund_count_{n} {coupon_count} is implausible"
                        )));
                    }
                    if let Some(((_, m), _)) = coupons
                        .range((n, 0)..=(n, u32::MAX))
                        .find(|((_, m), _)| *m >= coupon_count)
                    {
                        return Err(FieldError::Inconsistent(format!(
                            "coupon _{n}_{m} present but coupon_refund_count_{n} is {coupon_count}"
                        )));
                    }
                    let coupon_list = (0..coupon_count)
                        .map(|m| {
                            let c = coupons.get(&(n, m)).unwrap_or(&empty);
                            let suffix = format!("_{n}_{m}");
                            Ok(CouponRefund {
                                coupon_type: indexed_field(c, "coupon_type", &suffix)?,
                                coupon_refund_id: indexed_field(c, "coupon_refund_id", &suffix)?,
                                coupon_refund_fee: indexed_field(c, "coupon_refund_fee", &suffix)?,
                            })
                        })
                        .collect::<Result<Vec<_>, FieldError>>()?;
                    refunds.push(QueriedRefund {
                        out_refund_no: required(rec, "out_refund_no", n)?,
                        refund_id: required(rec, "refund_id", n)?,
                        refund_channel: field_of(rec, "refund_channel", n)?,
                        refund_fee: required(rec, "refund_fee", n)?,
                        settlement_refund_fee: field_of(rec, "settlement_refund_fee", n)?,
                        refund_status: required(rec, "refund_status", n)?,
                        refund_account: field_of(rec, "refund_account", n)?,
                        refund_recv_account: field_of(rec, "refund_recv_accout", n)?,
                        refund_success_time: field_of(rec, "refund_success_time", n)?,
                        coupon_refund_fee: field_of(rec, "coupon_refund_fee", n)?,
                        coupons: coupon_list,
                    });
                }
                let total_refund_count: Option<u32> = opt(map, "total_refund_count")?;
                if let Some(total) = total_refund_count
                    && total < refund_count
                {
                    return Err(FieldError::Inconsistent(format!(
                        "total_refund_count {total} is less than refund_count {refund_count}"
                    )));
                }
                Ok(RefundQueryResponse {
                    transaction_id: opt(map, "transaction_id")?,
                    out_trade_no: opt(map, "out_trade_no")?,
                    total_fee: opt(map, "total_fee")?,
                    settlement_total_fee: opt(map, "settlement_total_fee")?,
                    fee_type: opt_string(map, "fee_type"),
                    cash_fee: opt(map, "cash_fee")?,
                    refund_count,
                    total_refund_count,
                    refunds,
                    fields: map.clone(),
                })
            }
        }
    }

    /// Fields of a query reply drawn so that every rule gets exercised: known and unknown bases,
    /// indexes in and out of range, zero-padded and five-digit indexes, valid and invalid values.
    fn field_strategy() -> impl Strategy<Value = (String, String)> {
        let base = proptest::sample::select(vec![
            "out_refund_no",
            "refund_id",
            "refund_channel",
            "refund_fee",
            "settlement_refund_fee",
            "refund_status",
            "refund_account",
            "refund_recv_accout",
            "refund_success_time",
            "coupon_refund_fee",
            "coupon_refund_count",
            "coupon_type",
            "coupon_refund_id",
            "brand_new",
            "refund",
        ]);
        let index = proptest::sample::select(vec![
            "0", "0", "1", "1", "2", "3", "01", "00", "12", "00001", "",
        ]);
        let value = proptest::sample::select(vec![
            "",
            "0",
            "1",
            "2",
            "3",
            "7",
            "51",
            "100",
            "1.5",
            "x",
            "SUCCESS",
            "PROCESSING",
            "R1",
            "C1",
            "中文",
            "50000000012026112700000000001",
        ]);
        (base, index.clone(), proptest::option::of(index), value).prop_map(|(b, n, m, v)| {
            let name = match m {
                None if n.is_empty() => b.to_string(),
                None => format!("{b}_{n}"),
                Some(m) => format!("{b}_{n}_{m}"),
            };
            (name, v.to_string())
        })
    }

    fn query_map_strategy() -> impl Strategy<Value = XmlMap> {
        let field = field_strategy();
        (
            proptest::sample::select(vec!["0", "1", "2", "3", "101", "x", ""]),
            proptest::option::of(proptest::sample::select(vec!["0", "1", "3", "9", "x"])),
            proptest::collection::vec(field, 0..40),
        )
            .prop_map(|(count, total, fields)| {
                let mut map: XmlMap = fields.into_iter().collect();
                map.insert("refund_count", count);
                if let Some(t) = total {
                    map.insert("total_refund_count", t);
                }
                map
            })
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn typing_agrees_with_the_btreemap_grouping(map in query_map_strategy()) {
            prop_assert_eq!(RefundQueryResponse::try_from(&map), reference::try_from(&map));
        }

        #[test]
        fn edited_pages_agree(
            n in 0u32..6,
            puts in proptest::collection::vec(field_strategy(), 0..4),
            drops in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
        ) {
            // GIVEN a valid page with a few fields added, replaced or removed
            let records: Vec<QueriedRefund> = (0..n).map(record).collect();
            let mut map = reply_map(&records, Some(n));
            for (k, v) in puts {
                map.insert(k, v);
            }
            for d in drops {
                let key = map.keys().nth(d.index(map.len())).map(str::to_string);
                if let Some(key) = key {
                    map.remove(&key);
                }
            }
            prop_assert_eq!(RefundQueryResponse::try_from(&map), reference::try_from(&map));
        }

        #[test]
        fn well_formed_pages_agree_too(n in 0u32..12, total in proptest::option::of(0u32..20)) {
            let records: Vec<QueriedRefund> = (0..n).map(record).collect();
            let map = reply_map(&records, total.map(|t| t.max(n)));
            let parsed = RefundQueryResponse::try_from(&map);
            prop_assert_eq!(parsed.as_ref().map(|p| &p.refunds), Ok(&records));
            prop_assert_eq!(parsed, reference::try_from(&map));
        }
    }

    fn record(n: u32) -> QueriedRefund {
        QueriedRefund {
            out_refund_no: format!("R{n:04}").parse().unwrap(),
            refund_id: format!("5000000{n:04}").parse().unwrap(),
            refund_channel: Some("ORIGINAL".into()),
            refund_fee: Fen::new(100 + u64::from(n)).unwrap(),
            settlement_refund_fee: None,
            refund_status: if n.is_multiple_of(2) {
                WxRefundStatus::Success
            } else {
                WxRefundStatus::Processing
            },
            refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
            refund_recv_account: Some("支付用户零钱".into()),
            refund_success_time: n
                .is_multiple_of(2)
                .then(|| "2026-11-27 10:00:00".to_string()),
            coupon_refund_fee: Some(Fen::new(u64::from(n % 3)).unwrap()),
            coupons: (0..(n % 3))
                .map(|m| CouponRefund {
                    coupon_type: Some("CASH".into()),
                    coupon_refund_id: Some(format!("C{n}x{m}")),
                    coupon_refund_fee: Some(Fen::new(1).unwrap()),
                })
                .collect(),
        }
    }

    pub(crate) fn reply_map(records: &[QueriedRefund], total: Option<u32>) -> XmlMap {
        let mut map = XmlMap::new();
        map.insert("return_code", "SUCCESS");
        map.insert("result_code", "SUCCESS");
        map.insert("out_trade_no", "ORDER-0001");
        map.insert("transaction_id", "4200000001202611270000000001");
        map.insert("total_fee", "100000");
        map.insert("cash_fee", "100000");
        map.insert("refund_count", records.len().to_string());
        if let Some(t) = total {
            map.insert("total_refund_count", t.to_string());
        }
        for (k, v) in record_fields(records) {
            map.insert(k, v);
        }
        map
    }

    #[test]
    fn parses_fifty_records_with_coupons_generically() {
        let records: Vec<QueriedRefund> = (0..50).map(record).collect();
        let parsed = RefundQueryResponse::try_from(&reply_map(&records, Some(50))).unwrap();
        assert_eq!(parsed.refunds, records);
        assert_eq!(parsed.refunds[49].refund_fee.get(), 149);
        assert_eq!(parsed.refunds[5].coupons.len(), 2);
        assert_eq!(
            parsed.refunds[5].coupons[1].coupon_refund_id.as_deref(),
            Some("C5x1")
        );
        assert_eq!(parsed.total_refund_count, Some(50));
    }

    #[test]
    fn count_is_cross_checked() {
        let records: Vec<QueriedRefund> = (0..3).map(record).collect();
        let mut map = reply_map(&records, None);
        map.insert("refund_count", "2");
        assert!(matches!(
            RefundQueryResponse::try_from(&map),
            Err(FieldError::Inconsistent(_))
        ));
        let mut map = reply_map(&records, None);
        map.insert("refund_count", "4");
        assert_eq!(
            RefundQueryResponse::try_from(&map),
            Err(FieldError::Missing("out_refund_no_3".into()))
        );
        let mut map = reply_map(&records, None);
        map.insert("coupon_type_0_7", "CASH");
        assert!(matches!(
            RefundQueryResponse::try_from(&map),
            Err(FieldError::Inconsistent(_))
        ));
        let mut map = reply_map(&records, None);
        map.insert("coupon_type_5_0", "CASH");
        assert!(matches!(
            RefundQueryResponse::try_from(&map),
            Err(FieldError::Inconsistent(_))
        ));
        let mut map = reply_map(&records, None);
        map.insert("coupon_refund_fee_2_1", "1.5");
        assert_eq!(
            RefundQueryResponse::try_from(&map)
                .map(|_| ())
                .map_err(|e| match e {
                    FieldError::Invalid { field, .. } => field,
                    other => other.to_string(),
                }),
            Err("coupon_refund_fee_2_1".to_string())
        );
        let mut map = reply_map(&records, None);
        map.insert("refund_count", "99999");
        assert!(matches!(
            RefundQueryResponse::try_from(&map),
            Err(FieldError::Inconsistent(_))
        ));
    }

    #[test]
    fn unknown_status_is_kept_and_not_final() {
        let records = vec![record(1)];
        let mut map = reply_map(&records, None);
        map.insert("refund_status_0", "FAIL");
        map.insert("brand_new_1", "x");
        let parsed = RefundQueryResponse::try_from(&map).unwrap();
        assert_eq!(
            parsed.refunds[0].refund_status,
            WxRefundStatus::Other("FAIL".into())
        );
        assert!(!parsed.refunds[0].refund_status.is_final());
        assert_eq!(parsed.fields.get("brand_new_1"), Some("x"));
    }

    #[test]
    fn offset_paging() {
        let page: Vec<QueriedRefund> = (0..10).map(record).collect();
        let parsed = RefundQueryResponse::try_from(&reply_map(&page, Some(36))).unwrap();
        assert_eq!(parsed.next_offset(0), Some(10));
        assert_eq!(parsed.next_offset(20), Some(30));
        assert_eq!(parsed.next_offset(26), None);
        let no_total = RefundQueryResponse::try_from(&reply_map(&page, None)).unwrap();
        assert_eq!(no_total.next_offset(0), None);
    }

    #[test]
    fn selector_priority_and_request_fields() {
        let mut map = XmlMap::new();
        map.insert("out_trade_no", "ORDER-0001");
        map.insert("transaction_id", "4200000001");
        assert_eq!(
            QuerySelector::from_request(&map).unwrap(),
            Some(QuerySelector::TransactionId("4200000001".parse().unwrap()))
        );
        map.insert("out_refund_no", "R1");
        map.insert("refund_id", "");
        assert_eq!(
            QuerySelector::from_request(&map).unwrap(),
            Some(QuerySelector::OutRefundNo("R1".parse().unwrap()))
        );
        map.insert("refund_id", "5001");
        assert_eq!(
            QuerySelector::from_request(&map).unwrap(),
            Some(QuerySelector::RefundId("5001".parse().unwrap()))
        );
        assert_eq!(QuerySelector::from_request(&XmlMap::new()).unwrap(), None);

        let keys = MerchantKeys {
            appid: "wx2421b1c4370ec43b".parse().unwrap(),
            mch_id: "10000100".parse().unwrap(),
            api_key: crate::ApiKey::new("192006250b4c09247ec02edce69f6a2d").unwrap(),
            sign_type: crate::SignType::Md5,
        };
        let req = RefundQueryRequest {
            selector: QuerySelector::OutTradeNo("ORDER-0001".parse().unwrap()),
            offset: Some(0),
        };
        let body = req.to_xml(&keys, &NonceStr::random()).unwrap();
        let sent = crate::xml::decode(body.as_bytes()).unwrap();
        assert_eq!(sent.get("offset"), Some("0"), "offset 0 is sent and signed");
        assert_eq!(sent.get("out_trade_no"), Some("ORDER-0001"));
    }
}
