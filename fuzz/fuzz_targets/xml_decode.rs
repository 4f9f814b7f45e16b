//! Fuzz target: WeChat's XML decoder on any bytes (replies and notifications start here). It must
//! answer or refuse, never panic, and what it accepts and can encode again must survive the round.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A decoded value our encoder refuses (one holding `]]>`) cannot be sent back: no round trip.
    if let Ok(map) = wxpay::xml::decode(data)
        && let Ok(again) = wxpay::xml::encode(map.iter())
    {
        let back = wxpay::xml::decode(again.as_bytes()).expect("our own encoding decodes");
        assert_eq!(back.len(), map.len(), "a round trip keeps every field");
        for (k, v) in map.iter() {
            assert_eq!(back.get(k), Some(v), "a round trip keeps {k}");
        }
    }
});
