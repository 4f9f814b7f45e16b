//! [`DynamoLedger`]: the [`Ledger`] port on the table `table` defines, through the AWS SDK. It
//! sends the expressions `updates` builds, decodes items with `codec`, and turns DynamoDB's
//! answers (failed conditions, cancelled transactions) into the port's outcomes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, KeysAndAttributes, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use wxpay::{OrderRef, OutRefundNo};

use super::codec::{Item, failed_count, num, page_nos};
use super::error::{config, unavailable};
use super::expr::Expr;
use super::keys::{
    ShardPos, cursor, due_upper_bound, failed_page_of, failed_page_pk, failed_pages,
    no_from_pending_sk, order_pk, parse_cursor, refund_pk, refund_pk_str, shard_pk, sk_of,
};
use super::table::{NEEDS_PERSON_INDEX, NEEDS_PERSON_PK, PENDING_INDEX, PENDING_SHARDS};
use super::txn_retry::{Cancellation, TXN_ATTEMPTS, TxnRetry, cancellation, code};
use super::updates::{
    WRITE_ID, create_if_absent, external_reservation, failed_page_update, lease_update,
    record_reservation, release_on_order, stamp_write, transition_update,
};
use crate::ledger::{
    CorrectionWrite, Cursor, ExternalOutcome, ExternalRefund, FlagWrite, LeaseDecision,
    LeaseOutcome, Ledger, LedgerError, NewRefund, Page, RecordOutcome, Transition,
    TransitionOutcome, delivered, existing_outcome, external_record, fence_holds, fresh_book,
    illegal, lease_decision, new_record, refusal, transitioned, with_released,
};
use crate::reconcile::Reconciliation;
use crate::state::{OrderBook, RefundRecord, UnixMillis};

/// Write requests and item writes sent so far (to measure the cost of a lifecycle).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// PutItem/UpdateItem/TransactWriteItems requests sent (a retried transaction counts again).
    pub requests: u64,
    /// Items written by them (a transaction of 2 items counts 2).
    pub items: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    items: AtomicU64,
}

/// The DynamoDB ledger. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamoLedger {
    client: Client,
    table: String,
    writes: Arc<Counters>,
}

/// A sparse index whose sort key is `out_refund_no` (`needs_person`, `accepted`).
pub(super) struct IndexPage {
    pub(super) name: &'static str,
    pub(super) hash_attr: &'static str,
    pub(super) range_attr: &'static str,
}

