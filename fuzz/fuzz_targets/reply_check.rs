//! Fuzz target: the reply check (codes, signature over every field, caps) with both sign types.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxpay::{ApiKey, AppId, MchId, MerchantKeys, SignType};

fuzz_target!(|data: &[u8]| {
    for sign_type in [SignType::Md5, SignType::HmacSha256] {
        let keys = MerchantKeys {
            appid: AppId::new("wx2421b1c4370ec43b").expect("appid"),
            mch_id: MchId::new("10000100").expect("mch_id"),
            api_key: ApiKey::new("192006250b4c09247ec02edce69f6a2d").expect("key"),
            sign_type,
        };
        let _ = wxpay::reply::check(data, &keys, sign_type);
    }
});
