//! Merchant identity loading: both PKCS#12 encodings, PEM pairs, and every known way a user gets
//! the certificate wrong (fixtures: tests/fixtures, made by make-fixtures.sh).

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::ExposeSecret;
use wxpay::cert::{CertError, MerchantIdentity};

const MCH_ID: &str = "1900000109";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn b64(name: &str) -> String {
    B64.encode(fixture(name))
}

/// 2030-01-01: inside the validity of the "valid" fixtures, after the expired one.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

fn year(y: u64) -> SystemTime {
    // Close enough for validity checks far from the boundaries.
    UNIX_EPOCH + Duration::from_secs((y - 1970) * 365 * 86_400 + 86_400 * 30)
}

#[test]
fn legacy_rc2_3des_p12_loads_with_mch_id_as_default_password() {
    // GIVEN the p12 as WeChat ships it (RC2-40 certs, 3DES key, SHA-1 MAC), base64 as in the secret
    let p12 = b64("merchant-legacy.p12");
    // WHEN it is loaded without a password override
    let id = MerchantIdentity::from_p12_base64(&p12, None, MCH_ID, now()).expect("legacy p12");
    // THEN the certificate facts are read and the PEM pair is exposed for rustls
    let info = id.info();
    assert_eq!(info.subject_cn.as_deref(), Some(MCH_ID));
    assert_eq!(info.serial_hex, "4D2A11");
    assert!(info.cn_matches_mch_id);
    assert!(info.not_before_unix < info.not_after_unix);
    assert!(id.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(
        id.key_pem()
            .expose_secret()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
    assert!(
        id.identity_pem()
            .expose_secret()
            .contains("-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----")
    );
    assert!(id.reqwest_identity().is_ok());
}

#[test]
fn line_wrapped_base64_is_accepted() {
    // GIVEN the base64 wrapped at 76 columns, as `base64` prints it
    let flat = String::from_utf8(fixture("merchant-legacy.p12.b64")).expect("ascii");
    let wrapped: String = flat
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
        .collect();
    // WHEN it is loaded
    let id = MerchantIdentity::from_p12_base64(&wrapped, None, MCH_ID, now());
    // THEN the whitespace is ignored
    assert_eq!(id.expect("wrapped base64").info().serial_hex, "4D2A11");
}

#[test]
fn modern_aes_pbkdf2_p12_loads() {
    // GIVEN OpenSSL 3's default export (AES-256-CBC, PBKDF2, SHA-256 MAC)
    let p12 = b64("merchant-aes.p12");
    // WHEN loaded
    let id = MerchantIdentity::from_p12_base64(&p12, None, MCH_ID, now()).expect("aes p12");
    // THEN it is the same certificate as the legacy file
    assert_eq!(id.info().serial_hex, "4D2A11");
    assert_eq!(id.info().subject_cn.as_deref(), Some(MCH_ID));
}

#[test]
fn p12_from_raw_der_and_legacy_and_aes_give_the_same_identity() {
    // GIVEN the raw bytes of both encodings
    let legacy =
        MerchantIdentity::from_p12_der(&fixture("merchant-legacy.p12"), None, MCH_ID, now())
            .expect("legacy");
    let aes = MerchantIdentity::from_p12_der(&fixture("merchant-aes.p12"), None, MCH_ID, now())
        .expect("aes");
    // THEN cert and key are identical
    assert_eq!(legacy.cert_pem(), aes.cert_pem());
    assert_eq!(
        legacy.key_pem().expose_secret(),
        aes.key_pem().expose_secret()
    );
}

#[test]
fn password_override_is_used() {
    // GIVEN a p12 whose password is not the mch_id
    let p12 = b64("merchant-custom-password.p12");
    // WHEN loaded with the override
    let ok = MerchantIdentity::from_p12_base64(&p12, Some("not-the-mch-id"), MCH_ID, now());
    // THEN it loads; and without it, the MAC check fails
    assert!(ok.is_ok());
    let err = MerchantIdentity::from_p12_base64(&p12, None, MCH_ID, now()).unwrap_err();
    assert_eq!(err, CertError::WrongPassword);
}

#[test]
fn wrong_password_is_reported_as_mac_failure() {
    // GIVEN the legacy p12 and a wrong password
    let p12 = b64("merchant-legacy.p12");
    // WHEN loaded
    let err = MerchantIdentity::from_p12_base64(&p12, Some("123"), MCH_ID, now()).unwrap_err();
    // THEN the message names the MAC failure and the default password
    assert_eq!(err, CertError::WrongPassword);
    assert_eq!(
        err.to_string(),
        "PKCS#12 MAC check failed: wrong password (WeChat's default password is the mch_id; set \
         cert_p12_password if yours differs)"
    );
}

#[test]
fn not_base64_is_reported() {
    // GIVEN binary read as text (invalid base64)
    let err =
        MerchantIdentity::from_p12_base64("0\u{fffd}\u{3}\u{fffd}garbage!", None, MCH_ID, now())
            .unwrap_err();
    // THEN
    assert_eq!(err, CertError::NotBase64);
    assert!(
        err.to_string()
            .starts_with("cert_p12_base64 is not valid base64")
    );
}

#[test]
fn pem_where_p12_expected_is_reported_raw_or_base64() {
    // GIVEN the PEM certificate put in cert_p12_base64, as text and as base64 of the text
    let pem = String::from_utf8(fixture("merchant.pem")).expect("pem");
    let err = MerchantIdentity::from_p12_base64(&pem, None, MCH_ID, now()).unwrap_err();
    let err2 =
        MerchantIdentity::from_p12_base64(&B64.encode(&pem), None, MCH_ID, now()).unwrap_err();
    // THEN both say to use cert_pem + key_pem
    assert_eq!(err, CertError::PemWhereP12Expected);
    assert_eq!(err2, CertError::PemWhereP12Expected);
    assert!(err.to_string().contains("holds a PEM file, not a PKCS#12"));
    assert!(err.to_string().contains("cert_pem"));
}

#[test]
fn garbage_that_is_valid_base64_is_not_a_p12() {
    // GIVEN valid base64 of something that is no PKCS#12
    let err = MerchantIdentity::from_p12_base64(&B64.encode("hello world"), None, MCH_ID, now())
        .unwrap_err();
    // THEN
    assert!(matches!(err, CertError::NotP12(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cert_p12_base64 is not a PKCS#12 file")
    );
    // AND a DER SEQUENCE that is no PKCS#12 (the bare certificate) is caught by the parser
    let cert_der = B64.encode(rustls_pki_types_der(&fixture("merchant.pem")));
    let err = MerchantIdentity::from_p12_base64(&cert_der, None, MCH_ID, now()).unwrap_err();
    assert!(matches!(err, CertError::NotP12(_)), "{err:?}");
}

/// DER of the first PEM block (decoded by hand to keep the test independent of the module).
fn rustls_pki_types_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(pem.to_vec()).expect("pem");
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    B64.decode(body).expect("pem body")
}

#[test]
fn p12_where_pem_expected_is_reported() {
    // GIVEN the base64 p12 (and the raw p12) in cert_pem
    let key = fixture("merchant.key");
    let err =
        MerchantIdentity::from_pem(b64("merchant-legacy.p12").as_bytes(), &key, MCH_ID, now())
            .unwrap_err();
    let err_raw = MerchantIdentity::from_pem(&fixture("merchant-legacy.p12"), &key, MCH_ID, now())
        .unwrap_err();
    // THEN
    assert_eq!(err, CertError::P12WherePemExpected { field: "cert_pem" });
    assert_eq!(
        err_raw,
        CertError::P12WherePemExpected { field: "cert_pem" }
    );
    assert_eq!(
        err.to_string(),
        "cert_pem holds a PKCS#12 file, not PEM: use cert_p12_base64 (+ cert_p12_password) for \
         apiclient_cert.p12"
    );
    // AND in key_pem
    let err = MerchantIdentity::from_pem(
        &fixture("merchant.pem"),
        b64("merchant-legacy.p12").as_bytes(),
        MCH_ID,
        now(),
    )
    .unwrap_err();
    assert_eq!(err, CertError::P12WherePemExpected { field: "key_pem" });
}

#[test]
fn pem_pair_loads_pkcs8_and_pkcs1() {
    // GIVEN apiclient_cert.pem with the key as PKCS#8 and as PKCS#1
    let cert = fixture("merchant.pem");
    // WHEN loaded
    let p8 =
        MerchantIdentity::from_pem(&cert, &fixture("merchant.key"), MCH_ID, now()).expect("pkcs8");
    let p1 = MerchantIdentity::from_pem(&cert, &fixture("merchant-pkcs1.key"), MCH_ID, now())
        .expect("pkcs1");
    // THEN both give the certificate, and keep the key's encoding
    assert_eq!(p8.info().serial_hex, "4D2A11");
    assert_eq!(p8.cert_pem(), p1.cert_pem());
    assert!(
        p1.key_pem()
            .expose_secret()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    assert!(p1.reqwest_identity().is_ok());
}

#[test]
fn swapped_cert_and_key_are_reported() {
    // GIVEN key in cert_pem and cert in key_pem
    let err = MerchantIdentity::from_pem(
        &fixture("merchant.key"),
        &fixture("merchant.pem"),
        MCH_ID,
        now(),
    )
    .unwrap_err();
    // THEN
    assert_eq!(err, CertError::Swapped);
    assert_eq!(
        err.to_string(),
        "cert_pem holds a private key and key_pem a certificate: the two fields are swapped"
    );
}

#[test]
fn non_pem_text_is_reported() {
    // GIVEN plain text in cert_pem, and the cert twice (no key) in key_pem
    let err =
        MerchantIdentity::from_pem(b"hello", &fixture("merchant.key"), MCH_ID, now()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cert_pem holds no PEM block (expected -----BEGIN CERTIFICATE-----)"
    );
    let err = MerchantIdentity::from_pem(
        &fixture("merchant.pem"),
        &fixture("merchant.pem"),
        MCH_ID,
        now(),
    )
    .unwrap_err();
    // THEN
    assert_eq!(err, CertError::NoPrivateKey("key_pem"));
    assert_eq!(err.to_string(), "key_pem holds no private key");
}

#[test]
fn key_of_another_certificate_is_reported() {
    // GIVEN the merchant certificate with an unrelated RSA key
    let err = MerchantIdentity::from_pem(
        &fixture("merchant.pem"),
        &fixture("other.key"),
        MCH_ID,
        now(),
    )
    .unwrap_err();
    // THEN the public keys are compared and differ
    assert_eq!(err, CertError::KeyMismatch);
    assert!(
        err.to_string()
            .starts_with("the private key does not match the certificate")
    );
}

#[test]
fn expired_certificate_is_reported_from_pem_and_p12() {
    // GIVEN a certificate valid 2020-01-01 .. 2021-01-01
    let from_pem = MerchantIdentity::from_pem(
        &fixture("expired.pem"),
        &fixture("merchant.key"),
        MCH_ID,
        now(),
    )
    .unwrap_err();
    let from_p12 =
        MerchantIdentity::from_p12_der(&fixture("expired-legacy.p12"), None, MCH_ID, now())
            .unwrap_err();
    // THEN both report expiry with the serial and the date
    for err in [from_pem, from_p12] {
        assert!(matches!(err, CertError::Expired { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("expired on Jan  1 00:00:00 2021"), "{msg}");
        assert!(msg.contains("download a new one"), "{msg}");
    }
}

#[test]
fn expiry_and_not_yet_valid_use_the_given_clock() {
    // GIVEN the valid certificate and clocks before and after its validity
    let p12 = fixture("merchant-legacy.p12");
    // WHEN loaded in 1999 and in 2200
    let early = MerchantIdentity::from_p12_der(&p12, None, MCH_ID, year(1999)).unwrap_err();
    let late = MerchantIdentity::from_p12_der(&p12, None, MCH_ID, year(2200)).unwrap_err();
    // THEN
    assert!(matches!(early, CertError::NotYetValid { .. }), "{early:?}");
    assert!(
        early
            .to_string()
            .contains("serial 4D2A11) is not valid before")
    );
    assert!(matches!(late, CertError::Expired { .. }), "{late:?}");
    // AND the remaining lifetime is reported for alarms
    let id = MerchantIdentity::from_p12_der(&p12, None, MCH_ID, now()).expect("valid");
    assert!(id.expires_in_secs(now()) > 86_400 * 365 * 30);
}

#[test]
fn p12_without_key_or_without_certificate_is_reported() {
    // GIVEN a certificate-only and a key-only PKCS#12
    let nokey = MerchantIdentity::from_p12_der(&fixture("merchant-nokey.p12"), None, MCH_ID, now())
        .unwrap_err();
    let nocert =
        MerchantIdentity::from_p12_der(&fixture("merchant-nocert.p12"), None, MCH_ID, now())
            .unwrap_err();
    // THEN
    assert_eq!(nokey.to_string(), "the PKCS#12 holds no private key");
    assert_eq!(nocert.to_string(), "the PKCS#12 holds no certificate");
}

#[test]
fn cn_other_than_mch_id_only_warns() {
    // GIVEN the certificate of merchant 1900000109 loaded for another mch_id
    let id = MerchantIdentity::from_p12_der(
        &fixture("merchant-legacy.p12"),
        Some(MCH_ID),
        "1900000999",
        now(),
    )
    .expect("a CN mismatch is not fatal");
    // THEN the mismatch is recorded
    assert!(!id.info().cn_matches_mch_id);
}

#[test]
fn nothing_secret_is_printed() {
    // GIVEN a loaded identity and every error variant
    let id = MerchantIdentity::from_p12_der(&fixture("merchant-legacy.p12"), None, MCH_ID, now())
        .expect("valid");
    let key_pem = id.key_pem().expose_secret().to_owned();
    let key_line = key_pem.lines().nth(1).expect("key body").to_owned();
    let cert_line = id.cert_pem().lines().nth(1).expect("cert body").to_owned();
    let errors = vec![
        CertError::NotBase64,
        CertError::PemWhereP12Expected,
        MerchantIdentity::from_p12_base64(&B64.encode("x"), None, MCH_ID, now()).unwrap_err(),
        CertError::WrongPassword,
        CertError::P12WherePemExpected { field: "cert_pem" },
        CertError::Swapped,
        CertError::KeyMismatch,
        MerchantIdentity::from_pem(
            &fixture("expired.pem"),
            &fixture("merchant.key"),
            MCH_ID,
            now(),
        )
        .unwrap_err(),
        MerchantIdentity::from_p12_der(&fixture("merchant-legacy.p12"), None, MCH_ID, year(1999))
            .unwrap_err(),
        MerchantIdentity::from_p12_base64(
            &b64("merchant-custom-password.p12"),
            None,
            MCH_ID,
            now(),
        )
        .unwrap_err(),
    ];
    // WHEN formatted with {:?} and {}
    let mut printed = vec![format!("{id:?}"), format!("{:?}", id.info())];
    for e in &errors {
        printed.push(format!("{e:?}"));
        printed.push(format!("{e}"));
    }
    // THEN no key, certificate or password material appears
    for text in printed {
        for secret in [
            key_line.as_str(),
            cert_line.as_str(),
            "PRIVATE KEY",
            "not-the-mch-id",
        ] {
            assert!(!text.contains(secret), "{text:?} contains {secret:?}");
        }
    }
    assert!(format!("{id:?}").contains("[REDACTED]"));
}
