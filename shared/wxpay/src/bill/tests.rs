//! The REFUND bill end to end: each header variant from a fixture (`tests/fixtures/refund_bill_*`),
//! the summary checks, header-name resolution, line endings, gzip, and fuzzing of the parser and
//! the reply classifier.

use std::io::Write;

use proptest::prelude::*;

use super::*;

const BILL_2014: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/refund_bill_2014.txt"
));
const BILL_2018: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/refund_bill_2018.txt"
));
const BILL_HONGBAO: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/refund_bill_hongbao.txt"
));

/// Every openid in the fixtures (用户标识): none may appear in a parsed bill or an error.
const OPENIDS: [&str; 7] = [
    "085e9858e3ba5186aafcbaed1",
    "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
    "oUpF8uMuAJO_M2pxb1Q9zNjWeXXX",
    "o-BUYER-2",
    "o-BUYER-3",
    "oHB-openid-1",
    "oHB-openid-2",
];

fn fen(f: u64) -> Fen {
    Fen::new(f).unwrap()
}

/// A bill as fields, to edit and render again.
#[derive(Clone)]
struct Editable {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    sum_header: Vec<String>,
    sum_values: Vec<String>,
}

fn ticked(line: &str) -> Vec<String> {
    line.trim_end_matches(['\r', '\n'])
        .strip_prefix('`')
        .unwrap()
        .split(",`")
        .map(str::to_string)
        .collect()
}

impl Editable {
    fn of(text: &str) -> Editable {
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        let n = lines.len();
        Editable {
            header: lines[0].split(',').map(str::to_string).collect(),
            rows: lines[1..n - 2].iter().map(|l| ticked(l)).collect(),
            sum_header: lines[n - 2].split(',').map(str::to_string).collect(),
            sum_values: ticked(lines[n - 1]),
        }
    }

