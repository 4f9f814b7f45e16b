//! Submit: record the refund with its reservation before anything is sent, then apply it once
//! under the lease; a definitive refusal of a repeat is verified by query before it fails.

use tracing::{info, warn};

use super::{LeaseToken, RefundService, ServiceError, Submitted};
use crate::correction::FactSource;
use crate::decide::{self, Replay, Step};
use crate::ledger::RecordOutcome;
use crate::request::RefundCommand;
use crate::state::{LastError, RefundRecord, UnixMillis};

impl RefundService {
    /// Records the refund (with its reservation) before anything is sent, then submits it once.
    pub async fn submit(&self, cmd: RefundCommand) -> Result<Submitted, ServiceError> {
        let now = UnixMillis::now();
        let refund_fee = cmd.refund_fee;
        let total_fee = cmd.total_fee;
        // Recorded with our lease in the same write: the first attempt needs no write of its own.
        // If this process dies before WeChat answers, the poller takes the attempt over when the
        // lease runs out (and asks WeChat before sending again).
        let lease = LeaseToken::new();
        let expires = now.plus(self.cfg.lease_ttl);
        let new = cmd
            .into_new_refund(now, expires)
            .leased_by(lease.as_str(), expires);
        match self.ledger.record(new).await? {
            RecordOutcome::Created(rec) => {
                info!(out_refund_no = %rec.out_refund_no, out_trade_no = rec.order.field().1, refund_fee = rec.refund_fee.get(), "refund recorded");
                Ok(Submitted::New(self.apply_leased(rec, &lease).await?))
            }
            RecordOutcome::Existing(rec) => match decide::on_replay(&rec, now) {
                Replay::Submit => Ok(Submitted::Replay(self.attempt(&rec).await?)),
                Replay::InProgress => Err(ServiceError::InProgress(rec.out_refund_no)),
                Replay::Stored => Ok(Submitted::Replay(rec)),
            },
            RecordOutcome::KeyReused(rec) => Err(ServiceError::KeyReused(rec.out_refund_no)),
            RecordOutcome::AmountExceeded { book } => Err(ServiceError::AmountExceeded {
                requested: refund_fee,
                available: book.available(),
                total_fee: book.total_fee,
            }),
            RecordOutcome::TooManyRefunds { .. } => Err(ServiceError::TooManyRefunds),
            RecordOutcome::TotalFeeMismatch { book } => Err(ServiceError::TotalFeeMismatch {
                given: total_fee,
                stored: book.total_fee,
            }),
        }
    }

    /// Takes the lease and applies. A held lease means someone else is submitting right now.
    pub(super) async fn attempt(&self, rec: &RefundRecord) -> Result<RefundRecord, ServiceError> {
        self.under_lease(&rec.out_refund_no, |rec, lease| async move {
            self.apply_leased(rec, &lease).await
        })
        .await
    }

    /// Calls refund apply for a refund we hold the lease on and records what came back.
    pub(super) async fn apply_leased(
        &self,
        rec: RefundRecord,
        lease: &LeaseToken,
    ) -> Result<RefundRecord, ServiceError> {
        let request = self.wire_request(&rec);
        let step = match request.validate() {
            Err(problem) => decide::unsendable(&rec, &problem, self.schedule(), UnixMillis::now()),
            Ok(()) => {
                let outcome = self.gateway.refund(&request).await;
                decide::after_apply(&rec, outcome, self.schedule(), UnixMillis::now())
            }
        };
        match step {
            Step::Verify { failure } => self.verify_before_failing(rec, lease, failure).await,
            step => {
                self.carry_out(
                    &rec,
                    Some(lease),
                    step,
                    FactSource::Query,
                    UnixMillis::now(),
                )
                .await
            }
        }
    }

    /// About to fail a refund WeChat may hold (a definitive refusal of a repeat, or one that names
    /// an existing number): query the number (still holding the lease) and fail the refund only if
    /// WeChat has never taken it.
    async fn verify_before_failing(
        &self,
        rec: RefundRecord,
        lease: &LeaseToken,
        failure: LastError,
    ) -> Result<RefundRecord, ServiceError> {
        let lookup = self.look_up(&rec.out_refund_no).await;
        if matches!(lookup, decide::Lookup::Found { .. }) {
            warn!(out_refund_no = %rec.out_refund_no, err_code = %failure.code, "refused, but WeChat holds the number from an earlier attempt: adopting it");
        }
        let now = UnixMillis::now();
        let step = decide::after_verify(&rec, &failure, lookup, self.schedule(), now);
        self.carry_out(&rec, Some(lease), step, FactSource::Query, now)
            .await
    }
}
