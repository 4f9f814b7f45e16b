//! The `EventPublisher` port: where merchant events go once their fact is written
//! (`crate::events`). Adapters: [`eventbridge::EventBridgePublisher`] on Lambda; the local stack
//! writes `events.jsonl` and posts to a webhook (`wxrefund-local`); tests record them.
//!
//! A publisher answers per event: what it accepted leaves the outbox, the rest stays and is
//! published again by the poller (same id), so a publisher may retry but never has to.

pub mod eventbridge;

use async_trait::async_trait;

use crate::events::Envelope;

/// What a publish did, per event id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Taken by the destination: these leave the outbox.
    pub accepted: Vec<String>,
    /// Not taken, with why (stay in the outbox for the next delivery).
    pub failed: Vec<(String, String)>,
}

impl Delivery {
    /// Every event refused for the same reason.
    pub fn all_failed(events: &[Envelope], why: &str) -> Self {
        Delivery {
            accepted: Vec::new(),
            failed: events
                .iter()
                .map(|e| (e.id.clone(), why.to_owned()))
                .collect(),
        }
    }
}

#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Publishes `events` (one refund's outbox, oldest first).
    async fn publish(&self, events: &[Envelope]) -> Delivery;
}
