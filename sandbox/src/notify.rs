//! The refund notification push (docs/PROTOCOL.md "Refund notification"): `req_info` encryption and delivery with WeChat's
//! retry schedule (optionally compressed by a factor so tests see several retries quickly).
//!
//! The encryption lives here, behind `encrypt_req_info`/`decrypt_req_info`, until `wxpay::notify`
//! offers the same; the sandbox deliberately does not reuse the client's code path for its own
//! correctness checks anyway.

use std::time::Duration;

use aes::Aes256;
use base64::Engine as _;
use cipher::block_padding::Pkcs7;
use cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit};
use md5::{Digest, Md5};
use thiserror::Error;
use wxpay::ApiKey;

use crate::books::Books;

/// WeChat's retry delays after a failed delivery: 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h.
pub const RETRY_SCHEDULE: [Duration; 15] = [
    Duration::from_secs(15),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(180),
    Duration::from_secs(600),
    Duration::from_secs(1200),
    Duration::from_secs(1800),
    Duration::from_secs(1800),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(10800),
    Duration::from_secs(10800),
    Duration::from_secs(10800),
    Duration::from_secs(21600),
    Duration::from_secs(21600),
];

/// What WeChat's retry delays are divided by: finite and > 0 (checked once, at start).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryFactor(f64);

impl RetryFactor {
    /// 1: WeChat's own schedule.
    pub const REAL: RetryFactor = RetryFactor(1.0);

    pub fn new(f: f64) -> Result<RetryFactor, String> {
        if f.is_finite() && f > 0.0 {
            Ok(RetryFactor(f))
        } else {
            Err(format!(
                "notify_retry_factor must be a finite number > 0 (1 = WeChat's schedule), got {f}"
            ))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }

    /// `delay / factor`; a quotient too large for a `Duration` (a factor close to 0) is the
    /// longest delay there is, which is what such a factor asks for.
    pub fn apply(self, delay: Duration) -> Duration {
        Duration::try_from_secs_f64(delay.as_secs_f64() / self.0).unwrap_or(Duration::MAX)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NotifyCryptoError {
    #[error("req_info is not base64")]
    Base64,
    #[error("req_info does not decrypt (wrong key or corrupted)")]
    Decrypt,
    #[error("decrypted req_info is not UTF-8")]
    Utf8,
    #[error("decrypted req_info is not a <root> document: {0}")]
    Xml(#[from] wxpay::XmlError),
}

/// The AES-256 key: the lower-case, zero-padded hex MD5 of the API key, as 32 ASCII bytes.
fn aes_key(key: &ApiKey) -> [u8; 32] {
    let hex = hex::encode(Md5::digest(key.expose().as_bytes()));
    let mut out = [0u8; 32];
    out.copy_from_slice(&hex.as_bytes()[..32]);
    out
}

/// base64(AES-256-ECB(PKCS7, `<root>` XML of `fields`)).
pub fn encrypt_req_info<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    key: &ApiKey,
) -> Result<String, wxpay::XmlError> {
    let xml = wxpay::xml::encode_root("root", fields)?;
    let enc = ecb::Encryptor::<Aes256>::new(&aes_key(key).into())
        .encrypt_padded_vec::<Pkcs7>(xml.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(enc))
}

/// The inverse of [`encrypt_req_info`] (for tests and for anyone checking the sandbox).
pub fn decrypt_req_info(req_info: &str, key: &ApiKey) -> Result<wxpay::XmlMap, NotifyCryptoError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(req_info.trim())
        .map_err(|_| NotifyCryptoError::Base64)?;
    let plain = ecb::Decryptor::<Aes256>::new(&aes_key(key).into())
        .decrypt_padded_vec::<Pkcs7>(&bytes)
        .map_err(|_| NotifyCryptoError::Decrypt)?;
    let text = String::from_utf8(plain).map_err(|_| NotifyCryptoError::Utf8)?;
    Ok(wxpay::xml::decode_root(text.as_bytes(), "root")?)
}

/// Everything a push needs, captured at settle time.
pub struct Push {
    pub books: Books,
    pub client: reqwest::Client,
    pub out_refund_no: String,
    pub url: String,
    pub body: String,
    pub retry_factor: RetryFactor,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Attempts already made (by an earlier run of the sandbox); 0 for a fresh push.
    pub attempts_done: u32,
    /// How long to wait before the first attempt here (a resumed retry not yet due).
    pub first_wait: Duration,
    /// Which notification of the refund this is ([`crate::books::NotifyLog::round`]).
    pub round: u32,
}

/// Delivers one notification: first attempt after `first_wait` (normally now), then the rest of
/// the retry schedule, until a SUCCESS reply. Each attempt is saved in the books.
pub async fn deliver(mut p: Push) {
    // After n failed attempts the next failure waits RETRY_SCHEDULE[n].
    let mut delays = RETRY_SCHEDULE
        .iter()
        .skip(usize::try_from(p.attempts_done).unwrap_or(usize::MAX));
    let mut wait = p.first_wait;
    loop {
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = p.shutdown.changed() => return,
            }
        }
        // A later final status (a resolved CHANGE) has its own notification; this one is void.
        if !p.books.read().notify_round_is(&p.out_refund_no, p.round) {
            return;
        }
        let result = attempt(&p.client, &p.url, &p.body).await;
        let next = if result.is_ok() {
            None
        } else {
            delays.next().map(|&d| p.retry_factor.apply(d))
        };
        let next_at = next.map(|d| {
            let now = time::OffsetDateTime::now_utc();
            now.checked_add(time::Duration::try_from(d).unwrap_or(time::Duration::ZERO))
                .unwrap_or(now)
        });
        let (no, round) = (p.out_refund_no.clone(), p.round);
        let current = p
            .books
            .update(|st| st.record_notify_attempt(&no, round, result, next_at));
        let Some(d) = next.filter(|_| current) else {
            return;
        };
        wait = d;
    }
}

