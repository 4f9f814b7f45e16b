//! `DynamoLedger`: the production ledger in one on-demand DynamoDB table (DESIGN.md, "DynamoDB").
//!
//! Items (`pk` is the only key):
//! - `REFUND#<out_refund_no>`: one refund, every `RefundRecord` field as its own attribute, plus the
//!   sparse pending-index keys `gsi1pk = PENDING#<shard>` and `gsi1sk = <20-digit next check
//!   millis>#<out_refund_no>` while the refund is not final.
//! - `ORDER#<OrderRef::key()>`: the order book: `total_fee`, `reserved`, `refund_count` and the
//!   string set `refund_nos`.
//!
//! Writes per happy-path refund (counted by [`DynamoLedger::write_stats`] and asserted by the
//! contract suite): 4 requests, 5 item writes: `record` (one TransactWriteItems of 2 items),
//! lease → SUBMITTING (UpdateItem), → PROCESSING (UpdateItem), → SUCCESS (UpdateItem). For items
//! ≤ 1 KB that is 2×2 WCU for the transaction (transactional writes cost double) + 1 + 1 + 1 =
//! 7 WCU on the table, plus the `pending` GSI's own writes (ALL projection: 1 to add the entry,
//! 2 for each re-keying update (delete + put), 1 to drop it when final; about 6 WCU).

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, Update,
};
use wxpay::{Fen, OrderRef, OutRefundNo, OutTradeNo, RefundId, TransactionId};

use super::{
    Cursor, ExternalOutcome, ExternalRefund, LeaseDecision, LeaseOutcome, Ledger, LedgerError,
    NewRefund, Page, Patch, RecordOutcome, Transition, TransitionOutcome, apply_transition,
    existing_outcome, external_record, fence_holds, fresh_book, illegal, lease_decision,
    new_record, refusal,
};
use crate::state::{
    LastError, Lease, MAX_REFUNDS_PER_ORDER, OrderBook, RefundRecord, RefundStatus, UnixMillis,
};

/// The pending index's name.
pub const PENDING_INDEX: &str = "pending";
/// Shards of the pending index: spreads index writes over partitions; the poller queries each.
pub const PENDING_SHARDS: u32 = 8;
/// How often a transaction that collided with another (`TransactionConflict`) is tried.
const TXN_ATTEMPTS: u32 = 10;

// ---- the table definition ----------------------------------------------------------------------

/// A global secondary index of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: &'static str,
    pub hash_key: &'static str,
    pub range_key: &'static str,
    /// DynamoDB projection type (`ALL`): `due` returns whole records without a second read.
    pub projection: &'static str,
}

/// The ledger table, as data: the one definition `create_table` uses and template.yaml must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub billing_mode: &'static str,
    /// Key attributes and their types (`S`).
    pub attributes: &'static [(&'static str, &'static str)],
    pub hash_key: &'static str,
    pub indexes: &'static [IndexSpec],
    /// TTL attribute: set only on disposable rows, never on refunds or orders (kept ≥ 400 days).
    pub ttl_attribute: &'static str,
}

/// The ledger table definition.
pub const fn table_spec() -> TableSpec {
    TableSpec {
        billing_mode: "PAY_PER_REQUEST",
        attributes: &[("pk", "S"), ("gsi1pk", "S"), ("gsi1sk", "S")],
        hash_key: "pk",
        indexes: &[IndexSpec {
            name: PENDING_INDEX,
            hash_key: "gsi1pk",
            range_key: "gsi1sk",
            projection: "ALL",
        }],
        ttl_attribute: "expires_at",
    }
}

/// Creates the ledger table `name` from [`table_spec`] (tests and local setups; production uses
/// template.yaml) and enables TTL on its TTL attribute.
pub async fn create_table(client: &Client, name: &str) -> Result<(), LedgerError> {
    let spec = table_spec();
    let mut req = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::from(spec.billing_mode));
    for (attr, ty) in spec.attributes {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(*attr)
                .attribute_type(ScalarAttributeType::from(*ty))
                .build()
                .map_err(config)?,
        );
    }
    req = req.key_schema(key(spec.hash_key, KeyType::Hash)?);
    for ix in spec.indexes {
        req = req.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(ix.name)
                .key_schema(key(ix.hash_key, KeyType::Hash)?)
                .key_schema(key(ix.range_key, KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::from(ix.projection))
                        .build(),
                )
                .build()
                .map_err(config)?,
        );
    }
    req.send().await.map_err(unavailable)?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(spec.ttl_attribute)
                .enabled(true)
                .build()
                .map_err(config)?,
        )
        .send()
        .await
        .map_err(unavailable)?;
    Ok(())
}

