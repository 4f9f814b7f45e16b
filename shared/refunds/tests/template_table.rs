//! template.yaml (AWS SAM) against the code: the ledger table must be exactly the one
//! `wxrefund::ledger::dynamo::table_spec()` defines (the single table definition `create_table`
//! uses in tests), and the functions, routes, schedule and policies must be wired as docs/DEPLOY.md ("What gets deployed") says.
//! Pure parsing: no AWS, no moto. `cfn-lint` (scripts/test) checks the template's syntax and types.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_norway::Value;
use wxrefund::ledger::dynamo::{ACCEPTED_INDEX, NEEDS_PERSON_INDEX, PENDING_INDEX, table_spec};

const BINARIES: [&str; 4] = [
    "refund",
    "refund-query",
    "refund-notify",
    "refund-reconcile",
];
const NOTIFY_ROUTE: (&str, &str) = ("POST", "/wxpay/refund-notify");
const TABLE: &str = "LedgerTable";

// ---- reading the template ------------------------------------------------------------------------

fn template() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    // CloudFormation's short forms (!Ref, !GetAtt, !Sub) come back as tagged values.
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("template.yaml is not YAML: {e}"))
}

/// `v[k1][k2]...`, or `Value::Null` when any step is missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter()
        .fold(v, |v, k| v.get(*k).unwrap_or(&Value::Null))
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string: {:?}", at(v, path)))
}

/// The tag name (`Ref`, `GetAtt`, `Sub`) and the payload of a short-form intrinsic, or of the
/// long form `{Ref: x}` / `{Fn::GetAtt: x}`.
fn intrinsic(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            &t.value,
        )),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, v) = m.iter().next()?;
            let k = k.as_str()?;
            let name = k.strip_prefix("Fn::").unwrap_or(k);
            (k == "Ref" || k.starts_with("Fn::")).then(|| (name.to_owned(), v))
        }
        _ => None,
    }
}

fn is_ref_to(v: &Value, logical_id: &str) -> bool {
    matches!(intrinsic(v), Some((tag, p)) if tag == "Ref" && p.as_str() == Some(logical_id))
}

/// A sequence as a slice (`[]` for a missing value).
fn seq<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    match v {
        Value::Sequence(s) => s,
        Value::Null => &[],
        other => panic!("{what} is not a list: {other:?}"),
    }
}

fn resources(t: &Value) -> impl Iterator<Item = (&str, &Value)> {
    at(t, &["Resources"])
        .as_mapping()
        .expect("Resources is a mapping")
        .iter()
        .map(|(k, v)| (k.as_str().expect("logical ids are strings"), v))
}

fn functions(t: &Value) -> Vec<(&str, &Value)> {
    resources(t)
        .filter(|(_, r)| at(r, &["Type"]).as_str() == Some("AWS::Serverless::Function"))
        .collect()
}

/// The function's property, or the `Globals.Function` one when the function does not set it.
fn prop<'a>(t: &'a Value, f: &'a Value, name: &str) -> &'a Value {
    match at(f, &["Properties", name]) {
        Value::Null => at(t, &["Globals", "Function", name]),
        v => v,
    }
}

/// An event of one function: (function id, binary, event name, event).
fn events(t: &Value) -> Vec<(&str, &str, &str, &Value)> {
    let mut out = Vec::new();
    for (id, f) in functions(t) {
        let binary = s(f, &["Metadata", "BuildProperties", "Binary"]);
        if let Some(evs) = at(f, &["Properties", "Events"]).as_mapping() {
            for (name, ev) in evs {
                out.push((id, binary, name.as_str().unwrap(), ev));
            }
        }
    }
    out
}

/// The ledger table resource.
fn ledger(t: &Value) -> &Value {
    let table = at(t, &["Resources", TABLE]);
    assert_eq!(s(table, &["Type"]), "AWS::DynamoDB::Table");
    table
}