    fn render(&self) -> String {
        let tick = |v: &[String]| {
            v.iter()
                .map(|f| format!("`{f}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = self.header.join(",") + "\n";
        for r in &self.rows {
            out += &(tick(r) + "\n");
        }
        out + &self.sum_header.join(",") + "\n" + &tick(&self.sum_values) + "\n"
    }

    fn col(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap()
    }

    fn set(&mut self, row: usize, name: &str, value: &str) {
        let i = self.col(name);
        self.rows[row][i] = value.into();
    }

    fn remove(&mut self, name: &str) {
        let i = self.col(name);
        self.header.remove(i);
        for r in &mut self.rows {
            r.remove(i);
        }
    }

    fn insert(&mut self, at: usize, name: &str, value: impl Fn(usize) -> String) {
        self.header.insert(at, name.into());
        for (n, r) in self.rows.iter_mut().enumerate() {
            r.insert(at, value(n));
        }
    }

    fn set_summary(&mut self, name: &str, value: &str) {
        let i = self.sum_header.iter().position(|h| h == name).unwrap();
        self.sum_values[i] = value.into();
    }
}

fn parse(text: &str) -> Result<RefundBill, BillError> {
    parse_refund_bill(text.as_bytes())
}

fn assert_no_openid(text: &str) {
    for id in OPENIDS {
        assert!(!text.contains(id), "openid {id} leaked into: {text}");
    }
}

#[test]
fn the_documented_26_column_bill_is_read_by_name() {
    // GIVEN the documented REFUND bill (子商户号, 总金额, 代金券或立减优惠*)
    // WHEN parsed
    let bill = parse(BILL_2014).unwrap();
    // THEN every row is typed, with the old header's rules
    assert_eq!(bill.rows.len(), 3);
    let r = &bill.rows[0];
    assert_eq!(r.line, 2);
    assert_eq!(r.trade_time, "2014-11-10 16:33:45");
    assert_eq!(r.appid.as_deref(), Some("wx2421b1c4370ec43b"));
    assert_eq!(r.mch_id.as_deref(), Some("10000100"));
    assert_eq!(r.sub_mch_id.as_deref(), Some("0"));
    assert_eq!(r.device_info.as_deref(), Some("1000"));
    assert_eq!(r.transaction_id.as_str(), "1001690740201411100005734289");
    assert_eq!(r.out_trade_no.as_str(), "1415640626");
    assert_eq!(r.refund_id.as_str(), "2001690740201411100005734278");
    assert_eq!(r.out_refund_no.as_str(), "1415640626");
    assert_eq!(r.trade_type.as_deref(), Some("MICROPAY"));
    assert_eq!(r.trade_state.as_deref(), Some("REFUND"));
    assert_eq!(r.bank_type.as_deref(), Some("OTHERS"));
    assert_eq!(r.fee_type.as_deref(), Some("CNY"));
    // no 订单金额 / 申请退款金额: total_fee is 总金额, refund_fee is 退款金额 plus its coupon part
    assert_eq!((r.total_fee, r.settlement_total_fee), (fen(1), fen(1)));
    assert_eq!((r.refund_fee, r.settlement_refund_fee), (fen(1), fen(1)));
    assert_eq!(r.coupon_fee, Some(Fen::ZERO));
    assert_eq!(r.coupon_refund_fee, Fen::ZERO);
    assert_eq!(r.apply_time, "2014-11-10 16:33:45");
    assert_eq!(r.success_time.as_deref(), Some("2014-11-10 16:33:46"));
    assert_eq!(r.refund_type, "ORIGINAL");
    assert_eq!(r.refund_status, BilledRefundStatus::Success);
    assert_eq!(r.body.as_deref(), Some("被扫支付测试"));
    assert_eq!(r.attach.as_deref(), Some("订单额外描述"));
    assert_eq!(r.service_fee.as_deref(), Some("0"));
    assert_eq!(r.rate.as_deref(), Some("0.60%"));
    assert_eq!(r.rate_note, None);
    assert!(r.extra.is_empty());
    let r = &bill.rows[1];
    assert_eq!(r.device_info, None);
    assert_eq!(r.success_time, None);
    assert_eq!(r.refund_status, BilledRefundStatus::Processing);
    assert_eq!((r.total_fee, r.coupon_fee), (fen(12_000), Some(fen(1000))));
    // 退款金额 is the settlement refund; the refund asked for adds its coupon part
    assert_eq!(
        (r.refund_fee, r.settlement_refund_fee, r.coupon_refund_fee),
        (fen(5100), fen(5000), fen(100))
    );
    assert_eq!(r.attach, None);
    let r = &bill.rows[2];
    assert_eq!(r.refund_status, BilledRefundStatus::RefundClose);
    assert_eq!(r.refund_fee, fen(880));
    // a comma inside a field does not split it
    assert_eq!(r.body.as_deref(), Some("扫码,测试"));
    // AND the summary is read and adds up
    assert_eq!(
        bill.summary,
        BillSummary {
            count: 3,
            refund_fee_total: fen(5881),
            applied_refund_total: None,
            coupon_refund_total: Some(fen(100)),
            extra: vec![
                ("总交易额".into(), "128.81".into()),
                ("手续费总金额".into(), "0.05".into())
            ],
        }
    );
}

#[test]
fn the_2018_bill_maps_order_and_requested_amounts() {
    // GIVEN the current header (特约商户号, 应结订单金额, 充值券*, 订单金额, 申请退款金额, 费率备注)
    let bill = parse(BILL_2018).unwrap();
    assert_eq!(bill.rows.len(), 5);
    // THEN total_fee is 订单金额 and refund_fee is 申请退款金额; 退款金额 is the settlement refund
    let r = &bill.rows[1];
    assert_eq!(r.sub_mch_id.as_deref(), Some("0"));
    assert_eq!(r.device_info.as_deref(), Some("POS-7"));
    assert_eq!(
        (r.total_fee, r.settlement_total_fee),
        (fen(5000), fen(4500))
    );
    assert_eq!(r.coupon_fee, Some(fen(500)));
    assert_eq!(
        (r.refund_fee, r.settlement_refund_fee, r.coupon_refund_fee),
        (fen(4300), fen(4000), fen(300))
    );
    assert_eq!(r.body.as_deref(), Some("礼盒,大号"));
    assert_eq!(r.attach.as_deref(), Some("order=2"));
    assert_eq!(r.service_fee.as_deref(), Some("-0.24"));
    assert_eq!(r.rate_note.as_deref(), Some("限时优惠费率"));
    // fees keep their five decimals as text
    assert_eq!(bill.rows[2].service_fee.as_deref(), Some("0.00000"));
    // every status, FAIL included
    let statuses: Vec<&str> = bill.rows.iter().map(|r| r.refund_status.as_str()).collect();
    assert_eq!(
        statuses,
        ["SUCCESS", "SUCCESS", "PROCESSING", "CHANGE", "FAIL"]
    );
    assert_eq!(bill.rows[4].refund_type, "BALANCE");
    assert_eq!(
        bill.rows.iter().map(|r| r.line).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6]
    );
    // AND the summary: 申请退款总金额 checked too, the unchecked totals kept as text
    assert_eq!(
        bill.summary,
        BillSummary {
            count: 5,
            refund_fee_total: fen(8800),
            applied_refund_total: Some(fen(9100)),
            coupon_refund_total: Some(fen(300)),
            extra: vec![
                ("应结订单总金额".into(), "168.00".into()),
                ("手续费总金额".into(), "-0.39".into()),
                ("订单总金额".into(), "173.00".into()),
            ],
        }
    );
}

#[test]
fn the_hongbao_wording_is_the_coupon_column() {
    // GIVEN an old merchant's bill with 企业红包金额 / 企业红包退款金额 / 总企业红包退款金额
    let bill = parse(BILL_HONGBAO).unwrap();
    // THEN they fill the coupon fields and are checked like them
    assert_eq!(bill.rows[0].coupon_fee, Some(fen(600)));
    assert_eq!(bill.rows[0].coupon_refund_fee, fen(200));
    assert_eq!(bill.summary.coupon_refund_total, Some(fen(200)));
    assert_eq!(bill.summary.refund_fee_total, fen(4000));
    assert!(bill.rows.iter().all(|r| r.extra.is_empty()));
}

#[test]
fn the_buyers_openid_is_never_kept() {
    // GIVEN every fixture WHEN parsed THEN no openid in any row, extra or summary
    for text in [BILL_2014, BILL_2018, BILL_HONGBAO] {
        let bill = parse(text).unwrap();
        assert_no_openid(&format!("{bill:?}"));
        assert!(
            bill.rows
                .iter()
                .all(|r| r.extra.iter().all(|(k, _)| !k.contains("用户标识")))
        );
    }
    // GIVEN a new column whose name mentions 用户标识 THEN dropped too
    let mut e = Editable::of(BILL_2018);
    e.insert(3, "子商户用户标识", |n| format!("o-sub-{n}"));
    let bill = parse(&e.render()).unwrap();
    assert!(!format!("{bill:?}").contains("o-sub-"));
    // GIVEN a row with a bad field next to the openid THEN the error has no openid either
    let mut e = Editable::of(BILL_2018);
    e.set(0, "微信订单号", "4200 0001");
    let err = parse(&e.render()).unwrap_err();
    assert_no_openid(&format!("{err} {err:?}"));
}

#[test]
fn columns_are_found_by_name_in_any_order() {
    // GIVEN the 2018 bill with its columns reversed
    let e = Editable::of(BILL_2018);
    let mut rev = e.clone();
    rev.header.reverse();
    for r in &mut rev.rows {
        r.reverse();
    }
    // WHEN parsed THEN the same rows (save nothing: every column is known)
    assert_eq!(parse(&rev.render()).unwrap(), parse(BILL_2018).unwrap());
}

#[test]
fn an_unknown_column_is_kept_not_refused() {
    // GIVEN a column WeChat might add, in the middle, and one in the summary
    let mut e = Editable::of(BILL_2018);
    e.insert(5, "优惠标识", |n| format!("tag{n}"));
    e.sum_header.push("新汇总".into());
    e.sum_values.push("7".into());
    // WHEN parsed THEN each row keeps it by name, and the summary too
    let bill = parse(&e.render()).unwrap();
    for (n, r) in bill.rows.iter().enumerate() {
        assert_eq!(r.extra, vec![("优惠标识".to_string(), format!("tag{n}"))]);
    }
    assert_eq!(
        bill.summary.extra.last(),
        Some(&("新汇总".to_string(), "7".to_string()))
    );
    // AND the known fields are unchanged
    let plain = parse(BILL_2018).unwrap();
    assert_eq!(bill.rows[1].out_refund_no, plain.rows[1].out_refund_no);
}

#[test]
fn a_missing_required_column_is_named() {
    // GIVEN each required column removed from the header and the rows
    for (gone, named) in [
        ("商户退款单号", "商户退款单号"),
        ("微信退款单号", "微信退款单号"),
        ("退款金额", "退款金额"),
        ("退款状态", "退款状态"),
        ("应结订单金额", "应结订单金额 or 总金额"),
    ] {
        let mut e = Editable::of(BILL_2018);
        e.remove(gone);
        // THEN refused, naming it
        let err = parse(&e.render()).unwrap_err();
        assert_eq!(err.to_string(), format!("the bill has no column {named}"));
    }
    // GIVEN optional columns removed THEN still read: refund_fee falls back to 退款金额,
    // total_fee to 应结订单金额, coupon refunds to 0
    let mut e = Editable::of(BILL_2018);
    for gone in ["申请退款金额", "订单金额", "充值券退款金额"] {
        e.remove(gone);
    }
    e.sum_header.truncate(3);
    e.sum_values.truncate(3);
    let bill = parse(&e.render()).unwrap();
    let r = &bill.rows[1];
    assert_eq!(
        (r.total_fee, r.refund_fee, r.coupon_refund_fee),
        (fen(4500), fen(4000), Fen::ZERO)
    );
    // GIVEN the summary without 退款总金额 THEN refused, naming it
    let mut e = Editable::of(BILL_2018);
    e.sum_header[2] = "别的".into();
    assert_eq!(
        parse(&e.render()).unwrap_err().to_string(),
        "the summary has no column 退款总金额 or 总退款金额"
    );
}

#[test]
fn a_bill_that_does_not_add_up_is_refused_saying_which_number() {
    let refused = |e: &Editable| parse(&e.render()).unwrap_err();
    // GIVEN a summary counting one row too many
    let mut e = Editable::of(BILL_2018);
    e.set_summary("总交易单数", "6");
    assert_eq!(
        refused(&e),
        BillError::CountMismatch {
            column: "总交易单数",
            summary: 6,
            rows: 5
        }
    );
    // GIVEN a row dropped from the bill (the summary unchanged)
    let mut e = Editable::of(BILL_2018);
    e.rows.remove(2);
    assert!(matches!(
        refused(&e),
        BillError::CountMismatch {
            summary: 5,
            rows: 4,
            ..
        }
    ));
    // GIVEN a refund amount changed by one fen
    let mut e = Editable::of(BILL_2018);
    e.set(0, "退款金额", "25.01");
    let err = refused(&e);
    assert_eq!(
        err,
        BillError::TotalMismatch {
            column: "退款总金额".into(),
            rows_column: "退款金额".into(),
            summary: fen(8800),
            rows: fen(8801),
        }
    );
    assert_eq!(
        err.to_string(),
        "the summary's 退款总金额 is 88.00 yuan, the rows' 退款金额 add up to 88.01 yuan"
    );
    // GIVEN 申请退款总金额 off THEN that number is named
    let mut e = Editable::of(BILL_2018);
    e.set_summary("申请退款总金额", "91.10");
    assert!(matches!(
        refused(&e),
        BillError::TotalMismatch { column, rows_column, .. }
            if column == "申请退款总金额" && rows_column == "申请退款金额"
    ));
    // GIVEN the coupon refund total off THEN named with this bill's spelling
    let mut e = Editable::of(BILL_HONGBAO);
    e.set_summary("总企业红包退款金额", "0.00");
    assert!(matches!(
        refused(&e),
        BillError::TotalMismatch { column, rows_column, .. }
            if column == "总企业红包退款金额" && rows_column == "企业红包退款金额"
    ));
    // GIVEN the old 总退款金额 off THEN named so
    let mut e = Editable::of(BILL_2014);
    e.set_summary("总退款金额", "0.01");
    assert!(matches!(
        refused(&e),
        BillError::TotalMismatch { column, .. } if column == "总退款金额"
    ));
    // GIVEN an unchecked total changed THEN still accepted (kept as text)
    let mut e = Editable::of(BILL_2018);
    e.set_summary("订单总金额", "1.00");
    assert!(parse(&e.render()).is_ok());
}

#[test]
fn a_row_with_the_wrong_number_of_fields_names_its_line() {
    // GIVEN the third row (line 4) missing a field, or with one too many
    let mut short = Editable::of(BILL_2018);
    short.rows[2].pop();
    let mut long = Editable::of(BILL_2018);
    long.rows[2].push("x".into());
    // THEN refused with the line and the counts
    assert_eq!(
        parse(&short.render()).unwrap_err(),
        BillError::FieldCount {
            line: 4,
            expected: 29,
            found: 28
        }
    );
    assert_eq!(
        parse(&long.render()).unwrap_err().to_string(),
        "line 4 has 30 fields, the header has 29"
    );
    // GIVEN the summary values short of a field THEN the summary line is named
    let mut e = Editable::of(BILL_2018);
    e.sum_values.pop();
    assert_eq!(
        parse(&e.render()).unwrap_err(),
        BillError::FieldCount {
            line: 8,
            expected: 7,
            found: 6
        }
    );
}

#[test]
fn invalid_fields_name_line_and_column_without_the_value() {
    for (column, value, problem) in [
        (
            "微信订单号",
            "4200-0001",
            "may only contain letters and digits",
        ),
        ("商户订单号", "ORD", "must be 6 to 32 characters long"),
        ("商户退款单号", "", "is empty"),
        ("微信退款单号", "x".repeat(33).as_str(), "must be 1 to 32"),
        ("退款金额", "1.001", "third decimal"),
        ("退款金额", "-1.00", "not a plain decimal"),
        ("应结订单金额", "", "is empty"),
        ("充值券退款金额", "1e2", "not a plain decimal"),
        ("申请退款金额", "01.00", "leading zero"),
        ("退款申请时间", "2026-11-26", "yyyy-MM-dd HH:mm:ss"),
        ("退款成功时间", "2026-02-30 10:00:00", "yyyy-MM-dd HH:mm:ss"),
        ("交易时间", "", "is empty"),
        ("退款类型", "", "is empty"),
        ("退款状态", "", "is empty"),
    ] {
        // GIVEN the second row (line 3) with that field broken
        let mut e = Editable::of(BILL_2018);
        e.set(1, column, value);
        // THEN refused, naming line and column
        match parse(&e.render()).unwrap_err() {
            BillError::InvalidField {
                line,
                column: c,
                problem: p,
            } => {
                assert_eq!((line, c.as_str()), (3, column), "{column}");
                assert!(p.contains(problem), "{column}: {p}");
                if value.len() > 3 {
                    assert!(!p.contains(value), "{column}: {p}");
                }
            }
            other => panic!("{column}: {other:?}"),
        }
    }
    // GIVEN a broken summary amount THEN the summary line and column are named
    let mut e = Editable::of(BILL_2018);
    e.set_summary("退款总金额", "88");
    e.set_summary("充值券退款总金额", "3.001");
    assert!(matches!(
        parse(&e.render()).unwrap_err(),
        BillError::InvalidField { line: 8, column, .. } if column == "充值券退款总金额"
    ));
    let mut e = Editable::of(BILL_2018);
    e.set_summary("总交易单数", "5.0");
    assert!(matches!(
        parse(&e.render()).unwrap_err(),
        BillError::InvalidField { line: 8, column, .. } if column == "总交易单数"
    ));
}

#[test]
fn bom_crlf_and_blank_trailing_lines_are_tolerated() {
    let plain = parse(BILL_2018).unwrap();
    // GIVEN the same bill with a BOM, CRLF line endings and empty lines at the end
    for variant in [
        format!("\u{feff}{BILL_2018}"),
        BILL_2018.replace('\n', "\r\n"),
        format!("\u{feff}{}\r\n\r\n\n", BILL_2018.replace('\n', "\r\n")),
        BILL_2018.trim_end().to_string(),
        format!("{BILL_2018}\n\n   \n"),
    ] {
        // THEN the same bill
        assert_eq!(parse(&variant).unwrap(), plain);
    }
}

#[test]
fn a_truncated_or_padded_bill_is_refused() {
    let lines: Vec<&str> = BILL_2018.lines().collect();
    // GIVEN the bill cut before the summary, or between its two lines
    for keep in [1, 3, lines.len() - 2, lines.len() - 1] {
        let cut = lines[..keep].join("\n");
        assert_eq!(
            parse(&cut).unwrap_err(),
            BillError::MissingSummary,
            "{keep}"
        );
    }
    // GIVEN text after the summary THEN refused with its line
    let padded = format!("{BILL_2018}\n`1,`2\n");
    assert_eq!(
        parse(&padded).unwrap_err(),
        BillError::TrailingData { line: 10 }
    );
    // GIVEN nothing, a blank text, a row first, a row without backticks
    assert_eq!(parse("").unwrap_err(), BillError::Empty);
    assert_eq!(parse("\u{feff}\r\n\n").unwrap_err(), BillError::Empty);
    assert_eq!(
        parse(&lines[1..].join("\n")).unwrap_err(),
        BillError::NoHeader
    );
    let no_tick = BILL_2018.replacen("`2026-11-22 08:00:00", "2026-11-22 08:00:00", 1);
    assert_eq!(
        parse(&no_tick).unwrap_err(),
        BillError::NoBacktick { line: 4 }
    );
    // GIVEN a bill with no rows at all THEN read, if its summary says 0
    let empty = format!(
        "{}\n{}\n`0,`0.00,`0.00,`0.00,`0.00,`0.00,`0.00\n",
        lines[0],
        lines[lines.len() - 2]
    );
    let bill = parse(&empty).unwrap();
    assert!(bill.rows.is_empty());
    assert_eq!(bill.summary.count, 0);
}

#[test]
fn overlong_and_non_utf8_lines_are_refused_by_line() {
    let lines: Vec<&str> = BILL_2018.lines().collect();
    let mut e = Editable::of(BILL_2018);
    e.set(0, "商品名称", &"长".repeat(MAX_LINE_BYTES / 3 + 1));
    assert_eq!(
        parse(&e.render()).unwrap_err(),
        BillError::LineTooLong { line: 2 }
    );
    let mut bytes = BILL_2018.as_bytes().to_vec();
    let at = lines[0].len() + 1 + lines[1].len() + 1 + 5;
    bytes[at] = 0xff;
    assert_eq!(
        parse_refund_bill(&bytes).unwrap_err(),
        BillError::NotUtf8 { line: 3 }
    );
}

#[test]
fn gzip_round_trip_through_the_reply_reader() {
    // GIVEN the bill as WeChat sends it with tar_type=GZIP
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(BILL_2018.as_bytes()).unwrap();
    let body = enc.finish().unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b]);
    // WHEN read and parsed THEN the same bill as the plain text
    let text = read_reply(&body).unwrap();
    assert!(text.was_gzip());
    assert_eq!(
        parse_refund_bill(text.as_bytes()).unwrap(),
        parse(BILL_2018).unwrap()
    );
    // AND streaming straight from a gzip decoder gives the same rows
    let reader = BillReader::new(std::io::BufReader::new(flate2::read::GzDecoder::new(
        &body[..],
    )))
    .unwrap();
    assert_eq!(reader.count(), 5);
}

