//! `wxpay`: the WeChat Pay v2 refund protocol (signing, XML, typed messages, notification
//! decryption). Knows nothing of AWS or of our ledger.

pub mod ids;
pub mod money;
pub mod sign;
pub mod xml;

pub use ids::{
    AppId, IdError, MchId, NonceStr, OrderRef, OutRefundNo, OutTradeNo, RefundId, TransactionId,
};
pub use money::{Fen, MoneyError};
pub use sign::{ApiKey, SignType};
pub use xml::{XmlError, XmlMap};
