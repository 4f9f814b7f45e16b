//! Merchant secret parsing and validation (local JSON file source), and redaction of every
//! config and error type.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use wxpay::SignType;
use wxrefund::secrets::{MerchantConfig, SecretSource, SecretsError};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const MCH_ID: &str = "1900000109";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../wxpay/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn text(name: &str) -> String {
    String::from_utf8(fixture(name)).expect("utf-8 fixture")
}

fn p12_json() -> serde_json::Value {
    serde_json::json!({
        "appid": "wx2421b1c4370ec43b",
        "mch_id": MCH_ID,
        "api_v2_key": KEY,
        "cert_p12_base64": B64.encode(fixture("merchant-legacy.p12")),
    })
}

fn parse(v: &serde_json::Value) -> Result<MerchantConfig, SecretsError> {
    MerchantConfig::from_json(&v.to_string(), SystemTime::now())
}

#[test]
fn p12_secret_loads_with_defaults() {
    // GIVEN the minimal secret with the legacy p12 and no password / sign type
    // WHEN parsed
    let cfg = parse(&p12_json()).expect("valid secret");
    // THEN defaults apply: MD5, password = mch_id
    assert_eq!(cfg.mch_id.as_str(), MCH_ID);
    assert_eq!(cfg.appid.as_str(), "wx2421b1c4370ec43b");
    assert_eq!(cfg.sign_type, SignType::Md5);
    assert_eq!(cfg.api_v2_key.expose(), KEY);
    assert_eq!(cfg.identity.info().serial_hex, "4D2A11");
    assert_eq!(cfg.notify_url, None);
    assert_eq!(cfg.merchant_keys().sign_type, SignType::Md5);
}

#[test]
fn pem_secret_with_hmac_and_notify_url_loads() {
    // GIVEN the PEM form, HMAC-SHA256 and a notify URL
    let v = serde_json::json!({
        "appid": "wx2421b1c4370ec43b",
        "mch_id": MCH_ID,
        "api_v2_key": KEY,
        "cert_pem": text("merchant.pem"),
        "key_pem": text("merchant.key"),
        "sign_type": "HMAC-SHA256",
        "notify_url": "https://example.com/wxpay/refund-notify",
    });
    // WHEN parsed
    let cfg = parse(&v).expect("valid secret");
    // THEN
    assert_eq!(cfg.sign_type, SignType::HmacSha256);
    assert_eq!(
        cfg.notify_url.as_deref(),
        Some("https://example.com/wxpay/refund-notify")
    );
}

#[test]
fn password_override_is_honoured() {
    // GIVEN a p12 whose password is not the mch_id
    let mut v = p12_json();
    v["cert_p12_base64"] = B64.encode(fixture("merchant-custom-password.p12")).into();
    // WHEN parsed without, then with, the password
    let without = parse(&v).unwrap_err();
    v["cert_p12_password"] = "not-the-mch-id".into();
    // THEN
    assert!(without.to_string().contains("wrong password"), "{without}");
    assert!(parse(&v).is_ok());
}

#[test]
fn invalid_secrets_are_rejected_with_specific_messages() {
    // GIVEN a series of broken secrets
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            {
                let mut v = p12_json();
                v["api_v2_key"] = "short".into();
                v
            },
            "api_v2_key must be exactly 32 characters, got 5 (is this the APIv3 key?)",
        ),
        (
            {
                let mut v = p12_json();
                v["sign_type"] = "HMAC_SHA256".into();
                v
            },
            "invalid sign_type: unknown sign_type \"HMAC_SHA256\" (expected MD5 or HMAC-SHA256)",
        ),
        (
            {
                let mut v = p12_json();
                v.as_object_mut().map(|o| o.remove("cert_p12_base64"));
                v
            },
            "the secret must hold cert_p12_base64, or cert_pem and key_pem (none is set)",
        ),
        (
            {
                let mut v = p12_json();
                v["cert_pem"] = text("merchant.pem").into();
                v
            },
            "the secret must hold cert_p12_base64, or cert_pem and key_pem (set either \
             cert_p12_base64 or cert_pem + key_pem, not both)",
        ),
        (
            {
                let mut v = p12_json();
                v.as_object_mut().map(|o| o.remove("cert_p12_base64"));
                v["cert_pem"] = text("merchant.pem").into();
                v
            },
            "the secret must hold cert_p12_base64, or cert_pem and key_pem (cert_pem and key_pem \
             go together)",
        ),
        (
            {
                let mut v = p12_json();
                v["cert_p12_base64"] = "%%%".into();
                v
            },
            "cert_p12_base64 is not valid base64",
        ),
        (
            {
                let mut v = p12_json();
                v.as_object_mut().map(|o| o.remove("mch_id"));
                v
            },
            "the secret is not valid JSON of the expected shape: missing field `mch_id` at line 1",
        ),
        (
            {
                let mut v = p12_json();
                v["api_v2_key"] = 12345678.into();
                v
            },
            "the secret is not valid JSON of the expected shape: data error at line 1",
        ),
    ];
    for (v, expected) in cases {
        // WHEN parsed
        let err = parse(&v).unwrap_err();
        // THEN the message starts with the expected text
        assert!(err.to_string().starts_with(expected), "{err} != {expected}");
    }
    // AND a number in place of the key is not echoed
    let mut v = p12_json();
    v["api_v2_key"] = 12345678.into();
    assert!(!parse(&v).unwrap_err().to_string().contains("12345678"));
}

