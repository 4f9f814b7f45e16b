//! The item codec: [`RefundRecord`] and [`OrderBook`] ↔ DynamoDB items (`From` one way, `TryFrom`
//! the other), every read checked and every failure a [`LedgerError::Corrupt`] naming the item
//! and the field.
//!
//! Hand-written rather than `serde_dynamo`: the item is not the record's serde shape. It carries
//! attributes no field has (`pk`, the sparse `gsi1pk`/`gsi1sk` present only while the refund is
//! not final), flattens `lease` and `last_error`, encodes the order as one `order_key` string and
//! the order's refunds as a string set; `serde_dynamo` would need a second, item-shaped struct
//! plus the same conversions, and its errors would not name the item key. The codec is ~300 lines
//! with its tests, so the dependency would add more than it removes.

use std::collections::HashMap;
use std::fmt::Display;

use aws_sdk_dynamodb::types::AttributeValue;
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, RefundId, TransactionId};

use super::keys::{accepted_pk, pending_pk, pending_sk, refund_pk};
use super::table::NEEDS_PERSON_PK;
use crate::correction::{Attention, AttentionReason, Correction};
use crate::events::OutboxEvent;
use crate::ledger::LedgerError;
use crate::metadata::Metadata;
use crate::state::{LastError, Lease, OrderBook, RefundRecord, RefundStatus, UnixMillis};

/// A DynamoDB item: attribute name → value.
pub(super) type Item = HashMap<String, AttributeValue>;

/// A DynamoDB number.
pub(super) fn num(v: impl Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn n_insert(i: &mut Item, k: &str, v: u64) {
    i.insert(k.to_owned(), num(v));
}

pub(super) fn status_av(s: RefundStatus) -> AttributeValue {
    AttributeValue::S(s.as_str().to_owned())
}

impl From<&RefundRecord> for Item {
    fn from(r: &RefundRecord) -> Item {
        let mut i = Item::new();
        let mut s = |k: &str, v: &str| {
            i.insert(k.to_owned(), AttributeValue::S(v.to_owned()));
        };
        s("pk", &refund_pk(&r.out_refund_no));
        s("out_refund_no", r.out_refund_no.as_str());
        s("order_key", &r.order.key());
        s("status", r.status.as_str());
        s("request_hash", &r.request_hash);
        let opt = [
            (
                "out_trade_no",
                r.out_trade_no.as_ref().map(OutTradeNo::as_str),
            ),
            (
                "transaction_id",
                r.transaction_id.as_ref().map(TransactionId::as_str),
            ),
            ("refund_id", r.refund_id.as_ref().map(RefundId::as_str)),
            ("refund_desc", r.refund_desc.as_deref()),
            ("refund_account", r.refund_account.as_deref()),
            ("refund_recv_account", r.refund_recv_account.as_deref()),
            ("success_time", r.success_time.as_deref()),
            (
                "last_error_code",
                r.last_error.as_ref().map(|e| e.code.as_str()),
            ),
            (
                "last_error_message",
                r.last_error.as_ref().map(|e| e.message.as_str()),
            ),
            ("lease_owner", r.lease.as_ref().map(|l| l.owner.as_str())),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                s(k, v);
            }
        }
        let mut n = |k: &str, v: u64| {
            i.insert(k.to_owned(), num(v));
        };
        n("total_fee", r.total_fee.get());
        n("refund_fee", r.refund_fee.get());
        n("attempts", u64::from(r.attempts));
        n("created_at", r.created_at.get());
        n("updated_at", r.updated_at.get());
        n("version", r.version);
        if let Some(l) = &r.lease {
            n("lease_expires_at", l.expires_at.get());
        }
        if let Some(at) = r.next_check_at.filter(|_| !r.status.is_final()) {
            n("next_check_at", at.get());
        }
        // Sparse index: only refunds the poller still has to drive, or whose events wait for
        // delivery, are in it.
        if let Some(at) = r.due_at() {
            i.insert(
                "gsi1pk".into(),
                AttributeValue::S(pending_pk(&r.out_refund_no)),
            );
            i.insert(
                "gsi1sk".into(),
                AttributeValue::S(pending_sk(&r.out_refund_no, at)),
            );
        }
        i.insert("external".into(), AttributeValue::Bool(r.external));
        // Sparse index of what needs a person.
        if r.needs_person() {
            i.insert("gsi2pk".into(), AttributeValue::S(NEEDS_PERSON_PK.into()));
            i.insert(
                "gsi2sk".into(),
                AttributeValue::S(r.out_refund_no.as_str().into()),
            );
        }
        if let Some(a) = &r.attention {
            i.insert(
                "attention_reason".into(),
                AttributeValue::S(attention_code(a.reason).into()),
            );
            i.insert("attention_since".into(), num(a.since.get()));
        }
        // Sparse index of the refunds WeChat accepted, by Beijing day: what a day's bill must list.
        if let Some(at) = r.accepted_at {
            n_insert(&mut i, "accepted_at", at.get());
            i.insert("gsi3pk".into(), AttributeValue::S(accepted_pk(at)));
            i.insert(
                "gsi3sk".into(),
                AttributeValue::S(r.out_refund_no.as_str().into()),
            );
        }
        // The merchant's metadata is read whole and never queried: one JSON attribute.
        if !r.metadata.is_empty()
            && let Ok(json) = serde_json::to_string(&r.metadata)
        {
            i.insert("metadata".into(), AttributeValue::S(json));
        }
        // The history is read whole and never queried: one JSON attribute, absent while empty.
        if !r.corrections.is_empty()
            && let Ok(json) = serde_json::to_string(&r.corrections)
        {
            i.insert("corrections".into(), AttributeValue::S(json));
        }
        // A list (one JSON string per event) so a transition can `list_append` to it.
        if !r.outbox.is_empty() {
            i.insert("outbox".into(), outbox_av(&r.outbox));
        }
        i
    }
}

