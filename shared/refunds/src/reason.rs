//! Why a refund is where it is, in words a merchant's code can act on: a `failure_reason` for a
//! refund that ended without money leaving (FAILED, REFUNDCLOSE) and a `pending_reason` for one
//! that is not done (not final, or CHANGE), next to WeChat's own `err_code` in `last_error`. One
//! small fixed vocabulary instead of WeChat's dozens of codes; an unknown code maps to a generic
//! reason, never to nothing.

use serde::{Deserialize, Serialize};
use wxpay::{ErrCode, RetryClass};

use crate::state::{RefundRecord, RefundStatus};

/// The normalized reasons (snake_case on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Recorded, being handed to WeChat.
    Submitting,
    /// WeChat accepted it and is paying it out (it ends by itself).
    Processing,
    /// The merchant account's balance is too low (`NOTENOUGH`): top it up; retried meanwhile.
    InsufficientFunds,
    /// WeChat's rate limit (`FREQUENCY_LIMITED`, `INVALID_REQ_TOO_MUCH`): retried.
    RateLimited,
    /// WeChat had a transient failure (`SYSTEMERROR`, `BIZERR_NEED_RETRY`): retried.
    WechatBusy,
    /// WeChat could not be reached; nothing was sent: retried.
    WechatUnreachable,
    /// Sent, but no usable answer came back (timeout, 5xx, bad signature): asked again.
    OutcomeUnknown,
    /// The order is too new to refund (`ORDER_NOT_READY`): retried.
    OrderNotReady,
    /// Our merchant configuration is wrong (key, certificate, appid/mch_id, permission): an
    /// operator must fix it; the refund waits, it is not failed.
    MerchantMisconfigured,
    /// The refund went to a void or frozen card (CHANGE): handle it in the merchant platform.
    NeedsManualAction,
    /// WeChat closed the refund; nothing was paid.
    ClosedByWechat,
    /// The buyer's or merchant's account is abnormal (`USER_ACCOUNT_ABNORMAL`).
    AccountAbnormal,
    /// WeChat does not know the order (`ORDERNOTEXIST`, `INVALID_TRANSACTIONID`).
    OrderNotFound,
    /// The amounts disagree with the order or with an earlier request of the same number
    /// (`REFUND_FEE_MISMATCH`, `INVALID_REQUEST`, or WeChat reporting another amount).
    AmountMismatch,
    /// The order is too old to refund (`TRADE_OVERDUE`, over a year).
    OrderTooOld,
    /// The request is invalid for WeChat (`PARAM_ERROR` and the like), or can never be sent.
    InvalidRequest,
    /// Refused for good for another reason (`ERROR`, e.g. already fully refunded): see
    /// `last_error`.
    Refused,
}

impl Reason {
    /// The reason a WeChat `err_code` (or one of ours) stands for.
    pub fn of_code(code: &str) -> Reason {
        match code {
            "NOT_SENT" => return Reason::WechatUnreachable,
            "TRANSPORT" | "HTTP_STATUS" | "NOT_XML" | "BAD_SIGNATURE" | "MISSING_SIGNATURE"
            | "MALFORMED_REPLY" | "REPLY_MISMATCH" | "QUERY_MISMATCH" => {
                return Reason::OutcomeUnknown;
            }
            "AMOUNT_MISMATCH" => return Reason::AmountMismatch,
            "UNSENDABLE" => return Reason::InvalidRequest,
            _ => {}
        }
        let code = ErrCode::parse(code);
        match code {
            ErrCode::NotEnough => Reason::InsufficientFunds,
            ErrCode::FrequencyLimited | ErrCode::InvalidReqTooMuch => Reason::RateLimited,
            ErrCode::SystemError | ErrCode::BizErrNeedRetry => Reason::WechatBusy,
            ErrCode::OrderNotReady => Reason::OrderNotReady,
            ErrCode::UserAccountAbnormal => Reason::AccountAbnormal,
            ErrCode::OrderNotExist | ErrCode::InvalidTransactionId => Reason::OrderNotFound,
            ErrCode::RefundFeeMismatch | ErrCode::InvalidRequest => Reason::AmountMismatch,
            ErrCode::TradeOverdue => Reason::OrderTooOld,
            _ => match code.class() {
                RetryClass::Misconfigured => Reason::MerchantMisconfigured,
                RetryClass::FixRequest => Reason::InvalidRequest,
                RetryClass::Final => Reason::Refused,
                // an unknown code: WeChat's words are in last_error
                RetryClass::RetrySame | RetryClass::RetryLater | RetryClass::NotFound => {
                    Reason::WechatBusy
                }
            },
        }
    }
}

/// Why a refund ended without money leaving: FAILED (WeChat refused it) or REFUNDCLOSE.
pub fn failure_reason(rec: &RefundRecord) -> Option<Reason> {
    match rec.status {
        RefundStatus::RefundClose => Some(Reason::ClosedByWechat),
        RefundStatus::Failed => Some(
            rec.last_error
                .as_ref()
                .map_or(Reason::Refused, |e| Reason::of_code(&e.code)),
        ),
        _ => None,
    }
}