/// Every IAM statement of a function's inline `Policies` (SAM policy templates are skipped).
fn statements(f: &Value) -> Vec<&Value> {
    seq(at(f, &["Properties", "Policies"]), "Policies")
        .iter()
        .flat_map(|p| seq(at(p, &["Statement"]), "Statement"))
        .collect()
}

fn actions(st: &Value) -> Vec<&str> {
    match at(st, &["Action"]) {
        Value::String(a) => vec![a.as_str()],
        v => seq(v, "Action")
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect(),
    }
}

// ---- the ledger table ----------------------------------------------------------------------------

#[test]
fn given_the_template_the_ledger_table_has_the_codes_attributes_key_and_billing_mode() {
    // GIVEN the code's single table definition and the template's LedgerTable
    let spec = table_spec();
    let t = template();
    let p = at(ledger(&t), &["Properties"]);

    // THEN billing mode, attribute definitions and key schema are the same
    assert_eq!(s(p, &["BillingMode"]), spec.billing_mode);
    let attrs: BTreeSet<(&str, &str)> = seq(at(p, &["AttributeDefinitions"]), "attrs")
        .iter()
        .map(|a| (s(a, &["AttributeName"]), s(a, &["AttributeType"])))
        .collect();
    let want: BTreeSet<(&str, &str)> = spec.attributes.iter().copied().collect();
    assert_eq!(attrs, want, "AttributeDefinitions");
    let key: Vec<(&str, &str)> = seq(at(p, &["KeySchema"]), "KeySchema")
        .iter()
        .map(|k| (s(k, &["AttributeName"]), s(k, &["KeyType"])))
        .collect();
    assert_eq!(key, [(spec.hash_key, "HASH")], "table KeySchema: pk only");
}

#[test]
fn given_the_template_the_ledger_indexes_match_the_codes_names_keys_and_projections() {
    // GIVEN the code's indexes and the template's GlobalSecondaryIndexes
    let spec = table_spec();
    let t = template();
    let gsis = seq(
        at(ledger(&t), &["Properties", "GlobalSecondaryIndexes"]),
        "GSIs",
    );

    // THEN there are exactly the code's indexes, each with its keys and projection
    assert_eq!(gsis.len(), spec.indexes.len(), "number of GSIs");
    assert!(spec.indexes.iter().any(|ix| ix.name == PENDING_INDEX));
    for ix in spec.indexes {
        let g = gsis
            .iter()
            .find(|g| at(g, &["IndexName"]).as_str() == Some(ix.name))
            .unwrap_or_else(|| panic!("GSI {} missing from template.yaml", ix.name));
        let key: Vec<(&str, &str)> = seq(at(g, &["KeySchema"]), "GSI KeySchema")
            .iter()
            .map(|k| (s(k, &["AttributeName"]), s(k, &["KeyType"])))
            .collect();
        assert_eq!(
            key,
            [(ix.hash_key, "HASH"), (ix.range_key, "RANGE")],
            "GSI {} KeySchema",
            ix.name
        );
        assert_eq!(s(g, &["Projection", "ProjectionType"]), ix.projection);
        assert!(
            at(g, &["ProvisionedThroughput"]).is_null(),
            "on-demand GSIs have no throughput"
        );
    }
}

#[test]
fn given_the_template_ttl_is_enabled_on_the_attribute_the_code_names() {
    // GIVEN the code's TTL attribute THEN the table expires exactly that attribute
    let t = template();
    let ttl = at(ledger(&t), &["Properties", "TimeToLiveSpecification"]);
    assert_eq!(s(ttl, &["AttributeName"]), table_spec().ttl_attribute);
    assert_eq!(at(ttl, &["Enabled"]).as_bool(), Some(true));
}

