//! State-dir files (p12 legacy encryption, PEM pair, merchant.json), CA reuse across restarts, and
//! the client-certificate rules of `/secapi/`.

use base64::Engine as _;
use wxpay::SignType;
use wxpay_sandbox::{MerchantJson, Sandbox};

use crate::common::*;

#[tokio::test]
async fn writes_wechat_like_files_and_reuses_the_ca() {
    // GIVEN a fresh state dir WHEN the sandbox starts
    let cfg = config("files");
    let sb = Sandbox::start(cfg.clone()).await.unwrap();
    let f = sb.files().clone();
    for p in [
        &f.ca_pem,
        &f.client_p12,
        &f.client_cert_pem,
        &f.client_key_pem,
        &f.merchant_json,
    ] {
        assert!(p.exists(), "{} written", p.display());
    }
    // THEN merchant.json is the secret JSON, its p12 is the file on disk
    let m: MerchantJson =
        serde_json::from_slice(&std::fs::read(&f.merchant_json).unwrap()).unwrap();
    assert_eq!(m.mch_id, "1900000109");
    assert_eq!(m.appid, "wx2421b1c4370ec43b");
    assert_eq!(m.api_v2_key.len(), 32);
    assert_eq!(m.cert_p12_password, m.mch_id);
    assert_eq!(m.sign_type, "MD5");
    let p12 = std::fs::read(&f.client_p12).unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&m.cert_p12_base64)
            .unwrap(),
        p12
    );
    // AND the p12 opens with password = mch_id, holding a key and a certificate with CN = mch_id
    let ks = p12_keystore::KeyStore::from_pkcs12(
        &p12,
        &m.mch_id,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .expect("p12 opens with mch_id");
    let (_, chain) = ks.private_key_chain().expect("a key with its chain");
    let leaf = chain.certs().first().expect("leaf certificate");
    assert!(leaf.subject().contains("1900000109"), "{}", leaf.subject());
    assert!(
        p12_keystore::KeyStore::from_pkcs12(&p12, "wrong", Default::default()).is_err(),
        "wrong password fails (MAC)"
    );
    // AND the key and certificate taken out of the p12 authenticate a real refund
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    let ident = format!(
        "{}{}",
        pem("CERTIFICATE", leaf.as_der()),
        pem("PRIVATE KEY", chain.key().as_der())
    );
    let c = client_with(
        &sb,
        Some(reqwest::Identity::from_pem(ident.as_bytes()).unwrap()),
    );
    order(&sb, "order-p12", 100);
    let r = call(
        &sb,
        &c,
        "/secapi/pay/refund",
        SignType::Md5,
        apply_fields(&sb, "order-p12", "r-p12", 100, 1),
    )
    .await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");

    // WHEN restarted on the same dir THEN the CA is the same and the merchant cert is reused
    let ca_before = std::fs::read(&f.ca_pem).unwrap();
    let cert_before = std::fs::read(&f.client_cert_pem).unwrap();
    sb.stop().await;
    let sb2 = Sandbox::start(cfg).await.unwrap();
    assert_eq!(std::fs::read(&f.ca_pem).unwrap(), ca_before);
    assert_eq!(std::fs::read(&f.client_cert_pem).unwrap(), cert_before);
    order(&sb2, "order-restart", 100);
    let r = apply(&sb2, "order-restart", "r1", 100, 10).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
}

#[tokio::test]
async fn p12_uses_legacy_rc2_and_3des_per_openssl() {
    // GIVEN the openssl CLI (skipped when absent)
    let Ok(out) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        eprintln!("openssl not on PATH; skipping");
        return;
    };
    let v3 = String::from_utf8_lossy(&out.stdout).contains("OpenSSL 3");
    let sb = start("openssl").await;
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("pkcs12");
    if v3 {
        cmd.arg("-legacy");
    }
    // WHEN openssl dumps the file's structure
    let out = cmd
        .args(["-info", "-noout", "-passin"])
        .arg(format!("pass:{}", sb.merchant().mch_id))
        .arg("-in")
        .arg(&sb.files().client_p12)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // THEN certificates are RC2-40, the key 3DES, the MAC SHA-1
    assert!(out.status.success(), "{text}");
    assert!(text.contains("MAC: sha1"), "{text}");
    assert!(
        text.contains("PKCS7 Encrypted data: pbeWithSHA1And40BitRC2-CBC"),
        "{text}"
    );
    assert!(
        text.contains("Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC"),
        "{text}"
    );
    // AND without -legacy OpenSSL 3 refuses it, like it refuses WeChat's files
    if v3 {
        let out = std::process::Command::new("openssl")
            .args(["pkcs12", "-info", "-noout", "-passin"])
            .arg(format!("pass:{}", sb.merchant().mch_id))
            .arg("-in")
            .arg(&sb.files().client_p12)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}