/// Typed reads of one item's attributes, naming the item in every error.
struct Reader<'a> {
    item: &'a Item,
    key: String,
}

impl<'a> Reader<'a> {
    fn new(item: &'a Item) -> Self {
        let key = item
            .get("pk")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_else(|| "<no pk>".into());
        Self { item, key }
    }

    fn corrupt(&self, problem: impl Into<String>) -> LedgerError {
        LedgerError::Corrupt {
            key: self.key.clone(),
            problem: problem.into(),
        }
    }

    fn opt_s(&self, k: &str) -> Result<Option<&'a str>, LedgerError> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.corrupt(format!("{k} is not a string"))),
        }
    }

    fn s(&self, k: &str) -> Result<&'a str, LedgerError> {
        self.opt_s(k)?
            .ok_or_else(|| self.corrupt(format!("{k} is missing")))
    }

    fn opt_u64(&self, k: &str) -> Result<Option<u64>, LedgerError> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse()
                .map(Some)
                .map_err(|_| self.corrupt(format!("{k} = {n} is not a non-negative integer"))),
            Some(_) => Err(self.corrupt(format!("{k} is not a number"))),
        }
    }

    fn u64(&self, k: &str) -> Result<u64, LedgerError> {
        self.opt_u64(k)?
            .ok_or_else(|| self.corrupt(format!("{k} is missing")))
    }

    fn u32(&self, k: &str) -> Result<u32, LedgerError> {
        u32::try_from(self.u64(k)?).map_err(|_| self.corrupt(format!("{k} does not fit in u32")))
    }

    fn fen(&self, k: &str) -> Result<Fen, LedgerError> {
        Fen::new(self.u64(k)?).map_err(|e| self.corrupt(format!("{k}: {e}")))
    }

    fn id<T, E: Display>(
        &self,
        k: &str,
        f: impl Fn(&str) -> Result<T, E>,
    ) -> Result<T, LedgerError> {
        f(self.s(k)?).map_err(|e| self.corrupt(format!("{k}: {e}")))
    }

    fn opt_id<T, E: Display>(
        &self,
        k: &str,
        f: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, LedgerError> {
        self.opt_s(k)?
            .map(|s| f(s).map_err(|e| self.corrupt(format!("{k}: {e}"))))
            .transpose()
    }

    fn order(&self) -> Result<OrderRef, LedgerError> {
        let key = self.s("order_key")?;
        let (field, value) = key
            .split_once(':')
            .ok_or_else(|| self.corrupt(format!("order_key {key:?} has no field name")))?;
        let bad = |e: wxpay::IdError| self.corrupt(format!("order_key: {e}"));
        match field {
            f if f == OutTradeNo::FIELD => {
                Ok(OrderRef::OutTradeNo(OutTradeNo::new(value).map_err(bad)?))
            }
            f if f == TransactionId::FIELD => Ok(OrderRef::TransactionId(
                TransactionId::new(value).map_err(bad)?,
            )),
            _ => Err(self.corrupt(format!("order_key {key:?} has an unknown field"))),
        }
    }

    fn outbox(&self) -> Result<Vec<OutboxEvent>, LedgerError> {
        match self.item.get("outbox") {
            None | Some(AttributeValue::Null(_)) => Ok(Vec::new()),
            Some(AttributeValue::L(list)) => list
                .iter()
                .map(|v| {
                    let json = v
                        .as_s()
                        .map_err(|_| self.corrupt("an outbox entry is not a string"))?;
                    serde_json::from_str(json)
                        .map_err(|e| self.corrupt(format!("outbox entry: {e}")))
                })
                .collect(),
            Some(_) => Err(self.corrupt("outbox is not a list")),
        }
    }
}

