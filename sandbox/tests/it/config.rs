//! Settings that cannot work are refused by `Sandbox::start`, naming the setting, instead of being
//! bent into something else.

use std::time::Duration;

use wxpay_sandbox::{Sandbox, SandboxConfig, SandboxError};

use crate::common::*;

#[tokio::test]
async fn unusable_settings_are_refused_at_start() {
    // GIVEN configs with a zero rate, a retry factor that is not > 0, a zero notification timeout
    // or a notify_url that is not http(s)
    let cases: Vec<(SandboxConfig, &str)> = vec![
        (
            SandboxConfig {
                apply_qps: 0,
                ..config("cfg")
            },
            "apply_qps",
        ),
        (
            SandboxConfig {
                failure_qps: 0,
                ..config("cfg")
            },
            "failure_qps",
        ),
        (
            SandboxConfig {
                notify_retry_factor: 0.0,
                ..config("cfg")
            },
            "notify_retry_factor",
        ),
        (
            SandboxConfig {
                notify_retry_factor: f64::NAN,
                ..config("cfg")
            },
            "notify_retry_factor",
        ),
        (
            SandboxConfig {
                notify_timeout: Duration::ZERO,
                ..config("cfg")
            },
            "notify_timeout",
        ),
        (
            SandboxConfig {
                notify_url: Some("127.0.0.1:9000/notify".into()),
                ..config("cfg")
            },
            "notify_url",
        ),
    ];
    for (cfg, name) in cases {
        // WHEN the sandbox starts THEN it refuses, naming the setting
        match Sandbox::start(cfg).await {
            Err(SandboxError::Config(msg)) => assert!(msg.contains(name), "{name}: {msg}"),
            Err(e) => panic!("{name}: unexpected error {e}"),
            Ok(_) => panic!("{name}: started"),
        }
    }
}
