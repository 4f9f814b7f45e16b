//! The inputs of the protocol hot paths, shared by the criterion bench (`benches/protocol.rs`) and
//! the instruction-count example (`examples/hot_paths.rs`, included with `#[path]`), so both
//! measure exactly the same work.

#![allow(dead_code)]

use wxpay::query::{CouponRefund, QueriedRefund, RefundQueryResponse, record_fields};
use wxpay::refund::{RefundRequest, RefundResponse};
use wxpay::{
    ApiKey, Fen, MerchantKeys, NonceStr, OrderRef, SignType, WxRefundStatus, reply, sign, xml,
};

pub fn keys(sign_type: SignType) -> MerchantKeys {
    MerchantKeys {
        appid: "wx2421b1c4370ec43b".parse().expect("appid"),
        mch_id: "1900000109".parse().expect("mch_id"),
        api_key: ApiKey::new("192006250b4c09247ec02edce69f6a2d").expect("key"),
        sign_type,
    }
}

fn signed_body(fields: &[(String, String)], keys: &MerchantKeys) -> Vec<u8> {
    let sig = sign::sign(
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &keys.api_key,
        keys.sign_type,
    );
    let mut all: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    all.push(("sign", &sig));
    xml::encode(all).expect("encode").into_bytes()
}

fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One refund round: the request to build and sign, and WeChat's signed acceptance to check.
pub struct RefundRound {
    pub keys: MerchantKeys,
    pub request: RefundRequest,
    pub reply_body: Vec<u8>,
}

pub fn refund_round(st: SignType) -> RefundRound {
    let keys = keys(st);
    let request = RefundRequest {
        order: OrderRef::OutTradeNo("ORDER-20261127-0001".parse().expect("no")),
        out_refund_no: "REFUND-20261127-0001".parse().expect("no"),
        total_fee: Fen::new(10_000).expect("fee"),
        refund_fee: Fen::new(2_500).expect("fee"),
        refund_desc: Some("商品退货".into()),
        refund_account: None,
        notify_url: Some("https://example.com/wxpay/refund-notify".into()),
    };
    let reply_body = signed_body(
        &owned(&[
            ("return_code", "SUCCESS"),
            ("return_msg", "OK"),
            ("result_code", "SUCCESS"),
            ("appid", "wx2421b1c4370ec43b"),
            ("mch_id", "1900000109"),
            ("nonce_str", "NfsMFbUFpdbEhPXP"),
            ("sign_type", st.as_str()),
            ("transaction_id", "4200000001202611270000000001"),
            ("out_trade_no", "ORDER-20261127-0001"),
            ("out_refund_no", "REFUND-20261127-0001"),
            ("refund_id", "50000000012026112700000000001"),
            ("refund_channel", ""),
            ("refund_fee", "2500"),
            ("coupon_refund_fee", "0"),
            ("total_fee", "10000"),
            ("cash_fee", "10000"),
            ("coupon_refund_count", "0"),
            ("cash_refund_fee", "2500"),
        ]),
        &keys,
    );
    RefundRound {
        keys,
        request,
        reply_body,
    }
}

impl RefundRound {
    /// Build + sign + encode the request (random nonce); decode + verify + type the reply.
    pub fn run(&self) -> (String, RefundResponse) {
        let body = self
            .request
            .to_xml(&self.keys, &NonceStr::random())
            .expect("request");
        let map = reply::check(&self.reply_body, &self.keys, self.keys.sign_type).expect("reply");
        (body, RefundResponse::try_from(&map).expect("typed"))
    }
}

/// A signed 50-record query reply, each record with one coupon (`_$n`, `_$n_$m`).
pub fn query_50_body() -> (MerchantKeys, Vec<u8>) {
    let k = keys(SignType::Md5);
    let records: Vec<QueriedRefund> = (0..50u64)
        .map(|n| QueriedRefund {
            out_refund_no: format!("REFUND-{n:04}").parse().expect("no"),
            refund_id: format!("500000000120261127{n:08}").parse().expect("id"),
            refund_channel: Some("ORIGINAL".into()),
            refund_fee: Fen::new(100 + n).expect("fee"),
            settlement_refund_fee: Some(Fen::new(100 + n).expect("fee")),
            refund_status: WxRefundStatus::Success,
            refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
            refund_recv_account: Some("支付用户零钱".into()),
            refund_success_time: Some("2026-11-27 10:00:00".into()),
            coupon_refund_fee: Some(Fen::new(1).expect("fee")),
            coupons: vec![CouponRefund {
                coupon_type: Some("CASH".into()),
                coupon_refund_id: Some(format!("C{n}")),
                coupon_refund_fee: Some(Fen::new(1).expect("fee")),
            }],
        })
        .collect();
    let mut fields = owned(&[
        ("return_code", "SUCCESS"),
        ("result_code", "SUCCESS"),
        ("appid", "wx2421b1c4370ec43b"),
        ("mch_id", "1900000109"),
        ("nonce_str", "NfsMFbUFpdbEhPXP"),
        ("transaction_id", "4200000001202611270000000001"),
        ("out_trade_no", "ORDER-20261127-0001"),
        ("total_fee", "1000000"),
        ("cash_fee", "1000000"),
        ("refund_count", "50"),
    ]);
    fields.extend(record_fields(&records));
    let body = signed_body(&fields, &k);
    (k, body)
}

/// Decode + verify + type the 50-record reply.
pub fn query_50(keys: &MerchantKeys, body: &[u8]) -> RefundQueryResponse {
    let map = reply::check(body, keys, SignType::Md5).expect("reply");
    RefundQueryResponse::try_from(&map).expect("typed")
}
