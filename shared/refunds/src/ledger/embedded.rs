//! `EmbeddedLedger`: the ledger in one redb file, for the local stack. Same semantics as DynamoDB:
//! one redb write transaction per operation (redb allows one writer at a time, so every operation is
//! serialised and atomic), and commits are durable (fsync) before a call returns, so killing the
//! process at any moment loses nothing that was acknowledged. Concurrent operations share one
//! fsync ([`group_commit`]).
//!
//! Bounded order values: an order's JSON book lists only the refunds holding a slot (at most the
//! order's 50, plus external ones WeChat reported). A FAILED refund gives its slot back, and its
//! number moves, in the same transaction, to `order_failed`, one small entry per number keyed
//! `(order key, out_refund_no)`. So no value grows with the number of failed attempts, and
//! `order`/`list_by_order` still list every number (a range read of the order's entries).

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use wxpay::{OrderRef, OutRefundNo};

use super::{
    CorrectionWrite, Cursor, ExternalOutcome, ExternalRefund, FlagWrite, LeaseDecision,
    LeaseOutcome, Ledger, LedgerError, NewRefund, Page, RecordOutcome, Transition,
    TransitionOutcome, corrected, corrected_book, delivered, existing_outcome, external_record,
    fence_holds, flagged, fresh_book, illegal, lease_decision, new_record, refusal, released,
    transitioned, with_released,
};
use crate::reconcile::Reconciliation;
use crate::state::{OrderBook, RefundRecord, UnixMillis};

mod group_commit;

/// `out_refund_no` → JSON `RefundRecord`.
const REFUNDS: TableDefinition<&str, &[u8]> = TableDefinition::new("refunds");
/// `OrderRef::key()` → JSON `OrderBook`.
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
/// (next_check_at millis, out_refund_no) of every non-final refund: the poller's index.
const PENDING: TableDefinition<(u64, &str), ()> = TableDefinition::new("pending");
/// `out_refund_no` of every refund that needs a person (CHANGE, or flagged): the operator's list.
const FLAGGED: TableDefinition<&str, ()> = TableDefinition::new("needs_person");
/// (`OrderRef::key()`, out_refund_no) of every FAILED refund: released numbers, kept out of the
/// order's book so its value stays bounded.
const ORDER_FAILED: TableDefinition<(&str, &str), ()> = TableDefinition::new("order_failed");
/// (Beijing day `YYYY-MM-DD`, out_refund_no) of every refund WeChat accepted (`accepted_at`):
/// what that day's refund bill must list.
const ACCEPTED: TableDefinition<(&str, &str), ()> = TableDefinition::new("accepted");
/// Bill date `YYYY-MM-DD` → JSON reconciliation report.
const RECONCILIATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reconciliations");

/// The redb-backed ledger. Cheap to clone (the database and its writer are shared).
#[derive(Clone)]
pub struct EmbeddedLedger {
    /// Declared first so that the writer thread is stopped before the last handle closes the file.
    writer: Arc<group_commit::GroupCommit>,
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLedger").finish_non_exhaustive()
    }
}

