//! The WeChat port the workflows call: apply refund, query refunds, decrypt a notification. The
//! production adapter sits on `wxpay::client`; every implementation returns `CallOutcome`s.

use async_trait::async_trait;
use wxpay::notify::{NotifyError, RefundNotification};
use wxpay::query::{RefundQueryRequest, RefundQueryResponse};
use wxpay::refund::{RefundRequest, RefundResponse};
use wxpay::{CallOutcome, MchId};

#[async_trait]
pub trait WeChat: Send + Sync {
    /// The merchant these calls are made for (for logs and checks; never the key).
    fn mch_id(&self) -> MchId;

    /// `/secapi/pay/refund` with the merchant's client certificate.
    async fn refund(&self, request: &RefundRequest) -> CallOutcome<RefundResponse>;

    /// `/pay/refundquery`.
    async fn query(&self, request: &RefundQueryRequest) -> CallOutcome<RefundQueryResponse>;

    /// Decrypts and checks a refund notification with the current key.
    async fn decrypt_notification(&self, body: &[u8]) -> Result<RefundNotification, NotifyError>;
}