#[test]
fn the_reader_streams_rows_then_checks_the_summary() {
    // GIVEN a reader over the bill
    let mut reader = BillReader::new(BILL_2018.as_bytes()).unwrap();
    assert!(format!("{reader:?}").contains("商户退款单号"));
    // WHEN two rows are taken and finish() is called
    let first = reader.next().unwrap().unwrap();
    assert_eq!(first.out_refund_no.as_str(), "R-20261126-0001");
    assert!(reader.next().unwrap().is_ok());
    // THEN the rest is read and checked: the summary counts all five
    assert_eq!(reader.finish().unwrap().count, 5);
    // GIVEN a bill whose total is off WHEN iterated THEN every row, then the error, then nothing
    let mut e = Editable::of(BILL_2018);
    e.set_summary("退款总金额", "1.00");
    let text = e.render();
    let mut reader = BillReader::new(text.as_bytes()).unwrap();
    let items: Vec<_> = reader.by_ref().collect();
    assert_eq!(items.len(), 6);
    assert!(items[..5].iter().all(Result::is_ok));
    assert!(matches!(items[5], Err(BillError::TotalMismatch { .. })));
    assert!(reader.next().is_none());
    // AND finish() reports the same error
    assert!(matches!(
        reader.finish(),
        Err(BillError::TotalMismatch { .. })
    ));
    // GIVEN a bad row THEN iteration stops at it and finish() returns it
    let mut e = Editable::of(BILL_2018);
    e.set(1, "退款金额", "x");
    let text = e.render();
    let mut reader = BillReader::new(text.as_bytes()).unwrap();
    assert!(reader.next().unwrap().is_ok());
    assert!(reader.next().unwrap().is_err());
    assert!(reader.next().is_none());
    assert!(matches!(
        reader.finish(),
        Err(BillError::InvalidField { line: 3, .. })
    ));
}

