//! A 100,000-row REFUND bill streams through `BillReader` from a generator that never holds the
//! bill: rows are typed one at a time and the summary is checked at the end.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/bill_gen.rs"]
mod bill_gen;

use std::io::BufReader;

use bill_gen::GeneratedBill;
use wxpay::Fen;
use wxpay::bill::{BillError, BillReader, BilledRefundStatus};

const ROWS: u64 = 100_000;

#[test]
fn a_100k_row_bill_streams_without_being_collected() {
    // GIVEN a reader over a generated 100,000-row bill (made line by line as it is read)
    let mut generated = GeneratedBill::new(ROWS);
    let mut reader = BillReader::new(BufReader::with_capacity(8 * 1024, &mut generated)).unwrap();
    // WHEN every row is read and dropped, keeping only running sums
    let (mut rows, mut refunded, mut processing) = (0u64, 0u64, 0u64);
    for (i, row) in reader.by_ref().enumerate() {
        let row = row.unwrap();
        let i = i as u64;
        assert_eq!(row.line, i + 2);
        assert_eq!(row.out_refund_no.as_str(), format!("R-{i:010}"));
        assert_eq!(
            row.refund_fee.get(),
            bill_gen::settlement_refund(i) + bill_gen::coupon_refund(i)
        );
        if row.refund_status == BilledRefundStatus::Processing {
            processing += 1;
            assert_eq!(row.success_time, None);
        }
        rows += 1;
        refunded += row.settlement_refund_fee.get();
    }
    // THEN the summary agrees with the rows, and the numbers are the generator's
    let summary = reader.finish().unwrap();
    let (settlement, coupon, applied) = bill_gen::totals(ROWS);
    assert_eq!((rows, summary.count), (ROWS, ROWS));
    assert_eq!(refunded, settlement);
    assert_eq!(summary.refund_fee_total, Fen::new(settlement).unwrap());
    assert_eq!(summary.coupon_refund_total, Some(Fen::new(coupon).unwrap()));
    assert_eq!(
        summary.applied_refund_total,
        Some(Fen::new(applied).unwrap())
    );
    assert_eq!(processing, ROWS / 50);
    // AND the source never held more than one line
    assert!(generated.max_line < 1024, "{}", generated.max_line);
}

#[test]
fn a_generated_bill_cut_short_is_refused() {
    // GIVEN the generated bill without its last line
    let bytes = bill_gen::bill_bytes(1_000);
    let text = String::from_utf8(bytes).unwrap();
    let cut = text.trim_end().rsplit_once("\r\n").unwrap().0;
    // WHEN streamed THEN every row is read but the bill is refused as truncated
    let mut reader = BillReader::new(cut.as_bytes()).unwrap();
    assert_eq!(reader.by_ref().filter(Result::is_ok).count(), 1_000);
    assert_eq!(reader.finish(), Err(BillError::MissingSummary));
}