fn key(attr: &str, ty: KeyType) -> Result<KeySchemaElement, LedgerError> {
    KeySchemaElement::builder()
        .attribute_name(attr)
        .key_type(ty)
        .build()
        .map_err(config)
}

fn config(e: impl Display) -> LedgerError {
    LedgerError::Config(e.to_string())
}

fn unavailable<E>(e: E) -> LedgerError
where
    E: std::error::Error + 'static,
{
    LedgerError::Unavailable(DisplayErrorContext(&e).to_string())
}

// ---- the adapter -------------------------------------------------------------------------------

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

impl DynamoLedger {
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
        let table = std::env::var("LEDGER_TABLE")
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| LedgerError::Config("LEDGER_TABLE is not set".into()))?;
        let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Ok(Self::new(Client::new(&conf), table))
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            requests: self.writes.requests.load(Ordering::Relaxed),
            items: self.writes.items.load(Ordering::Relaxed),
        }
    }

    fn count_write(&self, items: u64) {
        self.writes.requests.fetch_add(1, Ordering::Relaxed);
        self.writes.items.fetch_add(items, Ordering::Relaxed);
    }

    async fn get_item(&self, pk: String) -> Result<Option<Item>, LedgerError> {
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

    async fn get_refund(&self, no: &OutRefundNo) -> Result<Option<RefundRecord>, LedgerError> {
        self.get_item(refund_pk(no))
            .await?
            .map(|i| refund_from_item(&i))
            .transpose()
    }

    async fn get_order(&self, order: &OrderRef) -> Result<Option<OrderBook>, LedgerError> {
        self.get_item(order_pk(order))
            .await?
            .map(|i| order_from_item(&i))
            .transpose()
    }

    /// Sends a transaction; `Ok(None)` if it committed, `Ok(Some(reasons))` if a condition failed,
    /// retrying (with jittered backoff) cancellations caused only by concurrent transactions.
    async fn transact(
        &self,
        what: &str,
        items: Vec<TransactWriteItem>,
    ) -> Result<Option<Vec<CancellationReason>>, LedgerError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
        for attempt in 0..TXN_ATTEMPTS {
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
            let retry = match err.as_service_error() {
                Some(E::TransactionCanceledException(c)) => {
                    let reasons = c.cancellation_reasons();
                    if reasons.iter().any(|r| code(r) == "ConditionalCheckFailed") {
                        return Ok(Some(reasons.to_vec()));
                    }
                    // Only conflicts with other in-flight transactions are worth retrying here;
                    // the SDK already retried throttling.
                    reasons
                        .iter()
                        .all(|r| matches!(code(r), "None" | "TransactionConflict"))
                }
                Some(E::TransactionInProgressException(_)) => true,
                _ => false,
            };
            if !retry {
                return Err(unavailable(err));
            }
            backoff(attempt).await;
        }
        Err(LedgerError::Contention(what.to_owned()))
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
            .set_condition_expression((!u.condition.is_empty()).then(|| u.condition.clone()))
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

    fn put_item(&self, item: Item, condition: Expr) -> Result<TransactWriteItem, LedgerError> {
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

    fn update_item(&self, pk: String, u: Expr) -> Result<TransactWriteItem, LedgerError> {
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .update_expression(u.update_expression())
            .set_condition_expression((!u.condition.is_empty()).then(|| u.condition.clone()))
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
            Some(item) => refund_from_item(item).map(Some),
            None => self.get_refund(no).await,
        }
    }

    async fn old_order(
        &self,
        reason: &CancellationReason,
        order: &OrderRef,
    ) -> Result<Option<OrderBook>, LedgerError> {
        match reason.item() {
            Some(item) => order_from_item(item).map(Some),
            None => self.get_order(order).await,
        }
    }

    /// The release path of `transition`: refund update and order release in one transaction.
    async fn transition_releasing(&self, t: &Transition) -> Result<TransitionOutcome, LedgerError> {
        for attempt in 0..TXN_ATTEMPTS {
            // The amount and order come from the stored record, never from the caller.
            let Some(rec) = self.get_refund(&t.out_refund_no).await? else {
                return Ok(TransitionOutcome::NotFound);
            };
            if !fence_holds(&rec, t) {
                return Ok(TransitionOutcome::Conflict(rec));
            }
            let mut o = Expr::default();
            let reserved = o.n("reserved");
            let fee = o.v("fee", num(rec.refund_fee.get()));
            let upd = o.n("updated_at");
            let now = o.v("now", num(t.now.get()));
            o.set.push(format!("{reserved} = {reserved} - {fee}"));
            o.set.push(format!("{upd} = {now}"));
            if t.to.releases_slot() {
                let cnt = o.n("refund_count");
                let one = o.v("one", num(1));
                o.set.push(format!("{cnt} = {cnt} - {one}"));
            }
            let pk = o.n("pk");
            o.condition = format!("attribute_exists({pk}) AND {reserved} >= {fee}");
            let items = vec![
                self.update_item(refund_pk(&t.out_refund_no), transition_expr(t))?,
                self.update_item(order_pk(&rec.order), o)?,
            ];
            let Some(reasons) = self.transact("transition", items).await? else {
                return Ok(TransitionOutcome::Applied(apply_transition(&rec, t)));
            };
            if let Some(r) = reasons
                .first()
                .filter(|r| code(r) == "ConditionalCheckFailed")
            {
                return Ok(match self.old_refund(r, &t.out_refund_no).await? {
                    Some(cur) if fence_holds(&cur, t) => {
                        // Cannot happen (the condition is the fence); read again rather than guess.
                        backoff(attempt).await;
                        continue;
                    }
                    Some(cur) => TransitionOutcome::Conflict(cur),
                    None => TransitionOutcome::NotFound,
                });
            }
            return Err(LedgerError::Corrupt {
                key: order_pk(&rec.order),
                problem: format!(
                    "cannot release {} of refund {}: order missing or reserving less",
                    rec.refund_fee, rec.out_refund_no
                ),
            });
        }
        Err(LedgerError::Contention(format!(
            "transition of {}",
            t.out_refund_no
        )))
    }
}

