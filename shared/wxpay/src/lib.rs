//! `wxpay`: the WeChat Pay v2 refund protocol (signing, XML, typed messages, notification
//! decryption). Knows nothing of AWS or of our ledger.

pub mod bill;
pub mod cert;
pub mod client;
pub mod errors;
mod fields;
pub mod ids;
pub mod merchant;
pub mod money;
pub mod notify;
pub mod outcome;
pub mod query;
pub mod refund;
pub mod reply;
pub mod sign;
pub mod xml;

pub use errors::{ErrCode, RetryClass, WxError};
pub use fields::FieldError;
pub use ids::{
    AppId, IdError, MchId, NonceStr, OrderRef, OutRefundNo, OutTradeNo, RefundId, TransactionId,
};
pub use merchant::MerchantKeys;
pub use money::{Fen, MoneyError};
pub use outcome::{CallOutcome, UnknownReason};
pub use query::{QueriedRefund, WxRefundStatus};
pub use sign::{ApiKey, SignType};
pub use xml::{XmlError, XmlMap};
