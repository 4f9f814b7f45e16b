//! The state every connection, the admin API and the settle loop share: the books, the merchant,
//! the timings and limits from the config, the notification client and the shutdown signal.

use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use tokio::sync::watch;
use wxpay::ApiKey;

use crate::books::Books;
use crate::certs::MerchantJson;
use crate::notify::RetryFactor;

/// Shared by every connection.
pub struct App {
    pub books: Books,
    pub merchant: MerchantJson,
    pub key: ApiKey,
    pub settle_after: Duration,
    pub notify_retry_factor: RetryFactor,
    pub default_notify_url: Option<String>,
    pub apply_limiter: DefaultDirectRateLimiter,
    pub failure_limiter: DefaultDirectRateLimiter,
    pub notify_client: reqwest::Client,
    pub shutdown: watch::Receiver<bool>,
}