async fn backoff(attempt: u32) {
    let base = 5u64 << attempt.min(6);
    let jitter = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % (base + 1);
    tokio::time::sleep(Duration::from_millis(base.min(200) + jitter)).await;
}

fn code(r: &CancellationReason) -> &str {
    r.code().unwrap_or("None")
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
        for attempt in 0..TXN_ATTEMPTS {
            let mut put_cond = Expr::default();
            let pk = put_cond.n("pk");
            put_cond.condition = format!("attribute_not_exists({pk})");

            let mut o = Expr::default();
            let pk = o.n("pk");
            // Equal to the stored total, or replacing the total of an order holding nothing.
            let r = reserve_on_order(
                &mut o,
                &n.order,
                n.total_fee,
                n.refund_fee.get(),
                &n.out_refund_no,
                n.now,
                TotalUpdate::Replace,
            );
            let (total, reserved, cnt, v_total, v_zero) =
                (r.total, r.reserved, r.cnt, r.v_total, r.v_zero);
            let v_max = o.v("max", num(MAX_REFUNDS_PER_ORDER));
            let v_maxres = o.v("maxres", num(max_reserved.get()));
            // Create-if-absent: a missing order is created with this request's total; an order
            // holding nothing (every refund FAILED) takes it too (see ledger::refusal).
            o.condition = format!(
                "attribute_not_exists({pk}) OR ({reserved} = {v_zero} AND {cnt} = {v_zero}) \
                 OR ({total} = {v_total} AND {reserved} <= {v_maxres} AND {cnt} < {v_max})"
            );

            let items = vec![
                self.put_item(refund_item(&rec), put_cond)?,
                self.update_item(order_pk(&n.order), o)?,
            ];
            let Some(reasons) = self.transact("record", items).await? else {
                return Ok(RecordOutcome::Created(rec));
            };
            let failed = |i: usize| {
                reasons
                    .get(i)
                    .filter(|r| code(r) == "ConditionalCheckFailed")
            };
            if let Some(r) = failed(0) {
                match self.old_refund(r, &n.out_refund_no).await? {
                    Some(old) => return Ok(existing_outcome(old, &n.request_hash)),
                    None => {
                        backoff(attempt).await;
                        continue;
                    }
                }
            }
            if let Some(r) = failed(1) {
                let book = self.old_order(r, &n.order).await?;
                if let Some(refused) = book.as_ref().and_then(|b| refusal(b, &n)) {
                    return Ok(refused);
                }
            }
            // The refusal no longer holds (the book moved on since): try again.
            backoff(attempt).await;
        }
        Err(LedgerError::Contention(format!(
            "record of {}",
            n.out_refund_no
        )))
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
        let expires_at = now.plus(ttl);
        let mut u = Expr::default();
        let (pk, st, lo, le, att, ver, upd, nca, g1, g2) = (
            u.n("pk"),
            u.n("status"),
            u.n("lease_owner"),
            u.n("lease_expires_at"),
            u.n("attempts"),
            u.n("version"),
            u.n("updated_at"),
            u.n("next_check_at"),
            u.n("gsi1pk"),
            u.n("gsi1sk"),
        );
        let sub = u.v(
            "sub",
            AttributeValue::S(RefundStatus::Submitting.as_str().into()),
        );
        let rec_ = u.v("recorded", status_av(RefundStatus::Recorded));
        let rw = u.v("retry", status_av(RefundStatus::RetryWait));
        let unk = u.v("unknown", status_av(RefundStatus::Unknown));
        let v_owner = u.v("owner", AttributeValue::S(owner.to_owned()));
        let v_exp = u.v("exp", num(expires_at.get()));
        let v_now = u.v("now", num(now.get()));
        let v_one = u.v("one", num(1));
        let v_g1 = u.v("g1", AttributeValue::S(pending_pk(no)));
        let v_g2 = u.v("g2", AttributeValue::S(pending_sk(no, expires_at)));
        u.set = vec![
            format!("{st} = {sub}"),
            format!("{lo} = {v_owner}"),
            format!("{le} = {v_exp}"),
            format!("{att} = {att} + {v_one}"),
            format!("{ver} = {ver} + {v_one}"),
            format!("{upd} = {v_now}"),
            // An abandoned attempt becomes due when the lease runs out.
            format!("{nca} = {v_exp}"),
            format!("{g1} = {v_g1}"),
            format!("{g2} = {v_g2}"),
        ];
        u.condition = format!(
            "attribute_exists({pk}) AND ({st} IN ({rec_}, {rw}, {unk}) OR ({st} = {sub} AND \
             (attribute_not_exists({le}) OR {le} <= {v_now})))"
        );
        match self.update(u, refund_pk(no)).await? {
            Ok(item) => Ok(LeaseOutcome::Acquired(refund_from_item(&item)?)),
            Err(None) => Ok(LeaseOutcome::NotFound),
            Err(Some(old)) => {
                let old = refund_from_item(&old)?;
                // The condition failed, so the shared rule can only refuse; it also says which way.
                Ok(match lease_decision(&old, owner, ttl, now) {
                    LeaseDecision::Refuse(refused) => refused,
                    LeaseDecision::Take(_) => LeaseOutcome::Held(old),
                })
            }
        }
    }

    async fn transition(&self, t: Transition) -> Result<TransitionOutcome, LedgerError> {
        if let Some(bad) = illegal(&t) {
            return Ok(bad);
        }
        if t.to.releases_reservation() {
            return self.transition_releasing(&t).await;
        }
        match self
            .update(transition_expr(&t), refund_pk(&t.out_refund_no))
            .await?
        {
            Ok(item) => Ok(TransitionOutcome::Applied(refund_from_item(&item)?)),
            Err(None) => Ok(TransitionOutcome::NotFound),
            Err(Some(old)) => Ok(TransitionOutcome::Conflict(refund_from_item(&old)?)),
        }
    }

    async fn due(
        &self,
        now: UnixMillis,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        let limit = limit.clamp(1, 1000);
        let (first_shard, mut start_sk) = match &cursor {
            Some(c) => {
                let (s, sk) = parse_cursor(c)?;
                (s, Some(sk))
            }
            None => (0, None),
        };
        // Every key of a check due at or before `now` sorts below "<now>$" ('$' follows '#').
        let upper = format!("{:020}$", now.get());
        let mut items: Vec<RefundRecord> = Vec::new();
        for shard in first_shard..PENDING_SHARDS {
            let gpk = format!("PENDING#{shard}");
            loop {
                let want = limit - items.len();
                let mut q = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(PENDING_INDEX)
                    .key_condition_expression("#g1 = :g1 AND #g2 < :upper")
                    .expression_attribute_names("#g1", "gsi1pk")
                    .expression_attribute_names("#g2", "gsi1sk")
                    .expression_attribute_values(":g1", AttributeValue::S(gpk.clone()))
                    .expression_attribute_values(":upper", AttributeValue::S(upper.clone()))
                    .limit(i32::try_from(want).unwrap_or(i32::MAX));
                if let Some(sk) = start_sk.take() {
                    let no = no_from_pending_sk(&sk)
                        .ok_or_else(|| LedgerError::BadCursor(sk.chars().take(100).collect()))?;
                    q = q
                        .exclusive_start_key("gsi1pk", AttributeValue::S(gpk.clone()))
                        .exclusive_start_key("gsi1sk", AttributeValue::S(sk.clone()))
                        .exclusive_start_key("pk", AttributeValue::S(format!("REFUND#{no}")));
                }
                let out = q.send().await.map_err(unavailable)?;
                for item in out.items() {
                    // One unreadable item must not stop the poller for every other refund.
                    let rec = match refund_from_item(item) {
                        Ok(rec) => rec,
                        Err(e) => {
                            tracing::error!(error = %e, "pending refund skipped: unreadable item");
                            continue;
                        }
                    };
                    // The index is eventually consistent: a just-finished refund may linger.
                    if !rec.status.is_final() {
                        items.push(rec);
                    }
                }
                let last_sk = out
                    .last_evaluated_key()
                    .and_then(|k| k.get("gsi1sk"))
                    .and_then(|v| v.as_s().ok())
                    .cloned();
                if items.len() >= limit {
                    // Resume after the last key this query evaluated (covers filtered items too).
                    let resume = last_sk.or_else(|| out.items().last().and_then(sk_of));
                    let next = resume.map(|sk| Cursor::new(format!("{shard}|{sk}")));
                    return Ok(Page { items, next });
                }
                match last_sk {
                    Some(sk) => start_sk = Some(sk),
                    None => break,
                }
            }
        }
        Ok(Page { items, next: None })
    }

    async fn order(&self, order: &OrderRef) -> Result<Option<OrderBook>, LedgerError> {
        self.get_order(order).await
    }

    async fn list_by_order(&self, order: &OrderRef) -> Result<Vec<RefundRecord>, LedgerError> {
        let Some(book) = self.get_order(order).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(book.refunds.len());
        for chunk in book.refunds.chunks(100) {
            let mut keys: Vec<Item> = chunk
                .iter()
                .map(|no| HashMap::from([("pk".to_owned(), AttributeValue::S(refund_pk(no)))]))
                .collect();
            let mut attempt = 0;
            while !keys.is_empty() {
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(config)?;
                let res = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, ka)
                    .send()
                    .await
                    .map_err(unavailable)?;
                if let Some(items) = res.responses().and_then(|r| r.get(&self.table)) {
                    for item in items {
                        out.push(refund_from_item(item)?);
                    }
                }
                keys = res
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .map(|k| k.keys().to_vec())
                    .unwrap_or_default();
                if !keys.is_empty() {
                    attempt += 1;
                    if attempt >= TXN_ATTEMPTS {
                        return Err(LedgerError::Contention(format!("list of {order}")));
                    }
                    backoff(attempt).await;
                }
            }
        }
        out.sort_by(|a, b| {
            (a.created_at, a.out_refund_no.as_str()).cmp(&(b.created_at, b.out_refund_no.as_str()))
        });
        Ok(out)
    }

    async fn record_external(&self, e: ExternalRefund) -> Result<ExternalOutcome, LedgerError> {
        let Some(rec) = external_record(&e) else {
            return Ok(ExternalOutcome::InvalidStatus(e.status));
        };
        let mut put_cond = Expr::default();
        let pk = put_cond.n("pk");
        put_cond.condition = format!("attribute_not_exists({pk})");

        // A fact, not a request: no amount or count condition (WeChat already did it).
        let fee = if rec.status.releases_reservation() {
            0
        } else {
            rec.refund_fee.get()
        };
        let mut o = Expr::default();
        reserve_on_order(
            &mut o,
            &rec.order,
            rec.total_fee,
            fee,
            &rec.out_refund_no,
            rec.created_at,
            TotalUpdate::KeepStored,
        );
        // No condition on the order: the refund is a fact, so the order takes it whatever it holds.
        let items = vec![
            self.put_item(refund_item(&rec), put_cond)?,
            self.update_item(order_pk(&rec.order), o)?,
        ];
        match self.transact("record_external", items).await? {
            None => Ok(ExternalOutcome::Created(rec)),
            Some(reasons) => {
                let r = reasons.first().cloned().unwrap_or_else(|| {
                    CancellationReason::builder()
                        .code("ConditionalCheckFailed")
                        .build()
                });
                match self.old_refund(&r, &rec.out_refund_no).await? {
                    Some(old) => Ok(ExternalOutcome::Existing(old)),
                    None => Err(LedgerError::Contention(format!(
                        "record_external of {}",
                        rec.out_refund_no
                    ))),
                }
            }
        }
    }
}

