//! Where the local stack's merchant events go: appended to `<data-dir>/events.jsonl` (one
//! envelope per line: `id`, `source`, `detail-type`, `time`, `detail`) and, with `--webhook-url`,
//! POSTed there as JSON so a merchant backend can be developed against them.
//!
//! A webhook request carries `Wxrefund-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" with the --webhook-secret>` (the receiver recomputes it and checks `t` is recent,
//! which defeats replays). A non-2xx answer or no answer is retried with backoff; an event the
//! webhook still did not take stays in the outbox and is sent again by the poller, under the same
//! `id` (the file may then hold it twice: de-duplicate on `id`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use hmac::{KeyInit, Mac};
use tracing::warn;
use wxrefund::events::Envelope;
use wxrefund::publish::{Delivery, EventPublisher};

/// The signature header of a webhook request.
pub const SIGNATURE_HEADER: &str = "Wxrefund-Signature";

/// Sends of one event to the webhook, and the pause before each retry.
const WEBHOOK_BACKOFF: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_secs(1),
];

/// The signature header's value for `body` at `t` (unix seconds).
pub fn signature(secret: &str, t: u64, body: &[u8]) -> Result<String, String> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| format!("webhook secret: {e}"))?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "t={t},v1={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// Appends every event to a JSON-lines file, durably (synced before it counts as published).
pub struct JsonlFile {
    path: PathBuf,
    // One writer at a time, so lines never interleave.
    lock: tokio::sync::Mutex<()>,
}

impl JsonlFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonlFile {
            path: path.into(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn append(&self, events: &[Envelope]) -> Result<(), String> {
        let mut lines = Vec::new();
        for e in events {
            serde_json::to_writer(&mut lines, e).map_err(|err| err.to_string())?;
            lines.push(b'\n');
        }
        let _one = self.lock.lock().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&lines)?;
            f.sync_data()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// POSTs every event to a URL, signed.
pub struct Webhook {
    url: String,
    secret: String,
    http: reqwest::Client,
}

impl Webhook {
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Webhook {
            url: url.into(),
            secret: secret.into(),
            http,
        })
    }

    async fn send(&self, e: &Envelope) -> Result<(), String> {
        let body = serde_json::to_vec(e).map_err(|err| err.to_string())?;
        let mut last = String::new();
        for pause in WEBHOOK_BACKOFF {
            tokio::time::sleep(pause).await;
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let res = self
                .http
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature(&self.secret, t, &body)?)
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("webhook answered {}", r.status()),
                Err(err) => last = format!("webhook unreachable: {err}"),
            }
        }
        Err(last)
    }
}

/// The local stack's publisher: the file always, the webhook when configured. An event counts as
/// published once both took it.
pub struct LocalPublisher {
    file: JsonlFile,
    webhook: Option<Webhook>,
}

impl LocalPublisher {
    pub fn new(file: JsonlFile, webhook: Option<Webhook>) -> Self {
        LocalPublisher { file, webhook }
    }
}

#[async_trait]
impl EventPublisher for LocalPublisher {
    async fn publish(&self, events: &[Envelope]) -> Delivery {
        if let Err(why) = self.file.append(events).await {
            warn!(error = %why, "events could not be written to the events file");
            return Delivery::all_failed(events, &why);
        }
        let Some(hook) = &self.webhook else {
            return Delivery {
                accepted: events.iter().map(|e| e.id.clone()).collect(),
                failed: Vec::new(),
            };
        };
        let mut out = Delivery::default();
        for e in events {
            match hook.send(e).await {
                Ok(()) => out.accepted.push(e.id.clone()),
                Err(why) => out.failed.push((e.id.clone(), why)),
            }
        }
        out
    }
}