#[tokio::test]
async fn apply_without_client_certificate_is_refused_by_the_front_end() {
    // GIVEN an order and a client without a certificate
    let sb = start("nocert").await;
    order(&sb, "order-nocert", 100);
    let body = signed_xml(
        &key(&sb),
        SignType::Md5,
        apply_fields(&sb, "order-nocert", "r1", 100, 10),
    );
    // WHEN it calls /secapi/pay/refund
    let (status, text) = post_raw(
        &anonymous(&sb),
        &format!("{}/secapi/pay/refund", sb.base_url()),
        body.clone(),
    )
    .await
    .unwrap();
    // THEN nginx-style 400 HTML, and nothing reached the books
    assert_eq!(status, 400);
    assert!(
        text.contains("No required SSL certificate was sent"),
        "{text}"
    );
    assert_eq!(sb.books().apply_calls("r1"), 0);
    assert_eq!(sb.books().order("order-nocert").unwrap().refund_count, 0);
    // AND the query endpoint works without one
    let q = query(&sb, &[("out_trade_no", "order-nocert")]).await;
    assert_biz_fail(&sb, &q, "REFUNDNOTEXIST");
    // AND the legacy sandbox path /sandboxnew/pay/refund never needed one
    let (status, text) = post_raw(
        &anonymous(&sb),
        &format!("{}/sandboxnew/pay/refund", sb.base_url()),
        body,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("<result_code><![CDATA[SUCCESS]]>"), "{text}");
}

#[tokio::test]
async fn certificate_of_another_merchant_or_ca_is_refused() {
    // GIVEN a sandbox for mch 1900000109 whose cert we keep
    let cfg = config("othermch");
    let sb = Sandbox::start(cfg.clone()).await.unwrap();
    let mut old_pem = std::fs::read(&sb.files().client_cert_pem).unwrap();
    old_pem.extend(std::fs::read(&sb.files().client_key_pem).unwrap());
    sb.stop().await;
    // WHEN the same CA now serves mch 1900000110 and the old cert (CN 1900000109) is presented
    let sb = Sandbox::start(wxpay_sandbox::SandboxConfig {
        mch_id: "1900000110".into(),
        ..cfg
    })
    .await
    .unwrap();
    order(&sb, "order-othermch", 100);
    let c = client_with(&sb, Some(reqwest::Identity::from_pem(&old_pem).unwrap()));
    let r = call(
        &sb,
        &c,
        "/secapi/pay/refund",
        SignType::Md5,
        apply_fields(&sb, "order-othermch", "r1", 100, 10),
    )
    .await;
    // THEN the request is refused and no refund is taken
    assert_return_fail(&r, "证书与商户号不匹配");
    assert_eq!(sb.books().order("order-othermch").unwrap().refund_count, 0);

    // AND a certificate from another CA fails the TLS handshake
    let other = start("otherca").await;
    let mut foreign = std::fs::read(&other.files().client_cert_pem).unwrap();
    foreign.extend(std::fs::read(&other.files().client_key_pem).unwrap());
    let c = client_with(&sb, Some(reqwest::Identity::from_pem(&foreign).unwrap()));
    let body = signed_xml(
        &key(&sb),
        SignType::Md5,
        apply_fields(&sb, "order-othermch", "r2", 100, 10),
    );
    let res = post_raw(&c, &format!("{}/secapi/pay/refund", sb.base_url()), body).await;
    assert!(res.is_err(), "untrusted client certificate: {res:?}");
    assert_eq!(sb.books().apply_calls("r2"), 0);
}
