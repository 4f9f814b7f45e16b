//! Every class of bad HTTP input, through the real router: a clear status and a JSON
//! `{"error", "message"}` body, and nothing reaches the ledger or WeChat.

mod common;

use axum::http::{Method, StatusCode};
use common::{Stack, refund_body};

fn assert_error_body(what: &str, body: &serde_json::Value, code: &str) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {body}"));
    assert_eq!(obj.len(), 2, "{what}: exactly error and message: {body}");
    assert_eq!(body["error"], code, "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_json_errors_and_touch_nothing() {
    // GIVEN a stack with a paid order
    let stack = Stack::new().await;
    stack.create_order("ORDER-HTTP-1", 1000);
    let good = refund_body("R-HTTP-1", "ORDER-HTTP-1", 1000, 10);

    // malformed JSON → 400
    let (status, body) = stack
        .call(
            Method::POST,
            "/refunds",
            Some(br#"{"out_refund_no":"R-HTTP-1","#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_body("malformed JSON", &body, "invalid_json");

    // deeply nested JSON (8,000 levels, under the size cap) → 400, without exhausting the stack:
    // serde_json stops at 128 levels, as a bare array and inside a field
    let depth = 8_000;
    let bare = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let in_field = format!(
        r#"{{"out_refund_no":{}{}}}"#,
        "[".repeat(depth - 10),
        "]".repeat(depth - 10)
    );
    for (what, deep) in [("nested arrays", bare), ("nested in a field", in_field)] {
        assert!(
            deep.len() <= wxrefund::http::MAX_JSON_BODY,
            "{what}: under the cap"
        );
        let (status, body) = stack
            .call(Method::POST, "/refunds", Some(deep.into_bytes()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_error_body(what, &body, "invalid_json");
    }

    // an unknown field → 400 naming it
    let mut unknown = good.clone();
    unknown["amount"] = 10.into();
    let (status, body) = stack.post_refund(&unknown).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_body("unknown field", &body, "validation_error");
    assert!(
        body["message"].as_str().unwrap().contains("amount"),
        "{body}"
    );

    // a valid shape whose fields disagree → 422 (refund_fee over total_fee)
    let (status, body) = stack
        .post_refund(&refund_body("R-HTTP-1", "ORDER-HTTP-1", 1000, 1001))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error_body("refund over total", &body, "refund_exceeds_order");

    // a body over 16 KiB → 413
    let mut big = good.clone();
    big["refund_desc"] = "x".repeat(wxrefund::http::MAX_JSON_BODY + 1).into();
    let (status, body) = stack.post_refund(&big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_error_body("oversize body", &body, "body_too_large");

    // an unknown refund → 404
    let (status, body) = stack.get_refund("R-NOPE-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_body("unknown refund", &body, "not_found");

    // an unknown route → 404
    let (status, body) = stack.call(Method::GET, "/nowhere", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_body("unknown route", &body, "not_found");

    // the wrong method → 405 (GET /refunds is the needs-person list, so PATCH stands in)
    for (method, uri) in [
        (Method::PATCH, "/refunds"),
        (Method::DELETE, "/refunds/R-HTTP-1"),
        (Method::PUT, "/orders/ORDER-HTTP-1/refunds"),
    ] {
        let (status, body) = stack.call(method.clone(), uri, None).await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {body}"
        );
        assert_error_body(&format!("{method} {uri}"), &body, "method_not_allowed");
    }

    // an unknown query parameter → 400
    let (status, body) = stack
        .call(Method::GET, "/refunds/R-HTTP-1?refrsh=true", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_body("unknown query parameter", &body, "invalid_query");

    // THEN none of it reached the ledger or WeChat
    assert!(stack.maybe_record("R-HTTP-1").await.is_none());
    assert_eq!(stack.apply_calls("R-HTTP-1"), 0);
    assert_eq!(stack.order_books("ORDER-HTTP-1").refund_count, 0);

    // AND the good request still works afterwards
    let (status, view) = stack.post_refund(&good).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(stack.apply_calls("R-HTTP-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_stored_echoed_part_of_the_idempotency_check_and_bounded() {
    // GIVEN a paid order
    let stack = Stack::new().await;
    stack.create_order("ORDER-MD-1", 1000);
    let mut body = refund_body("R-MD-1", "ORDER-MD-1", 1000, 100);
    body["metadata"] = serde_json::json!({"crm_ticket": "T-42", "备注": "退货"});
    // WHEN a refund is asked with metadata THEN the refund echoes it, as stored
    let (status, view) = stack.post_refund(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["metadata"], body["metadata"], "{view}");
    let (_, got) = stack.get_refund("R-MD-1").await;
    assert_eq!(got["metadata"], body["metadata"], "{got}");
    // AND a replay with the same metadata is the same refund; with other metadata a reused key
    let (status, _) = stack.post_refund(&body).await;
    assert!(status.is_success(), "{status}");
    let mut other = body.clone();
    other["metadata"]["crm_ticket"] = "T-43".into();
    let (status, err) = stack.post_refund(&other).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_error_body("other metadata", &err, "idempotency_key_reused");
    // AND a refund without metadata shows {}
    let (_, plain) = stack
        .post_refund(&refund_body("R-MD-2", "ORDER-MD-1", 1000, 100))
        .await;
    assert_eq!(plain["metadata"], serde_json::json!({}), "{plain}");
    // AND metadata over its limits, or not strings, is refused naming it, and nothing is recorded
    let too_many: serde_json::Map<String, serde_json::Value> =
        (0..21).map(|i| (format!("k{i}"), "v".into())).collect();
    for (n, metadata, code) in [
        (3, serde_json::Value::Object(too_many), "validation_error"),
        (
            4,
            serde_json::json!({"k": "v".repeat(501)}),
            "validation_error",
        ),
        (
            5,
            serde_json::json!({"k".repeat(41): "v"}),
            "validation_error",
        ),
        (6, serde_json::json!({"k": 1}), "validation_error"),
    ] {
        let no = format!("R-MD-{n}");
        let mut bad = refund_body(&no, "ORDER-MD-1", 1000, 100);
        bad["metadata"] = metadata;
        let (status, err) = stack.post_refund(&bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{no}: {err}");
        assert_error_body(&no, &err, code);
        if code == "validation_error" {
            assert!(
                err["message"].as_str().unwrap().contains("metadata"),
                "{err}"
            );
        }
        assert!(stack.maybe_record(&no).await.is_none(), "{no} recorded");
    }
}
