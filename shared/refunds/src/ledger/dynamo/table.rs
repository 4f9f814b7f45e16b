//! The ledger table as data: key schema, the sparse `pending` index and its shards, TTL. The one
//! definition `create_table` uses and template.yaml must match (`tests/template_table.rs`).

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};

use super::error::{config, unavailable};
use crate::ledger::LedgerError;

/// The pending index's name.
pub const PENDING_INDEX: &str = "pending";
/// Shards of the pending index: spreads index writes over partitions; the poller queries each.
pub const PENDING_SHARDS: u32 = 8;
/// The index of refunds that need a person (CHANGE, or flagged). Sparse and small by nature (one
/// partition, `gsi2pk` = [`NEEDS_PERSON_PK`], sorted by `out_refund_no`).
pub const NEEDS_PERSON_INDEX: &str = "needs_person";
pub const NEEDS_PERSON_PK: &str = "NEEDS_PERSON";
/// The index of the refunds WeChat accepted, by Beijing day (`gsi3pk` = `ACCEPTED#YYYY-MM-DD`,
/// sorted by `out_refund_no`): what reconciliation compares with that day's refund bill.
pub const ACCEPTED_INDEX: &str = "accepted";

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
        attributes: &[
            ("pk", "S"),
            ("gsi1pk", "S"),
            ("gsi1sk", "S"),
            ("gsi2pk", "S"),
            ("gsi2sk", "S"),
            ("gsi3pk", "S"),
            ("gsi3sk", "S"),
        ],
        hash_key: "pk",
        indexes: &[
            IndexSpec {
                name: PENDING_INDEX,
                hash_key: "gsi1pk",
                range_key: "gsi1sk",
                projection: "ALL",
            },
            IndexSpec {
                name: NEEDS_PERSON_INDEX,
                hash_key: "gsi2pk",
                range_key: "gsi2sk",
                projection: "ALL",
            },
            IndexSpec {
                name: ACCEPTED_INDEX,
                hash_key: "gsi3pk",
                range_key: "gsi3sk",
                projection: "ALL",
            },
        ],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_spec_is_on_demand_with_sparse_pending_index() {
        // GIVEN the table definition THEN it is on-demand, keyed by pk, with the pending GSI
        let spec = table_spec();
        assert_eq!(spec.billing_mode, "PAY_PER_REQUEST");
        assert_eq!(spec.hash_key, "pk");
        assert_eq!(spec.indexes.len(), 3);
        assert_eq!(spec.indexes[0].name, "pending");
        assert_eq!(
            (spec.indexes[0].hash_key, spec.indexes[0].range_key),
            ("gsi1pk", "gsi1sk")
        );
        // AND the sparse index of refunds WeChat accepted, by Beijing day
        assert_eq!(spec.indexes[2].name, "accepted");
        assert_eq!(
            (spec.indexes[2].hash_key, spec.indexes[2].range_key),
            ("gsi3pk", "gsi3sk")
        );
        // AND the sparse index of refunds that need a person
        assert_eq!(spec.indexes[1].name, "needs_person");
        assert_eq!(
            (spec.indexes[1].hash_key, spec.indexes[1].range_key),
            ("gsi2pk", "gsi2sk")
        );
        assert_eq!(spec.ttl_attribute, "expires_at");
    }
}
