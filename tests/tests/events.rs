//! Merchant events through the real AWS SDK to moto's EventBridge, routed by a rule to an SQS
//! queue and read back: each event arrives once with its stable id, and entries EventBridge
//! refuses in a `PutEvents` that succeeded as a call are sent again, not dropped.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wxpay::{Fen, OrderRef, OutTradeNo};
use wxrefund::events::{Envelope, of_change};
use wxrefund::ledger::NewRefund;
use wxrefund::publish::EventPublisher;
use wxrefund::publish::eventbridge::EventBridgePublisher;
use wxrefund::state::{RefundRecord, RefundStatus, UnixMillis};
use wxrefund::testing::{Fault, FaultRule, Faults, Op, faulty_eventbridge, moto_sdk_config};

/// A bus of its own, and a queue receiving everything `wxrefund` publishes on it.
struct Subscription {
    bus: String,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

async fn subscribe() -> Subscription {
    let conf = moto_sdk_config().await;
    let eb = aws_sdk_eventbridge::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let name = format!("wxrefund-{}", uuid::Uuid::new_v4().simple());
    eb.create_event_bus().name(&name).send().await.unwrap();
    let queue_url = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    // The rule a merchant writes (README): everything from wxrefund.
    eb.put_rule()
        .name("all-refund-events")
        .event_bus_name(&name)
        .event_pattern(r#"{"source": ["wxrefund"]}"#)
        .send()
        .await
        .unwrap();
    eb.put_targets()
        .rule("all-refund-events")
        .event_bus_name(&name)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    Subscription {
        bus: name,
        sqs,
        queue_url,
    }
}

impl Subscription {
    /// What the queue received within `wait`, as EventBridge delivers it (the event JSON).
    async fn received(&self, want: usize, wait: Duration) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let until = Instant::now() + wait;
        // Until `want` arrived (or the wait is over), then once more: a duplicate would show.
        let mut last_look = false;
        loop {
            let got = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap();
            for m in got.messages.unwrap_or_default() {
                out.push(serde_json::from_str(m.body.as_deref().unwrap()).unwrap());
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(m.receipt_handle.unwrap())
                    .send()
                    .await
                    .unwrap();
            }
            if last_look {
                return out;
            }
            last_look = out.len() >= want || Instant::now() >= until;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `n` refunds that just succeeded, and their events.
fn succeeded(n: usize) -> Vec<Envelope> {
    (0..n)
        .flat_map(|i| {
            let mut before: RefundRecord = wxrefund::testing::record_of(&NewRefund {
                out_refund_no: format!("R-EB-{i}").parse().unwrap(),
                order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-EB").unwrap()),
                total_fee: Fen::new(1000).unwrap(),
                refund_fee: Fen::new(10).unwrap(),
                refund_desc: None,
                refund_account: None,
                metadata: Default::default(),
                request_hash: "h".into(),
                now: UnixMillis::now(),
                next_check_at: UnixMillis::now(),
                lease: None,
            });
            before.status = RefundStatus::Processing;
            let mut after = before.clone();
            after.status = RefundStatus::Success;
            after.version += 1;
            of_change(Some(&before), &after, UnixMillis::now())
        })
        .map(|e| e.envelope)
        .collect()
}

fn by_event_id(received: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for e in received {
        *ids.entry(e["detail"]["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_the_merchants_rule_once_with_its_stable_id() {
    // GIVEN a merchant's rule routing wxrefund's events to a queue
    let sub = subscribe().await;
    let publisher = EventBridgePublisher::new(
        aws_sdk_eventbridge::Client::new(&moto_sdk_config().await),
        &sub.bus,
    );
    // WHEN 12 events are published (two PutEvents calls: at most 10 entries each)
    let events = succeeded(12);
    let d = publisher.publish(&events).await;
    // THEN every one was accepted
    assert_eq!(d.accepted.len(), 12, "{d:?}");
    assert!(d.failed.is_empty());
    // AND the queue received each once, as EventBridge's envelope with our detail
    let got = sub.received(12, Duration::from_secs(5)).await;
    let ids = by_event_id(&got);
    assert_eq!(ids.len(), 12, "{got:?}");
    assert!(ids.values().all(|&n| n == 1), "{ids:?}");
    let first = got
        .iter()
        .find(|e| e["detail"]["event_id"] == events[0].id.as_str())
        .unwrap();
    assert_eq!(first["source"], "wxrefund");
    assert_eq!(first["detail-type"], "Refund Succeeded");
    assert_eq!(first["detail"]["refund"]["out_refund_no"], "R-EB-0");
    assert_eq!(first["detail"]["refund"]["status"], "SUCCESS");
    assert_eq!(first["detail"]["previous_status"], "PROCESSING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_eventbridge_refuses_are_sent_again_and_what_stays_refused_is_reported() {
    // GIVEN an EventBridge refusing the first 2 entries of the next PutEvents (a quota), whose
    // call itself succeeds
    let sub = subscribe().await;
    let faults = Faults::seeded(7);
    faults.add(FaultRule::next(1, Op::PutEvents, Fault::EntriesRefused(2)));
    let publisher = EventBridgePublisher::new(faulty_eventbridge(&faults).await, &sub.bus);
    let events = succeeded(3);
    // WHEN the three events are published
    let d = publisher.publish(&events).await;
    // THEN the refused ones were sent again: all three accepted, each delivered once
    assert_eq!(d.accepted.len(), 3, "{d:?}");
    assert_eq!(
        faults.requests(Op::PutEvents),
        2,
        "one send, then one of the 2 refused"
    );
    let got = sub.received(3, Duration::from_secs(5)).await;
    let ids = by_event_id(&got);
    assert_eq!(ids.len(), 3, "{got:?}");
    assert!(ids.values().all(|&n| n == 1), "{ids:?}");
    // GIVEN an EventBridge refusing every entry from now on
    faults.add(FaultRule {
        op: Op::PutEvents,
        fault: Fault::EntriesRefused(10),
        times: wxrefund::testing::Times::Always,
        skip: 0,
    });
    // WHEN two more are published
    let more = succeeded(2);
    let d = publisher.publish(&more).await;
    // THEN none is reported accepted: each is failed with EventBridge's reason (and stays in
    // the outbox for the poller), after the publisher's retries
    assert!(d.accepted.is_empty(), "{d:?}");
    assert_eq!(d.failed.len(), 2);
    assert!(d.failed[0].1.contains("ThrottlingException"), "{d:?}");
    assert_eq!(faults.requests(Op::PutEvents), 2 + 3);
    assert!(sub.received(0, Duration::from_millis(500)).await.is_empty());
}
