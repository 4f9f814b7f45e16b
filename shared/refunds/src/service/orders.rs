//! An order's refunds: WeChat's list (every page via `offset`) merged with the ledger. Refunds
//! WeChat has and the ledger does not (made in the merchant platform) are recorded as external,
//! so they count against the order.

use tracing::warn;
use wxpay::query::{QueriedRefund, QuerySelector, RefundQueryRequest};
use wxpay::{CallOutcome, ErrCode, Fen, OrderRef};

use super::{RefundService, ServiceError};
use crate::correction::FactSource;
use crate::decide::{self, CallFailure, QueriedOrder};
use crate::ledger::{ExternalOutcome, ExternalRefund};
use crate::state::{RefundRecord, UnixMillis};

/// 50 refunds at 10 a page: six pages at most; the bound guards against a looping reply.
const MAX_ORDER_PAGES: usize = 8;

impl RefundService {
    /// Every refund of the order, oldest first; ledger refunds WeChat reports as moved on are
    /// moved on.
    pub async fn list_by_order(&self, order: &OrderRef) -> Result<Vec<RefundRecord>, ServiceError> {
        let selector = match order {
            OrderRef::OutTradeNo(n) => QuerySelector::OutTradeNo(n.clone()),
            OrderRef::TransactionId(t) => QuerySelector::TransactionId(t.clone()),
        };
        let mut remote: Vec<QueriedRefund> = Vec::new();
        let mut order_total: Option<Fen> = None;
        let mut offset = 0u32;
        for _ in 0..MAX_ORDER_PAGES {
            let query = RefundQueryRequest {
                selector: selector.clone(),
                offset: Some(offset),
            };
            match self.gateway.query(&query).await {
                CallOutcome::Ok(resp) => {
                    order_total = order_total.or(resp.total_fee);
                    let next = resp.next_offset(offset);
                    remote.extend(resp.refunds);
                    match next {
                        Some(n) => offset = n,
                        None => break,
                    }
                }
                CallOutcome::Rejected(e) if e.code == ErrCode::RefundNotExist => break,
                // WeChat asks for per-number queries past 20 partial refunds and may refuse deep
                // offsets: keep the pages read; the ledger (and its poller) covers the rest.
                CallOutcome::Rejected(e) if e.code == ErrCode::ParamError && offset > 0 => {
                    warn!(out_trade_no = order.field().1, offset, err_code_des = %e.description, "order query paging refused; listing what was read plus the ledger");
                    break;
                }
                other => {
                    return Err(match CallFailure::split(other) {
                        Ok(_) => {
                            ServiceError::Internal("a success outcome treated as failure".into())
                        }
                        Err(f) => f.into(),
                    });
                }
            }
        }
        let mut local = self.ledger.list_by_order(order).await?;
        let now = UnixMillis::now();
        let queried = QueriedOrder {
            total_fee: order_total,
            ..QueriedOrder::default()
        };
        for found in &remote {
            match local
                .iter()
                .position(|r| r.out_refund_no == found.out_refund_no)
            {
                Some(i) => {
                    let step = decide::from_listing(&local[i], found, self.schedule(), now);
                    let updated = self
                        .carry_out(&local[i], None, step, FactSource::OrderListing, now)
                        .await?;
                    local[i] = updated;
                }
                None => {
                    let rec = match self.ledger.get(&found.out_refund_no).await? {
                        Some(r) => r,
                        None => {
                            let ext = self.external(order, found, &queried, now)?;
                            self.record_external(ext).await?
                        }
                    };
                    local.push(rec);
                }
            }
        }
        local.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.out_refund_no.cmp(&b.out_refund_no))
        });
        Ok(local)
    }

    /// A refund WeChat reports that the ledger does not have (made in the merchant platform).
    /// Only what the signed reply says is used.
    pub(super) fn external(
        &self,
        order: &OrderRef,
        found: &QueriedRefund,
        queried: &QueriedOrder,
        now: UnixMillis,
    ) -> Result<ExternalRefund, ServiceError> {
        // The order's total is fixed by the first record; a guess would freeze a wrong one.
        let total_fee = queried.total_fee.ok_or_else(|| {
            ServiceError::Upstream("WeChat's refund query reply lacks the order's total_fee".into())
        })?;
        Ok(ExternalRefund {
            out_refund_no: found.out_refund_no.clone(),
            order: order.clone(),
            out_trade_no: queried.out_trade_no.clone(),
            transaction_id: queried.transaction_id.clone(),
            refund_id: Some(found.refund_id.clone()),
            total_fee,
            refund_fee: found.refund_fee,
            status: (&found.refund_status).into(),
            refund_account: found.refund_account.clone(),
            refund_recv_account: found.refund_recv_account.clone(),
            success_time: found.refund_success_time.clone(),
            now,
            next_check_at: Some(now.plus(self.schedule().min_backoff)),
            accepted_at: None,
            events: Vec::new(),
        })
    }

    pub(super) async fn record_external(
        &self,
        mut ext: ExternalRefund,
    ) -> Result<RefundRecord, ServiceError> {
        if let Some(rec) = crate::ledger::external_record(&ext) {
            ext.events = self.events_of(None, &rec);
        }
        match self.ledger.record_external(ext).await? {
            ExternalOutcome::Created(r) => {
                warn!(out_refund_no = %r.out_refund_no, out_trade_no = r.order.field().1, "refund made outside wxrefund recorded as external");
                self.deliver(&r).await;
                Ok(r)
            }
            ExternalOutcome::Existing(r) => Ok(r),
            ExternalOutcome::InvalidStatus(s) => Err(ServiceError::Internal(format!(
                "external refund with status {s}"
            ))),
        }
    }
}