// ---- expressions -------------------------------------------------------------------------------

type Item = HashMap<String, AttributeValue>;

/// How a reservation treats the order's stored `total_fee`.
enum TotalUpdate {
    /// Set it to this total (the caller's condition decides when that is allowed).
    Replace,
    /// Keep a stored total; set this one only on a new order.
    KeepStored,
}

/// Placeholders of the order attributes a caller may put in its condition.
struct Reservation {
    total: String,
    reserved: String,
    cnt: String,
    v_total: String,
    v_zero: String,
}

/// The order-item update shared by `record` and `record_external`: create the order if absent,
/// add `fee` to `reserved`, count the refund and list its number.
fn reserve_on_order(
    o: &mut Expr,
    order: &OrderRef,
    total_fee: Fen,
    fee: u64,
    no: &OutRefundNo,
    now: UnixMillis,
    total_update: TotalUpdate,
) -> Reservation {
    let (okey, total, reserved, cnt, nos, created, updated) = (
        o.n("order_key"),
        o.n("total_fee"),
        o.n("reserved"),
        o.n("refund_count"),
        o.n("refund_nos"),
        o.n("created_at"),
        o.n("updated_at"),
    );
    let v_okey = o.v("okey", AttributeValue::S(order.key()));
    let v_total = o.v("total", num(total_fee.get()));
    let v_zero = o.v("zero", num(0));
    let v_fee = o.v("fee", num(fee));
    let v_one = o.v("one", num(1));
    let v_now = o.v("now", num(now.get()));
    let v_nos = o.v("nos", AttributeValue::Ss(vec![no.as_str().to_owned()]));
    let set_total = match total_update {
        TotalUpdate::Replace => format!("{total} = {v_total}"),
        TotalUpdate::KeepStored => format!("{total} = if_not_exists({total}, {v_total})"),
    };
    o.set = vec![
        format!("{okey} = if_not_exists({okey}, {v_okey})"),
        set_total,
        format!("{reserved} = if_not_exists({reserved}, {v_zero}) + {v_fee}"),
        format!("{cnt} = if_not_exists({cnt}, {v_zero}) + {v_one}"),
        format!("{created} = if_not_exists({created}, {v_now})"),
        format!("{updated} = {v_now}"),
    ];
    o.add = vec![format!("{nos} {v_nos}")];
    Reservation {
        total,
        reserved,
        cnt,
        v_total,
        v_zero,
    }
}

