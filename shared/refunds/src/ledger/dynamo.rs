//! `DynamoLedger`: the production ledger in one on-demand DynamoDB table (docs/ARCHITECTURE.md, "DynamoDB table").
//!
//! Items (`pk` is the only key):
//! - `REFUND#<out_refund_no>`: one refund, every `RefundRecord` field as its own attribute, plus the
//!   sparse pending-index keys `gsi1pk = PENDING#<shard>` and `gsi1sk = <20-digit next check
//!   millis>#<out_refund_no>` while the refund is not final.
//! - `ORDER#<OrderRef::key()>`: the order book: `total_fee`, `reserved`, `refund_count`, the
//!   string set `refund_nos` of the numbers that have not FAILED, and `failed_count`.
//! - `ORDER#<OrderRef::key()>#FAILED#<page>`: up to 1,000 released (FAILED) numbers of the order.
//! - `RECONCILIATION#<YYYY-MM-DD>`: the reconciliation report of a bill date (JSON `report`).
//!
//! Sparse indexes: `pending` (non-final refunds, by next check), `needs_person` (`gsi2pk =
//! NEEDS_PERSON`), `accepted` (`gsi3pk = ACCEPTED#<Beijing day of accepted_at>`, by number).
//!
//! Bounded items: a FAILED refund gives back its amount and slot, so the transaction that fails it
//! also moves its number out of the order item into page `failed_count / 1000` (and counts it,
//! conditional on the count it read). The order item then lists at most the refunds holding a
//! slot, and a page at most 1,000 numbers of ≤ 64 bytes, so no item nears DynamoDB's 400 KB limit
//! however often an order's refunds fail; `order` and `list_by_order` read the pages too and still
//! list every number.
//!
//! `due` merges the 8 pending shards by sort key (most overdue first across all of them); its
//! cursor holds every shard's position.
//!
//! Writes per happy-path refund (counted by [`DynamoLedger::write_stats`] and asserted by the
//! contract suite): 3 requests, 4 item writes: `record` with the recorder's lease (one
//! TransactWriteItems of 2 items: the SUBMITTING refund and its order), → PROCESSING (UpdateItem),
//! → SUCCESS (UpdateItem). A refund recorded without a lease takes a 4th: the lease (UpdateItem).
//!
//! One concept per file: `table` is the table definition template.yaml must match, `keys` how
//! items are addressed, `codec` records ↔ items, `expr` the expression builder, `updates` the
//! ledger's conditional writes, `txn_retry` the retry of cancelled transactions, and `adapter`
//! the [`Ledger`](super::Ledger) implementation.

mod adapter;
mod codec;
mod correction;
mod error;
mod expr;
mod keys;
mod reconciliation;
mod table;
mod txn_retry;
mod updates;

pub use adapter::{DynamoLedger, WriteStats};
pub use table::{
    ACCEPTED_INDEX, IndexSpec, NEEDS_PERSON_INDEX, NEEDS_PERSON_PK, PENDING_INDEX, PENDING_SHARDS,
    TableSpec, create_table, table_spec,
};