impl DynamoLedger {
    /// One page of the refunds in partition `hash` of a sparse index sorted by number; the cursor
    /// is the last number returned.
    pub(super) async fn index_page(
        &self,
        index: &IndexPage,
        hash: String,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index.name)
            .key_condition_expression("#g = :g")
            .expression_attribute_names("#g", index.hash_attr)
            .expression_attribute_values(":g", AttributeValue::S(hash.clone()))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX));
        if let Some(c) = &cursor {
            let no: OutRefundNo = c
                .as_str()
                .parse()
                .map_err(|_| LedgerError::BadCursor(c.as_str().chars().take(100).collect()))?;
            q = q
                .exclusive_start_key(index.hash_attr, AttributeValue::S(hash))
                .exclusive_start_key(index.range_attr, AttributeValue::S(no.as_str().into()))
                .exclusive_start_key("pk", AttributeValue::S(refund_pk(&no)));
        }
        let out = q.send().await.map_err(unavailable)?;
        let next = out
            .last_evaluated_key()
            .and_then(|k| k.get(index.range_attr))
            .and_then(|v| v.as_s().ok())
            .map(|s| Cursor::new(s.as_str()));
        let items = out
            .items
            .unwrap_or_default()
            .iter()
            .map(RefundRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page { items, next })
    }

    /// A ledger on `table` through `client`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            writes: Arc::default(),
        }
    }

    /// The Lambda setup: AWS config from the environment, table name from `LEDGER_TABLE`.
    pub async fn from_env() -> Result<Self, LedgerError> {
        let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::from_conf(&conf)
    }

    /// The table named by `LEDGER_TABLE`, with an AWS config already loaded.
    pub fn from_conf(conf: &aws_config::SdkConfig) -> Result<Self, LedgerError> {
        let table = std::env::var("LEDGER_TABLE")
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| LedgerError::Config("LEDGER_TABLE is not set".into()))?;
        Ok(Self::new(Client::new(conf), table))
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            requests: self.writes.requests.load(Ordering::Relaxed),
            items: self.writes.items.load(Ordering::Relaxed),
        }
    }

    pub(super) fn count_write(&self, items: u64) {
        self.writes.requests.fetch_add(1, Ordering::Relaxed);
        self.writes.items.fetch_add(items, Ordering::Relaxed);
    }

    pub(super) async fn get_item(&self, pk: String) -> Result<Option<Item>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    pub(super) async fn get_refund(
        &self,
        no: &OutRefundNo,
    ) -> Result<Option<RefundRecord>, LedgerError> {
        self.get_item(refund_pk(no))
            .await?
            .map(|i| RefundRecord::try_from(&i))
            .transpose()
    }

    async fn get_order(&self, order: &OrderRef) -> Result<Option<OrderBook>, LedgerError> {
        self.get_item(order_pk(order))
            .await?
            .map(|i| OrderBook::try_from(&i))
            .transpose()
    }

    /// Sends a transaction; `Ok(None)` if it committed, `Ok(Some(reasons))` if a condition failed.
    /// Cancellations by concurrent transactions or by throttling are retried with [`TxnRetry`];
    /// when the attempts run out, throttling is `Unavailable` (the store refuses the load) and
    /// conflicts are `Contention`. Every TransactWriteItems goes through here.
    pub(super) async fn transact(
        &self,
        what: &str,
        items: Vec<TransactWriteItem>,
    ) -> Result<Option<Vec<CancellationReason>>, LedgerError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
        let mut retry = TxnRetry::new();
        loop {
            self.count_write(items.len() as u64);
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match res {
                Ok(_) => return Ok(None),
                Err(e) => e,
            };
            let cause = match err.as_service_error() {
                Some(E::TransactionCanceledException(c)) => {
                    let reasons = c.cancellation_reasons();
                    match cancellation(reasons) {
                        Cancellation::ConditionFailed => return Ok(Some(reasons.to_vec())),
                        Cancellation::Permanent => return Err(unavailable(err)),
                        retryable => retryable,
                    }
                }
                // Our own idempotency token still in flight (the SDK retries this too).
                Some(E::TransactionInProgressException(_)) => Cancellation::Conflict,
                _ => return Err(unavailable(err)),
            };
            if !retry.pause().await {
                return Err(match cause {
                    Cancellation::Throttled => LedgerError::Unavailable(format!(
                        "{what}: still throttled after {TXN_ATTEMPTS} attempts: {}",
                        DisplayErrorContext(&err)
                    )),
                    _ => LedgerError::Contention(what.to_owned()),
                });
            }
        }
    }

    /// UpdateItem with ALL_NEW; `Err(Some(old))`/`Err(None)` when the condition failed on an
    /// existing/absent item.
    async fn update(&self, u: Expr, pk: String) -> Result<Result<Item, Option<Item>>, LedgerError> {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError as E;
        self.count_write(1);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .update_expression(u.update_expression())
            .set_condition_expression(u.condition_expression())
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Ok(out.attributes.unwrap_or_default())),
            Err(e) => match e.as_service_error() {
                Some(E::ConditionalCheckFailedException(c)) => Ok(Err(c.item().cloned())),
                _ => Err(unavailable(e)),
            },
        }
    }

    /// Puts the whole refund item if it is still at `expected_version`: `false` when it moved on
    /// (or is gone). For writes computed from a read of the whole record.
    pub(super) async fn put_at_version(
        &self,
        next: &RefundRecord,
        expected_version: u64,
    ) -> Result<bool, LedgerError> {
        use aws_sdk_dynamodb::operation::put_item::PutItemError as E;
        let mut cond = Expr::default();
        let ver = cond.n("version");
        let v = cond.v("exp_v", num(expected_version));
        cond.condition = format!("{ver} = {v}");
        self.count_write(1);
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Item::from(next)))
            .condition_expression(&cond.condition)
            .set_expression_attribute_names(Some(cond.names))
            .set_expression_attribute_values(Some(cond.values))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(E::ConditionalCheckFailedException(_)) => Ok(false),
                _ => Err(unavailable(e)),
            },
        }
    }

    /// `mark_delivered`: the outbox without the delivered events, the whole item put at the
    /// version read; a fact written meanwhile (it bumps the version) means reading again.
    async fn take_delivered(
        &self,
        no: &OutRefundNo,
        ids: &[String],
    ) -> Result<Option<RefundRecord>, LedgerError> {
        let mut retry = TxnRetry::new();
        loop {
            let Some(rec) = self.get_refund(no).await? else {
                return Ok(None);
            };
            let Some(next) = delivered(&rec, ids) else {
                return Ok(Some(rec));
            };
            if self.put_at_version(&next, rec.version).await? {
                return Ok(Some(next));
            }
            if !retry.pause().await {
                return Err(LedgerError::Contention(format!("delivery mark of {no}")));
            }
        }
    }

    /// A transaction's Put of `item`, under `condition`'s condition only.
    pub(super) fn put_item(
        &self,
        item: Item,
        condition: Expr,
    ) -> Result<TransactWriteItem, LedgerError> {
        let mut put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(&condition.condition)
            .set_expression_attribute_names(Some(condition.names))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if !condition.values.is_empty() {
            put = put.set_expression_attribute_values(Some(condition.values));
        }
        Ok(TransactWriteItem::builder()
            .put(put.build().map_err(config)?)
            .build())
    }

    pub(super) fn update_item(
        &self,
        pk: String,
        u: Expr,
    ) -> Result<TransactWriteItem, LedgerError> {
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .update_expression(u.update_expression())
            .set_condition_expression(u.condition_expression())
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(config)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// The record a failed condition was evaluated against: from ALL_OLD, or read if the store
    /// did not return it.
    async fn old_refund(
        &self,
        reason: &CancellationReason,
        no: &OutRefundNo,
    ) -> Result<Option<RefundRecord>, LedgerError> {
        match reason.item() {
            Some(item) => RefundRecord::try_from(item).map(Some),
            None => self.get_refund(no).await,
        }
    }

    async fn old_order(
        &self,
        reason: &CancellationReason,
        order: &OrderRef,
    ) -> Result<Option<OrderBook>, LedgerError> {
        match reason.item() {
            Some(item) => OrderBook::try_from(item).map(Some),
            None => self.get_order(order).await,
        }
    }

    /// Starts one query of a pending shard after `pos`, for at most `want` due items: the items
    /// with their sort keys, in order, and the last evaluated sort key if the shard has more.
    fn read_shard(
        &self,
        shard: usize,
        pos: ShardPos,
        upper: &str,
        want: usize,
    ) -> tokio::task::JoinHandle<Result<ShardBatch, LedgerError>> {
        // The shards are read concurrently; the client is a cheap handle.
        let client = self.client.clone();
        let table = self.table.clone();
        let upper = upper.to_owned();
        tokio::spawn(async move {
            let gpk = shard_pk(shard as u32);
            let mut q = client
                .query()
                .table_name(&table)
                .index_name(PENDING_INDEX)
                .key_condition_expression("#g1 = :g1 AND #g2 < :upper")
                .expression_attribute_names("#g1", "gsi1pk")
                .expression_attribute_names("#g2", "gsi1sk")
                .expression_attribute_values(":g1", AttributeValue::S(gpk.clone()))
                .expression_attribute_values(":upper", AttributeValue::S(upper))
                .limit(i32::try_from(want).unwrap_or(i32::MAX));
            if let ShardPos::After(sk) = pos {
                let no = no_from_pending_sk(&sk)
                    .ok_or_else(|| LedgerError::BadCursor(sk.chars().take(100).collect()))?;
                q = q
                    .exclusive_start_key("gsi1pk", AttributeValue::S(gpk))
                    .exclusive_start_key("pk", AttributeValue::S(refund_pk_str(no)))
                    .exclusive_start_key("gsi1sk", AttributeValue::S(sk));
            }
            let out = q.send().await.map_err(unavailable)?;
            let last = out
                .last_evaluated_key()
                .and_then(|k| k.get("gsi1sk"))
                .and_then(|v| v.as_s().ok())
                .cloned();
            let items = out
                .items
                .unwrap_or_default()
                .into_iter()
                .filter_map(|item| sk_of(&item).map(|sk| (sk, item)))
                .collect();
            Ok((items, last))
        })
    }

    /// The release path of `transition`: refund update and order release in one transaction.
    /// A release of the slot (FAILED) also reads the order for its `failed_count` and adds the
    /// number to that count's page item in the same transaction.
    async fn transition_releasing(&self, t: &Transition) -> Result<TransitionOutcome, LedgerError> {
        let mut retry = TxnRetry::new();
        loop {
            // The amount and order come from the stored record, never from the caller.
            let Some(rec) = self.get_refund(&t.out_refund_no).await? else {
                return Ok(TransitionOutcome::NotFound);
            };
            if !fence_holds(&rec, t) {
                return Ok(TransitionOutcome::Conflict(rec));
            }
            let missing = || LedgerError::Corrupt {
                key: order_pk(&rec.order),
                problem: format!(
                    "cannot release {} of refund {}: order missing or reserving less",
                    rec.refund_fee, rec.out_refund_no
                ),
            };
            let released = if t.to.releases_slot() {
                let order = self.get_item(order_pk(&rec.order)).await?;
                failed_count(&order.ok_or_else(missing)?)?
            } else {
                0
            };
            let mut items = vec![
                self.update_item(refund_pk(&t.out_refund_no), transition_update(t))?,
                self.update_item(order_pk(&rec.order), release_on_order(&rec, t, released))?,
            ];
            if t.to.releases_slot() {
                let page = failed_page_of(released);
                items.push(self.update_item(
                    failed_page_pk(&rec.order, page),
                    failed_page_update(&rec, page, t.now),
                )?);
            }
            let Some(reasons) = self
                .transact(&format!("transition of {}", t.out_refund_no), items)
                .await?
            else {
                return Ok(TransitionOutcome::Applied(transitioned(&rec, t)));
            };
            let failed = |i: usize| {
                reasons
                    .get(i)
                    .filter(|r| code(r) == "ConditionalCheckFailed")
            };
            if let Some(r) = failed(0) {
                match self.old_refund(r, &t.out_refund_no).await? {
                    // Cannot happen (the condition is the fence); read again rather than guess.
                    Some(cur) if fence_holds(&cur, t) => {}
                    Some(cur) => return Ok(TransitionOutcome::Conflict(cur)),
                    None => return Ok(TransitionOutcome::NotFound),
                }
            } else if let Some(r) = failed(1) {
                // Another release of the order moved `failed_count` on since we read it: read
                // again. An order missing or reserving less than the fee is corrupt.
                let book = self.old_order(r, &rec.order).await?;
                if !book.is_some_and(|b| b.reserved >= rec.refund_fee && t.to.releases_slot()) {
                    return Err(missing());
                }
            } else {
                return Err(missing());
            }
            if !retry.pause().await {
                return Err(LedgerError::Contention(format!(
                    "transition of {}",
                    t.out_refund_no
                )));
            }
        }
    }

    /// Consistent BatchGetItem of `pks` (100 at a time), retrying what DynamoDB left unprocessed.
    /// Absent items are simply not returned.
    async fn batch_get(&self, what: &str, pks: Vec<String>) -> Result<Vec<Item>, LedgerError> {
        let mut out = Vec::with_capacity(pks.len());
        for chunk in pks.chunks(100) {
            let mut keys: Vec<Item> = chunk
                .iter()
                .map(|pk| HashMap::from([("pk".to_owned(), AttributeValue::S(pk.clone()))]))
                .collect();
            let mut retry = TxnRetry::new();
            while !keys.is_empty() {
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(config)?;
                let mut res = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, ka)
                    .send()
                    .await
                    .map_err(unavailable)?;
                if let Some(items) = res.responses.as_mut().and_then(|r| r.remove(&self.table)) {
                    out.extend(items);
                }
                // Unprocessed keys are DynamoDB shedding load: ask again after a pause.
                keys = res
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .map(|k| k.keys().to_vec())
                    .unwrap_or_default();
                if !keys.is_empty() && !retry.pause().await {
                    return Err(LedgerError::Contention(what.to_owned()));
                }
            }
        }
        Ok(out)
    }

    /// The whole book: the order item and its pages of released numbers (see [`with_released`]).
    async fn full_order(&self, order: &OrderRef) -> Result<Option<OrderBook>, LedgerError> {
        let Some(item) = self.get_item(order_pk(order)).await? else {
            return Ok(None);
        };
        let book = OrderBook::try_from(&item)?;
        let pages: Vec<String> = (0..failed_pages(failed_count(&item)?))
            .map(|p| failed_page_pk(order, p))
            .collect();
        if pages.is_empty() {
            return Ok(Some(book));
        }
        let mut released = Vec::new();
        for page in self.batch_get(&format!("order {order}"), pages).await? {
            released.extend(page_nos(&page)?);
        }
        released.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(Some(with_released(book, released)))
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn record(&self, n: NewRefund) -> Result<RecordOutcome, LedgerError> {
        // DynamoDB conditions have no arithmetic, so "reserved + fee <= total" is sent as
        // "reserved <= total - fee". A fee above the total can never fit: answer from reads.
        let Some(max_reserved) = n.total_fee.checked_sub(n.refund_fee) else {
            if let Some(rec) = self.get_refund(&n.out_refund_no).await? {
                return Ok(existing_outcome(rec, &n.request_hash));
            }
            let book = self.get_order(&n.order).await?;
            let book = book.unwrap_or_else(|| fresh_book(&n));
            return Ok(refusal(&book, &n).unwrap_or(RecordOutcome::AmountExceeded { book }));
        };
        let rec = new_record(&n);
        let mut retry = TxnRetry::new();
        loop {
            let items = vec![
                self.put_item(Item::from(&rec), create_if_absent())?,
                self.update_item(order_pk(&n.order), record_reservation(&n, max_reserved))?,
            ];
            let Some(reasons) = self
                .transact(&format!("record of {}", n.out_refund_no), items)
                .await?
            else {
                return Ok(RecordOutcome::Created(rec));
            };
            let failed = |i: usize| {
                reasons
                    .get(i)
                    .filter(|r| code(r) == "ConditionalCheckFailed")
            };
            if let Some(r) = failed(0) {
                if let Some(old) = self.old_refund(r, &n.out_refund_no).await? {
                    return Ok(existing_outcome(old, &n.request_hash));
                }
            } else if let Some(r) = failed(1) {
                let book = self.old_order(r, &n.order).await?;
                if let Some(refused) = book.as_ref().and_then(|b| refusal(b, &n)) {
                    return Ok(refused);
                }
            }
            // The refusal no longer holds (the book moved on since): try again.
            if !retry.pause().await {
                return Err(LedgerError::Contention(format!(
                    "record of {}",
                    n.out_refund_no
                )));
            }
        }
    }

    async fn get(&self, no: &OutRefundNo) -> Result<Option<RefundRecord>, LedgerError> {
        self.get_refund(no).await
    }

    async fn acquire_lease(
        &self,
        no: &OutRefundNo,
        owner: &str,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<LeaseOutcome, LedgerError> {
        let mut u = lease_update(no, owner, now.plus(ttl), now);
        let write_id = new_write_id();
        stamp_write(&mut u, &write_id);
        match self.update(u, refund_pk(no)).await? {
            Ok(item) => Ok(LeaseOutcome::Acquired(RefundRecord::try_from(&item)?)),
            Err(None) => Ok(LeaseOutcome::NotFound),
            // The SDK resent the update after its answer was lost: it applied.
            Err(Some(old)) if written_by(&old, &write_id) => {
                Ok(LeaseOutcome::Acquired(RefundRecord::try_from(&old)?))
            }
            Err(Some(old)) => {
                let old = RefundRecord::try_from(&old)?;
                // The condition failed, so the shared rule can only refuse; it also says which way.
                Ok(match lease_decision(&old, owner, ttl, now) {
                    LeaseDecision::Refuse(refused) => refused,
                    LeaseDecision::Take(_) => LeaseOutcome::Held(old),
                })
            }
        }
    }

    async fn needing_person(
        &self,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        let index = IndexPage {
            name: NEEDS_PERSON_INDEX,
            hash_attr: "gsi2pk",
            range_attr: "gsi2sk",
        };
        self.index_page(&index, NEEDS_PERSON_PK.into(), cursor, limit.clamp(1, 100))
            .await
    }

    async fn correct(&self, c: CorrectionWrite) -> Result<TransitionOutcome, LedgerError> {
        self.correct_refund(&c).await
    }

    async fn mark_delivered(
        &self,
        no: &OutRefundNo,
        ids: &[String],
    ) -> Result<Option<RefundRecord>, LedgerError> {
        self.take_delivered(no, ids).await
    }

    async fn flag(&self, f: FlagWrite) -> Result<TransitionOutcome, LedgerError> {
        self.flag_refund(&f).await
    }

    async fn accepted_on(
        &self,
        day: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        self.accepted_page(day, cursor, limit).await
    }

    async fn save_reconciliation(&self, report: &Reconciliation) -> Result<(), LedgerError> {
        self.put_report(report).await
    }

    async fn reconciliation(&self, day: &str) -> Result<Option<Reconciliation>, LedgerError> {
        self.get_report(day).await
    }

    async fn transition(&self, t: Transition) -> Result<TransitionOutcome, LedgerError> {
        if let Some(bad) = illegal(&t) {
            return Ok(bad);
        }
        if t.to.releases_reservation() {
            return self.transition_releasing(&t).await;
        }
        let mut u = transition_update(&t);
        let write_id = new_write_id();
        stamp_write(&mut u, &write_id);
        match self.update(u, refund_pk(&t.out_refund_no)).await? {
            Ok(item) => Ok(TransitionOutcome::Applied(RefundRecord::try_from(&item)?)),
            Err(None) => Ok(TransitionOutcome::NotFound),
            // The SDK resent the update after its answer was lost: it applied.
            Err(Some(old)) if written_by(&old, &write_id) => {
                Ok(TransitionOutcome::Applied(RefundRecord::try_from(&old)?))
            }
            Err(Some(old)) => Ok(TransitionOutcome::Conflict(RefundRecord::try_from(&old)?)),
        }
    }

    async fn due(
        &self,
        now: UnixMillis,
        cursor_in: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        let limit = limit.clamp(1, 1000);
        let positions = match &cursor_in {
            Some(c) => parse_cursor(c)?,
            None => vec![ShardPos::Start; PENDING_SHARDS as usize],
        };
        let upper = due_upper_bound(now);
        let mut shards: Vec<ShardRead> = positions.into_iter().map(ShardRead::new).collect();
        let mut items: Vec<RefundRecord> = Vec::new();
        // A k-way merge of the shards by sort key (next check, then number): the page holds the
        // most overdue refunds of all shards. A shard is read again only when its buffer runs dry
        // before the page is full, since its next key may sort before every other buffered one.
        while items.len() < limit {
            let want = limit - items.len();
            let mut reads = Vec::new();
            for (i, sh) in shards.iter().enumerate() {
                if sh.needs_read() {
                    reads.push((i, self.read_shard(i, sh.pos.clone(), &upper, want)));
                }
            }
            for (i, read) in reads {
                let (buf, last) = read.await.map_err(|e| {
                    LedgerError::Unavailable(format!("pending query failed: {e}"))
                })??;
                shards[i].fill(buf, last);
            }
            let next = shards
                .iter()
                .enumerate()
                .filter_map(|(i, sh)| sh.buf.front().map(|(sk, _)| (sk, i)))
                .min()
                .map(|(_, i)| i);
            let Some(i) = next else {
                break; // every shard is read to its end
            };
            let Some((sk, item)) = shards[i].buf.pop_front() else {
                break;
            };
            shards[i].pos = ShardPos::After(sk);
            // One unreadable item must not stop the poller for every other refund.
            match RefundRecord::try_from(&item) {
                // The index is eventually consistent: a just-finished refund may linger.
                // A final one with events waiting for delivery is due for the delivery.
                Ok(rec) if !rec.status.is_final() || !rec.outbox.is_empty() => items.push(rec),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "pending refund skipped: unreadable item"),
            }
        }
        let positions: Vec<ShardPos> = shards.into_iter().map(ShardRead::position).collect();
        let next = positions
            .iter()
            .any(|p| *p != ShardPos::Done)
            .then(|| cursor(&positions));
        Ok(Page { items, next })
    }

    async fn order(&self, order: &OrderRef) -> Result<Option<OrderBook>, LedgerError> {
        self.full_order(order).await
    }

    async fn list_by_order(&self, order: &OrderRef) -> Result<Vec<RefundRecord>, LedgerError> {
        let Some(book) = self.full_order(order).await? else {
            return Ok(Vec::new());
        };
        let pks = book.refunds.iter().map(refund_pk).collect();
        let mut out = self
            .batch_get(&format!("list of {order}"), pks)
            .await?
            .iter()
            .map(RefundRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| {
            (a.created_at, a.out_refund_no.as_str()).cmp(&(b.created_at, b.out_refund_no.as_str()))
        });
        Ok(out)
    }

    async fn record_external(&self, e: ExternalRefund) -> Result<ExternalOutcome, LedgerError> {
        let Some(rec) = external_record(&e) else {
            return Ok(ExternalOutcome::InvalidStatus(e.status));
        };
        let items = vec![
            self.put_item(Item::from(&rec), create_if_absent())?,
            self.update_item(order_pk(&rec.order), external_reservation(&rec))?,
        ];
        let Some(reasons) = self
            .transact(&format!("record_external of {}", rec.out_refund_no), items)
            .await?
        else {
            return Ok(ExternalOutcome::Created(rec));
        };
        // Only the Put has a condition, so a failed condition means the number exists.
        let old = match reasons.first() {
            Some(r) => self.old_refund(r, &rec.out_refund_no).await?,
            None => self.get_refund(&rec.out_refund_no).await?,
        };
        match old {
            Some(old) => Ok(ExternalOutcome::Existing(old)),
            None => Err(LedgerError::Contention(format!(
                "record_external of {}",
                rec.out_refund_no
            ))),
        }
    }
}

