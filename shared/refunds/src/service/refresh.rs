//! Get a refund from the ledger, optionally refreshed from WeChat first, and reconcile one refund
//! with what a query by its number says.

use wxpay::OutRefundNo;

use super::{LeaseToken, RefundService, ServiceError};
use crate::correction::FactSource;
use crate::decide::{self, Action, Step, Trigger};
use crate::state::{RefundRecord, UnixMillis};

impl RefundService {
    /// The refund as the ledger has it.
    pub async fn get(&self, no: &OutRefundNo) -> Result<RefundRecord, ServiceError> {
        self.ledger
            .get(no)
            .await?
            .ok_or_else(|| ServiceError::NotFound(no.clone()))
    }

    /// Refunds that need a person (CHANGE, contradicted, or stuck past their escalation age),
    /// one page at a time.
    pub async fn needing_person(
        &self,
        cursor: Option<crate::ledger::Cursor>,
        limit: usize,
    ) -> Result<crate::ledger::Page, ServiceError> {
        Ok(self.ledger.needing_person(cursor, limit).await?)
    }

    /// The refund after asking WeChat about it (a final or in-flight refund is answered as stored).
    pub async fn refresh(&self, no: &OutRefundNo) -> Result<RefundRecord, ServiceError> {
        let rec = self.get(no).await?;
        self.look_again(rec, Trigger::Refresh).await
    }

    /// One look at one refund, as `trigger` calls for.
    pub(super) async fn look_again(
        &self,
        rec: RefundRecord,
        trigger: Trigger,
    ) -> Result<RefundRecord, ServiceError> {
        // The fact a correction records: the query that confirmed a notification is the
        // notification's; the poller's and a refresh's are queries.
        let source = match trigger {
            Trigger::Notification => FactSource::Notification,
            Trigger::Poll | Trigger::Refresh => FactSource::Query,
            Trigger::Bill => FactSource::Bill,
        };
        match decide::action(&rec, trigger) {
            Action::Submit => self.attempt(&rec).await,
            Action::Query => self.reconcile(rec, None, source).await,
            Action::TakeOverThenQuery => {
                // An abandoned attempt (its lease expired): take it over, then find out what
                // happened.
                self.under_lease(&rec.out_refund_no, |rec, lease| async move {
                    self.reconcile(rec, Some(&lease), source).await
                })
                .await
            }
            Action::Keep => Ok(rec),
        }
    }

    /// Asks WeChat about one refund by its number and adopts what it says. For UNKNOWN and
    /// RETRY_WAIT refunds that WeChat has never seen, re-submits the same number.
    pub(super) async fn reconcile(
        &self,
        rec: RefundRecord,
        lease: Option<&LeaseToken>,
        source: FactSource,
    ) -> Result<RefundRecord, ServiceError> {
        let lookup = self.look_up(&rec.out_refund_no).await;
        self.settle(rec, lookup, lease, source).await
    }

    /// Adopts what a query by the refund's number said (see [`RefundService::reconcile`]).
    pub(super) async fn settle(
        &self,
        rec: RefundRecord,
        lookup: crate::decide::Lookup,
        lease: Option<&LeaseToken>,
        source: FactSource,
    ) -> Result<RefundRecord, ServiceError> {
        let now = UnixMillis::now();
        match decide::after_query(&rec, lookup, lease.is_some(), self.schedule(), now) {
            Step::Resubmit => match lease {
                Some(lease) => self.apply_leased(rec, lease).await,
                None => {
                    tracing::info!(out_refund_no = %rec.out_refund_no, "WeChat has no such refund; re-submitting the same number");
                    self.attempt(&rec).await
                }
            },
            step => self.carry_out(&rec, lease, step, source, now).await,
        }
    }
}
