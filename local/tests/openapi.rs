//! The generated OpenAPI document (`wxrefund::http::openapi`) checked against the code: it lists
//! exactly the routes of `wxrefund::http::router`, each documented status is one the route
//! answers, and the schemas name exactly the serde fields of the API types.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::Value;
use tower::ServiceExt;
use wxrefund::correction::{CorrectionKind, FactSource};
use wxrefund::http::{CorrectionView, CreateRefund, OrderRefunds, RefundView};
use wxrefund::ledger::embedded::EmbeddedLedger;
use wxrefund::reason::Reason;
use wxrefund::service::{RefundService, ServiceConfig};
use wxrefund::state::{LastError, RefundStatus};

mod common;

use common::{Offline, router, send};

fn doc() -> Value {
    serde_json::from_str(&wxrefund::http::openapi_json("http://127.0.0.1:9").expect("document"))
        .expect("the document is JSON")
}

/// Whether a property's schema allows `null` (OpenAPI 3.1: `"type": [.., "null"]`, or a
/// `oneOf` with a `{"type": "null"}` arm).
fn allows_null(p: &Value) -> bool {
    p["type"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t == "null"))
        || p["oneOf"]
            .as_array()
            .is_some_and(|arms| arms.iter().any(|a| a["type"] == "null"))
}

#[test]
fn the_document_lists_every_route_of_the_router_and_no_other() {
    // GIVEN the router's own route table and the generated document
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = wxrefund::http::routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_owned()))
        .collect();
    // THEN they are the same set: a new route cannot go undocumented
    assert_eq!(documented, served);
    // AND every error code the code can answer is in the Error schema
    let codes = names(&doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]);
    let all: BTreeSet<String> = wxrefund::http::ERROR_CODES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    assert_eq!(codes, all);
    // AND every operation's 429 carries Retry-After
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (m, op) in ops.as_object().expect("operations") {
            if let Some(r) = op["responses"].get("429") {
                assert!(
                    r["headers"]["Retry-After"].is_object(),
                    "{m} {path}: 429 without Retry-After"
                );
            }
        }
    }
}

/// The router's own "no route" answers, as opposed to a handler's 404 for a missing refund.
fn is_fallback(status: StatusCode, body: &str) -> bool {
    status == StatusCode::METHOD_NOT_ALLOWED
        || (status == StatusCode::NOT_FOUND && body.contains("no such route"))
}

