//! What reconciliation needs of DynamoDB: a flag for a person written without a move (the whole
//! item put, fenced on its version), the `accepted` index read by Beijing day, and the report
//! items (`RECONCILIATION#<bill date>`, the report as one JSON attribute: read whole, never
//! queried).

use aws_sdk_dynamodb::types::AttributeValue;

use super::adapter::{DynamoLedger, IndexPage};
use super::codec::{Item, num};
use super::error::unavailable;
use super::expr::Expr;
use super::keys::{accepted_day_pk, reconciliation_pk};
use super::table::ACCEPTED_INDEX;
use crate::ledger::{Cursor, FlagWrite, LedgerError, Page, TransitionOutcome, flagged};
use crate::reconcile::Reconciliation;

/// The fence of a flag: the record is still at the version the flag was computed from.
fn at_version(expected_version: u64) -> Expr {
    let mut e = Expr::default();
    let ver = e.n("version");
    let v = e.v("exp_v", num(expected_version));
    e.condition = format!("{ver} = {v}");
    e
}

impl DynamoLedger {
    pub(super) async fn flag_refund(
        &self,
        f: &FlagWrite,
    ) -> Result<TransitionOutcome, LedgerError> {
        use aws_sdk_dynamodb::operation::put_item::PutItemError as E;
        let Some(rec) = self.get_refund(&f.out_refund_no).await? else {
            return Ok(TransitionOutcome::NotFound);
        };
        if rec.version != f.expected_version {
            return Ok(TransitionOutcome::Conflict(rec));
        }
        let Some(next) = flagged(&rec, f) else {
            return Ok(TransitionOutcome::Applied(rec));
        };
        let cond = at_version(f.expected_version);
        self.count_write(1);
        let res = self
            .client()
            .put_item()
            .table_name(self.table())
            .set_item(Some(Item::from(&next)))
            .condition_expression(&cond.condition)
            .set_expression_attribute_names(Some(cond.names))
            .set_expression_attribute_values(Some(cond.values))
            .send()
            .await;
        match res {
            Ok(_) => Ok(TransitionOutcome::Applied(next)),
            Err(e) => match e.as_service_error() {
                Some(E::ConditionalCheckFailedException(_)) => {
                    match self.get_refund(&f.out_refund_no).await? {
                        Some(now) => Ok(TransitionOutcome::Conflict(now)),
                        None => Ok(TransitionOutcome::NotFound),
                    }
                }
                _ => Err(unavailable(e)),
            },
        }
    }

    pub(super) async fn accepted_page(
        &self,
        day: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        let index = IndexPage {
            name: ACCEPTED_INDEX,
            hash_attr: "gsi3pk",
            range_attr: "gsi3sk",
        };
        self.index_page(&index, accepted_day_pk(day), cursor, limit.clamp(1, 1000))
            .await
    }

    pub(super) async fn put_report(&self, report: &Reconciliation) -> Result<(), LedgerError> {
        let pk = reconciliation_pk(&report.bill_date);
        let json = serde_json::to_string(report).map_err(|e| LedgerError::Corrupt {
            key: pk.clone(),
            problem: e.to_string(),
        })?;
        self.count_write(1);
        self.client()
            .put_item()
            .table_name(self.table())
            .item("pk", AttributeValue::S(pk))
            .item("bill_date", AttributeValue::S(report.bill_date.clone()))
            .item("status", AttributeValue::S(report.status.as_str().into()))
            .item("report", AttributeValue::S(json))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn get_report(
        &self,
        day: &str,
    ) -> Result<Option<Reconciliation>, LedgerError> {
        let pk = reconciliation_pk(day);
        let Some(item) = self.get_item(pk.clone()).await? else {
            return Ok(None);
        };
        let json = item
            .get("report")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| LedgerError::Corrupt {
                key: pk.clone(),
                problem: "report is missing".into(),
            })?;
        serde_json::from_str(json)
            .map(Some)
            .map_err(|e| LedgerError::Corrupt {
                key: pk,
                problem: format!("report: {e}"),
            })
    }
}
