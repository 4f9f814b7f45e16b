//! Our side of `scripts/bench-peers`: writes the exact input bytes of the protocol hot paths to a
//! directory for a peer SDK to read, and times our own work on those same bytes.
//!
//! `peers write DIR` writes, from the bench's inputs (`tests/support/protocol_inputs.rs`):
//! `merchant.json` (appid, mch_id, APIv2 key, sign type), `refund_request.json` (the refund
//! request's parameters), `refund_request.xml` (that request as we sign it, with a fixed nonce, so
//! the peer can recompute its signature), `refund_reply.xml` (WeChat's signed acceptance),
//! `query_reply_50.xml` (the signed 50-record query reply) and `expected.json` (what we typed from
//! the replies, which the peer must get too).
//!
//! `peers time DIR REPEATS` reads them back and prints `median_us WORK VALUE` lines: the refund
//! round (build + sign + encode the request, decode + verify + type the reply) and the 50-record
//! query reply (decode + verify + type), each the median of REPEATS samples.

// The bench's inputs panic on a failed set-up step, as test support does; this file's own steps
// return errors.
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../tests/support/protocol_inputs.rs"]
mod inputs;

use std::error::Error;
use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxpay::refund::RefundRequest;
use wxpay::{ApiKey, Fen, MerchantKeys, NonceStr, OrderRef, SignType};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// A sample lasts at least this long, so the clock's resolution and overhead do not count (the
/// peer script uses the same).
const SAMPLE: Duration = Duration::from_millis(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = match args.as_slice() {
        [cmd, dir] if cmd == "write" => write(Path::new(dir)),
        [cmd, dir, repeats] if cmd == "time" => match repeats.parse::<usize>() {
            Ok(n) if n > 0 => time(Path::new(dir), n),
            _ => Err("REPEATS must be a positive integer".into()),
        },
        _ => Err("usage: peers write DIR | peers time DIR REPEATS".into()),
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let round = inputs::refund_round(SignType::Md5);
    let (query_keys, query_body) = inputs::query_50_body();
    let k = &round.keys;
    // The query reply must be signed with the key the peer is given.
    if query_keys.api_key.expose() != k.api_key.expose() {
        return Err("the bench's two inputs use different keys".into());
    }
    let r = &round.request;
    let OrderRef::OutTradeNo(out_trade_no) = &r.order else {
        return Err("the bench's refund must name its order by out_trade_no".into());
    };
    if r.refund_account.is_some() {
        return Err("refund_request.json has no refund_account field".into());
    }
    let put = |name: &str, bytes: &[u8]| fs::write(dir.join(name), bytes);
    put(
        "merchant.json",
        &serde_json::to_vec_pretty(&json!({
            "appid": k.appid.as_str(),
            "mch_id": k.mch_id.as_str(),
            "api_key": k.api_key.expose(),
            "sign_type": k.sign_type.as_str(),
        }))?,
    )?;
    put(
        "refund_request.json",
        &serde_json::to_vec_pretty(&json!({
            "out_trade_no": out_trade_no.as_str(),
            "out_refund_no": r.out_refund_no.as_str(),
            "total_fee": r.total_fee.get(),
            "refund_fee": r.refund_fee.get(),
            "refund_desc": r.refund_desc,
            "notify_url": r.notify_url,
        }))?,
    )?;
    put(
        "refund_request.xml",
        r.to_xml(k, &NonceStr::new("5K8264ILTKCH16CQ2502SI8ZNMTM67VS")?)?
            .as_bytes(),
    )?;
    put("refund_reply.xml", &round.reply_body)?;
    put("query_reply_50.xml", &query_body)?;
    let (_, reply) = round.run();
    let query = inputs::query_50(&query_keys, &query_body);
    put(
        "expected.json",
        &serde_json::to_vec_pretty(&json!({
            "refund_fee": reply.refund_fee.get(),
            "records": query.refunds.len(),
            "records_refund_fee": query.refunds.iter().map(|r| r.refund_fee.get()).sum::<u64>(),
            "coupons": query.refunds.iter().map(|r| r.coupons.len()).sum::<usize>(),
        }))?,
    )?;
    Ok(())
}

fn read_json(dir: &Path, name: &str) -> Result<Value> {
    Ok(serde_json::from_slice(&fs::read(dir.join(name))?)?)
}

fn text<'a>(v: &'a Value, field: &str) -> Result<&'a str> {
    v[field]
        .as_str()
        .ok_or_else(|| format!("{field} is not a string").into())
}

fn fen(v: &Value, field: &str) -> Result<Fen> {
    let n = v[field]
        .as_u64()
        .ok_or_else(|| format!("{field} is not an amount"))?;
    Ok(Fen::new(n)?)
}

fn time(dir: &Path, repeats: usize) -> Result<()> {
    let m = read_json(dir, "merchant.json")?;
    let keys = MerchantKeys {
        appid: text(&m, "appid")?.parse()?,
        mch_id: text(&m, "mch_id")?.parse()?,
        api_key: ApiKey::new(text(&m, "api_key")?)?,
        sign_type: text(&m, "sign_type")?.parse()?,
    };
    let q = read_json(dir, "refund_request.json")?;
    let request = RefundRequest {
        order: OrderRef::OutTradeNo(text(&q, "out_trade_no")?.parse()?),
        out_refund_no: text(&q, "out_refund_no")?.parse()?,
        total_fee: fen(&q, "total_fee")?,
        refund_fee: fen(&q, "refund_fee")?,
        refund_desc: Some(text(&q, "refund_desc")?.to_string()),
        refund_account: None,
        notify_url: Some(text(&q, "notify_url")?.to_string()),
    };
    let round = inputs::RefundRound {
        keys: keys.clone(),
        request,
        reply_body: fs::read(dir.join("refund_reply.xml"))?,
    };
    let query_body = fs::read(dir.join("query_reply_50.xml"))?;

    // The work timed must be the work `write` checked.
    let expected = read_json(dir, "expected.json")?;
    if round.run().1.refund_fee != fen(&expected, "refund_fee")? {
        return Err("the refund reply types to another refund_fee than expected.json".into());
    }
    let records = inputs::query_50(&keys, &query_body).refunds.len();
    if Some(records as u64) != expected["records"].as_u64() {
        return Err("the query reply types to another record count than expected.json".into());
    }

    // Set up what the first call would (the thread RNG), outside the samples.
    black_box(NonceStr::random());
    let refund = median_us(repeats, || {
        black_box(black_box(&round).run());
    });
    let query = median_us(repeats, || {
        black_box(inputs::query_50(&keys, black_box(&query_body)));
    });
    println!("median_us refund_round {refund:.2}");
    println!("median_us query_reply_50 {query:.2}");
    Ok(())
}

/// Median over `repeats` samples of the time of one call, in µs; a sample is a batch of calls
/// lasting at least [`SAMPLE`], its size set by one call timed first.
fn median_us(repeats: usize, mut work: impl FnMut()) -> f64 {
    let start = Instant::now();
    work();
    let once = start.elapsed().max(Duration::from_nanos(1));
    let batch = (SAMPLE.as_nanos() / once.as_nanos()).max(1);
    let mut samples: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                work();
            }
            start.elapsed().as_secs_f64() * 1e6 / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    }
}
