//! Criterion benchmarks of the protocol hot paths: one refund round (build + sign + encode the
//! request; decode + verify + type the reply) and parsing a 50-refund query reply. The inputs are
//! in `tests/support/protocol_inputs.rs`, shared with `examples/hot_paths.rs`.

// Benchmark set-up: a failed step should stop the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/protocol_inputs.rs"]
mod inputs;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use wxpay::SignType;

fn refund_round(c: &mut Criterion) {
    for st in [SignType::Md5, SignType::HmacSha256] {
        let round = inputs::refund_round(st);
        c.bench_function(&format!("refund_round_{}", st.as_str()), |b| {
            b.iter(|| black_box(black_box(&round).run()))
        });
    }
}

fn query_50(c: &mut Criterion) {
    let (k, body) = inputs::query_50_body();
    c.bench_function("query_reply_50_records", |b| {
        b.iter(|| black_box(inputs::query_50(&k, black_box(&body))))
    });
}

criterion_group!(benches, refund_round, query_50);
criterion_main!(benches);
