//! The merchant configuration secret: one JSON document (AWS Secrets Manager `SecretString`, or a
//! local file) holding appid, mch_id, the APIv2 key and the client certificate. Loaded and
//! validated once at cold start, reloadable once after a signature failure (key rotation).
//!
//! Nothing read from the secret is ever printed: the key is an [`ApiKey`], the certificate a
//! [`MerchantIdentity`], and parse errors never quote the JSON.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use thiserror::Error;
use wxpay::cert::{CertError, MerchantIdentity};
use wxpay::merchant::MerchantKeys;
use wxpay::sign::{self, ApiKey, ApiKeyError, SignType};
use wxpay::{AppId, MchId};

pub const ENV_SECRET_ID: &str = "WXPAY_SECRET_ID";
pub const ENV_SECRET_FILE: &str = "WXPAY_SECRET_FILE";
/// Bound on one Secrets Manager read at cold start (the Lambda init phase is 10 s).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("set {ENV_SECRET_ID} (Secrets Manager) or {ENV_SECRET_FILE} (local JSON file)")]
    NoSource,
    #[error("reading secret {secret_id} from Secrets Manager failed: {reason}")]
    Fetch { secret_id: String, reason: String },
    #[error("reading secret {secret_id} from Secrets Manager timed out after {timeout:?}")]
    Timeout {
        secret_id: String,
        timeout: Duration,
    },
    #[error("secret {0} has no SecretString (binary secrets are not supported)")]
    NoSecretString(String),
    #[error("cannot read the secret file {path}: {reason}")]
    File { path: String, reason: String },
    /// Never quotes the document: serde's messages can include values.
    #[error("the secret is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("invalid {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error(transparent)]
    ApiKey(#[from] ApiKeyError),
    #[error("the secret must hold cert_p12_base64, or cert_pem and key_pem ({0})")]
    CertificateFields(&'static str),
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error("the api_v2_key self-test signature did not verify")]
    SelfTest,
}

/// The JSON document as stored. Secret fields are `SecretString` from the moment they are read.
#[derive(Deserialize)]
struct SecretDocument {
    appid: String,
    mch_id: String,
    api_v2_key: SecretString,
    #[serde(default)]
    cert_p12_base64: Option<SecretString>,
    #[serde(default)]
    cert_p12_password: Option<SecretString>,
    #[serde(default)]
    cert_pem: Option<String>,
    #[serde(default)]
    key_pem: Option<SecretString>,
    #[serde(default)]
    sign_type: Option<String>,
    #[serde(default)]
    notify_url: Option<String>,
}

/// The validated merchant configuration. Debug and Display show identifiers and certificate
/// facts only.
#[derive(Clone, Debug)]
pub struct MerchantConfig {
    pub appid: AppId,
    pub mch_id: MchId,
    pub api_v2_key: ApiKey,
    pub sign_type: SignType,
    pub identity: MerchantIdentity,
    pub notify_url: Option<String>,
}

impl fmt::Display for MerchantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "merchant {} (appid {}, sign_type {}, certificate serial {} valid until {})",
            self.mch_id,
            self.appid,
            self.sign_type,
            self.identity.info().serial_hex,
            self.identity.info().not_after
        )
    }
}

impl MerchantConfig {
    /// Parses and validates the secret JSON at `now` (certificate validity).
    pub fn from_json(json: &str, now: SystemTime) -> Result<Self, SecretsError> {
        let doc: SecretDocument = serde_json::from_str(json).map_err(describe_json_error)?;
        let appid = AppId::new(doc.appid).map_err(|e| SecretsError::Field {
            field: "appid",
            reason: e.to_string(),
        })?;
        let mch_id = MchId::new(doc.mch_id).map_err(|e| SecretsError::Field {
            field: "mch_id",
            reason: e.to_string(),
        })?;
        let api_v2_key = ApiKey::new(doc.api_v2_key.expose_secret())?;
        let sign_type = match doc.sign_type.as_deref() {
            None | Some("") => SignType::default(),
            Some(s) => s
                .parse()
                .map_err(|e: sign::UnknownSignType| SecretsError::Field {
                    field: "sign_type",
                    reason: e.to_string(),
                })?,
        };
        if let Some(url) = &doc.notify_url {
            wxpay::refund::check_notify_url(url).map_err(|e| SecretsError::Field {
                field: "notify_url",
                reason: e.to_string(),
            })?;
        }
        let identity = match (&doc.cert_p12_base64, &doc.cert_pem, &doc.key_pem) {
            (Some(p12), None, None) => MerchantIdentity::from_p12_base64(
                p12.expose_secret(),
                doc.cert_p12_password.as_ref().map(|p| p.expose_secret()),
                mch_id.as_str(),
                now,
            )?,
            (None, Some(cert), Some(key)) => MerchantIdentity::from_pem(
                cert.as_bytes(),
                key.expose_secret().as_bytes(),
                mch_id.as_str(),
                now,
            )?,
            (None, None, None) => return Err(SecretsError::CertificateFields("none is set")),
            (None, _, _) => {
                return Err(SecretsError::CertificateFields(
                    "cert_pem and key_pem go together",
                ));
            }
            (Some(_), _, _) => {
                return Err(SecretsError::CertificateFields(
                    "set either cert_p12_base64 or cert_pem + key_pem, not both",
                ));
            }
        };
        self_test(&api_v2_key, sign_type)?;
        Ok(MerchantConfig {
            appid,
            mch_id,
            api_v2_key,
            sign_type,
            identity,
            notify_url: doc.notify_url,
        })
    }

