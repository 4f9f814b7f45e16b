//! A flood of forged refund notifications against the real gateway (issue 14.5): the notify route
//! is public, so what a forgery may cost is bounded and measured here. The merchant secret lives
//! in Secrets Manager on moto, reached through the counting relay of `wxrefund::testing`, so every
//! secret fetch a forgery causes is counted. Needs MOTO_ENDPOINT (set by scripts/test).

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use wxpay::NonceStr;
use wxpay::client::ClientConfig;
use wxrefund::gateway::{Gateway, WxPayGateway};
use wxrefund::secrets::{MerchantConfig, SecretSource};
use wxrefund::testing::{Faults, Op, fault_relay, moto_endpoint};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const FORGER_KEY: &str = "0123456789abcdefghijklmnopqrstuv";
const FORGERIES: usize = 500;

fn merchant_json(key: &str) -> String {
    let path = format!(
        "{}/../wxpay/tests/fixtures/merchant-legacy.p12",
        env!("CARGO_MANIFEST_DIR")
    );
    let p12 = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"));
    serde_json::json!({
        "appid": "wx2421b1c4370ec43b",
        "mch_id": "1900000109",
        "api_v2_key": key,
        "cert_p12_base64": B64.encode(p12),
    })
    .to_string()
}

/// A notification for `out_refund_no` as WeChat would send it, encrypted with `key`.
fn notification(out_refund_no: &str, key: &str) -> String {
    let merchant = MerchantConfig::from_json(&merchant_json(key), SystemTime::now())
        .unwrap_or_else(|e| panic!("merchant: {e}"));
    let inner = [
        ("appid", "wx2421b1c4370ec43b"),
        ("mch_id", "1900000109"),
        ("transaction_id", "4200000000202612030000000001"),
        ("out_trade_no", "ORDER-FLOOD-1"),
        ("refund_id", "50000000002026120300000000001"),
        ("out_refund_no", out_refund_no),
        ("total_fee", "1000"),
        ("refund_fee", "100"),
        ("refund_status", "SUCCESS"),
        ("success_time", "2026-12-03 10:00:00"),
    ];
    wxpay::notify::build(&inner, &merchant.merchant_keys(), &NonceStr::random())
        .unwrap_or_else(|e| panic!("notification: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_notifications_cost_at_most_one_secret_fetch() {
    // GIVEN the merchant secret in Secrets Manager (on moto, behind a counting relay)
    let faults = Faults::default();
    let relay = fault_relay(&moto_endpoint(), faults.clone()).await;
    let conf = aws_config::from_env().endpoint_url(&relay).load().await;
    let client = aws_sdk_secretsmanager::Client::new(&conf);
    let id = format!("wxrefund/test/flood-{}", uuid::Uuid::new_v4());
    client
        .create_secret()
        .name(&id)
        .secret_string(merchant_json(KEY))
        .send()
        .await
        .expect("create the secret");
    let source = SecretSource::secrets_manager(client, &id);
    let merchant = source.load().await.expect("load the secret");
    // AND a gateway (its WeChat endpoint unreachable: decrypting a notification never calls WeChat)
    let wechat = ClientConfig {
        base_url: "https://127.0.0.1:9".into(),
        ..ClientConfig::default()
    };
    let gateway =
        std::sync::Arc::new(WxPayGateway::new(&merchant, wechat, Some(source)).expect("gateway"));
    let before = faults.requests(Op::Any);

    // WHEN 500 notifications encrypted with another key arrive, concurrently in bursts of 50
    let forged = notification("R-FLOOD-1", FORGER_KEY);
    let mut refused = 0;
    for _ in 0..FORGERIES / 50 {
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (gateway, body) = (std::sync::Arc::clone(&gateway), forged.clone());
            burst.spawn(async move { gateway.decrypt_notification(body.as_bytes()).await });
        }
        for outcome in burst.join_all().await {
            refused += usize::from(outcome.is_err());
        }
    }

    // THEN every one is refused
    assert_eq!(refused, FORGERIES);
    // AND together they fetched the secret at most once (one reload per 30 s, not one per forgery)
    let fetches = faults.requests(Op::Any) - before;
    assert!(
        fetches <= 1,
        "{fetches} secret fetches for {FORGERIES} forgeries"
    );
    // AND a genuine notification still decrypts, with no further fetch
    let genuine = gateway
        .decrypt_notification(notification("R-FLOOD-2", KEY).as_bytes())
        .await
        .expect("a genuine notification decrypts");
    assert_eq!(genuine.out_refund_no.as_str(), "R-FLOOD-2");
    assert_eq!(faults.requests(Op::Any) - before, fetches);
    println!("{FORGERIES} forged notifications: {refused} refused, {fetches} secret fetch(es)");
}