/// One query's items of a shard with their sort keys, in order, and the last evaluated sort key
/// when the shard holds more.
type ShardBatch = (Vec<(String, Item)>, Option<String>);

/// One shard of a `due` merge: where it stands, what was read and not yet merged, and whether
/// the index holds more after the buffer.
struct ShardRead {
    pos: ShardPos,
    buf: VecDeque<(String, Item)>,
    more: bool,
}

impl ShardRead {
    fn new(pos: ShardPos) -> Self {
        let more = pos != ShardPos::Done;
        Self {
            pos,
            buf: VecDeque::new(),
            more,
        }
    }

    fn needs_read(&self) -> bool {
        self.buf.is_empty() && self.more
    }

    fn fill(&mut self, buf: Vec<(String, Item)>, last: Option<String>) {
        self.buf = buf.into();
        self.more = last.is_some();
        if self.buf.is_empty() {
            // Nothing returned: done, or (never seen, but it keeps the loop moving) resume after
            // the key the query stopped at.
            self.pos = last.map_or(ShardPos::Done, ShardPos::After);
        }
    }

    /// The position to resume from: after the last merged key; done when nothing is left.
    fn position(self) -> ShardPos {
        if self.buf.is_empty() && !self.more {
            ShardPos::Done
        } else {
            self.pos
        }
    }
}

/// A fresh id for one UpdateItem call ([`stamp_write`]).
fn new_write_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether `item` was last written by the update stamped `write_id`.
fn written_by(item: &Item, write_id: &str) -> bool {
    matches!(item.get(WRITE_ID), Some(AttributeValue::S(w)) if w == write_id)
}