#[test]
fn io_errors_surface_as_bill_errors() {
    struct Broken;
    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk gone"))
        }
    }
    let err = BillReader::new(std::io::BufReader::new(Broken)).unwrap_err();
    assert_eq!(
        err,
        BillError::Io {
            kind: std::io::ErrorKind::Other,
            message: "disk gone".into()
        }
    );
}

/// A valid bill with random edits: deleted, inserted and replaced bytes, cut short.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let bills = prop_oneof![Just(BILL_2014), Just(BILL_2018), Just(BILL_HONGBAO)];
    (
        bills,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..8),
    )
        .prop_map(|(bill, edits)| {
            let mut b = bill.as_bytes().to_vec();
            for (at, byte, op) in edits {
                if b.is_empty() {
                    break;
                }
                let i = at.index(b.len());
                match op {
                    0 => {
                        b.remove(i);
                    }
                    1 => b.insert(i, byte),
                    2 => b[i] = byte,
                    _ => b.truncate(i),
                }
            }
            b
        })
}

/// Symbols the bill format gives meaning to, so that mutations hit its rules.
fn structured() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just("`".to_string()),
        Just(",".to_string()),
        Just(",`".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("总交易单数".to_string()),
        Just("退款金额".to_string()),
        Just("\u{feff}".to_string()),
        "[0-9.]{1,6}",
        "[A-Za-z0-9-]{1,30}",
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|p| p.concat().into_bytes())
}