#[test]
fn given_the_ledger_is_kept_400_days_the_table_is_retained_recoverable_and_encrypted() {
    // GIVEN the ledger table THEN a stack delete or replacement keeps it, PITR and SSE are on
    let t = template();
    let table = ledger(&t);
    assert_eq!(s(table, &["DeletionPolicy"]), "Retain");
    assert_eq!(s(table, &["UpdateReplacePolicy"]), "Retain");
    let p = at(table, &["Properties"]);
    assert_eq!(
        at(
            p,
            &[
                "PointInTimeRecoverySpecification",
                "PointInTimeRecoveryEnabled"
            ]
        )
        .as_bool(),
        Some(true)
    );
    assert_eq!(
        at(p, &["SSESpecification", "SSEEnabled"]).as_bool(),
        Some(true)
    );
}

// ---- the functions -------------------------------------------------------------------------------

#[test]
fn given_every_function_when_sam_builds_it_cargo_lambda_builds_one_of_the_binaries() {
    // GIVEN every AWS::Serverless::Function
    let t = template();
    let fs = functions(&t);
    assert!(fs.len() >= 3, "at least the three functions");

    // THEN each is built by cargo-lambda from the workspace root as one of the binaries,
    // on provided.al2023 / arm64 with the bootstrap handler, and every binary is deployed
    let mut used = BTreeSet::new();
    for (id, f) in &fs {
        assert_eq!(
            s(f, &["Metadata", "BuildMethod"]),
            "rust-cargolambda",
            "{id}"
        );
        let bin = s(f, &["Metadata", "BuildProperties", "Binary"]);
        assert!(BINARIES.contains(&bin), "{id}: unknown binary {bin}");
        used.insert(bin);
        assert_eq!(prop(&t, f, "CodeUri").as_str(), Some("."), "{id} CodeUri");
        assert_eq!(
            prop(&t, f, "Runtime").as_str(),
            Some("provided.al2023"),
            "{id}"
        );
        assert_eq!(prop(&t, f, "Handler").as_str(), Some("bootstrap"), "{id}");
        let arch: Vec<_> = seq(prop(&t, f, "Architectures"), "Architectures")
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(arch, ["arm64"], "{id}");
        let timeout = prop(&t, f, "Timeout").as_u64().expect("a Timeout");
        // (the reconciler works through a whole day's bill: up to Lambda's 15 minutes)
        let max = if *id == "RefundReconcileFunction" {
            900
        } else {
            60
        };
        assert!(
            (15..=max).contains(&timeout),
            "{id}: Timeout {timeout} s must be well above the client's 10 s and at most {max} s"
        );
    }
    assert_eq!(
        used,
        BINARIES.into_iter().collect(),
        "every binary deployed"
    );
}

#[test]
fn given_the_functions_environment_the_table_secret_and_base_url_are_configured() {
    // GIVEN the global environment THEN LEDGER_TABLE is the ledger table and the secret id and
    // WeChat base URL come from parameters (the base URL defaulting to the real API)
    let t = template();
    let env = at(&t, &["Globals", "Function", "Environment", "Variables"]);
    assert!(is_ref_to(at(env, &["LEDGER_TABLE"]), TABLE));
    for (var, param) in [
        ("WXPAY_SECRET_ID", "WxPaySecretName"),
        ("WXPAY_BASE_URL", "WxPayBaseUrl"),
        ("EVENT_BUS_NAME", "EventBusName"),
    ] {
        assert!(is_ref_to(at(env, &[var]), param), "{var} = !Ref {param}");
        assert!(
            !at(&t, &["Parameters", param]).is_null(),
            "parameter {param}"
        );
    }
    assert_eq!(
        s(&t, &["Parameters", "WxPayBaseUrl", "Default"]),
        "https://api.mch.weixin.qq.com"
    );
    // AND events go to the account's default bus unless another is named
    assert_eq!(s(&t, &["Parameters", "EventBusName", "Default"]), "default");
}

// ---- the HTTP API --------------------------------------------------------------------------------