    /// The signing identity every request goes through.
    pub fn merchant_keys(&self) -> MerchantKeys {
        MerchantKeys {
            appid: self.appid.clone(),
            mch_id: self.mch_id.clone(),
            api_key: self.api_v2_key.clone(),
            sign_type: self.sign_type,
        }
    }
}

/// Signs and verifies a fixed message (the signing example fields of docs/PROTOCOL.md, "Signing"): catches a key the signer
/// cannot use before the first refund does.
fn self_test(key: &ApiKey, sign_type: SignType) -> Result<(), SecretsError> {
    let fields = [
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "10000100"),
        ("device_info", "1000"),
        ("body", "test"),
        ("nonce_str", "ibuaiVcKdpRxkhJA"),
    ];
    let signature = sign::sign(fields, key, sign_type);
    if signature.len() != sign_type.hex_len() || !sign::verify(fields, key, sign_type, &signature) {
        return Err(SecretsError::SelfTest);
    }
    Ok(())
}

fn describe_json_error(e: serde_json::Error) -> SecretsError {
    let text = e.to_string();
    // "missing field `x`" and "unknown variant" quote field names only; every other data error
    // may quote a value (e.g. `invalid type: integer 123…`), so only its position is reported.
    let detail = if text.starts_with("missing field") {
        text.split(" at line")
            .next()
            .unwrap_or("missing field")
            .to_owned()
    } else {
        format!("{:?} error", e.classify()).to_lowercase()
    };
    SecretsError::Json(format!(
        "{detail} at line {} column {}",
        e.line(),
        e.column()
    ))
}

/// Where the secret lives.
#[derive(Clone, Debug)]
pub enum SecretLocation {
    SecretsManager { secret_id: String },
    File(PathBuf),
}

/// Loads (and reloads, after a signature failure) the merchant configuration.
#[derive(Clone, Debug)]
pub struct SecretSource {
    location: SecretLocation,
    client: Option<aws_sdk_secretsmanager::Client>,
    timeout: Duration,
}

impl SecretSource {
    /// From the environment: `WXPAY_SECRET_FILE` wins (local runs), else `WXPAY_SECRET_ID` with
    /// the function's AWS configuration (loaded once per cold start and shared by every client).
    pub fn from_env(conf: &aws_config::SdkConfig) -> Result<Self, SecretsError> {
        if let Some(path) = std::env::var_os(ENV_SECRET_FILE).filter(|p| !p.is_empty()) {
            return Ok(Self::file(PathBuf::from(path)));
        }
        match std::env::var(ENV_SECRET_ID) {
            Ok(id) if !id.is_empty() => Ok(Self::secrets_manager(
                aws_sdk_secretsmanager::Client::new(conf),
                id,
            )),
            _ => Err(SecretsError::NoSource),
        }
    }

    pub fn secrets_manager(
        client: aws_sdk_secretsmanager::Client,
        secret_id: impl Into<String>,
    ) -> Self {
        SecretSource {
            location: SecretLocation::SecretsManager {
                secret_id: secret_id.into(),
            },
            client: Some(client),
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }

    pub fn file(path: impl Into<PathBuf>) -> Self {
        SecretSource {
            location: SecretLocation::File(path.into()),
            client: None,
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn location(&self) -> &SecretLocation {
        &self.location
    }

    /// Reads and validates the current version of the secret.
    pub async fn load(&self) -> Result<MerchantConfig, SecretsError> {
        let json = self.fetch().await?;
        MerchantConfig::from_json(json.expose_secret(), SystemTime::now())
    }

    /// Reads the secret again (never cached): call once after WeChat reports a signature error,
    /// in case the key was rotated, before counting the request as failed.
    pub async fn reload(&self) -> Result<MerchantConfig, SecretsError> {
        let config = self.load().await?;
        tracing::info!(mch_id = %config.mch_id, serial = %config.identity.info().serial_hex, "merchant secret reloaded");
        Ok(config)
    }

    async fn fetch(&self) -> Result<SecretString, SecretsError> {
        match (&self.location, &self.client) {
            (SecretLocation::File(path), _) => tokio::fs::read_to_string(path)
                .await
                .map(SecretString::from)
                .map_err(|e| SecretsError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }),
            (SecretLocation::SecretsManager { secret_id }, Some(client)) => {
                let call = client.get_secret_value().secret_id(secret_id).send();
                let out = tokio::time::timeout(self.timeout, call)
                    .await
                    .map_err(|_| SecretsError::Timeout {
                        secret_id: secret_id.clone(),
                        timeout: self.timeout,
                    })?
                    .map_err(|e| SecretsError::Fetch {
                        secret_id: secret_id.clone(),
                        reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
                    })?;
                out.secret_string
                    .map(SecretString::from)
                    .ok_or_else(|| SecretsError::NoSecretString(secret_id.clone()))
            }
            (SecretLocation::SecretsManager { secret_id }, None) => Err(SecretsError::Fetch {
                secret_id: secret_id.clone(),
                reason: "no Secrets Manager client".into(),
            }),
        }
    }
}