#[tokio::test]
async fn every_documented_operation_is_a_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = router(&dir);
    let doc = doc();
    let paths = doc["paths"].as_object().expect("paths");
    assert_eq!(
        paths.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(
            [
                "/refunds",
                "/refunds/{out_refund_no}",
                "/orders/{out_trade_no}/refunds",
                "/wxpay/refund-notify",
                "/reconciliations",
                "/reconciliations/{bill_date}",
            ]
            .map(String::from)
        )
    );
    let mut checked = 0;
    for (path, ops) in paths {
        let uri = path
            .replace("{out_refund_no}", "R-openapi-1")
            .replace("{out_trade_no}", "order-openapi-1")
            .replace("{bill_date}", "2026-01-02");
        for (method, op) in ops.as_object().expect("operations") {
            let m: Method = method.to_uppercase().parse().expect("method");
            let (status, body) = send(&router, m.clone(), &uri, "{}").await;
            assert!(
                !is_fallback(status, &body),
                "{method} {path} is not a route: {status} {body}"
            );
            let documented: BTreeSet<u16> = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(|k| k.parse().expect("numeric status"))
                .collect();
            assert!(
                documented.contains(&status.as_u16()),
                "{method} {path} answered {status}, which is not documented ({documented:?}): {body}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 7);
    // The check above can tell a missing route from a real one.
    let (s, b) = send(&router, Method::GET, "/no-such-path", "").await;
    assert!(is_fallback(s, &b));
    let (s, b) = send(&router, Method::DELETE, "/refunds", "").await;
    assert!(is_fallback(s, &b));
}

#[tokio::test]
async fn documented_statuses_of_post_refunds_are_reachable_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = router(&dir);
    let ok =
        r#"{"out_refund_no":"R-oa-2","out_trade_no":"order-oa-2","total_fee":100,"refund_fee":10}"#;
    let (s, body) = send(&router, Method::POST, "/refunds", ok).await;
    // WeChat is offline: recorded and left to the poller, still 202.
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let view: RefundView = serde_json::from_str(&body).expect("a RefundView");
    assert_eq!(view.status, RefundStatus::RetryWait);
    let reused =
        r#"{"out_refund_no":"R-oa-2","out_trade_no":"order-oa-2","total_fee":100,"refund_fee":11}"#;
    let (s, body) = send(&router, Method::POST, "/refunds", reused).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let over =
        r#"{"out_refund_no":"R-oa-3","out_trade_no":"order-oa-2","total_fee":100,"refund_fee":95}"#;
    let (s, body) = send(&router, Method::POST, "/refunds", over).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let big = format!(r#"{{"refund_desc":"{}"}}"#, "x".repeat(20_000));
    let (s, body) = send(&router, Method::POST, "/refunds", &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (s, body) = send(&router, Method::GET, "/refunds/R-oa-404", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let (s, body) = send(&router, Method::GET, "/orders/order-oa-2/refunds", "").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    let (s, body) = send(&router, Method::GET, "/reconciliations/2999-01-01", "").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Every error code seen is in the Error schema's enum, and the body has exactly its fields.
    let doc = doc();
    let codes: BTreeSet<String> =
        doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
            .as_array()
            .expect("error enum")
            .iter()
            .map(|v| v.as_str().expect("string").to_owned())
            .collect();
    for (m, uri, b) in [
        (Method::POST, "/refunds", reused),
        (Method::POST, "/refunds", over),
        (Method::POST, "/refunds", "{"),
        (Method::GET, "/refunds/R-oa-404", ""),
        (Method::GET, "/refunds/R-oa-2?x=1", ""),
        (Method::GET, "/orders/order-oa-2/refunds", ""),
        (Method::GET, "/nope", ""),
    ] {
        let (_, body) = send(&router, m, uri, b).await;
        let v: Value = serde_json::from_str(&body).expect("error JSON");
        assert_eq!(keys(&v), set(&["error", "message"]), "{body}");
        let code = v["error"].as_str().expect("code");
        assert!(codes.contains(code), "error code {code} is not documented");
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn schema(name: &str) -> Value {
    doc()["components"]["schemas"][name].clone()
}

fn properties(name: &str) -> BTreeSet<String> {
    keys(&schema(name)["properties"])
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// The field names serde's derive knows for `T` (it hands them to `deserialize_struct`).
fn serde_fields<'de, T: Deserialize<'de>>() -> BTreeSet<String> {
    struct Probe<'a>(&'a mut Vec<&'static str>);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.extend_from_slice(fields);
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields = Vec::new();
    let _ = T::deserialize(Probe(&mut fields));
    assert!(!fields.is_empty(), "not a struct");
    fields.into_iter().map(str::to_owned).collect()
}

fn sample_view(filled: bool) -> RefundView {
    let some = |s: &str| filled.then(|| s.to_owned());
    RefundView {
        out_refund_no: "R-1".into(),
        out_trade_no: some("order-1"),
        transaction_id: some("4200000000000000000000000001"),
        refund_id: some("50000000000000000000000000001"),
        total_fee: 1000,
        refund_fee: 300,
        status: RefundStatus::Success,
        attempts: 1,
        last_error: filled.then(|| LastError {
            code: "SYSTEMERROR".into(),
            message: "x".into(),
        }),
        refund_recv_account: some("支付用户零钱"),
        success_time: some("2026-01-01 12:00:00"),
        created_at: "2026-01-01T04:00:00Z".into(),
        updated_at: "2026-01-01T04:00:02Z".into(),
        external: false,
        needs_person: filled,
        corrections: if filled {
            vec![CorrectionView {
                from: RefundStatus::Failed,
                to: RefundStatus::Success,
                kind: CorrectionKind::Contradiction,
                source: FactSource::Notification,
                at: "2026-01-02T04:00:00Z".into(),
            }]
        } else {
            vec![]
        },
        failure_reason: filled.then_some(Reason::AccountAbnormal),
        pending_reason: filled.then_some(Reason::InsufficientFunds),
        metadata: if filled {
            [("crm".to_owned(), "ticket-9".to_owned())].into()
        } else {
            Default::default()
        },
    }
}

#[test]
fn refund_view_schema_matches_its_serde_fields() {
    let full = serde_json::to_value(sample_view(true)).expect("serialize");
    let props = properties("RefundView");
    assert_eq!(keys(&full), props);
    assert_eq!(serde_fields::<RefundView>(), props);
    // Every field is always present (None is null), so all are required...
    assert_eq!(names(&schema("RefundView")["required"]), props);
    // ...and exactly the Option fields are nullable.
    let empty = serde_json::to_value(sample_view(false)).expect("serialize");
    let nulls: BTreeSet<String> = empty
        .as_object()
        .expect("object")
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k.clone())
        .collect();
    let nullable: BTreeSet<String> = schema("RefundView")["properties"]
        .as_object()
        .expect("properties")
        .iter()
        .filter(|(_, p)| allows_null(p))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(nulls, nullable);
    // Types: integers, booleans and strings where serde puts them.
    for (k, v) in full.as_object().expect("object") {
        let p = &schema("RefundView")["properties"][k];
        // `"type": "string"`, or `["string", "null"]` for an Option; an enum or a struct by `$ref`,
        // or `oneOf` [null, $ref] for an optional one.
        let ty = p["type"]
            .as_str()
            .or_else(|| {
                p["type"]
                    .as_array()
                    .and_then(|t| t.iter().find(|t| *t != "null"))
                    .and_then(Value::as_str)
            })
            .unwrap_or("object");
        let by_ref = p["$ref"].is_string() || p["oneOf"].is_array();
        let ok = match v {
            Value::Number(_) => ty == "integer",
            Value::Bool(_) => ty == "boolean",
            Value::String(_) => ty == "string" || by_ref,
            Value::Object(_) => by_ref || ty == "object",
            Value::Array(_) => ty == "array",
            _ => false,
        };
        assert!(ok, "{k}: {v} vs schema {p}");
    }
    let statuses = names(&schema("RefundStatus")["enum"]);
    let wire: BTreeSet<String> = RefundStatus::ALL
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .expect("status")
                .as_str()
                .expect("string")
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, wire);
    // The normalized reasons: every one the code can answer, and no other.
    let reasons = [
        Reason::Submitting,
        Reason::Processing,
        Reason::InsufficientFunds,
        Reason::RateLimited,
        Reason::WechatBusy,
        Reason::WechatUnreachable,
        Reason::OutcomeUnknown,
        Reason::OrderNotReady,
        Reason::MerchantMisconfigured,
        Reason::NeedsManualAction,
        Reason::ClosedByWechat,
        Reason::AccountAbnormal,
        Reason::OrderNotFound,
        Reason::AmountMismatch,
        Reason::OrderTooOld,
        Reason::InvalidRequest,
        Reason::Refused,
    ];
    let wire_reasons: BTreeSet<String> = reasons
        .iter()
        .map(|r| {
            serde_json::to_value(r)
                .expect("reason")
                .as_str()
                .expect("string")
                .to_owned()
        })
        .collect();
    assert_eq!(names(&schema("Reason")["enum"]), wire_reasons);
    let last_error = serde_json::to_value(LastError {
        code: "c".into(),
        message: "m".into(),
    })
    .expect("serialize");
    assert_eq!(keys(&last_error), properties("LastError"));
    assert_eq!(serde_fields::<LastError>(), properties("LastError"));
}

#[test]
fn create_refund_and_order_refunds_schemas_match_their_serde_fields() {
    let props = properties("CreateRefund");
    // transaction_id is a serde field only so that it can be refused by name; it is not documented
    let mut fields = serde_fields::<CreateRefund>();
    assert!(fields.remove("transaction_id"));
    assert_eq!(fields, props);
    assert_eq!(
        schema("CreateRefund")["additionalProperties"],
        Value::Bool(false),
        "the API rejects unknown fields"
    );
    // The documented required fields make a valid request, and without any one of them it is
    // refused (by serde, or by validation for out_trade_no, which serde sees as optional).
    let required = names(&schema("CreateRefund")["required"]);
    let minimal = serde_json::json!({"out_refund_no": "R-1", "out_trade_no": "order-1",
                                     "total_fee": 100, "refund_fee": 10});
    assert_eq!(keys(&minimal), required);
    let valid = |v: &Value| {
        CreateRefund::from_json(v.to_string().as_bytes())
            .and_then(CreateRefund::validate)
            .map_err(|e| e.message)
    };
    valid(&minimal).expect("required fields suffice");
    for k in &required {
        let mut less = minimal.clone();
        less.as_object_mut().expect("object").remove(k);
        assert!(valid(&less).is_err(), "{k}");
    }
    let accounts = names(&schema("RefundAccount")["enum"]);
    assert_eq!(accounts.len(), 2);
    for a in &accounts {
        assert!(a.parse::<wxpay::refund::RefundAccount>().is_ok(), "{a}");
    }

    let list = serde_json::to_value(OrderRefunds {
        out_trade_no: "order-1".into(),
        refunds: vec![sample_view(true)],
    })
    .expect("serialize");
    assert_eq!(keys(&list), properties("OrderRefunds"));
    assert_eq!(serde_fields::<OrderRefunds>(), properties("OrderRefunds"));
    assert_eq!(
        schema("OrderRefunds")["properties"]["refunds"]["items"]["$ref"],
        "#/components/schemas/RefundView"
    );
}

#[tokio::test]
async fn each_function_serves_only_its_own_routes() {
    // GIVEN the three Lambda functions' routers on one service
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = EmbeddedLedger::open(dir.path().join("ledger.redb")).expect("ledger");
    let svc = Arc::new(RefundService::new(
        Arc::new(ledger),
        Arc::new(Offline),
        wxrefund::testing::RecordingPublisher::new(),
        ServiceConfig::default(),
    ));
    let refund = wxrefund::http::refund_router(Arc::clone(&svc));
    let query = wxrefund::http::query_router(Arc::clone(&svc), std::time::Duration::from_secs(1));
    let notify = wxrefund::http::notify_router(svc);
    let routes = [
        (Method::POST, "/refunds"),
        (Method::GET, "/refunds?needs_person=true"),
        (Method::GET, "/refunds/R-1"),
        (Method::GET, "/orders/ORDER-1/refunds"),
        (Method::POST, "/wxpay/refund-notify"),
        (Method::POST, wxrefund::http::EVENTS_PATH),
    ];
    for (name, router, serves) in [
        ("refund", &refund, [true, false, false, false, false, false]),
        (
            "refund-query",
            &query,
            [false, true, true, true, false, true],
        ),
        (
            "refund-notify",
            &notify,
            [false, false, false, false, true, false],
        ),
    ] {
        for ((method, uri), want) in routes.iter().zip(serves) {
            // WHEN each route is asked of each function THEN only its own answer
            let (status, body) = send(router, method.clone(), uri, "{}").await;
            assert_eq!(
                !is_fallback(status, &body),
                want,
                "{name}: {method} {uri} → {status} {body}"
            );
        }
    }
}

/// Log output captured in memory.
#[tokio::test]
async fn malformed_paths_queries_and_media_types_get_the_json_envelope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = router(&dir);
    for (method, uri, content_type, status, code) in [
        // a path that is not UTF-8
        (
            Method::GET,
            "/refunds/%FF",
            "application/json",
            400,
            "invalid_path",
        ),
        (
            Method::GET,
            "/orders/%FF/refunds",
            "application/json",
            400,
            "invalid_path",
        ),
        // an unknown query parameter, on both GET routes
        (
            Method::GET,
            "/refunds/R-1?verbose=1",
            "application/json",
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/orders/ORDER-1/refunds?verbose=1",
            "application/json",
            400,
            "invalid_query",
        ),
        // a refund request that is not sent as JSON
        (
            Method::POST,
            "/refunds",
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (Method::POST, "/refunds", "", 415, "unsupported_media_type"),
    ] {
        let mut req = Request::builder().method(method.clone()).uri(uri);
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        let body =
            r#"{"out_refund_no":"R-1","out_trade_no":"ORDER-1","total_fee":100,"refund_fee":1}"#;
        let resp = router
            .clone()
            .oneshot(req.body(Body::from(body)).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(resp.status().as_u16(), status, "{method} {uri}");
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{method} {uri}"
        );
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(v["error"], code, "{method} {uri}: {v}");
    }
    // AND a JSON content type with parameters is JSON
    let req = Request::builder()
        .method(Method::POST)
        .uri("/refunds")
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(Body::from("{"))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn reconciliation_schemas_match_their_serde_fields() {
    use wxrefund::http::{
        CreateReconciliation, DiscrepancyView, ReconciliationView, SideView, TotalsView,
    };
    use wxrefund::reconcile::{DiscrepancyKind, ReportStatus, Resolution};
    // GIVEN a report with one discrepancy, serialised as the API answers it
    let side = SideView {
        status: "SUCCESS".into(),
        refund_fee: 1,
    };
    let view = ReconciliationView {
        bill_date: "2026-01-02".into(),
        status: ReportStatus::Mismatched,
        bill: TotalsView {
            refunds: 1,
            refund_fee: 1,
        },
        ledger: TotalsView {
            refunds: 0,
            refund_fee: 0,
        },
        discrepancies: vec![DiscrepancyView {
            kind: DiscrepancyKind::MissingInLedger,
            out_refund_no: "R-1".into(),
            out_trade_no: Some("O-1".into()),
            bill: Some(side),
            ledger: None,
            resolution: Resolution::RecordedExternal,
            detail: "d".into(),
        }],
        started_at: "2026-01-02T04:00:00Z".into(),
        finished_at: "2026-01-02T04:00:01Z".into(),
    };
    let v = serde_json::to_value(&view).expect("serialize");
    // THEN every schema names exactly the serde fields
    assert_eq!(keys(&v), properties("ReconciliationView"));
    assert_eq!(
        serde_fields::<ReconciliationView>(),
        properties("ReconciliationView")
    );
    assert_eq!(keys(&v["bill"]), properties("TotalsView"));
    assert_eq!(keys(&v["discrepancies"][0]), properties("DiscrepancyView"));
    assert_eq!(keys(&v["discrepancies"][0]["bill"]), properties("SideView"));
    assert_eq!(
        serde_fields::<CreateReconciliation>(),
        properties("CreateReconciliation")
    );
    // AND the enums list exactly the wire values
    let wire = |vals: Vec<Value>| -> BTreeSet<String> {
        vals.iter()
            .map(|v| v.as_str().expect("string").to_owned())
            .collect()
    };
    assert_eq!(
        names(&schema("ReportStatus")["enum"]),
        wire(
            [
                ReportStatus::Matched,
                ReportStatus::Mismatched,
                ReportStatus::NoBill,
                ReportStatus::NotReady
            ]
            .iter()
            .map(|s| serde_json::to_value(s).expect("status"))
            .collect()
        )
    );
    let kinds = [
        DiscrepancyKind::MissingInLedger,
        DiscrepancyKind::MissingInBill,
        DiscrepancyKind::AmountMismatch,
        DiscrepancyKind::StatusMismatch,
    ];
    assert_eq!(
        names(&schema("DiscrepancyKind")["enum"]),
        wire(
            kinds
                .iter()
                .map(|k| serde_json::to_value(k).expect("kind"))
                .collect()
        )
    );
    let resolutions = [
        Resolution::RecordedExternal,
        Resolution::UpdatedByQuery,
        Resolution::CorrectedByQuery,
        Resolution::ConfirmedByQuery,
        Resolution::FlaggedForPerson,
        Resolution::NotConfirmed,
        Resolution::Unresolved,
    ];
    assert_eq!(
        names(&schema("Resolution")["enum"]),
        wire(
            resolutions
                .iter()
                .map(|r| serde_json::to_value(r).expect("resolution"))
                .collect()
        )
    );
}
