//! The merchant's client identity (`apiclient_cert`): loaded from WeChat's PKCS#12 — legacy
//! RC2-40/3DES, which OpenSSL 3 refuses, or modern AES/PBKDF2 — in pure Rust, or from a PEM
//! cert + key pair; validated once at cold start and handed to rustls as PEM.
//!
//! Every failure users are known to hit (docs/PROTOCOL.md, "Merchant certificate" and "Known traps") has its
//! own error variant with a message that says what to do. No error or Debug output ever contains
//! key material, the certificate itself or the password.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p12_keystore::Pkcs12Archive;
use p12_keystore::error::Error as P12Error;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

/// Why a merchant identity could not be loaded. Messages name the offending field and the usual
/// cause; none contains secret material.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CertError {
    #[error(
        "cert_p12_base64 is not valid base64 (was the .p12 file read as text, or pasted truncated?)"
    )]
    NotBase64,
    #[error(
        "cert_p12_base64 holds a PEM file, not a PKCS#12: put apiclient_cert.pem in cert_pem and \
         apiclient_key.pem in key_pem instead"
    )]
    PemWhereP12Expected,
    #[error("cert_p12_base64 is not a PKCS#12 file (corrupt or another format): {0}")]
    NotP12(String),
    #[error(
        "PKCS#12 MAC check failed: wrong password (WeChat's default password is the mch_id; set \
         cert_p12_password if yours differs)"
    )]
    WrongPassword,
    #[error("PKCS#12 uses an unsupported algorithm: {0}")]
    UnsupportedP12(String),
    #[error(
        "{field} holds a PKCS#12 file, not PEM: use cert_p12_base64 (+ cert_p12_password) for \
         apiclient_cert.p12"
    )]
    P12WherePemExpected { field: &'static str },
    #[error("{field} holds no PEM block (expected -----BEGIN {expected}-----)")]
    NotPem {
        field: &'static str,
        expected: &'static str,
    },
    #[error("cert_pem holds a private key and key_pem a certificate: the two fields are swapped")]
    Swapped,
    #[error("{0} holds no certificate")]
    NoCertificate(&'static str),
    #[error("{0} holds no private key")]
    NoPrivateKey(&'static str),
    #[error("the certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("the private key cannot be used (expected an RSA or ECDSA key): {0}")]
    BadKey(String),
    #[error(
        "the private key does not match the certificate (their public keys differ): is \
         key_pem from another certificate?"
    )]
    KeyMismatch,
    #[error(
        "the merchant certificate (serial {serial}) expired on {not_after}: download a new one \
         from the merchant platform"
    )]
    Expired { serial: String, not_after: String },
    #[error(
        "the merchant certificate (serial {serial}) is not valid before {not_before} (check the \
         clock)"
    )]
    NotYetValid { serial: String, not_before: String },
    #[error("the identity cannot be handed to the TLS stack: {0}")]
    Tls(String),
}

/// Public facts about the certificate, safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name; WeChat puts the `mch_id` there.
    pub subject_cn: Option<String>,
    /// Full subject DN, as text.
    pub subject: String,
    /// Serial number, upper-case hex (the "证书序列号" shown on the merchant platform).
    pub serial_hex: String,
    pub not_before: String,
    pub not_after: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// Whether `subject_cn` equals the `mch_id` it was loaded for (false → a warning was logged).
    pub cn_matches_mch_id: bool,
}

/// The merchant's client certificate and key, validated (key matches certificate, certificate
/// currently valid). Debug shows only [`CertInfo`].
#[derive(Clone)]
pub struct MerchantIdentity {
    cert_pem: String,
    key_pem: SecretString,
    /// Certificate chain followed by the key: the form `reqwest::Identity::from_pem` takes.
    identity_pem: SecretString,
    info: CertInfo,
}

