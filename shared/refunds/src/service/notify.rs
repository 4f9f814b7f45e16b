//! WeChat's refund notification. It is a hint: its content is confirmed by a query by number
//! before anything is written, and only the signed query reply is trusted.

use tracing::{info, warn};
use wxpay::OrderRef;
use wxpay::notify::{self, RefundNotification};

use super::{RefundService, ServiceError};
use crate::decide::{Lookup, Trigger};
use crate::state::{RefundRecord, UnixMillis};
use crate::telemetry;

impl RefundService {
    /// Handles WeChat's refund notification and returns the XML reply: SUCCESS once the refund
    /// is confirmed and recorded, FAIL (WeChat retries) otherwise.
    pub async fn handle_notification(&self, body: &[u8]) -> String {
        let n = match self.gateway.decrypt_notification(body).await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "refund notification rejected");
                metrics::counter!(telemetry::NOTIFICATIONS, "result" => "rejected").increment(1);
                return notify::fail_reply(&e.to_string());
            }
        };
        match self.confirm_notification(&n).await {
            Ok(rec) => {
                info!(out_refund_no = %rec.out_refund_no, out_trade_no = %n.out_trade_no, status = %rec.status, "refund notification applied");
                metrics::counter!(telemetry::NOTIFICATIONS, "result" => "applied").increment(1);
                notify::SUCCESS_REPLY.to_string()
            }
            Err(e) => {
                warn!(out_refund_no = %n.out_refund_no, error = %e, "refund notification not applied; WeChat will retry");
                metrics::counter!(telemetry::NOTIFICATIONS, "result" => "not_applied").increment(1);
                notify::fail_reply("temporarily unable to process")
            }
        }
    }

    async fn confirm_notification(
        &self,
        n: &RefundNotification,
    ) -> Result<RefundRecord, ServiceError> {
        if let Some(rec) = self.ledger.get(&n.out_refund_no).await? {
            return self.look_again(rec, Trigger::Notification).await;
        }
        // Made outside our API (merchant platform): confirm it exists, then record it.
        let (found, order) = match self.look_up(&n.out_refund_no).await {
            Lookup::Found { refund, order } => (refund, order),
            Lookup::NotListed | Lookup::NotExist(_) => {
                return Err(ServiceError::Upstream(
                    "query does not confirm the notified refund".into(),
                ));
            }
            Lookup::Failed(f) => return Err(f.into()),
        };
        let out_trade_no = order
            .out_trade_no
            .clone()
            .ok_or_else(|| ServiceError::Upstream("query reply lacks out_trade_no".into()))?;
        let ext = self.external(
            &OrderRef::OutTradeNo(out_trade_no),
            &found,
            &order,
            UnixMillis::now(),
        )?;
        self.record_external(ext).await
    }
}
