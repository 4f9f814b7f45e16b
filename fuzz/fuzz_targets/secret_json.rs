//! Fuzz target: the merchant secret JSON (Secrets Manager or file): keys, certificate (PKCS#12 or
//! PEM), sign type. It must refuse with a message, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = wxrefund::secrets::MerchantConfig::from_json(json, std::time::SystemTime::now());
    }
});