/// Why a refund is not done yet: what it waits for (none once SUCCESS or ended).
pub fn pending_reason(rec: &RefundRecord) -> Option<Reason> {
    let from_error = || rec.last_error.as_ref().map(|e| Reason::of_code(&e.code));
    match rec.status {
        RefundStatus::Recorded | RefundStatus::Submitting => Some(Reason::Submitting),
        RefundStatus::Processing => Some(Reason::Processing),
        RefundStatus::Unknown => Some(from_error().unwrap_or(Reason::OutcomeUnknown)),
        RefundStatus::RetryWait => Some(from_error().unwrap_or(Reason::WechatBusy)),
        RefundStatus::Change => Some(Reason::NeedsManualAction),
        RefundStatus::Success | RefundStatus::RefundClose | RefundStatus::Failed => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LastError;
    use RefundStatus::*;

    fn rec(status: RefundStatus, code: Option<&str>) -> RefundRecord {
        RefundRecord {
            out_refund_no: "R-1".parse().unwrap(),
            order: wxpay::OrderRef::OutTradeNo("ORDER-1".parse().unwrap()),
            out_trade_no: None,
            transaction_id: None,
            refund_id: None,
            total_fee: wxpay::Fen::new(100).unwrap(),
            refund_fee: wxpay::Fen::new(10).unwrap(),
            refund_desc: None,
            refund_account: None,
            status,
            attempts: 1,
            last_error: code.map(|c| LastError {
                code: c.into(),
                message: "m".into(),
            }),
            refund_recv_account: None,
            success_time: None,
            created_at: crate::state::UnixMillis(1),
            updated_at: crate::state::UnixMillis(1),
            request_hash: "h".into(),
            version: 1,
            lease: None,
            next_check_at: None,
            external: false,
            attention: None,
            corrections: vec![],
            accepted_at: None,
            metadata: Default::default(),
            outbox: Vec::new(),
        }
    }

    #[test]
    fn every_code_we_know_has_its_reason() {
        // GIVEN every err_code in WeChat's table and our own codes
        for (code, want) in [
            ("NOTENOUGH", Reason::InsufficientFunds),
            ("FREQUENCY_LIMITED", Reason::RateLimited),
            ("INVALID_REQ_TOO_MUCH", Reason::RateLimited),
            ("SYSTEMERROR", Reason::WechatBusy),
            ("BIZERR_NEED_RETRY", Reason::WechatBusy),
            ("ORDER_NOT_READY", Reason::OrderNotReady),
            ("USER_ACCOUNT_ABNORMAL", Reason::AccountAbnormal),
            ("ORDERNOTEXIST", Reason::OrderNotFound),
            ("INVALID_TRANSACTIONID", Reason::OrderNotFound),
            ("REFUND_FEE_MISMATCH", Reason::AmountMismatch),
            ("INVALID_REQUEST", Reason::AmountMismatch),
            ("TRADE_OVERDUE", Reason::OrderTooOld),
            ("ERROR", Reason::Refused),
            ("PARAM_ERROR", Reason::InvalidRequest),
            ("LACK_PARAMS", Reason::InvalidRequest),
            ("SIGNERROR", Reason::MerchantMisconfigured),
            ("CERT_ERROR", Reason::MerchantMisconfigured),
            ("NOAUTH", Reason::MerchantMisconfigured),
            ("APPID_MCHID_NOT_MATCH", Reason::MerchantMisconfigured),
            ("NOT_SENT", Reason::WechatUnreachable),
            ("TRANSPORT", Reason::OutcomeUnknown),
            ("HTTP_STATUS", Reason::OutcomeUnknown),
            ("BAD_SIGNATURE", Reason::OutcomeUnknown),
            ("REPLY_MISMATCH", Reason::OutcomeUnknown),
            ("AMOUNT_MISMATCH", Reason::AmountMismatch),
            ("UNSENDABLE", Reason::InvalidRequest),
            // a code WeChat may add one day: retried, so "busy"
            ("SOMETHING_NEW", Reason::WechatBusy),
        ] {
            // THEN it maps to its reason
            assert_eq!(Reason::of_code(code), want, "{code}");
        }
        // AND every code of WeChat's table maps to something
        for code in ErrCode::ALL {
            let _ = Reason::of_code(code);
        }
    }

    #[test]
    fn each_status_has_a_failure_or_a_pending_reason_or_neither() {
        for (status, code, failure, pending) in [
            (Recorded, None, None, Some(Reason::Submitting)),
            (Submitting, None, None, Some(Reason::Submitting)),
            (Processing, None, None, Some(Reason::Processing)),
            (Unknown, None, None, Some(Reason::OutcomeUnknown)),
            (
                Unknown,
                Some("NOT_SENT"),
                None,
                Some(Reason::WechatUnreachable),
            ),
            (RetryWait, None, None, Some(Reason::WechatBusy)),
            (
                RetryWait,
                Some("NOTENOUGH"),
                None,
                Some(Reason::InsufficientFunds),
            ),
            (
                RetryWait,
                Some("CERT_ERROR"),
                None,
                Some(Reason::MerchantMisconfigured),
            ),
            (Change, None, None, Some(Reason::NeedsManualAction)),
            (Success, None, None, None),
            // a success keeps no stale reason from an earlier retry
            (Success, Some("SYSTEMERROR"), None, None),
            (RefundClose, None, Some(Reason::ClosedByWechat), None),
            (Failed, None, Some(Reason::Refused), None),
            (
                Failed,
                Some("USER_ACCOUNT_ABNORMAL"),
                Some(Reason::AccountAbnormal),
                None,
            ),
            (
                Failed,
                Some("ORDERNOTEXIST"),
                Some(Reason::OrderNotFound),
                None,
            ),
        ] {
            let r = rec(status, code);
            assert_eq!(failure_reason(&r), failure, "{status} {code:?}");
            assert_eq!(pending_reason(&r), pending, "{status} {code:?}");
        }
    }

    #[test]
    fn reasons_are_snake_case_on_the_wire() {
        assert_eq!(
            serde_json::to_value(Reason::InsufficientFunds).unwrap(),
            "insufficient_funds"
        );
        assert_eq!(
            serde_json::to_value(Reason::NeedsManualAction).unwrap(),
            "needs_manual_action"
        );
        assert_eq!(
            serde_json::to_value(Reason::WechatUnreachable).unwrap(),
            "wechat_unreachable"
        );
    }
}
