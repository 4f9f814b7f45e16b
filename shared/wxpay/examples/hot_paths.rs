//! Runs one protocol hot path N times, for instruction counts under callgrind: the count per
//! iteration is (total at N − total at 0) / N, the run at N = 0 being the start-up (input set-up
//! included, since it is the same in both runs).
//!
//! `cargo build --release -p wxpay --example hot_paths`, then
//! `valgrind --tool=callgrind target/release/examples/hot_paths PATH N`, PATH being
//! `refund_round_MD5`, `refund_round_HMAC-SHA256` or `query_reply_50_records`.

// Measurement set-up: a failed step should stop the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/protocol_inputs.rs"]
mod inputs;

use std::hint::black_box;
use std::process::ExitCode;

use wxpay::SignType;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!("usage: hot_paths PATH N");
        return ExitCode::FAILURE;
    };
    match path.as_str() {
        "refund_round_MD5" | "refund_round_HMAC-SHA256" => {
            let st = if path.ends_with("MD5") {
                SignType::Md5
            } else {
                SignType::HmacSha256
            };
            let round = inputs::refund_round(st);
            // Set up what the first call would (the thread RNG) in both runs alike.
            black_box(wxpay::NonceStr::random());
            for _ in 0..n {
                black_box(black_box(&round).run());
            }
        }
        "query_reply_50_records" => {
            let (keys, body) = inputs::query_50_body();
            for _ in 0..n {
                black_box(inputs::query_50(&keys, black_box(&body)));
            }
        }
        other => {
            eprintln!("unknown path {other:?}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
