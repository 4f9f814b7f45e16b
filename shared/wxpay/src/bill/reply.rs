//! What `/pay/downloadbill` answers: the bill itself (gzip, recognised by its `1f 8b` magic, or
//! plain UTF-8 text), or an **unsigned** XML refusal
//! `<xml><return_code>FAIL</return_code><return_msg>…</return_msg><error_code>…</error_code></xml>`,
//! classified by what the caller should do next.

use std::io::Read;

use flate2::read::GzDecoder;
use thiserror::Error;

use crate::bill::{MAX_BILL_BYTES, MAX_GZIP_BYTES};
use crate::xml;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// How much of WeChat's texts an error keeps.
const MAX_TEXT_CHARS: usize = 200;

/// The bill text: UTF-8, at most [`MAX_BILL_BYTES`], decompressed when WeChat sent gzip.
#[derive(Clone, PartialEq, Eq)]
pub struct BillText {
    text: String,
    gzip: bool,
}

impl BillText {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    pub fn into_string(self) -> String {
        self.text
    }

    /// Whether the reply was gzip.
    pub fn was_gzip(&self) -> bool {
        self.gzip
    }
}

impl std::fmt::Debug for BillText {
    /// The size only: a bill carries the buyers' openids.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillText")
            .field("bytes", &self.text.len())
            .field("gzip", &self.gzip)
            .finish()
    }
}

/// What WeChat said when it sent no bill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillRefusal {
    pub return_msg: String,
    pub error_code: Option<String>,
}

/// Why there is no bill text, by what to do about it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BillUnavailable {
    /// "No Bill Exist" (error_code 20002): "当前商户号没有已成交的订单，不生成对账单" — nothing
    /// happened that day. Not an error: the day has no refunds.
    #[error("WeChat has no bill for that day ({})", .0.return_msg)]
    NoBill(BillRefusal),
    /// "Bill Creating": "对账单尚未生成 … 请在次日上午10点以后再下载对账单" — try again later today.
    #[error("the bill is not made yet ({}); try again later", .0.return_msg)]
    NotReady(BillRefusal),
    /// "SYSTEMERROR" / error_code 100 ("下载失败 系统超时 请尝试再次查询"): retry.
    #[error("WeChat failed to serve the bill ({}); retry", .0.return_msg)]
    Retry(BillRefusal),
    /// "请求频率过高，请降低频率后重试" (requests too frequent): WeChat's rate limit, whatever the
    /// `error_code` (20003 has been seen with it); ask again in a moment.
    #[error("WeChat's rate limit refused the bill request ({}); retry shortly", .0.return_msg)]
    RateLimited(BillRefusal),
    /// The request is wrong: signature, parameters (bill_date out of range, bill_type), the
    /// merchant's bill permission, or "CompressGZip Error". No retry helps; fix the configuration.
    #[error("WeChat refused the bill request ({}, error_code {:?}): fix the configuration", .0.return_msg, .0.error_code)]
    Config(BillRefusal),
    /// Neither a bill nor WeChat's refusal: corrupt or oversized gzip, not UTF-8, HTML, empty,
    /// XML we cannot read. Probably a broken transfer: retry, and look if it persists.
    #[error("the reply is neither a bill nor a WeChat refusal: {0}")]
    Malformed(String),
}

/// The size limits of a reply; tests use small ones.
#[derive(Clone, Copy)]
struct Limits {
    gzip: usize,
    text: usize,
}

const LIMITS: Limits = Limits {
    gzip: MAX_GZIP_BYTES,
    text: MAX_BILL_BYTES,
};

/// Reads a download-bill reply body: gzip input is capped at [`MAX_GZIP_BYTES`], the text
/// (decompressed or plain) at [`MAX_BILL_BYTES`].
pub fn read_reply(body: &[u8]) -> Result<BillText, BillUnavailable> {
    read_reply_within(body, LIMITS)
}

