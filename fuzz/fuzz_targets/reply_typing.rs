//! Fuzz target: typing a decoded reply as a refund acceptance and as a refund query reply (the
//! `_$n` / `_$n_$m` record fields, counts, amounts, ids).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxpay::query::RefundQueryResponse;
use wxpay::refund::RefundResponse;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = wxpay::xml::decode(data) {
        let _ = RefundResponse::try_from(&map);
        if let Ok(q) = RefundQueryResponse::try_from(&map) {
            assert!(q.refunds.len() <= 50, "at most 50 records per page");
        }
    }
});