#[test]
fn given_the_http_api_merchant_routes_need_iam_and_only_the_notify_route_is_public() {
    // GIVEN the HttpApi events of every function
    let t = template();
    let api = resources(&t)
        .filter(|(_, r)| at(r, &["Type"]).as_str() == Some("AWS::Serverless::HttpApi"))
        .collect::<Vec<_>>();
    assert_eq!(api.len(), 1, "one HttpApi");
    let (api_id, api) = api[0];
    let ap = at(api, &["Properties"]);
    assert_eq!(
        at(ap, &["Auth", "EnableIamAuthorizer"]).as_bool(),
        Some(true)
    );
    assert_eq!(s(ap, &["Auth", "DefaultAuthorizer"]), "AWS_IAM");
    assert_eq!(at(ap, &["FailOnWarnings"]).as_bool(), Some(true));
    assert_eq!(
        at(ap, &["DefaultRouteSettings", "ThrottlingRateLimit"]).as_u64(),
        Some(150),
        "WeChat's 150/s"
    );
    let burst = at(ap, &["DefaultRouteSettings", "ThrottlingBurstLimit"]).as_u64();
    assert!(burst.is_some_and(|b| (1..=150).contains(&b)));

    // WHEN the routes are collected
    let mut routes = BTreeMap::new();
    for (id, bin, name, ev) in events(&t) {
        if at(ev, &["Type"]).as_str() != Some("HttpApi") {
            continue;
        }
        let p = at(ev, &["Properties"]);
        assert!(
            is_ref_to(at(p, &["ApiId"]), api_id),
            "{id}.{name} on {api_id}"
        );
        let route = (s(p, &["Method"]), s(p, &["Path"]));
        let authorizer = at(p, &["Auth", "Authorizer"]).as_str();
        assert!(
            routes.insert(route, (bin, authorizer)).is_none(),
            "{route:?} twice"
        );
    }

    // THEN they are exactly the documented routes (docs/DEPLOY.md) on their binaries; only notify opts out of IAM
    let want = BTreeMap::from([
        (("POST", "/refunds"), ("refund", None)),
        (("GET", "/refunds"), ("refund-query", None)),
        (("GET", "/refunds/{out_refund_no}"), ("refund-query", None)),
        (
            ("GET", "/orders/{out_trade_no}/refunds"),
            ("refund-query", None),
        ),
        (NOTIFY_ROUTE, ("refund-notify", Some("NONE"))),
        (("POST", "/reconciliations"), ("refund-reconcile", None)),
        (
            ("GET", "/reconciliations/{bill_date}"),
            ("refund-reconcile", None),
        ),
    ]);
    assert_eq!(routes, want);
}

// ---- the poller ----------------------------------------------------------------------------------

#[test]
fn given_the_schedule_the_poller_runs_every_minute_alone_with_the_poll_payload() {
    // GIVEN the ScheduleV2 events of the refund-query binary
    let t = template();
    let schedules: Vec<_> = events(&t)
        .into_iter()
        .filter(|(.., ev)| at(ev, &["Type"]).as_str() == Some("ScheduleV2"))
        .filter(|(_, bin, ..)| *bin == "refund-query")
        .collect();

    // THEN there is one, on a refund-query function with reserved concurrency 1, that sends
    // {"action":"poll"} every minute by default
    assert_eq!(schedules.len(), 1, "one poll schedule");
    let (id, bin, _, ev) = schedules[0];
    assert_eq!(bin, "refund-query");
    let f = at(&t, &["Resources", id]);
    assert_eq!(
        at(f, &["Properties", "ReservedConcurrentExecutions"]).as_u64(),
        Some(1),
        "{id}: one poller at a time"
    );
    let p = at(ev, &["Properties"]);
    let input: serde_json::Value = serde_json::from_str(s(p, &["Input"])).expect("JSON Input");
    assert_eq!(input, serde_json::json!({"action": "poll"}));
    assert_eq!(schedule_default(&t, p), "rate(1 minute)");
}

