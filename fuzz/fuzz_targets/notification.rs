//! Fuzz target: a refund notification body (XML with the AES-256-ECB `req_info`), and `req_info`
//! alone, decrypted with a fixed key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxpay::{ApiKey, AppId, MchId, MerchantKeys, SignType};

fuzz_target!(|data: &[u8]| {
    let keys = MerchantKeys {
        appid: AppId::new("wx2421b1c4370ec43b").expect("appid"),
        mch_id: MchId::new("10000100").expect("mch_id"),
        api_key: ApiKey::new("192006250b4c09247ec02edce69f6a2d").expect("key"),
        sign_type: SignType::Md5,
    };
    let _ = wxpay::notify::decrypt(data, &keys);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = wxpay::notify::decrypt_req_info(s, &keys.api_key);
    }
});