#[test]
fn expired_and_mismatched_certificates_are_rejected() {
    // GIVEN PEM secrets with an expired certificate and with another key
    let mut v = serde_json::json!({
        "appid": "wx2421b1c4370ec43b", "mch_id": MCH_ID, "api_v2_key": KEY,
        "cert_pem": text("expired.pem"), "key_pem": text("merchant.key"),
    });
    let expired = parse(&v).unwrap_err();
    v["cert_pem"] = text("merchant.pem").into();
    v["key_pem"] = text("other.key").into();
    let mismatch = parse(&v).unwrap_err();
    // THEN
    assert!(expired.to_string().contains("expired on"), "{expired}");
    assert!(
        mismatch
            .to_string()
            .starts_with("the private key does not match the certificate")
    );
}

#[tokio::test]
async fn file_source_loads_and_reloads_a_rotated_key() {
    // GIVEN a secret file
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secret.json");
    std::fs::write(&path, p12_json().to_string()).expect("write");
    let source = SecretSource::file(&path);
    let first = source.load().await.expect("load");
    // WHEN the key is rotated in the file and the source reloaded
    let mut v = p12_json();
    v["api_v2_key"] = "abcdefghijklmnopqrstuvwxyz012345".into();
    std::fs::write(&path, v.to_string()).expect("write");
    let second = source.reload().await.expect("reload");
    // THEN the new key is seen
    assert_eq!(first.api_v2_key.expose(), KEY);
    assert_eq!(
        second.api_v2_key.expose(),
        "abcdefghijklmnopqrstuvwxyz012345"
    );
    // AND a missing file is reported with its path
    let err = SecretSource::file(dir.path().join("nope.json"))
        .load()
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("cannot read the secret file"),
        "{err}"
    );
}

#[test]
fn nothing_secret_is_printed() {
    // GIVEN a loaded config (both forms) and every error type
    let pem_cfg = parse(&serde_json::json!({
        "appid": "wx2421b1c4370ec43b", "mch_id": MCH_ID, "api_v2_key": KEY,
        "cert_pem": text("merchant.pem"), "key_pem": text("merchant.key"),
    }))
    .expect("pem");
    let p12_cfg = parse(&p12_json()).expect("p12");
    let mut pw = p12_json();
    pw["cert_p12_base64"] = B64.encode(fixture("merchant-custom-password.p12")).into();
    pw["cert_p12_password"] = "wrong-password-xyz".into();
    let errors = vec![
        parse(&pw).unwrap_err(),
        parse(&{
            let mut v = p12_json();
            v["api_v2_key"] = "x".repeat(31).into();
            v
        })
        .unwrap_err(),
        parse(&{
            let mut v = p12_json();
            v["api_v2_key"] = format!("{KEY}!").into();
            v
        })
        .unwrap_err(),
        parse(&{
            let mut v = p12_json();
            v["api_v2_key"] = serde_json::json!([KEY]);
            v
        })
        .unwrap_err(),
        SecretsError::SelfTest,
        SecretsError::NoSource,
    ];
    let key_line = text("merchant.key")
        .lines()
        .nth(1)
        .expect("key line")
        .to_owned();
    let cert_line = text("merchant.pem")
        .lines()
        .nth(1)
        .expect("cert line")
        .to_owned();
    let p12_b64 = B64.encode(fixture("merchant-legacy.p12"));
    // WHEN formatted with {:?} and {}
    let mut printed = vec![
        format!("{pem_cfg:?}"),
        format!("{pem_cfg}"),
        format!("{p12_cfg:?}"),
        format!("{p12_cfg}"),
        format!("{:?}", SecretSource::file("/x")),
    ];
    for e in &errors {
        printed.push(format!("{e:?}"));
        printed.push(format!("{e}"));
    }
    // THEN no key, certificate, p12 or password material appears
    for t in &printed {
        for secret in [
            KEY,
            key_line.as_str(),
            cert_line.as_str(),
            &p12_b64[..40],
            "wrong-password-xyz",
            "PRIVATE KEY",
        ] {
            assert!(!t.contains(secret), "{t:?} contains {secret:?}");
        }
    }
    assert!(printed[0].contains("[REDACTED]"));
    assert!(printed[1].contains("merchant 1900000109"));
}
