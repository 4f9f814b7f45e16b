//! What reconciliation needs of DynamoDB: a flag for a person written without a move (the whole
//! item put, fenced on its version: `put_at_version`), the `accepted` index read by Beijing day, and the report
//! items (`RECONCILIATION#<bill date>`, the report as one JSON attribute: read whole, never
//! queried).

use aws_sdk_dynamodb::types::AttributeValue;

use super::adapter::{DynamoLedger, IndexPage};
use super::error::unavailable;
use super::keys::{accepted_day_pk, reconciliation_pk};
use super::table::ACCEPTED_INDEX;
use crate::ledger::{Cursor, FlagWrite, LedgerError, Page, TransitionOutcome, flagged};
use crate::reconcile::Reconciliation;

impl DynamoLedger {
    pub(super) async fn flag_refund(
        &self,
        f: &FlagWrite,
    ) -> Result<TransitionOutcome, LedgerError> {
        let Some(rec) = self.get_refund(&f.out_refund_no).await? else {
            return Ok(TransitionOutcome::NotFound);
        };
        if rec.version != f.expected_version {
            return Ok(TransitionOutcome::Conflict(rec));
        }
        let Some(next) = flagged(&rec, f) else {
            return Ok(TransitionOutcome::Applied(rec));
        };
        if self.put_at_version(&next, f.expected_version).await? {
            return Ok(TransitionOutcome::Applied(next));
        }
        match self.get_refund(&f.out_refund_no).await? {
            Some(now) => Ok(TransitionOutcome::Conflict(now)),
            None => Ok(TransitionOutcome::NotFound),
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
