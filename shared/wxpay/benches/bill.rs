//! Criterion benchmarks of the REFUND bill: a generated 100,000-row bill (2018+ header, CRLF)
//! streamed through `BillReader` from plain text, and from gzip through `read_reply`; plus the
//! collecting `parse_refund_bill`.

// Benchmark set-up: a failed step should stop the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/bill_gen.rs"]
mod bill_gen;

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wxpay::bill::{BillReader, parse_refund_bill, read_reply};

const ROWS: u64 = 100_000;

fn stream(text: &[u8]) -> u64 {
    let mut reader = BillReader::new(text).expect("header");
    let mut refunded = 0;
    for row in reader.by_ref() {
        refunded += row.expect("row").settlement_refund_fee.get();
    }
    let summary = reader.finish().expect("summary");
    assert_eq!(summary.count, ROWS);
    refunded
}

fn refund_bill(c: &mut Criterion) {
    let plain = bill_gen::bill_bytes(ROWS);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&plain).expect("gzip");
    let gzip = enc.finish().expect("gzip");
    eprintln!(
        "bill: {ROWS} rows, {} bytes plain, {} bytes gzip",
        plain.len(),
        gzip.len()
    );

    let mut g = c.benchmark_group("refund_bill_100k");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(ROWS));
    g.bench_function("stream_plain", |b| {
        b.iter(|| black_box(stream(black_box(&plain))))
    });
    g.bench_function("read_reply_gzip_then_stream", |b| {
        b.iter(|| {
            let text = read_reply(black_box(&gzip)).expect("reply");
            black_box(stream(text.as_bytes()))
        })
    });
    g.bench_function("parse_refund_bill_collect_plain", |b| {
        b.iter(|| {
            black_box(
                parse_refund_bill(black_box(&plain))
                    .expect("bill")
                    .rows
                    .len(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, refund_bill);
criterion_main!(benches);