/// An update/condition expression with its placeholders. Every attribute goes through a `#name`
/// placeholder so DynamoDB's long reserved-word list (STATUS, ...) never bites.
#[derive(Debug, Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    set: Vec<String>,
    remove: Vec<String>,
    add: Vec<String>,
    condition: String,
}

impl Expr {
    /// The placeholder of `attr` (`#n0`, `#n1`, ...: plain alphanumerics are always valid).
    fn n(&mut self, attr: &str) -> String {
        if let Some((k, _)) = self.names.iter().find(|(_, a)| a.as_str() == attr) {
            return k.clone();
        }
        let k = format!("#n{}", self.names.len());
        self.names.insert(k.clone(), attr.to_owned());
        k
    }

    /// A new value placeholder (`:v0`, ...); `_what` only documents the call site.
    fn v(&mut self, _what: &str, val: AttributeValue) -> String {
        let k = format!(":v{}", self.values.len());
        self.values.insert(k.clone(), val);
        k
    }

    fn update_expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        if !self.add.is_empty() {
            parts.push(format!("ADD {}", self.add.join(", ")));
        }
        parts.join(" ")
    }
}

/// The fenced update of a refund for a transition (the same on both paths).
fn transition_expr(t: &Transition) -> Expr {
    let mut u = Expr::default();
    let c = &t.changes;
    let (pk, st, ver, upd) = (u.n("pk"), u.n("status"), u.n("version"), u.n("updated_at"));
    let v_to = u.v("to", status_av(t.to));
    let v_exp_st = u.v("exp_st", status_av(t.expected_status));
    let v_exp_v = u.v("exp_v", num(t.expected_version));
    let v_new_v = u.v("new_v", num(t.expected_version + 1));
    let v_now = u.v("now", num(t.now.get()));
    u.set = vec![
        format!("{st} = {v_to}"),
        format!("{ver} = {v_new_v}"),
        format!("{upd} = {v_now}"),
    ];
    fn set_s(u: &mut Expr, attr: &str, val: Option<&str>) {
        if let Some(val) = val {
            let a = u.n(attr);
            let v = u.v(attr, AttributeValue::S(val.to_owned()));
            u.set.push(format!("{a} = {v}"));
        }
    }
    set_s(
        &mut u,
        "refund_id",
        c.refund_id.as_ref().map(RefundId::as_str),
    );
    set_s(
        &mut u,
        "transaction_id",
        c.transaction_id.as_ref().map(TransactionId::as_str),
    );
    set_s(
        &mut u,
        "out_trade_no",
        c.out_trade_no.as_ref().map(OutTradeNo::as_str),
    );
    set_s(
        &mut u,
        "refund_recv_account",
        c.refund_recv_account.as_deref(),
    );
    set_s(&mut u, "success_time", c.success_time.as_deref());
    match &c.last_error {
        Patch::Keep => {}
        Patch::Set(e) => {
            set_s(&mut u, "last_error_code", Some(&e.code));
            set_s(&mut u, "last_error_message", Some(&e.message));
        }
        Patch::Clear => {
            let (a, b) = (u.n("last_error_code"), u.n("last_error_message"));
            u.remove.extend([a, b]);
        }
    }
    let mut condition =
        format!("attribute_exists({pk}) AND {st} = {v_exp_st} AND {ver} = {v_exp_v}");
    if t.expected_status == RefundStatus::Submitting {
        let (lo, le) = (u.n("lease_owner"), u.n("lease_expires_at"));
        u.remove.extend([lo.clone(), le]);
        let owner = t.lease_owner.clone().unwrap_or_default();
        let v_owner = u.v("owner", AttributeValue::S(owner));
        condition.push_str(&format!(" AND {lo} = {v_owner}"));
    }
    if t.to.is_final() {
        let (nca, g1, g2) = (u.n("next_check_at"), u.n("gsi1pk"), u.n("gsi1sk"));
        u.remove.extend([nca, g1, g2]);
    } else if let Some(at) = c.next_check_at {
        let (nca, g1, g2) = (u.n("next_check_at"), u.n("gsi1pk"), u.n("gsi1sk"));
        let v_at = u.v("nca", num(at.get()));
        let v_g1 = u.v("g1", AttributeValue::S(pending_pk(&t.out_refund_no)));
        let v_g2 = u.v("g2", AttributeValue::S(pending_sk(&t.out_refund_no, at)));
        u.set.push(format!("{nca} = {v_at}"));
        u.set.push(format!("{g1} = {v_g1}"));
        u.set.push(format!("{g2} = {v_g2}"));
    }
    u.condition = condition;
    u
}

