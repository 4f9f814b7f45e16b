//! Fuzz target: the refund bill download's reply (gzip or text or an XML error) and the bill
//! parser by header name, with its summary check; and yuan → fen on the text alone.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = wxpay::bill::read_reply(data) {
        let _ = wxpay::bill::parse_refund_bill(text.as_bytes());
    }
    let _ = wxpay::bill::parse_refund_bill(data);
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(fen) = wxpay::bill::yuan_to_fen(s)
    {
        let back = wxpay::bill::fen_to_yuan(fen);
        assert_eq!(wxpay::bill::yuan_to_fen(&back).ok(), Some(fen), "{s:?} -> {back}");
    }
});