fn read_reply_within(body: &[u8], limits: Limits) -> Result<BillText, BillUnavailable> {
    if body.starts_with(&GZIP_MAGIC) {
        if body.len() > limits.gzip {
            return Err(BillUnavailable::Malformed(format!(
                "gzip reply of {} bytes is over the {}-byte limit",
                body.len(),
                limits.gzip
            )));
        }
        let text = gunzip(body, limits.text)?;
        return read_text(&text, true, limits);
    }
    read_text(body, false, limits)
}

/// Decompresses one gzip member, refusing output over `limit` bytes without producing more.
fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BillUnavailable> {
    let mut out = Vec::new();
    GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BillUnavailable::Malformed(format!("corrupt gzip: {e}")))?;
    if out.len() > limit {
        return Err(BillUnavailable::Malformed(format!(
            "the bill decompresses to over {limit} bytes"
        )));
    }
    Ok(out)
}

fn read_text(body: &[u8], gzip: bool, limits: Limits) -> Result<BillText, BillUnavailable> {
    if body.len() > limits.text {
        return Err(BillUnavailable::Malformed(format!(
            "reply of {} bytes is over the {}-byte limit",
            body.len(),
            limits.text
        )));
    }
    let start = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    let start = &start[start
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(start.len())..];
    if start.is_empty() {
        return Err(BillUnavailable::Malformed("empty reply".into()));
    }
    if start.starts_with(b"<xml") || start.starts_with(b"<?xml") {
        return Err(refusal(body));
    }
    if start.starts_with(b"<") {
        return Err(BillUnavailable::Malformed(
            "markup (HTML?), not a bill".into(),
        ));
    }
    match String::from_utf8(body.to_vec()) {
        Ok(text) => Ok(BillText { text, gzip }),
        Err(_) => Err(BillUnavailable::Malformed("the bill is not UTF-8".into())),
    }
}

/// An XML reply: WeChat's refusal (unsigned; decoded under the crate's XML rules, which refuse
/// DOCTYPE and entities).
fn refusal(body: &[u8]) -> BillUnavailable {
    let map = match xml::decode(body) {
        Ok(map) => map,
        Err(e) => return BillUnavailable::Malformed(format!("unreadable XML: {e}")),
    };
    if map.get("return_code") != Some("FAIL") {
        return BillUnavailable::Malformed("an XML reply whose return_code is not FAIL".into());
    }
    let cap = |s: &str| s.chars().take(MAX_TEXT_CHARS).collect::<String>();
    let refusal = BillRefusal {
        return_msg: cap(map.get("return_msg").unwrap_or_default()),
        error_code: map.non_empty("error_code").map(cap),
    };
    classify(refusal)
}