// ---- item codec --------------------------------------------------------------------------------

fn refund_pk(no: &OutRefundNo) -> String {
    format!("REFUND#{no}")
}

fn order_pk(order: &OrderRef) -> String {
    format!("ORDER#{}", order.key())
}

/// FNV-1a: a stable hash (std's hasher is randomly seeded per process, which would move refunds
/// between shards across Lambda instances).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn pending_pk(no: &OutRefundNo) -> String {
    format!("PENDING#{}", fnv1a(no.as_str()) % u64::from(PENDING_SHARDS))
}

fn pending_sk(no: &OutRefundNo, at: UnixMillis) -> String {
    format!("{:020}#{no}", at.get())
}

fn no_from_pending_sk(sk: &str) -> Option<&str> {
    sk.get(21..).filter(|no| !no.is_empty())
}

fn sk_of(item: &Item) -> Option<String> {
    item.get("gsi1sk").and_then(|v| v.as_s().ok()).cloned()
}

/// `"<shard>|<gsi1sk>"`.
fn parse_cursor(c: &Cursor) -> Result<(u32, String), LedgerError> {
    let bad = || LedgerError::BadCursor(c.as_str().chars().take(100).collect());
    let (shard, sk) = c.as_str().split_once('|').ok_or_else(bad)?;
    let shard: u32 = shard.parse().map_err(|_| bad())?;
    if shard >= PENDING_SHARDS || no_from_pending_sk(sk).is_none() {
        return Err(bad());
    }
    Ok((shard, sk.to_owned()))
}