/// Outbox events as stored: a list of JSON strings.
pub(super) fn outbox_av(events: &[OutboxEvent]) -> AttributeValue {
    AttributeValue::L(
        events
            .iter()
            .filter_map(|e| serde_json::to_string(e).ok())
            .map(AttributeValue::S)
            .collect(),
    )
}

pub(super) fn attention_code(reason: AttentionReason) -> &'static str {
    match reason {
        AttentionReason::Contradiction => "contradiction",
        AttentionReason::Stuck => "stuck",
        AttentionReason::Mismatch => "mismatch",
    }
}

fn attention_reason(code: &str) -> Option<AttentionReason> {
    match code {
        "contradiction" => Some(AttentionReason::Contradiction),
        "stuck" => Some(AttentionReason::Stuck),
        "mismatch" => Some(AttentionReason::Mismatch),
        _ => None,
    }
}

impl TryFrom<&Item> for RefundRecord {
    type Error = LedgerError;

    fn try_from(item: &Item) -> Result<Self, LedgerError> {
        let r = Reader::new(item);
        let status: RefundStatus = r.id("status", str::parse)?;
        let last_error = match (r.opt_s("last_error_code")?, r.opt_s("last_error_message")?) {
            (None, None) => None,
            (code, message) => Some(LastError {
                code: code.unwrap_or_default().to_owned(),
                message: message.unwrap_or_default().to_owned(),
            }),
        };
        let lease = match (r.opt_s("lease_owner")?, r.opt_u64("lease_expires_at")?) {
            (Some(owner), Some(at)) => Some(Lease {
                owner: owner.to_owned(),
                expires_at: UnixMillis(at),
            }),
            (None, None) => None,
            _ => return Err(r.corrupt("lease_owner and lease_expires_at must come together")),
        };
        let external = match item.get("external") {
            None => false,
            Some(AttributeValue::Bool(b)) => *b,
            Some(_) => return Err(r.corrupt("external is not a boolean")),
        };
        let attention = match (r.opt_s("attention_reason")?, r.opt_u64("attention_since")?) {
            (None, None) => None,
            (Some(code), Some(since)) => Some(Attention {
                reason: attention_reason(code)
                    .ok_or_else(|| r.corrupt("attention_reason is not a known reason"))?,
                since: UnixMillis(since),
            }),
            _ => return Err(r.corrupt("attention_reason and attention_since must come together")),
        };
        let metadata: Metadata = match r.opt_s("metadata")? {
            None => Metadata::default(),
            Some(json) => {
                serde_json::from_str(json).map_err(|e| r.corrupt(format!("metadata: {e}")))?
            }
        };
        let corrections: Vec<Correction> = match r.opt_s("corrections")? {
            None => Vec::new(),
            Some(json) => {
                serde_json::from_str(json).map_err(|e| r.corrupt(format!("corrections: {e}")))?
            }
        };
        Ok(RefundRecord {
            attention,
            corrections,
            out_refund_no: r.id("out_refund_no", str::parse::<OutRefundNo>)?,
            order: r.order()?,
            out_trade_no: r.opt_id("out_trade_no", str::parse::<OutTradeNo>)?,
            transaction_id: r.opt_id("transaction_id", str::parse::<TransactionId>)?,
            refund_id: r.opt_id("refund_id", str::parse::<RefundId>)?,
            total_fee: r.fen("total_fee")?,
            refund_fee: r.fen("refund_fee")?,
            refund_desc: r.opt_s("refund_desc")?.map(str::to_owned),
            refund_account: r.opt_s("refund_account")?.map(str::to_owned),
            status,
            attempts: r.u32("attempts")?,
            last_error,
            refund_recv_account: r.opt_s("refund_recv_account")?.map(str::to_owned),
            success_time: r.opt_s("success_time")?.map(str::to_owned),
            created_at: UnixMillis(r.u64("created_at")?),
            updated_at: UnixMillis(r.u64("updated_at")?),
            request_hash: r.s("request_hash")?.to_owned(),
            version: r.u64("version")?,
            lease,
            next_check_at: r.opt_u64("next_check_at")?.map(UnixMillis),
            accepted_at: r.opt_u64("accepted_at")?.map(UnixMillis),
            external,
            metadata,
            outbox: r.outbox()?,
        })
    }
}

