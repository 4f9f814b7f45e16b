//! `EventBridgePublisher`: `PutEvents` to one bus (`EVENT_BUS_NAME`, default the account's
//! `default` bus). `PutEvents` can succeed as a call and still refuse some entries
//! (`FailedEntryCount`, each refused entry with an `ErrorCode`): those are sent again, a few
//! times with a short backoff, and what is still refused stays in the outbox for the poller.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use super::{Delivery, EventPublisher};
use crate::events::Envelope;

/// `PutEvents` takes at most 10 entries per call.
const BATCH: usize = 10;
/// Sends of one batch: the first and the retries of refused entries.
const SENDS: u32 = 3;

pub struct EventBridgePublisher {
    client: Client,
    bus: String,
}

impl EventBridgePublisher {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        EventBridgePublisher {
            client,
            bus: bus.into(),
        }
    }

    /// The bus named by `EVENT_BUS_NAME` (`default` when unset), with the shared AWS config.
    pub fn from_conf(conf: &aws_config::SdkConfig) -> Self {
        let bus = std::env::var("EVENT_BUS_NAME")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        EventBridgePublisher::new(Client::new(conf), bus)
    }

    pub fn bus(&self) -> &str {
        &self.bus
    }

    fn entry(&self, e: &Envelope) -> Result<PutEventsRequestEntry, String> {
        let detail = serde_json::to_string(&e.detail).map_err(|err| err.to_string())?;
        let time =
            time::OffsetDateTime::parse(&e.time, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| DateTime::from_secs(t.unix_timestamp()));
        Ok(PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(&e.source)
            .detail_type(e.detail_type.as_str())
            .detail(detail)
            .set_time(time)
            .build())
    }

    /// One batch: sends it, then again what was refused, up to [`SENDS`] times.
    async fn publish_batch(&self, batch: &[Envelope], out: &mut Delivery) {
        let mut pending: Vec<(&Envelope, PutEventsRequestEntry)> = Vec::new();
        for e in batch {
            match self.entry(e) {
                Ok(entry) => pending.push((e, entry)),
                Err(why) => out.failed.push((e.id.clone(), why)),
            }
        }
        let mut last_error: Vec<(String, String)> = Vec::new();
        for send in 0..SENDS {
            if pending.is_empty() {
                return;
            }
            if send > 0 {
                // 200 ms, then 800 ms: the writer may be answering an API request meanwhile.
                tokio::time::sleep(Duration::from_millis(50 << (2 * send))).await;
            }
            let entries = pending.iter().map(|(_, entry)| entry.clone()).collect();
            let res = self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await;
            let answers = match res {
                Ok(out) => out.entries.unwrap_or_default(),
                Err(e) => {
                    let why = aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string();
                    last_error = pending
                        .iter()
                        .map(|(ev, _)| (ev.id.clone(), why.clone()))
                        .collect();
                    continue;
                }
            };
            // The answer lists one result per entry, in order; a missing one counts as refused.
            let mut refused = Vec::new();
            last_error.clear();
            for (i, (ev, entry)) in pending.into_iter().enumerate() {
                match answers.get(i) {
                    Some(a) if a.error_code().is_none() && a.event_id().is_some() => {
                        out.accepted.push(ev.id.clone());
                    }
                    other => {
                        let why = other
                            .map(|a| {
                                format!(
                                    "{}: {}",
                                    a.error_code().unwrap_or("no event id"),
                                    a.error_message().unwrap_or_default()
                                )
                            })
                            .unwrap_or_else(|| "no answer for the entry".to_owned());
                        last_error.push((ev.id.clone(), why));
                        refused.push((ev, entry));
                    }
                }
            }
            pending = refused;
        }
        out.failed.extend(last_error);
    }
}

#[async_trait]
impl EventPublisher for EventBridgePublisher {
    async fn publish(&self, events: &[Envelope]) -> Delivery {
        let mut out = Delivery::default();
        for batch in events.chunks(BATCH) {
            self.publish_batch(batch, &mut out).await;
        }
        out
    }
}
