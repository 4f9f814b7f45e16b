//! The sandbox's PKI: a CA, a server certificate for 127.0.0.1/localhost and the merchant's client
//! certificate (CN = mch_id, RSA 2048 like WeChat's), written to the state dir in the forms WeChat
//! hands out (`apiclient_cert.p12` with legacy encryption, PEM pair) plus `merchant.json`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::Serialize;
use thiserror::Error;

use crate::p12;

#[derive(Debug, Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("writing or reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PKCS#12: {0}")]
    P12(String),
    #[error("merchant.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Where the sandbox's files live.
#[derive(Clone, Debug)]
pub struct StateFiles {
    pub dir: PathBuf,
    /// The CA that issued the server and client certificates: trust it in clients.
    pub ca_pem: PathBuf,
    /// The CA's private key (kept so restarts reuse the same CA).
    pub ca_key_pem: PathBuf,
    /// The merchant's client certificate as WeChat ships it (password = mch_id).
    pub client_p12: PathBuf,
    pub client_cert_pem: PathBuf,
    pub client_key_pem: PathBuf,
    /// The merchant secret JSON (docs/DEPLOY.md, "The merchant secret").
    pub merchant_json: PathBuf,
    /// The books (orders, refunds, faults, notification state), when persistence is on.
    pub books_json: PathBuf,
}

impl StateFiles {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ca_pem: dir.join("ca.pem"),
            ca_key_pem: dir.join("ca_key.pem"),
            client_p12: dir.join("apiclient_cert.p12"),
            client_cert_pem: dir.join("apiclient_cert.pem"),
            client_key_pem: dir.join("apiclient_key.pem"),
            merchant_json: dir.join("merchant.json"),
            books_json: dir.join(crate::persist::BOOKS_FILE),
        }
    }
}

/// The secret JSON, exactly the shape the service loads from Secrets Manager.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MerchantJson {
    pub appid: String,
    pub mch_id: String,
    pub api_v2_key: String,
    pub cert_p12_base64: String,
    pub cert_p12_password: String,
    pub sign_type: String,
}

/// Everything the TLS layer needs, in DER.
pub struct Pki {
    pub ca_der: Vec<u8>,
    pub server_chain: Vec<Vec<u8>>,
    pub server_key_der: Vec<u8>,
    pub merchant: MerchantJson,
}

fn read(path: &Path) -> Result<Option<String>, CertError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CertError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    std::fs::write(path, bytes).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "wxpay-sandbox CA");
    dn.push(DnType::OrganizationName, "wxpay-sandbox");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    params
}

fn leaf_dates(params: &mut CertificateParams) {
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(825);
}

/// The CN of a PEM certificate, if it parses.
fn pem_cn(pem: &str) -> Option<String> {
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())?;
    crate::x509::common_name(&der)
}

/// Loads the PKI from `files` (reusing the CA and the merchant certificate when present and
/// matching `mch_id`), generating what is missing, and writes every file.
pub fn load_or_create(
    files: &StateFiles,
    mch_id: &str,
    appid: &str,
    api_key: &str,
) -> Result<Pki, CertError> {
    std::fs::create_dir_all(&files.dir).map_err(|source| CertError::Io {
        path: files.dir.clone(),
        source,
    })?;

    // The CA survives restarts so clients configured with ca.pem keep working.
    let (ca_pem, ca_key) = match (read(&files.ca_pem)?, read(&files.ca_key_pem)?) {
        (Some(cert), Some(key)) => match KeyPair::from_pem(&key) {
            Ok(kp) if Issuer::from_ca_cert_pem(&cert, &kp).is_ok() => (cert, kp),
            _ => new_ca(files)?,
        },
        _ => new_ca(files)?,
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
    let ca_der: Vec<u8> = rustls_pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .map_err(|e| CertError::P12(format!("ca.pem: {e}")))?;

    // The server certificate is cheap and regenerated on every start.
    let server_key = KeyPair::generate()?;
    let mut sp = CertificateParams::new(vec!["localhost".to_string()])?;
    sp.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    sp.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from(
            std::net::Ipv6Addr::LOCALHOST,
        )));
    sp.distinguished_name
        .push(DnType::CommonName, "api.mch.weixin.qq.com (sandbox)");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_dates(&mut sp);
    let server_cert = sp.signed_by(&server_key, &issuer)?;

    // The merchant certificate is reused when it belongs to this mch_id and this CA.
    let existing = match (read(&files.client_cert_pem)?, read(&files.client_key_pem)?) {
        (Some(cert), Some(key))
            if pem_cn(&cert).as_deref() == Some(mch_id) && KeyPair::from_pem(&key).is_ok() =>
        {
            let issued_by_ca = rustls_pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
                .ok()
                .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
                .is_some_and(|der| crate::x509::issued_by(&der, &ca_der));
            issued_by_ca.then_some((cert, key))
        }
        _ => None,
    };
    let (client_cert_pem, client_key_pem) = match existing {
        Some(pair) => pair,
        None => {
            // WeChat issues RSA 2048 keys; keep that so clients meet the same key type.
            let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
            let mut cp = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, mch_id);
            dn.push(DnType::OrganizationName, "wxpay-sandbox merchant");
            dn.push(DnType::OrganizationalUnitName, "Tenpay.com CA Center");
            dn.push(DnType::CountryName, "CN");
            cp.distinguished_name = dn;
            cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            cp.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            leaf_dates(&mut cp);
            let cert = cp.signed_by(&key, &issuer)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    write(&files.client_cert_pem, client_cert_pem.as_bytes())?;
    write(&files.client_key_pem, client_key_pem.as_bytes())?;

    let client_cert_der: Vec<u8> =
        rustls_pki_types::pem::PemObject::from_pem_slice(client_cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .map_err(|e| CertError::P12(format!("apiclient_cert.pem: {e}")))?;
    let client_key_der: Vec<u8> =
        rustls_pki_types::pem::PemObject::from_pem_slice(client_key_pem.as_bytes())
            .map(|k: rustls_pki_types::PrivatePkcs8KeyDer<'static>| k.secret_pkcs8_der().to_vec())
            .map_err(|e| CertError::P12(format!("apiclient_key.pem: {e}")))?;
    let p12 = p12::write_legacy(&client_cert_der, &client_key_der, &[&ca_der], mch_id)
        .map_err(|e| CertError::P12(e.to_string()))?;
    write(&files.client_p12, &p12)?;

    let merchant = MerchantJson {
        appid: appid.to_string(),
        mch_id: mch_id.to_string(),
        api_v2_key: api_key.to_string(),
        cert_p12_base64: base64::engine::general_purpose::STANDARD.encode(&p12),
        cert_p12_password: mch_id.to_string(),
        sign_type: "MD5".to_string(),
    };
    write(
        &files.merchant_json,
        serde_json::to_string_pretty(&merchant)?.as_bytes(),
    )?;

    Ok(Pki {
        ca_der,
        server_chain: vec![server_cert.der().to_vec()],
        server_key_der: server_key.serialize_der(),
        merchant,
    })
}

fn new_ca(files: &StateFiles) -> Result<(String, KeyPair), CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    let pem = cert.pem();
    write(&files.ca_pem, pem.as_bytes())?;
    write(&files.ca_key_pem, key.serialize_pem().as_bytes())?;
    // A new CA invalidates any merchant certificate issued by the old one.
    let _ = std::fs::remove_file(&files.client_cert_pem);
    Ok((pem, key))
}
