//! Test support shared by this crate's tests and the end-to-end suite: the AWS SDK pointed at the
//! moto server that `scripts/test` starts. Production code never calls it.

use aws_config::SdkConfig;

use crate::ledger::dynamo::{DynamoLedger, create_table};

/// The moto endpoint from `MOTO_ENDPOINT`. Tests that need it fail, never skip, without it.
pub fn moto_endpoint() -> String {
    std::env::var("MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "MOTO_ENDPOINT is not set: this test needs a moto server. Run the tests with \
             scripts/test (it starts moto and exports MOTO_ENDPOINT and the AWS_* variables)."
        )
    })
}

/// SDK configuration for moto, through a one-request-at-a-time relay (see [`serial_relay`]).
pub async fn moto_sdk_config() -> SdkConfig {
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let relay = serial_relay(&moto_endpoint()).await;
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(relay)
        .region(aws_config::Region::new(region))
        .load()
        .await
}

/// A [`DynamoLedger`] on a fresh table (`<prefix>-<uuid>`) on moto.
pub async fn fresh_dynamo_ledger(prefix: &str) -> DynamoLedger {
    let client = aws_sdk_dynamodb::Client::new(&moto_sdk_config().await);
    let table = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    if let Err(e) = create_table(&client, &table).await {
        panic!("create the ledger table on moto: {e}");
    }
    DynamoLedger::new(client, table)
}

/// A one-connection-at-a-time TCP relay in front of moto, returning its endpoint URL. It lives on
/// the calling test's runtime.
///
/// Why: DynamoDB executes each request (a transaction included) atomically and serializably.
/// moto's server is threaded without a lock around DynamoDB, and its TransactWriteItems applies
/// items one by one and, on cancellation, restores a deep copy of the whole table taken when the
/// transaction started, wiping writes other requests made meanwhile. Concurrent requests to moto
/// therefore lose committed writes, which DynamoDB never does. moto answers every request with
/// `Connection: close`, so relaying one connection at a time makes each request atomic again
/// (what DynamoDB guarantees) while our tasks still race each other between requests.
pub async fn serial_relay(endpoint: &str) -> String {
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let Some(upstream) = tokio::net::lookup_host(&authority)
        .await
        .ok()
        .and_then(|mut a| a.next())
    else {
        panic!("MOTO_ENDPOINT {endpoint:?} is not http://host:port");
    };
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind the moto relay: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("moto relay address: {e}"),
    };
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            // One connection (= one request with moto) at a time.
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        }
    });
    format!("http://{addr}")
}