impl TryFrom<&Item> for OrderBook {
    type Error = LedgerError;

    fn try_from(item: &Item) -> Result<Self, LedgerError> {
        let r = Reader::new(item);
        let refunds = match item.get("refund_nos") {
            None => Vec::new(),
            Some(AttributeValue::Ss(nos)) => nos
                .iter()
                .map(|n| {
                    OutRefundNo::new(n.as_str()).map_err(|e| r.corrupt(format!("refund_nos: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(r.corrupt("refund_nos is not a string set")),
        };
        Ok(OrderBook {
            order: r.order()?,
            total_fee: r.fen("total_fee")?,
            reserved: r.fen("reserved")?,
            count: r.u32("refund_count")?,
            refunds,
        })
    }
}

/// How many numbers an order item says it has released to its pages (`failed_count`; absent on
/// orders that never released one).
pub(super) fn failed_count(item: &Item) -> Result<u64, LedgerError> {
    Ok(Reader::new(item).opt_u64("failed_count")?.unwrap_or(0))
}

/// The numbers of a page item of released numbers (`refund_nos`).
pub(super) fn page_nos(item: &Item) -> Result<Vec<OutRefundNo>, LedgerError> {
    let r = Reader::new(item);
    match item.get("refund_nos") {
        None => Ok(Vec::new()),
        Some(AttributeValue::Ss(nos)) => nos
            .iter()
            .map(|n| {
                OutRefundNo::new(n.as_str()).map_err(|e| r.corrupt(format!("refund_nos: {e}")))
            })
            .collect(),
        Some(_) => Err(r.corrupt("refund_nos is not a string set")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::NewRefund;

    fn recorded(no: &str) -> RefundRecord {
        crate::ledger::new_record(&NewRefund {
            out_refund_no: OutRefundNo::new(no).unwrap(),
            order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
            total_fee: Fen::new(10).unwrap(),
            refund_fee: Fen::new(10).unwrap(),
            refund_desc: None,
            refund_account: None,
            request_hash: "h".into(),
            now: UnixMillis(1),
            next_check_at: UnixMillis(2),
            metadata: Default::default(),
            lease: None,
        })
    }

    #[test]
    fn refund_items_round_trip() {
        // GIVEN a record with every optional field set WHEN encoded and decoded THEN it is equal
        let rec = RefundRecord {
            out_refund_no: OutRefundNo::new("R-1|x@y").unwrap(),
            order: OrderRef::TransactionId(TransactionId::new("4200000001").unwrap()),
            out_trade_no: Some(OutTradeNo::new("ORDER-1").unwrap()),
            transaction_id: Some(TransactionId::new("4200000001").unwrap()),
            refund_id: Some(RefundId::new("50000001").unwrap()),
            total_fee: Fen::new(100).unwrap(),
            refund_fee: Fen::new(40).unwrap(),
            refund_desc: Some("退款".into()),
            refund_account: Some("REFUND_SOURCE_RECHARGE_FUNDS".into()),
            status: RefundStatus::Submitting,
            attempts: 2,
            last_error: Some(LastError {
                code: "SYSTEMERROR".into(),
                message: "busy".into(),
            }),
            refund_recv_account: Some("招商银行信用卡0403".into()),
            success_time: Some("2026-01-01 10:00:00".into()),
            created_at: UnixMillis(1),
            updated_at: UnixMillis(2),
            request_hash: "abc".into(),
            version: 3,
            lease: Some(Lease {
                owner: "lambda-1".into(),
                expires_at: UnixMillis(99),
            }),
            next_check_at: Some(UnixMillis(99)),
            external: true,
            attention: Some(Attention {
                reason: AttentionReason::Contradiction,
                since: UnixMillis(9),
            }),
            corrections: vec![Correction {
                from: RefundStatus::Failed,
                to: RefundStatus::Success,
                kind: crate::correction::CorrectionKind::Contradiction,
                source: crate::correction::FactSource::Notification,
                at: UnixMillis(9),
            }],
            accepted_at: Some(UnixMillis(7)),
            metadata: crate::metadata::Metadata::new(
                [("crm".to_owned(), "ticket-9 退".to_owned())].into(),
            )
            .unwrap(),
            outbox: Vec::new(),
        };
        let item = Item::from(&rec);
        assert_eq!(RefundRecord::try_from(&item).unwrap(), rec);
        // AND it is listed in the `accepted` index on the Beijing day of accepted_at
        assert_eq!(
            item.get("gsi3pk").and_then(|v| v.as_s().ok()).unwrap(),
            "ACCEPTED#1970-01-01"
        );
        assert_eq!(
            item.get("gsi3sk").and_then(|v| v.as_s().ok()).unwrap(),
            "R-1|x@y"
        );
        assert_eq!(
            item.get("gsi1sk").and_then(|v| v.as_s().ok()).unwrap(),
            "00000000000000000099#R-1|x@y"
        );
        // Amounts and counters are DynamoDB numbers, so update expressions can add to them.
        assert_eq!(
            item.get("refund_fee"),
            Some(&AttributeValue::N("40".into()))
        );
    }

    #[test]
    fn final_items_have_no_pending_keys() {
        // GIVEN a final record WHEN encoded THEN it carries no index keys and no next check
        let mut rec = recorded("R1");
        rec.status = RefundStatus::Success;
        let item = Item::from(&rec);
        assert!(!item.contains_key("gsi1pk") && !item.contains_key("next_check_at"));
    }

    #[test]
    fn corrupt_items_are_errors_not_panics() {
        // GIVEN an item with a bad amount WHEN decoded THEN a Corrupt error names the item
        let mut item = Item::from(&recorded("R1"));
        item.insert("refund_fee".into(), AttributeValue::N("-5".into()));
        match RefundRecord::try_from(&item) {
            Err(LedgerError::Corrupt { key, problem }) => {
                assert_eq!(key, "REFUND#R1");
                assert!(problem.contains("refund_fee"), "{problem}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_order_books_name_the_field() {
        // GIVEN order items with a wrong type or an oversized counter WHEN decoded THEN each is a
        // Corrupt error naming the order and the field
        let good = Item::from([
            (
                "pk".to_owned(),
                AttributeValue::S("ORDER#out_trade_no:ORDER-1".into()),
            ),
            (
                "order_key".to_owned(),
                AttributeValue::S("out_trade_no:ORDER-1".into()),
            ),
            ("total_fee".to_owned(), num(100)),
            ("reserved".to_owned(), num(40)),
            ("refund_count".to_owned(), num(1)),
            (
                "refund_nos".to_owned(),
                AttributeValue::Ss(vec!["R1".into()]),
            ),
        ]);
        let book = OrderBook::try_from(&good).unwrap();
        assert_eq!((book.reserved.get(), book.count), (40, 1));
        for (field, bad) in [
            ("refund_nos", AttributeValue::S("R1".into())),
            ("refund_count", num(u64::from(u32::MAX) + 1)),
            ("reserved", AttributeValue::S("40".into())),
        ] {
            let mut item = good.clone();
            item.insert(field.into(), bad);
            match OrderBook::try_from(&item) {
                Err(LedgerError::Corrupt { key, problem }) => {
                    assert_eq!(key, "ORDER#out_trade_no:ORDER-1");
                    assert!(problem.contains(field), "{problem}");
                }
                other => panic!("{field}: expected Corrupt, got {other:?}"),
            }
        }
    }
}