/// A schedule's expression, or its parameter's default.
fn schedule_default<'a>(t: &'a Value, p: &'a Value) -> &'a str {
    let expr = at(p, &["ScheduleExpression"]);
    match intrinsic(expr) {
        Some((tag, param)) if tag == "Ref" => {
            s(t, &["Parameters", param.as_str().unwrap(), "Default"])
        }
        _ => expr.as_str().expect("a schedule expression"),
    }
}

#[test]
fn given_the_schedules_the_previous_beijing_day_is_reconciled_after_10_30_and_retried() {
    // GIVEN the ScheduleV2 events of the refund-reconcile binary
    let t = template();
    let mut schedules: BTreeMap<String, (&str, String)> = BTreeMap::new();
    for (_, bin, _, ev) in events(&t) {
        if at(ev, &["Type"]).as_str() != Some("ScheduleV2") || bin != "refund-reconcile" {
            continue;
        }
        let p = at(ev, &["Properties"]);
        let input: serde_json::Value = serde_json::from_str(s(p, &["Input"])).expect("JSON Input");
        let action = input["action"].as_str().expect("an action").to_owned();
        // THEN each runs on Beijing time
        assert_eq!(s(p, &["ScheduleExpressionTimezone"]), "Asia/Shanghai");
        schedules.insert(
            action,
            (schedule_default(&t, p), s(p, &["Description"]).to_owned()),
        );
    }
    // AND the daily run is at 10:30 (WeChat advises fetching a bill after 10:00), the retries
    // hourly after it the same day
    assert_eq!(schedules["reconcile"].0, "cron(30 10 * * ? *)");
    assert_eq!(schedules["reconcile_retry"].0, "cron(30 11-23 * * ? *)");
    assert_eq!(schedules.len(), 2);
}

// ---- least privilege -----------------------------------------------------------------------------