fn exercise(bytes: &[u8]) {
    // The parser, the streaming reader (every item and finish), and the reply classifier.
    let _ = parse_refund_bill(bytes);
    if let Ok(mut reader) = BillReader::new(bytes) {
        for item in reader.by_ref() {
            if let Err(e) = item {
                let _ = e.to_string();
            }
        }
        let _ = reader.finish();
    }
    if let Ok(text) = read_reply(bytes) {
        let _ = parse_refund_bill(text.as_bytes());
    }
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn never_panics_on_mutated_bills(bytes in mutated()) {
        exercise(&bytes);
        // and the gzip of a mutated bill goes through the reply reader as well
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        let _ = read_reply(&enc.finish().unwrap()).map(|t| parse_refund_bill(t.as_bytes()));
    }

    #[test]
    fn never_panics_on_bill_shaped_noise(bytes in structured()) {
        exercise(&bytes);
        let mut with_header = BILL_2018.lines().next().unwrap().as_bytes().to_vec();
        with_header.push(b'\n');
        with_header.extend_from_slice(&bytes);
        exercise(&with_header);
    }

    #[test]
    fn a_mutated_bill_that_parses_still_adds_up(bytes in mutated()) {
        // Whatever the edits, a bill accepted is one whose summary matches its rows.
        if let Ok(bill) = parse_refund_bill(&bytes) {
            let sum = bill.rows.iter().map(|r| r.settlement_refund_fee.get()).sum::<u64>();
            prop_assert_eq!(bill.summary.count, bill.rows.len() as u64);
            prop_assert_eq!(bill.summary.refund_fee_total.get(), sum);
        }
    }

    #[test]
    fn arbitrary_refusals_never_panic(msg in "\\PC{0,40}", code in proptest::option::of("[0-9A-Za-z]{0,8}")) {
        let mut fields = vec![("return_code", "FAIL"), ("return_msg", msg.as_str())];
        if let Some(c) = &code {
            fields.push(("error_code", c.as_str()));
        }
        if let Ok(body) = crate::xml::encode(fields) {
            prop_assert!(read_reply(body.as_bytes()).is_err());
        }
    }
}
