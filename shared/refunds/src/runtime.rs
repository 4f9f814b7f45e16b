//! Cold-start wiring shared by the Lambda functions: logging, the merchant secret, the WeChat
//! client and the DynamoDB ledger, built once and handed to the router.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use thiserror::Error;
use wxpay::client::{ClientConfig, SystemRoots};

use crate::gateway::{GatewayError, WxPayGateway};
use crate::ledger::LedgerError;
use crate::ledger::dynamo::DynamoLedger;
use crate::publish::eventbridge::EventBridgePublisher;
use crate::secrets::{SecretSource, SecretsError};
use crate::service::{RefundService, ServiceConfig};

#[derive(Debug, Error)]
pub enum BootError {
    #[error("merchant secret: {0}")]
    Secrets(#[from] SecretsError),
    #[error("WeChat client: {0}")]
    Gateway(#[from] GatewayError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("configuration: {0}")]
    Config(String),
}

/// When `main` began ([`init_tracing`] is its first call): the origin of the cold-start timings.
static MAIN_STARTED: OnceLock<Instant> = OnceLock::new();

/// Milliseconds (with µs) from `from` to now, for the cold-start log line.
fn ms_since(from: Instant) -> f64 {
    from.elapsed().as_micros() as f64 / 1000.0
}

/// Structured logs: JSON on Lambda (CloudWatch), human-readable elsewhere; level from `RUST_LOG`.
pub fn init_tracing() {
    MAIN_STARTED.get_or_init(Instant::now);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let on_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    // Logs go to stderr (stdout is for what a command prints), coloured only on a terminal.
    let ansi = !on_lambda && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if on_lambda {
        builder.json().flatten_event(true).without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// The WeChat client settings from the environment: `WXPAY_BASE_URL` (default the production
/// domain, with failover to api2) and `WXPAY_CA_FILE` (an extra trusted root, for the sandbox).
pub fn client_config_from_env() -> Result<ClientConfig, BootError> {
    // Unsigned FAIL replies are trusted as refusals, so the transport must be authenticated: the
    // functions never talk plain HTTP (tests build their ClientConfig directly).
    if let Ok(url) = std::env::var("WXPAY_BASE_URL")
        && !url.is_empty()
        && !url.starts_with("https://")
    {
        return Err(BootError::Config(format!(
            "WXPAY_BASE_URL must be an https:// URL, got {url:?}"
        )));
    }
    let mut cfg = match std::env::var("WXPAY_BASE_URL") {
        Ok(url)
            if !url.is_empty() && url.trim_end_matches('/') != wxpay::client::DEFAULT_BASE_URL =>
        {
            ClientConfig::for_base_url(url)
        }
        _ => ClientConfig::default(),
    };
    if let Some(path) = std::env::var_os("WXPAY_CA_FILE").filter(|p| !p.is_empty()) {
        let pem = std::fs::read(&path).map_err(|e| {
            BootError::Config(format!("WXPAY_CA_FILE {}: {e}", path.to_string_lossy()))
        })?;
        cfg.extra_root_ca_pem = Some(pem);
    }
    Ok(cfg)
}

/// `SSL_CERT_FILE` (set by template.yaml so that the TLS clients read one bundle instead of every
/// file of `/etc/ssl/certs`) must name a file: with a wrong path both clients would start with no
/// trusted root and every call would fail its handshake, so the cold start fails instead, naming it.
fn check_ca_bundle(ssl_cert_file: Option<&std::ffi::OsStr>) -> Result<(), BootError> {
    match ssl_cert_file {
        Some(path) if !std::path::Path::new(path).is_file() => Err(BootError::Config(format!(
            "SSL_CERT_FILE is {}, which is not a file: unset it or name the system's CA bundle",
            std::path::Path::new(path).display()
        ))),
        _ => Ok(()),
    }
}

/// Everything a function needs, built once per cold start: secret (Secrets Manager or file), WeChat
/// client, DynamoDB ledger (`LEDGER_TABLE`), EventBridge publisher (`EVENT_BUS_NAME`).
///
/// One AWS configuration serves every client: its provider chain and its HTTPS client (root
/// certificates included) are the costly part of building one. The DynamoDB and EventBridge
/// clients are built, and the WeChat client's trusted roots read, during the secret fetch
/// (`aws_clients_ms` and `roots_ms` overlap `aws_config_ms` + `secret_ms`). The cold
/// start is logged as one line with the time each step took (`cold start ready`), so a slow init
/// shows where it went.
pub async fn production_service() -> Result<Arc<RefundService>, BootError> {
    let main_started = *MAIN_STARTED.get_or_init(Instant::now);
    let started = Instant::now();
    crate::telemetry::install_on_lambda();
    let telemetry_ms = ms_since(started);

    check_ca_bundle(std::env::var_os("SSL_CERT_FILE").as_deref())?;
    // The WeChat client's trusted roots need nothing from the merchant: read them on a blocking
    // thread while the AWS configuration loads and the secret is fetched.
    let roots = tokio::task::spawn_blocking(|| {
        let step = Instant::now();
        (SystemRoots::load(), ms_since(step))
    });
    let step = Instant::now();
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let aws_config_ms = ms_since(step);

    // The DynamoDB and EventBridge clients need only the configuration: they are built on the
    // other worker thread while this one waits for Secrets Manager.
    let clients = tokio::spawn({
        let conf = conf.clone();
        async move {
            let step = Instant::now();
            let built = DynamoLedger::from_conf(&conf)
                .map(|ledger| (ledger, EventBridgePublisher::from_conf(&conf)));
            (built, ms_since(step))
        }
    });

    let step = Instant::now();
    let source = SecretSource::from_env(&conf)?.with_timeout(Duration::from_secs(5));
    let merchant = source.load().await?;
    let secret_ms = ms_since(step);
    tracing::info!(merchant = %merchant, "merchant configuration loaded");

    let (loaded, roots_ms) = roots
        .await
        .map_err(|e| BootError::Config(format!("reading the trusted roots: {e}")))?;
    let mut client_config = client_config_from_env()?;
    client_config.system_roots = Some(loaded.map_err(GatewayError::from)?);
    let step = Instant::now();
    let gateway = WxPayGateway::new(&merchant, client_config, Some(source))?;
    let wechat_client_ms = ms_since(step);

    let (built, aws_clients_ms) = clients
        .await
        .map_err(|e| BootError::Config(format!("building the AWS clients: {e}")))?;
    let (ledger, publisher) = built?;
    let cfg = ServiceConfig {
        notify_url: merchant.notify_url.clone(),
        ..ServiceConfig::default()
    };
    let svc = Arc::new(RefundService::new(
        Arc::new(ledger),
        Arc::new(gateway),
        Arc::new(publisher),
        cfg,
    ));
    tracing::info!(
        before_service_ms = started.duration_since(main_started).as_micros() as f64 / 1000.0,
        telemetry_ms,
        aws_config_ms,
        secret_ms,
        roots_ms,
        wechat_client_ms,
        aws_clients_ms,
        service_ms = ms_since(started),
        since_main_ms = ms_since(main_started),
        "cold start ready"
    );
    Ok(svc)
}

/// [`production_service`] for a Lambda main: a failed cold start is logged as one structured line
/// (the error's message, never its debug dump) and the process exits non-zero, which Lambda reports
/// as an init failure and retries on the next invocation.
pub async fn production_service_or_exit() -> Arc<RefundService> {
    match production_service().await {
        Ok(svc) => svc,
        Err(e) => {
            tracing::error!(error = %e, "cold start failed");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn a_ca_bundle_that_is_not_a_file_fails_the_cold_start_naming_the_variable() {
        // GIVEN SSL_CERT_FILE naming a path that does not exist
        let missing = OsStr::new("/nonexistent/ca-bundle.crt");
        // WHEN the cold start checks it
        let err = check_ca_bundle(Some(missing)).expect_err("refused");
        // THEN the message names the variable and the path
        let msg = err.to_string();
        assert!(msg.contains("SSL_CERT_FILE"), "{msg}");
        assert!(msg.contains("/nonexistent/ca-bundle.crt"), "{msg}");
    }

    #[test]
    fn an_unset_or_existing_ca_bundle_is_accepted() {
        assert!(check_ca_bundle(None).is_ok());
        let file = tempfile::NamedTempFile::new().expect("temp file");
        assert!(check_ca_bundle(Some(file.path().as_os_str())).is_ok());
        // A directory is not a bundle.
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(check_ca_bundle(Some(dir.path().as_os_str())).is_err());
    }
}