#[test]
fn given_the_function_policies_each_reaches_only_the_ledger_with_item_level_actions() {
    // GIVEN every inline IAM statement of every function
    let t = template();
    let fs = functions(&t);
    let scheduled: BTreeSet<&str> = events(&t)
        .into_iter()
        .filter(|(.., ev)| at(ev, &["Type"]).as_str() == Some("ScheduleV2"))
        .map(|(id, ..)| id)
        .collect();
    let allowed = [
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
    ];
    let mut queried = BTreeSet::new();
    for (id, f) in fs {
        let mut granted = BTreeSet::new();
        for st in statements(f) {
            assert_eq!(s(st, &["Effect"]), "Allow", "{id}");
            for a in actions(st) {
                if !a.starts_with("dynamodb:") {
                    continue;
                }
                // THEN only item-level actions the adapter sends (no wildcard, Delete or Scan;
                // TransactWriteItems is authorised per item as PutItem/UpdateItem), ...
                assert!(
                    allowed.contains(&a),
                    "{id}: {a} is not needed by the ledger"
                );
                granted.insert(a);
                // ... on the ledger table (or, for Query, its pending index only)
                let res = at(st, &["Resource"]);
                let (tag, payload) = intrinsic(res)
                    .unwrap_or_else(|| panic!("{id}: {a} must name the ledger table, not {res:?}"));
                if a == "dynamodb:Query" {
                    assert_eq!(tag, "Sub", "{id}: Query resource");
                    let pending = format!("${{{TABLE}.Arn}}/index/{PENDING_INDEX}");
                    let flagged = format!("${{{TABLE}.Arn}}/index/{NEEDS_PERSON_INDEX}");
                    let accepted = format!("${{{TABLE}.Arn}}/index/{ACCEPTED_INDEX}");
                    match payload.as_str() {
                        Some(p) if p == pending => queried.insert((id, PENDING_INDEX)),
                        Some(p) if p == flagged => queried.insert((id, NEEDS_PERSON_INDEX)),
                        Some(p) if p == accepted => queried.insert((id, ACCEPTED_INDEX)),
                        other => panic!("{id}: Query only on the ledger's indexes, not {other:?}"),
                    };
                } else {
                    let target = match payload {
                        Value::String(s) => s.clone(),
                        Value::Sequence(parts) => parts
                            .iter()
                            .map(|p| p.as_str().unwrap())
                            .collect::<Vec<_>>()
                            .join("."),
                        other => panic!("{id}: unexpected resource {other:?}"),
                    };
                    assert_eq!(
                        (tag.as_str(), target.as_str()),
                        ("GetAtt", "LedgerTable.Arn")
                    );
                }
            }
        }
        // AND every function can read and update records; only the poller queries the index
        assert!(granted.contains("dynamodb:GetItem"), "{id}: GetItem");
        assert!(granted.contains("dynamodb:UpdateItem"), "{id}: UpdateItem");
        assert_eq!(
            queried.contains(&(id, PENDING_INDEX)),
            id == "RefundPollerFunction",
            "{id}: the pending index is queried by the scheduled poller only"
        );
        assert_eq!(
            queried.contains(&(id, ACCEPTED_INDEX)),
            id == "RefundReconcileFunction",
            "{id}: the accepted index is queried by the reconciler only"
        );
        assert!(
            !scheduled.contains(id)
                || ["RefundPollerFunction", "RefundReconcileFunction"].contains(&id),
            "{id}: only the poller and the reconciler are scheduled"
        );
        assert_eq!(
            queried.contains(&(id, NEEDS_PERSON_INDEX)),
            ["RefundQueryFunction", "RefundReconcileFunction"].contains(&id),
            "{id}: the needs-person index is queried by the function serving GET /refunds and the daily CHANGE re-check only"
        );
        // AND every function may put events on the configured bus, and on nothing else
        let publish: Vec<&Value> = statements(f)
            .into_iter()
            .filter(|st| actions(st).iter().any(|a| a.starts_with("events:")))
            .collect();
        assert_eq!(publish.len(), 1, "{id}: one events statement");
        assert_eq!(actions(publish[0]), vec!["events:PutEvents"], "{id}");
        assert!(
            matches!(intrinsic(at(publish[0], &["Resource"])), Some((tag, p)) if tag == "Sub"
                && p.as_str() == Some("arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}")),
            "{id}: PutEvents on the EventBusName bus only"
        );
        // AND every function may read the merchant secret (one policy template, one secret)
        let secret = seq(at(f, &["Properties", "Policies"]), "Policies")
            .iter()
            .filter_map(|p| p.get("AWSSecretsManagerGetSecretValuePolicy"))
            .collect::<Vec<_>>();
        assert_eq!(secret.len(), 1, "{id}: the secret policy");
        let arn = at(secret[0], &["SecretArn"]);
        assert!(
            matches!(intrinsic(arn), Some((tag, p)) if tag == "Sub"
                && p.as_str().is_some_and(|p| p.ends_with(":secret:${WxPaySecretName}-??????"))),
            "{id}: only the WxPaySecretName secret, got {arn:?}"
        );
    }
}

// ---- alarms ----------------------------------------------------------------------------------------

/// Every CloudWatch alarm: (logical id, namespace, metric name or "", dimension value refs).
fn alarms(t: &Value) -> Vec<(&str, &Value)> {
    at(t, &["Resources"])
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some("AWS::CloudWatch::Alarm"))
        .map(|(k, r)| (k.as_str().unwrap(), r))
        .collect()
}