impl fmt::Debug for MerchantIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerchantIdentity")
            .field("info", &self.info)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl MerchantIdentity {
    /// From `cert_p12_base64` as stored in the secret. `password` defaults to `mch_id`, as for
    /// every WeChat-issued certificate. Whitespace in the base64 (line wrapping) is ignored.
    pub fn from_p12_base64(
        p12_base64: &str,
        password: Option<&str>,
        mch_id: &str,
        now: SystemTime,
    ) -> Result<Self, CertError> {
        let trimmed = p12_base64.trim_start();
        if trimmed.starts_with("-----BEGIN") {
            return Err(CertError::PemWhereP12Expected);
        }
        let compact: Vec<u8> = p12_base64
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let der = B64.decode(&compact).map_err(|_| CertError::NotBase64)?;
        Self::from_p12_der(&der, password, mch_id, now)
    }

    /// From the raw bytes of a `.p12` file.
    pub fn from_p12_der(
        der: &[u8],
        password: Option<&str>,
        mch_id: &str,
        now: SystemTime,
    ) -> Result<Self, CertError> {
        if looks_like_pem(der) {
            return Err(CertError::PemWhereP12Expected);
        }
        // A PKCS#12 is a DER SEQUENCE; anything else is rejected before any decryption work.
        if der.first() != Some(&0x30) {
            return Err(CertError::NotP12(
                "does not start with a DER SEQUENCE".into(),
            ));
        }
        let password = password.unwrap_or(mch_id);
        let archive = Pkcs12Archive::from_pkcs12(der, password).map_err(map_p12_error)?;
        let key_bag = archive
            .keys
            .first()
            .ok_or(CertError::NoPrivateKey("the PKCS#12"))?;
        if archive.certs.is_empty() {
            return Err(CertError::NoCertificate("the PKCS#12"));
        }
        let key = PrivateKeyDer::Pkcs8(key_bag.key.as_der().to_vec().into());
        let certs: Vec<CertificateDer<'static>> = archive
            .certs
            .iter()
            .map(|bag| CertificateDer::from(bag.cert.as_der().to_vec()))
            .collect();
        Self::build(certs, key, mch_id, now)
    }

    /// From a PEM certificate (chain, leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        mch_id: &str,
        now: SystemTime,
    ) -> Result<Self, CertError> {
        if looks_like_p12(cert_pem) {
            return Err(CertError::P12WherePemExpected { field: "cert_pem" });
        }
        if looks_like_p12(key_pem) {
            return Err(CertError::P12WherePemExpected { field: "key_pem" });
        }
        let cert_kinds = pem_kinds(cert_pem);
        let key_kinds = pem_kinds(key_pem);
        let has_cert = |k: &[SectionKind]| k.contains(&SectionKind::Certificate);
        let has_key = |k: &[SectionKind]| k.iter().any(|s| is_key_kind(*s));
        if !has_cert(&cert_kinds) {
            if has_key(&cert_kinds) && has_cert(&key_kinds) {
                return Err(CertError::Swapped);
            }
            if cert_kinds.is_empty() {
                return Err(CertError::NotPem {
                    field: "cert_pem",
                    expected: "CERTIFICATE",
                });
            }
            return Err(CertError::NoCertificate("cert_pem"));
        }
        if !has_key(&key_kinds) {
            if key_kinds.is_empty() {
                return Err(CertError::NotPem {
                    field: "key_pem",
                    expected: "PRIVATE KEY",
                });
            }
            return Err(CertError::NoPrivateKey("key_pem"));
        }
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::BadCertificate(format!("cert_pem: {e}")))?;
        // The error of `from_pem_slice` can quote nothing of the key, but keep it generic anyway.
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| CertError::BadKey("key_pem cannot be decoded".into()))?;
        Self::build(certs, key, mch_id, now)
    }

    fn build(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        mch_id: &str,
        now: SystemTime,
    ) -> Result<Self, CertError> {
        let signing_key = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| CertError::BadKey(e.to_string()))?;
        let key_spki = signing_key
            .public_key()
            .ok_or_else(|| CertError::BadKey("no public key can be derived".into()))?;

        // The leaf is the certificate whose public key is the key's; a p12 may also carry the CA.
        let mut leaf_index = None;
        for (i, cert) in certs.iter().enumerate() {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
                .map_err(|e| CertError::BadCertificate(e.to_string()))?;
            if parsed.public_key().raw == key_spki.as_ref() {
                leaf_index = Some(i);
                break;
            }
        }
        let leaf_index = leaf_index.ok_or(CertError::KeyMismatch)?;
        let (_, leaf) = x509_parser::parse_x509_certificate(certs[leaf_index].as_ref())
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;

        let subject_cn = leaf
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let validity = leaf.validity();
        let cn_matches_mch_id = subject_cn.as_deref() == Some(mch_id);
        let info = CertInfo {
            subject: leaf.subject().to_string(),
            serial_hex: hex::encode_upper(leaf.raw_serial()),
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
            not_before_unix: validity.not_before.timestamp(),
            not_after_unix: validity.not_after.timestamp(),
            subject_cn,
            cn_matches_mch_id,
        };

        let now_unix = unix_seconds(now);
        if now_unix > info.not_after_unix {
            return Err(CertError::Expired {
                serial: info.serial_hex,
                not_after: info.not_after,
            });
        }
        if now_unix < info.not_before_unix {
            return Err(CertError::NotYetValid {
                serial: info.serial_hex,
                not_before: info.not_before,
            });
        }
        if !cn_matches_mch_id {
            // A warning, not an error: a certificate for another merchant makes WeChat refuse
            // the TLS handshake or the request, which is then reported with its own error.
            tracing::warn!(
                cert_cn = info.subject_cn.as_deref().unwrap_or(""),
                mch_id,
                serial = %info.serial_hex,
                "merchant certificate CN does not match mch_id"
            );
        }

        let mut cert_pem = pem_encode("CERTIFICATE", certs[leaf_index].as_ref());
        for (i, cert) in certs.iter().enumerate() {
            if i != leaf_index {
                cert_pem.push_str(&pem_encode("CERTIFICATE", cert.as_ref()));
            }
        }
        let key_pem = match &key {
            PrivateKeyDer::Pkcs1(k) => pem_encode("RSA PRIVATE KEY", k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(k) => pem_encode("EC PRIVATE KEY", k.secret_sec1_der()),
            PrivateKeyDer::Pkcs8(k) => pem_encode("PRIVATE KEY", k.secret_pkcs8_der()),
            _ => return Err(CertError::BadKey("unsupported private key encoding".into())),
        };
        let identity_pem = format!("{cert_pem}{key_pem}");
        Ok(MerchantIdentity {
            cert_pem,
            key_pem: SecretString::from(key_pem),
            identity_pem: SecretString::from(identity_pem),
            info,
        })
    }

    /// Public facts about the certificate (CN, serial, validity).
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// The certificate chain as PEM, leaf first. Not secret, but not logged either.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key as PEM.
    pub fn key_pem(&self) -> &SecretString {
        &self.key_pem
    }

    /// Certificate chain followed by the key, as `reqwest::Identity::from_pem` wants it.
    pub fn identity_pem(&self) -> &SecretString {
        &self.identity_pem
    }

    /// The client identity for reqwest (rustls).
    pub fn reqwest_identity(&self) -> Result<reqwest::Identity, CertError> {
        // reqwest's error text describes the PEM structure, never its content.
        reqwest::Identity::from_pem(self.identity_pem.expose_secret().as_bytes())
            .map_err(|e| CertError::Tls(e.to_string()))
    }

    /// Seconds until the certificate expires at `now` (negative once expired), for alarms.
    pub fn expires_in_secs(&self, now: SystemTime) -> i64 {
        self.info.not_after_unix - unix_seconds(now)
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn map_p12_error(e: P12Error) -> CertError {
    match e {
        P12Error::MacError(_) => CertError::WrongPassword,
        // Without a MAC a wrong password shows up as bad padding after decryption.
        P12Error::UnpadError => CertError::WrongPassword,
        P12Error::UnsupportedEncryptionScheme
        | P12Error::UnsupportedMacAlgorithm
        | P12Error::UnsupportedContentType
        | P12Error::UnsupportedCertificateType => CertError::UnsupportedP12(e.to_string()),
        P12Error::X509Error(_) => CertError::BadCertificate(e.to_string()),
        P12Error::InvalidPrivateKey => CertError::BadKey(e.to_string()),
        other => CertError::NotP12(other.to_string()),
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes[start..].starts_with(b"-----BEGIN")
}

/// A p12 pasted where PEM belongs arrives either raw (DER, starts with a SEQUENCE tag) or as
/// base64 of that (`MII…`), never with a `-----BEGIN` line.
fn looks_like_p12(bytes: &[u8]) -> bool {
    if looks_like_pem(bytes) {
        return false;
    }
    if bytes.first() == Some(&0x30) {
        return true;
    }
    let compact: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    matches!(B64.decode(&compact), Ok(der) if der.first() == Some(&0x30))
}

fn is_key_kind(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// The kinds of the PEM sections in `bytes`, in order; undecodable input yields what was read.
fn pem_kinds(bytes: &[u8]) -> Vec<SectionKind> {
    let mut kinds = Vec::new();
    let mut cursor = std::io::Cursor::new(bytes);
    while let Ok(Some((kind, _))) = rustls_pki_types::pem::from_buf(&mut cursor) {
        kinds.push(kind);
    }
    kinds
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so 64-byte chunks are valid UTF-8 lines.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}