fn store<E: Into<redb::Error>>(e: E) -> LedgerError {
    LedgerError::Unavailable(format!("redb: {}", e.into()))
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(bytes).map_err(|e| LedgerError::Corrupt {
        key: key.to_owned(),
        problem: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(key: &str, v: &T) -> Result<Vec<u8>, LedgerError> {
    serde_json::to_vec(v).map_err(|e| LedgerError::Corrupt {
        key: key.to_owned(),
        problem: e.to_string(),
    })
}

type Refunds<'t> = Table<'t, &'static str, &'static [u8]>;
type Orders<'t> = Table<'t, &'static str, &'static [u8]>;
type Pending<'t> = Table<'t, (u64, &'static str), ()>;
type Flagged<'t> = Table<'t, &'static str, ()>;
type Accepted<'t> = Table<'t, (&'static str, &'static str), ()>;

fn read_refund<T: ReadableTable<&'static str, &'static [u8]>>(
    t: &T,
    no: &str,
) -> Result<Option<RefundRecord>, LedgerError> {
    match t.get(no).map_err(store)? {
        Some(v) => decode(no, v.value()).map(Some),
        None => Ok(None),
    }
}

fn read_order<T: ReadableTable<&'static str, &'static [u8]>>(
    t: &T,
    key: &str,
) -> Result<Option<OrderBook>, LedgerError> {
    match t.get(key).map_err(store)? {
        Some(v) => decode(key, v.value()).map(Some),
        None => Ok(None),
    }
}

/// The released (FAILED) numbers of an order, in number order.
fn read_failed<T: ReadableTable<(&'static str, &'static str), ()>>(
    t: &T,
    key: &str,
) -> Result<Vec<OutRefundNo>, LedgerError> {
    let mut out = Vec::new();
    for entry in t.range::<(&str, &str)>((key, "")..).map_err(store)? {
        let (k, _) = entry.map_err(store)?;
        let (order, no) = k.value();
        if order != key {
            break;
        }
        out.push(OutRefundNo::new(no).map_err(|e| LedgerError::Corrupt {
            key: key.to_owned(),
            problem: format!("failed refund number: {e}"),
        })?);
    }
    Ok(out)
}

/// The whole book of an order (see [`with_released`]).
fn read_full_order(
    tx: &redb::ReadTransaction,
    key: &str,
) -> Result<Option<OrderBook>, LedgerError> {
    let orders = tx.open_table(ORDERS).map_err(store)?;
    let failed = tx.open_table(ORDER_FAILED).map_err(store)?;
    match read_order(&orders, key)? {
        Some(book) => Ok(Some(with_released(book, read_failed(&failed, key)?))),
        None => Ok(None),
    }
}

fn pending_key(r: &RefundRecord) -> Option<u64> {
    r.due_at().map(UnixMillis::get)
}

/// The refund records and their indexes, opened together in a write transaction so that every
/// write of a refund keeps the indexes in step with it.
struct RefundTables<'t> {
    refunds: Refunds<'t>,
    pending: Pending<'t>,
    flagged: Flagged<'t>,
    accepted: Accepted<'t>,
}

impl<'t> RefundTables<'t> {
    fn open(tx: &'t WriteTransaction) -> Result<Self, LedgerError> {
        Ok(RefundTables {
            refunds: tx.open_table(REFUNDS).map_err(store)?,
            pending: tx.open_table(PENDING).map_err(store)?,
            flagged: tx.open_table(FLAGGED).map_err(store)?,
            accepted: tx.open_table(ACCEPTED).map_err(store)?,
        })
    }

    fn get(&self, no: &str) -> Result<Option<RefundRecord>, LedgerError> {
        read_refund(&self.refunds, no)
    }

    /// Writes a refund (`old` is what was stored) and moves its index entries with it.
    fn put(&mut self, old: Option<&RefundRecord>, new: &RefundRecord) -> Result<(), LedgerError> {
        let no = new.out_refund_no.as_str();
        if new.needs_person() {
            self.flagged.insert(no, ()).map_err(store)?;
        } else if old.is_some_and(RefundRecord::needs_person) {
            self.flagged.remove(no).map_err(store)?;
        }
        if let Some(at) = old.and_then(pending_key) {
            self.pending.remove((at, no)).map_err(store)?;
        }
        if let Some(at) = pending_key(new) {
            self.pending.insert((at, no), ()).map_err(store)?;
        }
        if let Some(at) = old.and_then(|r| r.accepted_at)
            && Some(at) != new.accepted_at
        {
            self.accepted
                .remove((at.beijing_date().as_str(), no))
                .map_err(store)?;
        }
        if let Some(at) = new.accepted_at {
            self.accepted
                .insert((at.beijing_date().as_str(), no), ())
                .map_err(store)?;
        }
        self.refunds
            .insert(no, encode(no, new)?.as_slice())
            .map_err(store)?;
        Ok(())
    }
}

fn put_order(orders: &mut Orders<'_>, book: &OrderBook) -> Result<(), LedgerError> {
    let key = book.order.key();
    orders
        .insert(key.as_str(), encode(&key, book)?.as_slice())
        .map_err(store)?;
    Ok(())
}

/// One page of the refunds an index names, in the index's order, at most `limit`; the cursor is
/// the last number returned (when more follow). An entry whose refund is missing is skipped.
fn page_of<T: ReadableTable<&'static str, &'static [u8]>>(
    refunds: &T,
    numbers: impl Iterator<Item = Result<String, LedgerError>>,
    limit: usize,
) -> Result<Page, LedgerError> {
    let mut items = Vec::new();
    let mut more = false;
    for no in numbers {
        let no = no?;
        if items.len() == limit {
            more = true;
            break;
        }
        if let Some(rec) = read_refund(refunds, &no)? {
            items.push(rec);
        }
    }
    let next = match (more, items.last()) {
        (true, Some(last)) => Some(Cursor::new(last.out_refund_no.as_str())),
        _ => None,
    };
    Ok(Page { items, next })
}

/// `"<millis>|<out_refund_no>"`: the last pending key a page returned.
fn parse_cursor(c: &Cursor) -> Result<(u64, String), LedgerError> {
    let bad = || LedgerError::BadCursor(c.as_str().chars().take(100).collect());
    let (t, no) = c.as_str().split_once('|').ok_or_else(bad)?;
    Ok((t.parse().map_err(|_| bad())?, no.to_owned()))
}

impl EmbeddedLedger {
    /// Opens (or creates) the ledger file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let db = Database::create(path).map_err(store)?;
        let tx = db.begin_write().map_err(store)?;
        {
            // Create the tables up front so readers never meet a missing table.
            tx.open_table(REFUNDS).map_err(store)?;
            tx.open_table(ORDERS).map_err(store)?;
            tx.open_table(PENDING).map_err(store)?;
            tx.open_table(ORDER_FAILED).map_err(store)?;
            tx.open_table(FLAGGED).map_err(store)?;
            tx.open_table(ACCEPTED).map_err(store)?;
            tx.open_table(RECONCILIATIONS).map_err(store)?;
        }
        tx.commit().map_err(store)?;
        let db = Arc::new(db);
        Ok(Self {
            writer: Arc::new(group_commit::GroupCommit::start(Arc::clone(&db))?),
            db,
        })
    }

    /// Write transactions committed so far through this ledger (one per operation that wrote).
    pub fn commits(&self) -> u64 {
        self.writer.counters.commits.load(Ordering::Relaxed)
    }

    /// Durable commits (fsyncs) so far: concurrent operations share one, so this is at most
    /// [`EmbeddedLedger::commits`].
    pub fn fsyncs(&self) -> u64 {
        self.writer.counters.fsyncs.load(Ordering::Relaxed)
    }

    /// Runs `f` in one write transaction; commits when it says so, otherwise aborts (a refusal
    /// writes nothing). Answers once what it wrote is durable.
    async fn write<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<(T, bool), LedgerError> + Send + 'static,
    {
        self.writer.write(f).await
    }

    async fn read<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, LedgerError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let tx = db.begin_read().map_err(store)?;
            f(&tx)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LedgerError::Unavailable(format!("ledger task failed: {e}")))?
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    async fn record(&self, n: NewRefund) -> Result<RecordOutcome, LedgerError> {
        self.write(move |tx| {
            let mut refunds = RefundTables::open(tx)?;
            let mut orders = tx.open_table(ORDERS).map_err(store)?;
            if let Some(rec) = refunds.get(n.out_refund_no.as_str())? {
                return Ok((existing_outcome(rec, &n.request_hash), false));
            }
            let key = n.order.key();
            let mut book = match read_order(&orders, &key)? {
                Some(book) => book,
                None => fresh_book(&n),
            };
            if let Some(refused) = refusal(&book, &n) {
                return Ok((refused, false));
            }
            // An order holding nothing takes this request's total (see refusal()).
            book.total_fee = n.total_fee;
            // refusal() proved the sum fits, so this cannot overflow.
            book.reserved = book
                .reserved
                .checked_add(n.refund_fee)
                .unwrap_or(book.total_fee);
            book.count += 1;
            book.refunds.push(n.out_refund_no.clone());
            let rec = new_record(&n);
            refunds.put(None, &rec)?;
            put_order(&mut orders, &book)?;
            Ok((RecordOutcome::Created(rec), true))
        })
        .await
    }

    async fn get(&self, no: &OutRefundNo) -> Result<Option<RefundRecord>, LedgerError> {
        let no = no.clone();
        self.read(move |tx| {
            let refunds = tx.open_table(REFUNDS).map_err(store)?;
            read_refund(&refunds, no.as_str())
        })
        .await
    }

    async fn acquire_lease(
        &self,
        no: &OutRefundNo,
        owner: &str,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<LeaseOutcome, LedgerError> {
        let no = no.clone();
        let owner = owner.to_owned();
        self.write(move |tx| {
            let mut refunds = RefundTables::open(tx)?;
            let Some(rec) = refunds.get(no.as_str())? else {
                return Ok((LeaseOutcome::NotFound, false));
            };
            match lease_decision(&rec, &owner, ttl, now) {
                LeaseDecision::Take(next) => {
                    refunds.put(Some(&rec), &next)?;
                    Ok((LeaseOutcome::Acquired(next), true))
                }
                LeaseDecision::Refuse(refused) => Ok((refused, false)),
            }
        })
        .await
    }

    async fn transition(&self, t: Transition) -> Result<TransitionOutcome, LedgerError> {
        if let Some(bad) = illegal(&t) {
            return Ok(bad);
        }
        self.write(move |tx| {
            let mut refunds = RefundTables::open(tx)?;
            let mut orders = tx.open_table(ORDERS).map_err(store)?;
            let Some(rec) = refunds.get(t.out_refund_no.as_str())? else {
                return Ok((TransitionOutcome::NotFound, false));
            };
            if !fence_holds(&rec, &t) {
                return Ok((TransitionOutcome::Conflict(rec), false));
            }
            let next = transitioned(&rec, &t);
            if t.to.releases_reservation() {
                let key = rec.order.key();
                let book = read_order(&orders, &key)?.ok_or_else(|| LedgerError::Corrupt {
                    key: key.clone(),
                    problem: format!("order of refund {} is missing", rec.out_refund_no),
                })?;
                if book.reserved < rec.refund_fee {
                    return Err(LedgerError::Corrupt {
                        key,
                        problem: format!(
                            "reserved {} is less than refund {} of {}",
                            book.reserved, rec.out_refund_no, rec.refund_fee
                        ),
                    });
                }
                put_order(&mut orders, &released(&book, &rec, t.to))?;
                if t.to.releases_slot() {
                    let mut failed = tx.open_table(ORDER_FAILED).map_err(store)?;
                    failed
                        .insert((key.as_str(), rec.out_refund_no.as_str()), ())
                        .map_err(store)?;
                }
            }
            refunds.put(Some(&rec), &next)?;
            Ok((TransitionOutcome::Applied(next), true))
        })
        .await
    }

    async fn due(
        &self,
        now: UnixMillis,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        let start = cursor.as_ref().map(parse_cursor).transpose()?;
        let limit = limit.max(1);
        self.read(move |tx| {
            let refunds = tx.open_table(REFUNDS).map_err(store)?;
            let pending = tx.open_table(PENDING).map_err(store)?;
            let lower = match &start {
                Some((t, no)) => Bound::Excluded((*t, no.as_str())),
                None => Bound::Unbounded,
            };
            let range = pending
                .range::<(u64, &str)>((lower, Bound::Unbounded))
                .map_err(store)?;
            let mut items = Vec::new();
            let mut more = false;
            for entry in range {
                let (k, _) = entry.map_err(store)?;
                let (at, no) = k.value();
                if at > now.get() {
                    break;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                // One unreadable entry must not stop the poller for every other refund.
                match read_refund(&refunds, no) {
                    Ok(Some(rec)) => items.push(rec),
                    Ok(None) => {
                        tracing::error!(
                            out_refund_no = no,
                            "pending entry without its refund skipped"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "pending refund skipped: unreadable item")
                    }
                }
            }
            let next = match (more, items.last()) {
                (true, Some(last)) => Some(Cursor::new(format!(
                    "{}|{}",
                    pending_key(last).unwrap_or(0),
                    last.out_refund_no
                ))),
                _ => None,
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn order(&self, order: &OrderRef) -> Result<Option<OrderBook>, LedgerError> {
        let key = order.key();
        self.read(move |tx| read_full_order(tx, &key)).await
    }

    async fn list_by_order(&self, order: &OrderRef) -> Result<Vec<RefundRecord>, LedgerError> {
        let key = order.key();
        self.read(move |tx| {
            let refunds = tx.open_table(REFUNDS).map_err(store)?;
            let Some(book) = read_full_order(tx, &key)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::with_capacity(book.refunds.len());
            for no in &book.refunds {
                let rec =
                    read_refund(&refunds, no.as_str())?.ok_or_else(|| LedgerError::Corrupt {
                        key: key.clone(),
                        problem: format!("lists refund {no}, which is missing"),
                    })?;
                out.push(rec);
            }
            out.sort_by(|a, b| {
                (a.created_at, a.out_refund_no.as_str())
                    .cmp(&(b.created_at, b.out_refund_no.as_str()))
            });
            Ok(out)
        })
        .await
    }

    async fn record_external(&self, e: ExternalRefund) -> Result<ExternalOutcome, LedgerError> {
        let Some(rec) = external_record(&e) else {
            return Ok(ExternalOutcome::InvalidStatus(e.status));
        };
        self.write(move |tx| {
            let mut refunds = RefundTables::open(tx)?;
            let mut orders = tx.open_table(ORDERS).map_err(store)?;
            if let Some(existing) = refunds.get(rec.out_refund_no.as_str())? {
                return Ok((ExternalOutcome::Existing(existing), false));
            }
            let key = rec.order.key();
            let mut book = read_order(&orders, &key)?.unwrap_or_else(|| OrderBook {
                order: rec.order.clone(),
                total_fee: rec.total_fee,
                reserved: wxpay::Fen::ZERO,
                count: 0,
                refunds: Vec::new(),
            });
            // WeChat's total for the order (from its signed reply) wins over a stored one.
            book.total_fee = rec.total_fee;
            // A fact, not a request: reserved even past the total (WeChat already did it).
            if !rec.status.releases_reservation() {
                book.reserved = book.reserved.checked_add(rec.refund_fee).ok_or_else(|| {
                    LedgerError::Corrupt {
                        key: key.clone(),
                        problem: "reserved amount overflows".into(),
                    }
                })?;
            }
            book.count += 1;
            book.refunds.push(rec.out_refund_no.clone());
            refunds.put(None, &rec)?;
            put_order(&mut orders, &book)?;
            Ok((ExternalOutcome::Created(rec), true))
        })
        .await
    }

    async fn needing_person(
        &self,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        let after = cursor.map(|c| c.as_str().to_owned());
        let limit = limit.clamp(1, 100);
        self.read(move |tx| {
            let refunds = tx.open_table(REFUNDS).map_err(store)?;
            let flagged = tx.open_table(FLAGGED).map_err(store)?;
            let lower = match &after {
                Some(no) => Bound::Excluded(no.as_str()),
                None => Bound::Unbounded,
            };
            let numbers = flagged
                .range::<&str>((lower, Bound::Unbounded))
                .map_err(store)?
                .map(|entry| entry.map(|(k, _)| k.value().to_owned()).map_err(store));
            page_of(&refunds, numbers, limit)
        })
        .await
    }

    async fn mark_delivered(
        &self,
        no: &OutRefundNo,
        ids: &[String],
    ) -> Result<Option<RefundRecord>, LedgerError> {
        let (no, ids) = (no.clone(), ids.to_vec());
        self.write(move |tx| {
            let mut refunds = RefundTables::open(tx)?;
            let Some(rec) = refunds.get(no.as_str())? else {
                return Ok((None, false));
            };
            let Some(next) = delivered(&rec, &ids) else {
                return Ok((Some(rec), false));
            };
            refunds.put(Some(&rec), &next)?;
            Ok((Some(next), true))
        })
        .await
    }

    async fn flag(&self, f: FlagWrite) -> Result<TransitionOutcome, LedgerError> {
        self.write(move |tx| {
            let mut refunds = RefundTables::open(tx)?;
            let Some(rec) = refunds.get(f.out_refund_no.as_str())? else {
                return Ok((TransitionOutcome::NotFound, false));
            };
            if rec.version != f.expected_version {
                return Ok((TransitionOutcome::Conflict(rec), false));
            }
            let Some(next) = flagged(&rec, &f) else {
                return Ok((TransitionOutcome::Applied(rec), false));
            };
            refunds.put(Some(&rec), &next)?;
            Ok((TransitionOutcome::Applied(next), true))
        })
        .await
    }

    async fn accepted_on(
        &self,
        day: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        let day = day.to_owned();
        let after = cursor.map(|c| c.as_str().to_owned());
        let limit = limit.clamp(1, 1000);
        self.read(move |tx| {
            let refunds = tx.open_table(REFUNDS).map_err(store)?;
            let accepted = tx.open_table(ACCEPTED).map_err(store)?;
            let lower = match &after {
                Some(no) => Bound::Excluded((day.as_str(), no.as_str())),
                None => Bound::Included((day.as_str(), "")),
            };
            let numbers = accepted
                .range::<(&str, &str)>((lower, Bound::Unbounded))
                .map_err(store)?
                .map(|entry| {
                    entry
                        .map(|(k, _)| {
                            let (d, no) = k.value();
                            (d == day).then(|| no.to_owned())
                        })
                        .map_err(store)
                })
                .map_while(|r| r.transpose());
            page_of(&refunds, numbers, limit)
        })
        .await
    }

    async fn save_reconciliation(&self, report: &Reconciliation) -> Result<(), LedgerError> {
        let report = report.clone();
        self.write(move |tx| {
            let mut t = tx.open_table(RECONCILIATIONS).map_err(store)?;
            let key = report.bill_date.as_str();
            t.insert(key, encode(key, &report)?.as_slice())
                .map_err(store)?;
            Ok(((), true))
        })
        .await
    }

    async fn reconciliation(&self, day: &str) -> Result<Option<Reconciliation>, LedgerError> {
        let day = day.to_owned();
        self.read(move |tx| {
            let t = tx.open_table(RECONCILIATIONS).map_err(store)?;
            match t.get(day.as_str()).map_err(store)? {
                Some(v) => decode(&day, v.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn correct(&self, c: CorrectionWrite) -> Result<TransitionOutcome, LedgerError> {
        self.write(move |tx| {
            let mut refunds = RefundTables::open(tx)?;
            let mut orders = tx.open_table(ORDERS).map_err(store)?;
            let Some(rec) = refunds.get(c.out_refund_no.as_str())? else {
                return Ok((TransitionOutcome::NotFound, false));
            };
            if rec.status != c.expected_status || rec.version != c.expected_version {
                return Ok((TransitionOutcome::Conflict(rec), false));
            }
            let Some(next) = corrected(&rec, &c) else {
                return Ok((
                    TransitionOutcome::Illegal {
                        from: rec.status,
                        to: c.to,
                    },
                    false,
                ));
            };
            let key = rec.order.key();
            let book = read_order(&orders, &key)?.ok_or_else(|| LedgerError::Corrupt {
                key: key.clone(),
                problem: format!("order of refund {} is missing", rec.out_refund_no),
            })?;
            put_order(&mut orders, &corrected_book(&book, &rec, c.to))?;
            refunds.put(Some(&rec), &next)?;
            Ok((TransitionOutcome::Applied(next), true))
        })
        .await
    }
}