#[test]
fn given_the_alarms_every_function_and_every_business_signal_notifies_the_topic() {
    let t = template();
    let alarms = alarms(&t);
    // THEN every alarm says why and notifies the alarm topic (the stack's own or the parameter's)
    for (id, a) in &alarms {
        let p = at(a, &["Properties"]);
        assert!(
            s(p, &["AlarmDescription"]).len() > 20,
            "{id}: an alarm says why"
        );
        let actions = seq(at(p, &["AlarmActions"]), "AlarmActions");
        assert_eq!(actions.len(), 1, "{id}");
        let (tag, args) = intrinsic(&actions[0]).expect("an If");
        assert_eq!(tag, "If", "{id}");
        assert_eq!(args[0].as_str(), Some("OwnAlarmTopic"), "{id}");
    }
    let metric_of = |id: &str| -> (String, String) {
        let p = at(&t, &["Resources", id, "Properties"]);
        (
            p.get("Namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            p.get("MetricName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        )
    };
    // AND every function has its errors, throttles and near-timeout alarms
    for (id, _) in functions(&t) {
        for (suffix, metric) in [
            ("ErrorsAlarm", "Errors"),
            ("ThrottlesAlarm", "Throttles"),
            ("DurationAlarm", "Duration"),
        ] {
            let alarm = format!("{id}{suffix}");
            assert_eq!(
                metric_of(&alarm),
                ("AWS/Lambda".to_owned(), metric.to_owned()),
                "{alarm}"
            );
        }
    }
    // AND the API's 5xx, DynamoDB's throttles and system errors, the schedules' dead letters and
    // the business signals (from the functions' JSON logs) each have one
    let have: BTreeSet<(String, String)> = alarms.iter().map(|(id, _)| metric_of(id)).collect();
    for want in [
        ("AWS/ApiGateway", "5xx"),
        ("AWS/DynamoDB", "WriteThrottleEvents"),
        ("AWS/DynamoDB", "ReadThrottleEvents"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("wxrefund", "RefundsNeedingPerson"),
        ("wxrefund", "PollBacklogOldestAgeSeconds"),
        ("wxrefund", "ReconciliationMismatched"),
        ("wxrefund", "EventsPendingDelivery"),
    ] {
        assert!(
            have.contains(&(want.0.to_owned(), want.1.to_owned())),
            "no alarm on {want:?}"
        );
    }
    assert!(
        at(
            &t,
            &[
                "Resources",
                "LedgerSystemErrorsAlarm",
                "Properties",
                "Metrics"
            ]
        )
        .is_sequence(),
        "DynamoDB system errors summed over the ledger's operations"
    );
    // AND a poll backlog alarms past 15 minutes
    assert_eq!(
        at(
            &t,
            &["Resources", "PollBacklogAlarm", "Properties", "Threshold"]
        )
        .as_u64(),
        Some(900)
    );
    // AND every schedule puts what it could not deliver in a dead-letter queue
    for (id, _, name, ev) in events(&t) {
        if at(ev, &["Type"]).as_str() == Some("ScheduleV2") {
            assert!(
                intrinsic(at(ev, &["Properties", "DeadLetterConfig", "Arn"]))
                    .is_some_and(|(tag, _)| tag == "GetAtt"),
                "{id}.{name}: a dead-letter queue"
            );
        }
    }
    // AND X-Ray tracing is on for every function
    assert_eq!(
        at(&t, &["Globals", "Function", "Tracing"]).as_str(),
        Some("Active")
    );
}

#[test]
fn given_the_log_metric_filters_each_matches_a_message_the_code_logs() {
    // GIVEN every `$.message = "…"` of every metric filter (`*` is a wildcard)
    let t = template();
    let mut code = String::new();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                code.push_str(&std::fs::read_to_string(&path).expect("read a source file"));
            }
        }
    }
    let mut checked = 0;
    for (id, r) in at(&t, &["Resources"]).as_mapping().expect("Resources") {
        if r.get("Type").and_then(Value::as_str) != Some("AWS::Logs::MetricFilter") {
            continue;
        }
        let pattern = s(r, &["Properties", "FilterPattern"]);
        for part in pattern.split("$.message = \"").skip(1) {
            let text = part.split('"').next().expect("a quoted message");
            // THEN each piece between wildcards is written in a log call of the code
            for piece in text.split('*').filter(|p| !p.is_empty()) {
                assert!(
                    code.contains(piece),
                    "{id:?}: no log message contains {piece:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "{checked} messages checked");
}
