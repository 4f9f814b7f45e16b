//! Cold-start cost: PKCS#12 parse (legacy and AES) + merchant identity validation + client
//! build (no network). Target: under 10 ms in total.

// Benchmark set-up: a failed step should stop the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use wxpay::cert::MerchantIdentity;
use wxpay::client::{ClientConfig, WxPayClient};

const MCH_ID: &str = "1900000109";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn cold_start(c: &mut Criterion) {
    let legacy = fixture("merchant-legacy.p12");
    let aes = fixture("merchant-aes.p12");
    c.bench_function("p12_legacy_parse_and_validate", |b| {
        b.iter(|| MerchantIdentity::from_p12_der(&legacy, None, MCH_ID, SystemTime::now()))
    });
    c.bench_function("p12_aes_parse_and_validate", |b| {
        b.iter(|| MerchantIdentity::from_p12_der(&aes, None, MCH_ID, SystemTime::now()))
    });
    let identity = MerchantIdentity::from_p12_der(&legacy, None, MCH_ID, SystemTime::now())
        .expect("legacy fixture");
    let config = ClientConfig::default();
    c.bench_function("client_build_with_identity", |b| {
        b.iter(|| WxPayClient::new(&config, Some(&identity)))
    });
    c.bench_function("cold_start_total_legacy_p12_to_client", |b| {
        b.iter(|| {
            let id = MerchantIdentity::from_p12_der(&legacy, None, MCH_ID, SystemTime::now())
                .expect("legacy fixture");
            WxPayClient::new(&config, Some(&id))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = cold_start
}
criterion_main!(benches);