/// The classification, first match wins (docs/PROTOCOL.md "Refund bill"). Texts are compared
/// without regard to ASCII case: the documentation writes "NO Bill Exist", WeChat really sends
/// "No Bill Exist" (WxJava #1241), and neither spelling may be missed.
fn classify(r: BillRefusal) -> BillUnavailable {
    let msg = r.return_msg.to_ascii_lowercase();
    let code = r.error_code.as_deref().unwrap_or_default();
    // The text first: WeChat answers "Bill Creating" with 20002 too (WxJava tells them apart by
    // the message), so a bare 20002 is "no bill" only when the text says nothing else.
    if msg.contains("no bill exist") {
        BillUnavailable::NoBill(r)
    } else if msg.contains("bill creating") {
        BillUnavailable::NotReady(r)
    } else if code == "20002" {
        BillUnavailable::NoBill(r)
    } else if r.return_msg.contains("频率") || msg.contains("frequency") {
        // Before the codes: the rate-limit text comes with 20003, which alone reads as Config.
        BillUnavailable::RateLimited(r)
    } else if msg.contains("systemerror") || msg.contains("system error") || code == "100" {
        BillUnavailable::Retry(r)
    } else if r.return_msg.contains("签名错误")
        || msg.contains("sign")
        || msg.contains("gzip")
        || msg.contains("invalid")
        || msg.contains("missing")
        || msg.contains("format")
        || msg.contains("post")
        || msg.contains("parameter")
        || r.return_msg.contains("参数")
        || r.return_msg.contains("权限")
        || matches!(code, "20001" | "20003" | "20007")
    {
        BillUnavailable::Config(r)
    } else {
        // Not recognised: downloading has no side effect, so retrying is safe; the text is kept.
        BillUnavailable::Retry(r)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn fail(msg: &str, code: Option<&str>) -> Vec<u8> {
        let mut fields = vec![("return_code", "FAIL"), ("return_msg", msg)];
        fields.extend(code.map(|c| ("error_code", c)));
        xml::encode(fields).unwrap().into_bytes()
    }

    const BILL: &str = "交易时间,商户订单号\n`2026-11-26 10:00:00,`ORDER-0001\n总交易单数\n`1\n";

    #[test]
    fn plain_and_gzip_bills_are_the_text() {
        // GIVEN the same bill plain and gzip
        let plain = read_reply(BILL.as_bytes()).unwrap();
        let zipped = read_reply(&gzip(BILL.as_bytes())).unwrap();
        // THEN the same text; only the flag differs
        assert_eq!(plain.as_str(), BILL);
        assert_eq!(zipped.as_bytes(), BILL.as_bytes());
        assert!(!plain.was_gzip() && zipped.was_gzip());
        assert_eq!(zipped.clone().into_string(), BILL);
        // AND Debug shows only the size
        assert_eq!(
            format!("{plain:?}"),
            format!("BillText {{ bytes: {}, gzip: false }}", BILL.len())
        );
        // GIVEN a BOM before the text THEN still a bill (the parser strips it)
        let bom = [UTF8_BOM, BILL.as_bytes()].concat();
        assert!(read_reply(&bom).is_ok());
    }

    #[test]
    fn every_refusal_is_classified() {
        let kind = |msg: &str, code: Option<&str>| match read_reply(&fail(msg, code)) {
            Err(BillUnavailable::NoBill(_)) => "no_bill",
            Err(BillUnavailable::NotReady(_)) => "not_ready",
            Err(BillUnavailable::Retry(_)) => "retry",
            Err(BillUnavailable::RateLimited(_)) => "rate_limited",
            Err(BillUnavailable::Config(_)) => "config",
            Err(BillUnavailable::Malformed(_)) => "malformed",
            Ok(_) => "bill",
        };
        // GIVEN each refusal WeChat documents or sends (return_msg, error_code) THEN its class
        for (msg, code, want) in [
            ("No Bill Exist", Some("20002"), "no_bill"),
            ("NO Bill Exist", None, "no_bill"),
            ("no bill exist", None, "no_bill"),
            ("账单不存在", Some("20002"), "no_bill"),
            ("Bill Creating", None, "not_ready"),
            ("Bill Creating", Some("20002"), "not_ready"),
            ("bill creating", Some("20004"), "not_ready"),
            ("SYSTEMERROR", None, "retry"),
            ("system error", Some("100"), "retry"),
            ("下载失败", Some("100"), "retry"),
            ("签名错误", None, "config"),
            ("SIGN ERROR", None, "config"),
            ("sign error", Some("20001"), "config"),
            ("CompressGZip Error", None, "config"),
            ("UnCompressGZip Error", None, "config"),
            ("invalid bill_date", Some("20001"), "config"),
            ("invalid bill_type", None, "config"),
            ("invalid tar_type: Only GZIP supported", None, "config"),
            ("data format error", None, "config"),
            ("missing parameter", None, "config"),
            ("require POST method", None, "config"),
            ("参数错误", None, "config"),
            ("当前商户号账单API权限已经关闭", Some("20007"), "config"),
            ("something else", Some("20003"), "config"),
            (
                "请求频率过高，请降低频率后重试",
                Some("20003"),
                "rate_limited",
            ),
            ("FREQUENCY_LIMITED", None, "rate_limited"),
            // not recognised: retried (a download has no side effect), text kept
            ("系统繁忙", None, "retry"),
            ("", None, "retry"),
        ] {
            assert_eq!(kind(msg, code), want, "{msg:?} {code:?}");
        }
        // THEN WeChat's texts are kept for the log
        match read_reply(&fail("invalid bill_date", Some("20001"))) {
            Err(BillUnavailable::Config(r)) => {
                assert_eq!(
                    r,
                    BillRefusal {
                        return_msg: "invalid bill_date".into(),
                        error_code: Some("20001".into())
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // AND the documented plain-text XML (no CDATA) reads the same
        let plain =
            b"<xml><return_code>FAIL</return_code><return_msg>No Bill Exist</return_msg><error_code>20002</error_code></xml>";
        assert!(matches!(read_reply(plain), Err(BillUnavailable::NoBill(_))));
    }

    #[test]
    fn what_is_neither_a_bill_nor_a_refusal_is_malformed() {
        let mut corrupt = gzip(BILL.as_bytes());
        corrupt.truncate(corrupt.len() - 12);
        let xxe = br#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><return_code>FAIL</return_code><return_msg>&x;</return_msg></xml>"#;
        let success = xml::encode([("return_code", "SUCCESS")]).unwrap();
        for (name, body) in [
            ("empty", &b""[..]),
            ("blank", b" \r\n"),
            ("BOM only", UTF8_BOM),
            ("html", b"<html><body>502</body></html>"),
            ("not utf-8", b"\xff\xfe\x00a"),
            ("truncated gzip", &corrupt),
            ("gzip magic only", &[0x1f, 0x8b]),
            ("xxe", xxe),
            ("broken xml", b"<xml><return_code>FAIL</return_code>"),
            ("success xml", success.as_bytes()),
        ] {
            assert!(
                matches!(read_reply(body), Err(BillUnavailable::Malformed(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn sizes_are_capped_before_and_after_decompressing() {
        let limits = Limits {
            gzip: 1 << 10,
            text: 64 << 10,
        };
        // GIVEN a plain bill over the text limit THEN refused
        let big = "`x\n".repeat(30 << 10);
        assert!(matches!(
            read_reply_within(big.as_bytes(), limits),
            Err(BillUnavailable::Malformed(m)) if m.contains("over the 65536-byte limit")
        ));
        // GIVEN a gzip bomb (small, but more than the text limit once decompressed)
        let bomb = gzip(&vec![b'0'; (64 << 10) + 1]);
        assert!(bomb.len() < 1 << 10, "{}", bomb.len());
        // THEN refused, not expanded past the limit
        assert!(matches!(
            read_reply_within(&bomb, limits),
            Err(BillUnavailable::Malformed(m)) if m.contains("decompresses to over 65536 bytes")
        ));
        // GIVEN a gzip input over its own limit THEN refused before decompressing
        let noisy: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let large_gzip = gzip(&noisy);
        assert!(large_gzip.len() > 1 << 10);
        assert!(matches!(
            read_reply_within(&large_gzip, limits),
            Err(BillUnavailable::Malformed(m)) if m.starts_with("gzip reply of")
        ));
        // GIVEN exactly the limit THEN accepted
        let exact = "`".repeat(64 << 10);
        assert!(read_reply_within(&gzip(exact.as_bytes()), limits).is_ok());
        assert_eq!(LIMITS.text, MAX_BILL_BYTES);
        assert_eq!(LIMITS.gzip, MAX_GZIP_BYTES);
    }

    #[test]
    fn refusal_texts_are_capped() {
        let long = "错".repeat(500);
        match read_reply(&fail(&long, Some(&"9".repeat(500)))) {
            Err(BillUnavailable::Retry(r)) => {
                assert_eq!(r.return_msg.chars().count(), MAX_TEXT_CHARS);
                assert_eq!(r.error_code.map(|c| c.len()), Some(MAX_TEXT_CHARS));
            }
            other => panic!("{other:?}"),
        }
    }
}