fn num(v: impl Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn status_av(s: RefundStatus) -> AttributeValue {
    AttributeValue::S(s.as_str().to_owned())
}

fn refund_item(r: &RefundRecord) -> Item {
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
    i
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
}

fn refund_from_item(item: &Item) -> Result<RefundRecord, LedgerError> {
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
    let attempts =
        u32::try_from(r.u64("attempts")?).map_err(|_| r.corrupt("attempts does not fit in u32"))?;
    let external = match item.get("external") {
        None => false,
        Some(AttributeValue::Bool(b)) => *b,
        Some(_) => return Err(r.corrupt("external is not a boolean")),
    };
    Ok(RefundRecord {
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
        attempts,
        last_error,
        refund_recv_account: r.opt_s("refund_recv_account")?.map(str::to_owned),
        success_time: r.opt_s("success_time")?.map(str::to_owned),
        created_at: UnixMillis(r.u64("created_at")?),
        updated_at: UnixMillis(r.u64("updated_at")?),
        request_hash: r.s("request_hash")?.to_owned(),
        version: r.u64("version")?,
        lease,
        next_check_at: r.opt_u64("next_check_at")?.map(UnixMillis),
        external,
    })
}

fn order_from_item(item: &Item) -> Result<OrderBook, LedgerError> {
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
    let count = u32::try_from(r.u64("refund_count")?)
        .map_err(|_| r.corrupt("refund_count does not fit in u32"))?;
    Ok(OrderBook {
        order: r.order()?,
        total_fee: r.fen("total_fee")?,
        reserved: r.fen("reserved")?,
        count,
        refunds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        let item = refund_item(&rec);
        assert_eq!(refund_from_item(&item).unwrap(), rec);
        assert_eq!(
            item.get("gsi1sk").and_then(|v| v.as_s().ok()).unwrap(),
            "00000000000000000099#R-1|x@y"
        );
        assert_eq!(
            no_from_pending_sk("00000000000000000099#R-1|x@y"),
            Some("R-1|x@y")
        );
    }

    #[test]
    fn final_items_have_no_pending_keys() {
        // GIVEN a final record WHEN encoded THEN it carries no index keys and no next check
        let mut rec = crate::ledger::new_record(&NewRefund {
            out_refund_no: OutRefundNo::new("R1").unwrap(),
            order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
            total_fee: Fen::new(10).unwrap(),
            refund_fee: Fen::new(10).unwrap(),
            refund_desc: None,
            refund_account: None,
            request_hash: "h".into(),
            now: UnixMillis(1),
            next_check_at: UnixMillis(2),
        });
        rec.status = RefundStatus::Success;
        let item = refund_item(&rec);
        assert!(!item.contains_key("gsi1pk") && !item.contains_key("next_check_at"));
    }

    #[test]
    fn corrupt_items_are_errors_not_panics() {
        // GIVEN an item with a bad amount WHEN decoded THEN a Corrupt error names the item
        let mut item = refund_item(&crate::ledger::new_record(&NewRefund {
            out_refund_no: OutRefundNo::new("R1").unwrap(),
            order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
            total_fee: Fen::new(10).unwrap(),
            refund_fee: Fen::new(10).unwrap(),
            refund_desc: None,
            refund_account: None,
            request_hash: "h".into(),
            now: UnixMillis(1),
            next_check_at: UnixMillis(2),
        }));
        item.insert("refund_fee".into(), AttributeValue::N("-5".into()));
        match refund_from_item(&item) {
            Err(LedgerError::Corrupt { key, problem }) => {
                assert_eq!(key, "REFUND#R1");
                assert!(problem.contains("refund_fee"), "{problem}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        // GIVEN many numbers THEN each maps to a shard below PENDING_SHARDS, the same every time,
        // and more than one shard is used
        let mut used = std::collections::HashSet::new();
        for i in 0..200 {
            let no = OutRefundNo::new(format!("R{i}")).unwrap();
            let a = pending_pk(&no);
            assert_eq!(a, pending_pk(&no));
            let shard: u32 = a.trim_start_matches("PENDING#").parse().unwrap();
            assert!(shard < PENDING_SHARDS);
            used.insert(shard);
        }
        assert_eq!(used.len() as u32, PENDING_SHARDS);
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn table_spec_is_on_demand_with_sparse_pending_index() {
        // GIVEN the table definition THEN it is on-demand, keyed by pk, with the pending GSI
        let spec = table_spec();
        assert_eq!(spec.billing_mode, "PAY_PER_REQUEST");
        assert_eq!(spec.hash_key, "pk");
        assert_eq!(spec.indexes.len(), 1);
        assert_eq!(spec.indexes[0].name, "pending");
        assert_eq!(
            (spec.indexes[0].hash_key, spec.indexes[0].range_key),
            ("gsi1pk", "gsi1sk")
        );
        assert_eq!(spec.ttl_attribute, "expires_at");
    }
}