async fn attempt(client: &reqwest::Client, url: &str, body: &str) -> Result<(), String> {
    let resp = client
        .post(url)
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| format!("read: {e}"))?;
    // Only the SUCCESS XML counts (docs/PROTOCOL.md "Refund notification"); a bare 200 does not.
    match wxpay::xml::decode(&bytes) {
        Ok(m) if m.get("return_code") == Some("SUCCESS") => Ok(()),
        Ok(m) => Err(format!(
            "HTTP {status}: return_code={:?}",
            m.get("return_code").unwrap_or("")
        )),
        Err(e) => Err(format!("HTTP {status}: reply is not the SUCCESS XML ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn req_info_round_trips_and_uses_zero_padded_hex_key() {
        // GIVEN a key whose MD5 hex starts with 0 (catches the BigInteger.toString(16) bug)
        let mut candidate = None;
        for i in 0..100_000u32 {
            let k = format!("{:0>32}", i);
            if hex::encode(Md5::digest(k.as_bytes())).starts_with('0') {
                candidate = Some(k);
                break;
            }
        }
        let key = ApiKey::new(candidate.unwrap()).unwrap();
        assert_eq!(aes_key(&key)[0], b'0');
        // WHEN fields are encrypted and decrypted
        let enc =
            encrypt_req_info([("refund_status", "SUCCESS"), ("refund_fee", "0")], &key).unwrap();
        let map = decrypt_req_info(&enc, &key).unwrap();
        // THEN they come back, and another key does not decrypt them
        assert_eq!(map.get("refund_status"), Some("SUCCESS"));
        assert_eq!(map.get("refund_fee"), Some("0"));
        let other = ApiKey::new("a".repeat(32)).unwrap();
        assert!(decrypt_req_info(&enc, &other).is_err());
        assert_eq!(decrypt_req_info("!!", &key), Err(NotifyCryptoError::Base64));
    }
}
