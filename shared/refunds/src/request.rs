//! A merchant's refund request after the HTTP edge validated it, its idempotency hash, and the one
//! place where a stored refund becomes WeChat's apply request.

use sha2::{Digest, Sha256};
use wxpay::refund::{RefundAccount, RefundDesc, RefundRequest};
use wxpay::{Fen, OrderRef, OutRefundNo};

use crate::ledger::NewRefund;
use crate::metadata::Metadata;
use crate::state::{RefundRecord, UnixMillis};

/// A validated refund request from the merchant: every stateless rule (ids, amounts, what the XML
/// encoder would refuse) has been checked at the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundCommand {
    pub out_refund_no: OutRefundNo,
    pub order: OrderRef,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub refund_desc: Option<RefundDesc>,
    pub refund_account: Option<RefundAccount>,
    /// The merchant's own data (empty when none was given).
    pub metadata: Metadata,
}

impl RefundCommand {
    /// SHA-256 over the canonical fields: the same number with another request is a reused key.
    pub fn request_hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.out_refund_no.as_str(),
            &self.order.key(),
            &self.total_fee.to_string(),
            &self.refund_fee.to_string(),
            self.refund_desc
                .as_ref()
                .map(RefundDesc::as_str)
                .unwrap_or(""),
            self.refund_account.map(|a| a.as_str()).unwrap_or(""),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        // Only when given, so requests without metadata keep the hash they always had.
        if !self.metadata.is_empty() {
            h.update(b"metadata");
            for (k, v) in self.metadata.iter() {
                for part in [k, v] {
                    h.update((part.len() as u64).to_be_bytes());
                    h.update(part.as_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    }

    /// The ledger record this request becomes. `next_check_at`: when the poller picks it up if the
    /// recorder dies before taking the lease.
    pub fn into_new_refund(self, now: UnixMillis, next_check_at: UnixMillis) -> NewRefund {
        let request_hash = self.request_hash();
        NewRefund {
            out_refund_no: self.out_refund_no,
            order: self.order,
            total_fee: self.total_fee,
            refund_fee: self.refund_fee,
            refund_desc: self.refund_desc.map(RefundDesc::into_string),
            refund_account: self.refund_account.map(|a| a.as_str().to_string()),
            metadata: self.metadata,
            request_hash,
            now,
            next_check_at,
            lease: None,
        }
    }
}

/// WeChat's apply request for a stored refund. Every attempt of a number sends these same fields;
/// the encoder checks them again before signing (a stored value that fails is never sent).
pub fn wire_request(rec: &RefundRecord, notify_url: Option<String>) -> RefundRequest {
    RefundRequest {
        order: rec.order.clone(),
        out_refund_no: rec.out_refund_no.clone(),
        total_fee: rec.total_fee,
        refund_fee: rec.refund_fee,
        refund_desc: rec.refund_desc.clone(),
        refund_account: rec.refund_account.as_deref().and_then(|a| a.parse().ok()),
        notify_url,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid command: R-1 for 10 of ORDER-1's 100 fen.
    pub(crate) fn cmd() -> RefundCommand {
        RefundCommand {
            out_refund_no: "R-1".parse().unwrap(),
            order: OrderRef::OutTradeNo("ORDER-1".parse().unwrap()),
            total_fee: Fen::new(100).unwrap(),
            refund_fee: Fen::new(10).unwrap(),
            refund_desc: None,
            refund_account: None,
            metadata: Metadata::default(),
        }
    }

    #[test]
    fn request_hash_covers_every_canonical_field() {
        let base = cmd().request_hash();
        assert_eq!(base, cmd().request_hash());
        let mut c = cmd();
        c.refund_fee = Fen::new(11).unwrap();
        assert_ne!(c.request_hash(), base);
        let mut c = cmd();
        c.refund_desc = Some(RefundDesc::new("x").unwrap());
        assert_ne!(c.request_hash(), base);
        let mut c = cmd();
        c.order = OrderRef::TransactionId("ORDER1".parse().unwrap());
        assert_ne!(c.request_hash(), base);
        let mut c = cmd();
        c.refund_account = Some(RefundAccount::RechargeFunds);
        assert_ne!(c.request_hash(), base);
        // metadata counts when given, key and value apart
        let with = |pairs: &[(&str, &str)]| {
            let mut c = cmd();
            c.metadata = Metadata::new(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
            .unwrap();
            c.request_hash()
        };
        assert_eq!(with(&[]), base, "no metadata: the hash it always had");
        assert_ne!(with(&[("a", "b")]), base);
        assert_ne!(with(&[("a", "b")]), with(&[("a", "c")]));
        assert_ne!(with(&[("ab", "")]), with(&[("a", "b")]));
    }
}
