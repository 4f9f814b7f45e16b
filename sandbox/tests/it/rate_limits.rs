//! 150 qps for refund apply, 6 qps for failing requests → FREQUENCY_LIMITED (limits lowered here).

use wxpay_sandbox::{Sandbox, SandboxConfig};

use crate::common::*;

#[tokio::test]
async fn apply_rate_limit_answers_frequency_limited() {
    // GIVEN an apply limit of 5 qps (and a generous failure budget)
    let sb = Sandbox::start(SandboxConfig {
        apply_qps: 5,
        ..config("qps")
    })
    .await
    .unwrap();
    order(&sb, "order-q", 10_000);
    // WHEN 20 refunds are applied at once
    let mut codes = Vec::new();
    for i in 0..20 {
        let r = apply(&sb, "order-q", &format!("q-{i}"), 10_000, 1).await;
        codes.push(r.get("err_code").unwrap_or("OK").to_string());
    }
    // THEN the first burst passes and the rest are FREQUENCY_LIMITED, signed, and not taken
    let ok = codes.iter().filter(|c| *c == "OK").count();
    let limited = codes.iter().filter(|c| *c == "FREQUENCY_LIMITED").count();
    assert!((5..20).contains(&ok), "{codes:?}");
    assert_eq!(ok + limited, 20, "{codes:?}");
    assert_eq!(sb.books().order("order-q").unwrap().refund_count, ok);
    let r = apply(&sb, "order-q", "q-last", 10_000, 1).await;
    if r.get("err_code") == Some("FREQUENCY_LIMITED") {
        assert_biz_fail(&sb, &r, "FREQUENCY_LIMITED");
    }
}

#[tokio::test]
async fn failing_requests_have_their_own_small_budget() {
    // GIVEN the default 6 qps failure budget
    let sb = Sandbox::start(SandboxConfig {
        failure_qps: 6,
        ..config("failqps")
    })
    .await
    .unwrap();
    order(&sb, "order-fq", 100);
    // WHEN 12 failing requests (unknown order) arrive at once
    let mut codes = Vec::new();
    for i in 0..12 {
        let r = apply(&sb, "order-none", &format!("fq-{i}"), 100, 1).await;
        codes.push(r.get("err_code").unwrap_or("").to_string());
    }
    // THEN the first 6 get their real error, later ones FREQUENCY_LIMITED
    assert!(codes[..6].iter().all(|c| c == "ORDERNOTEXIST"), "{codes:?}");
    assert!(
        codes[6..].iter().any(|c| c == "FREQUENCY_LIMITED"),
        "{codes:?}"
    );
    // AND successful requests are not blocked by the failure budget
    let r = apply(&sb, "order-fq", "fq-ok", 100, 1).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
}
