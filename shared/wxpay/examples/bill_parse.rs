//! Peak memory and time of reading a generated REFUND bill: written to temp files (plain and
//! gzip) line by line, then streamed through `BillReader` from each file, then, for contrast,
//! read whole (`read_reply` + the collecting `parse_refund_bill`). Reports `VmHWM` (peak resident
//! set) from /proc/self/status after each step: the peak only grows, so the streaming steps run
//! first.
//!
//! `cargo run --release -p wxpay --example bill_parse [ROWS]` (default 100000).

#[path = "../tests/support/bill_gen.rs"]
mod bill_gen;

use std::error::Error;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use wxpay::bill::{BillReader, BillSummary, parse_refund_bill, read_reply};

/// A `/proc/self/status` line's value in KiB (`VmHWM`, `VmRSS`); 0 where there is none.
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn report(step: &str, rows: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{step:<42} {:>9.1} ms {:>12.0} rows/s   VmHWM {:>7} KiB  VmRSS {:>7} KiB",
        secs * 1e3,
        rows as f64 / secs,
        status_kib("VmHWM:"),
        status_kib("VmRSS:")
    );
}

/// Streams a bill from `input`, keeping only the count.
fn stream<R: std::io::BufRead>(input: R) -> Result<(u64, BillSummary), Box<dyn Error>> {
    let mut reader = BillReader::new(input)?;
    let mut rows = 0u64;
    for row in reader.by_ref() {
        row?;
        rows += 1;
    }
    Ok((rows, reader.finish()?))
}

struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn write_bill(path: &Path, rows: u64, gzip: bool) -> Result<(), Box<dyn Error>> {
    let file = BufWriter::new(File::create(path)?);
    let mut source = bill_gen::GeneratedBill::new(rows);
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        std::io::copy(&mut source, &mut enc)?;
        enc.finish()?.flush()?;
    } else {
        let mut file = file;
        std::io::copy(&mut source, &mut file)?;
        file.flush()?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let rows: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 100_000,
    };
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let plain = dir.join(format!("wxpay-bill-{pid}.txt"));
    let gzip = dir.join(format!("wxpay-bill-{pid}.txt.gz"));
    let _cleanup = TempFiles(vec![plain.clone(), gzip.clone()]);

    println!(
        "start: VmHWM {} KiB, VmRSS {} KiB",
        status_kib("VmHWM:"),
        status_kib("VmRSS:")
    );
    let t = Instant::now();
    write_bill(&plain, rows, false)?;
    write_bill(&gzip, rows, true)?;
    report("generate both files (streamed)", rows, t);
    println!(
        "bill: {rows} rows, {} bytes plain, {} bytes gzip",
        std::fs::metadata(&plain)?.len(),
        std::fs::metadata(&gzip)?.len()
    );

    let t = Instant::now();
    let (n, summary) = stream(BufReader::new(File::open(&plain)?))?;
    assert_eq!((n, summary.count), (rows, rows));
    report("stream plain file (BillReader)", rows, t);

    let t = Instant::now();
    let decoder = flate2::read::GzDecoder::new(BufReader::new(File::open(&gzip)?));
    let (n, _) = stream(BufReader::new(decoder))?;
    assert_eq!(n, rows);
    report("stream gzip file (GzDecoder + BillReader)", rows, t);

    let t = Instant::now();
    let body = std::fs::read(&gzip)?;
    let text = read_reply(&body)?;
    let bill = parse_refund_bill(text.as_bytes())?;
    assert_eq!(bill.rows.len() as u64, rows);
    report("whole: read_reply(gzip) + parse_refund_bill", rows, t);
    Ok(())
}
