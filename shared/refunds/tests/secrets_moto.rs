//! The merchant secret through the real AWS SDK against moto: initial load and key rotation.
//! Needs MOTO_ENDPOINT (set by scripts/test); fails, never skips, without it.

use aws_sdk_secretsmanager::Client;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use wxpay::SignType;
use wxrefund::secrets::{SecretSource, SecretsError};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const ROTATED: &str = "ROTATEDkey0123456789abcdefghijkl";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../wxpay/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

async fn moto() -> Client {
    let endpoint = wxrefund::testing::moto_endpoint();
    let conf = aws_config::from_env().endpoint_url(endpoint).load().await;
    Client::new(&conf)
}

fn secret_json(key: &str) -> String {
    serde_json::json!({
        "appid": "wx2421b1c4370ec43b",
        "mch_id": "1900000109",
        "api_v2_key": key,
        "cert_p12_base64": B64.encode(fixture("merchant-legacy.p12")),
        "sign_type": "HMAC-SHA256",
    })
    .to_string()
}

fn unique(name: &str) -> String {
    format!("wxrefund/test/{name}-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn secret_string_json_is_loaded_and_validated() {
    // GIVEN the merchant secret stored as SecretString JSON
    let client = moto().await;
    let id = unique("load");
    client
        .create_secret()
        .name(&id)
        .secret_string(secret_json(KEY))
        .send()
        .await
        .expect("create");
    // WHEN loaded through the SDK
    let cfg = SecretSource::secrets_manager(client, &id)
        .load()
        .await
        .expect("load");
    // THEN every field is read and the legacy p12 is parsed
    assert_eq!(cfg.mch_id.as_str(), "1900000109");
    assert_eq!(cfg.api_v2_key.expose(), KEY);
    assert_eq!(cfg.sign_type, SignType::HmacSha256);
    assert_eq!(cfg.identity.info().serial_hex, "4D2A11");
}

#[tokio::test]
async fn reload_sees_a_rotated_key() {
    // GIVEN a loaded secret
    let client = moto().await;
    let id = unique("rotate");
    client
        .create_secret()
        .name(&id)
        .secret_string(secret_json(KEY))
        .send()
        .await
        .expect("create");
    let source = SecretSource::secrets_manager(client.clone(), &id);
    assert_eq!(source.load().await.expect("load").api_v2_key.expose(), KEY);
    // WHEN a new version is put (rotation) and the source reloaded
    client
        .put_secret_value()
        .secret_id(&id)
        .secret_string(secret_json(ROTATED))
        .send()
        .await
        .expect("put");
    let cfg = source.reload().await.expect("reload");
    // THEN the new key is in use
    assert_eq!(cfg.api_v2_key.expose(), ROTATED);
}

#[tokio::test]
async fn missing_secret_is_a_fetch_error_naming_the_id() {
    // GIVEN a secret id that does not exist
    let client = moto().await;
    let id = unique("missing");
    // WHEN loaded
    let err = SecretSource::secrets_manager(client, &id)
        .load()
        .await
        .unwrap_err();
    // THEN
    assert!(matches!(err, SecretsError::Fetch { .. }), "{err:?}");
    assert!(err.to_string().contains(&id));
}

#[tokio::test]
async fn invalid_secret_content_is_rejected_without_echoing_it() {
    // GIVEN a secret whose key is the 64-char APIv3 key by mistake
    let client = moto().await;
    let id = unique("v3key");
    let v3 = "A".repeat(64);
    client
        .create_secret()
        .name(&id)
        .secret_string(secret_json(&v3))
        .send()
        .await
        .expect("create");
    // WHEN loaded
    let err = SecretSource::secrets_manager(client, &id)
        .load()
        .await
        .unwrap_err();
    // THEN the length error is reported and the key is not shown
    assert_eq!(
        err.to_string(),
        "api_v2_key must be exactly 32 characters, got 64 (is this the APIv3 key?)"
    );
    assert!(!format!("{err:?}").contains(&v3));
}
