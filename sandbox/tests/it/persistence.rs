//! Durable books: what the sandbox took survives a stop, a crash-like drop of everything it runs on,
//! and a restart on the same state dir; a bad `books.json` stops the start; `fresh` and
//! `persist: false` behave as documented.

use std::path::Path;
use std::time::Duration;

use wxpay_sandbox::{NewOrder, RunningSandbox, Sandbox, SandboxConfig};

use crate::common::*;

/// A sandbox on `dir` (created by an earlier start or not) with test-friendly limits.
async fn start_on(dir: &Path, settle_after: Duration, notify_retry_factor: f64) -> RunningSandbox {
    Sandbox::start(SandboxConfig {
        state_dir: dir.to_path_buf(),
        settle_after,
        notify_retry_factor,
        ..config("persist")
    })
    .await
    .expect("sandbox starts")
}

/// GIVEN-step shared by the restart tests: an order with a notify_url and one taken refund.
async fn order_and_taken_refund(sb: &RunningSandbox, notify_url: String) -> String {
    sb.books()
        .create_order(NewOrder {
            out_trade_no: "order-p".into(),
            total_fee: 1000,
            notify_url: Some(notify_url),
            ..NewOrder::default()
        })
        .expect("order created");
    let r = apply(sb, "order-p", "refund-p-1", 1000, 300).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    let view = sb.books().refund("refund-p-1").expect("refund taken");
    assert_eq!(view.status.as_str(), "PROCESSING");
    assert_eq!(view.apply_calls, 1);
    r.get("refund_id").expect("refund_id").to_string()
}

/// THEN-steps shared by the restart tests: the books came back and behave like WeChat's.
async fn assert_remembered_then_settles(sb: &RunningSandbox, refund_id: &str, rx: &Receiver) {
    // THEN the order, the refund (still PROCESSING) and its apply count are there
    let order = sb.books().order("order-p").expect("order reloaded");
    assert_eq!(order.total_fee, 1000);
    assert_eq!(order.refund_count, 1);
    assert_eq!(order.refunded_fee, 300);
    let refund = sb.books().refund("refund-p-1").expect("refund reloaded");
    assert_eq!(refund.refund_id, refund_id);
    assert_eq!(refund.refund_fee, 300);
    assert_eq!(refund.status.as_str(), "PROCESSING");
    assert_eq!(refund.apply_calls, 1);

    // AND resubmitting the same out_refund_no with the same amounts is the same refund again
    let again = apply(sb, "order-p", "refund-p-1", 1000, 300).await;
    assert_eq!(again.get("result_code"), Some("SUCCESS"), "{again:?}");
    assert_eq!(again.get("refund_id"), Some(refund_id));
    let order = sb.books().order("order-p").expect("order");
    assert_eq!(order.refund_count, 1, "no second refund");
    assert_eq!(order.refunded_fee, 300);
    assert_eq!(sb.books().apply_calls("refund-p-1"), 2);
    // AND other amounts under that number are still refused
    let other = apply(sb, "order-p", "refund-p-1", 1000, 301).await;
    assert_biz_fail(sb, &other, "REFUND_FEE_MISMATCH");

    // AND the refund settles on its own and its notification is delivered
    let view = eventually(15, || {
        let v = sb.books().refund("refund-p-1")?;
        v.notify.delivered.then_some(v)
    })
    .await;
    assert_eq!(view.status.as_str(), "SUCCESS");
    assert!(view.success_time.is_some());
    assert_eq!(view.notify.attempts, 1);
    let bodies = rx.bodies();
    assert_eq!(bodies.len(), 1);
    let outer = wxpay::xml::decode(bodies[0].as_bytes()).expect("notification XML");
    let inner = wxpay_sandbox::decrypt_req_info(outer.get("req_info").expect("req_info"), &key(sb))
        .expect("req_info decrypts");
    assert_eq!(inner.get("refund_id"), Some(refund_id));
    assert_eq!(inner.get("refund_status"), Some("SUCCESS"));
}

#[tokio::test]
async fn a_taken_refund_survives_a_stop_and_restart() {
    // GIVEN a sandbox with an order and a PROCESSING refund (settling 3 s after it was taken)
    let rx = Receiver::start(0).await;
    let dir = temp_dir("persist-stop");
    let sb = start_on(&dir, Duration::from_secs(3), 1.0).await;
    let refund_id = order_and_taken_refund(&sb, rx.url()).await;
    assert!(sb.files().books_json.exists(), "books.json written");

    // WHEN it is stopped and started again on the same state dir
    sb.stop().await;
    let sb = start_on(&dir, Duration::from_secs(3), 1.0).await;

    assert_remembered_then_settles(&sb, &refund_id, &rx).await;
    sb.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_taken_refund_survives_its_runtime_being_dropped_without_any_stop() {
    // GIVEN a sandbox on its own multi-threaded runtime (the local stack's flavour) with an order
    // and a PROCESSING refund
    let dir = temp_dir("persist-crash");
    let outer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rx = outer.block_on(Receiver::start(0));
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let refund_id = doomed.block_on(async {
        let sb = start_on(&dir, Duration::from_secs(3), 1.0).await;
        let id = order_and_taken_refund(&sb, rx.url()).await;
        // Neither stop() nor Drop runs: no code path gets a chance to save anything.
        std::mem::forget(sb);
        id
    });

    // WHEN everything it ran on disappears at once (every task dropped mid-await), as in a kill
    doomed.shutdown_background();

    // AND a new sandbox starts on the same state dir
    outer.block_on(async {
        let sb = start_on(&dir, Duration::from_secs(3), 1.0).await;
        assert_remembered_then_settles(&sb, &refund_id, &rx).await;
        sb.stop().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_pending_notification_resumes_its_retry_schedule_after_a_restart() {
    // GIVEN a settled refund whose first push failed (next retry in 15 s / 5 = 3 s)
    let rx = Receiver::start(1).await;
    let dir = temp_dir("persist-notify");
    let sb = start_on(&dir, Duration::from_secs(3600), 5.0).await;
    order_and_taken_refund(&sb, rx.url()).await;
    assert_eq!(sb.settle_now(), vec!["refund-p-1".to_string()]);
    let first = eventually(10, || {
        let v = sb.books().refund("refund-p-1")?;
        (v.notify.attempts == 1).then_some(v.notify)
    })
    .await;
    let failed_at = tokio::time::Instant::now();
    assert!(!first.delivered && !first.gave_up, "{first:?}");

    // WHEN the sandbox is dropped (no stop) and started again before the retry is due
    drop(sb);
    let sb = start_on(&dir, Duration::from_secs(3600), 5.0).await;

    // THEN the retry is not sent at once (the schedule continues where it stood) ...
    let reloaded = sb.books().refund("refund-p-1").expect("refund reloaded");
    assert_eq!(reloaded.status.as_str(), "SUCCESS");
    assert_eq!(reloaded.notify.attempts, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.bodies().len(), 1, "retry waited for its turn");
    // ... AND it is delivered when due, as the second attempt
    let log = eventually(15, || {
        let v = sb.books().refund("refund-p-1")?;
        v.notify.delivered.then_some(v.notify)
    })
    .await;
    assert!(
        failed_at.elapsed() >= Duration::from_millis(2500),
        "retry after ~3 s, not {:?}",
        failed_at.elapsed()
    );
    assert_eq!(log.attempts, 2);
    assert_eq!(rx.bodies().len(), 2);
    sb.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_corrupt_books_file_fails_the_start_and_fresh_discards_it() {
    // GIVEN a state dir whose books.json is cut off mid-write by hand
    let dir = temp_dir("persist-corrupt");
    let sb = start_on(&dir, Duration::from_secs(3600), 1.0).await;
    order(&sb, "order-c", 100);
    let books_json = sb.files().books_json.clone();
    sb.stop().await;
    let text = std::fs::read(&books_json).expect("books.json");
    std::fs::write(&books_json, &text[..text.len() / 2]).expect("truncate");

    // WHEN a sandbox starts on it THEN the start fails, naming the file and the way out
    let err = Sandbox::start(SandboxConfig {
        state_dir: dir.clone(),
        ..config("persist")
    })
    .await
    .err()
    .expect("start refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&books_json.display().to_string()),
        "names the file: {msg}"
    );
    assert!(msg.contains("--fresh"), "says how to discard it: {msg}");
    assert_eq!(
        std::fs::read(&books_json).expect("file kept").len(),
        text.len() / 2,
        "the file is left for inspection"
    );

    // WHEN it starts with `fresh` THEN the books are empty and the old file is gone
    let sb = Sandbox::start(SandboxConfig {
        state_dir: dir.clone(),
        fresh: true,
        ..config("persist")
    })
    .await
    .expect("fresh start");
    assert!(sb.books().orders().is_empty());
    assert!(!books_json.exists());
    // AND a restart after a new change loads the new books, not the old ones
    order(&sb, "order-new", 100);
    sb.stop().await;
    let sb = start_on(&dir, Duration::from_secs(3600), 1.0).await;
    let names: Vec<String> = sb
        .books()
        .orders()
        .into_iter()
        .map(|o| o.out_trade_no)
        .collect();
    assert_eq!(names, vec!["order-new".to_string()]);
    sb.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_persist_books_json_is_neither_read_nor_written() {
    // GIVEN a state dir holding an unreadable books.json
    let dir = temp_dir("persist-off");
    std::fs::create_dir_all(&dir).expect("dir");
    let books_json = dir.join(wxpay_sandbox::BOOKS_FILE);
    std::fs::write(&books_json, b"not json").expect("write");

    // WHEN a sandbox with persist: false starts there and takes an order and a refund
    let sb = Sandbox::start(SandboxConfig {
        state_dir: dir.clone(),
        persist: false,
        ..config("persist")
    })
    .await
    .expect("starts: the file is not read");
    order(&sb, "order-m", 100);
    let r = apply(&sb, "order-m", "refund-m", 100, 100).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    sb.stop().await;

    // THEN the file is untouched
    assert_eq!(std::fs::read(&books_json).expect("file"), b"not json");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn read_only_requests_do_not_rewrite_the_books() {
    // GIVEN a sandbox with a refund, its books saved
    let dir = temp_dir("persist-ro");
    let sb = start_on(&dir, Duration::from_secs(3600), 1.0).await;
    order(&sb, "order-r", 100);
    let r = apply(&sb, "order-r", "refund-r", 100, 10).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    let books_json = sb.files().books_json.clone();
    std::fs::remove_file(&books_json).expect("remove to observe rewrites");

    // WHEN it answers refund queries and admin reads (and an endless, uncounted query fault)
    sb.books()
        .add_fault(
            None,
            wxpay_sandbox::Fault {
                kind: wxpay_sandbox::FaultKind::Latency { ms: 1 },
                times: None,
                on: wxpay_sandbox::FaultTarget::Query,
            },
        )
        .expect("fault added");
    std::fs::remove_file(&books_json).expect("remove again after the fault was saved");
    for _ in 0..3 {
        let q = query(&sb, &[("out_refund_no", "refund-r")]).await;
        assert_eq!(q.get("result_code"), Some("SUCCESS"), "{q:?}");
    }
    assert!(sb.books().order("order-r").is_some());

    // THEN nothing was written
    assert!(!books_json.exists(), "read-only paths wrote books.json");
    sb.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn platform_refunds_resolutions_and_new_faults_survive_a_restart() {
    // GIVEN a CHANGE order with an API refund resolved to SUCCESS, a platform refund, and a
    // refusal and a lag fault waiting
    let dir = temp_dir("persist-platform");
    let sb = start_on(&dir, Duration::from_secs(3600), 1.0).await;
    sb.books()
        .create_order(NewOrder {
            out_trade_no: "order-pp".into(),
            total_fee: 1000,
            outcome: Some(wxpay_sandbox::Outcome::Change),
            ..NewOrder::default()
        })
        .expect("order");
    apply(&sb, "order-pp", "pp-api", 1000, 100).await;
    sb.settle_now();
    sb.resolve("pp-api").expect("resolved");
    let (v, new) = sb
        .vendor_refund(
            "order-pp",
            wxpay_sandbox::NewRefund {
                out_refund_no: "pp-vendor".into(),
                refund_fee: 200,
            },
        )
        .expect("platform refund");
    assert!(new);
    let c = anonymous(&sb);
    let (s, f) = admin(
        &c,
        reqwest::Method::POST,
        format!("{}/sandbox/orders/order-pp/faults", sb.base_url()),
        Some(serde_json::json!([
            {"kind": "refuse", "err_code": "USER_ACCOUNT_ABNORMAL", "err_code_des": "注销", "times": 1},
            {"kind": "refund_not_exist", "times": 1},
        ])),
    )
    .await;
    assert_eq!(s, 200, "{f}");

    // WHEN the sandbox is stopped and started again on the same state dir
    sb.stop().await;
    let sb = start_on(&dir, Duration::from_secs(3600), 1.0).await;

    // THEN the resolution, the platform refund and its source are there
    let api = sb.books().refund("pp-api").expect("api refund");
    assert_eq!(api.status.as_str(), "SUCCESS");
    assert!(api.success_time.is_some());
    let vendor = sb.books().refund("pp-vendor").expect("platform refund");
    assert_eq!(vendor.refund_id, v.refund_id);
    assert_eq!(vendor.refund_request_source.as_str(), "VENDOR_PLATFORM");
    // AND the faults, in their order, with their fields
    let faults = sb.books().order("order-pp").expect("order").faults;
    assert_eq!(faults.len(), 2);
    assert_eq!(
        faults[0].kind,
        wxpay_sandbox::FaultKind::Refuse {
            err_code: "USER_ACCOUNT_ABNORMAL".into(),
            err_code_des: Some("注销".into()),
        }
    );
    assert_eq!(faults[1].on, wxpay_sandbox::FaultTarget::Query);
    let r = apply(&sb, "order-pp", "pp-2", 1000, 1).await;
    assert_biz_fail(&sb, &r, "USER_ACCOUNT_ABNORMAL");
    assert_eq!(r.get("err_code_des"), Some("注销"));
    assert_biz_fail(
        &sb,
        &query(&sb, &[("out_refund_no", "pp-vendor")]).await,
        "REFUNDNOTEXIST",
    );
    let q = query(&sb, &[("out_refund_no", "pp-vendor")]).await;
    assert_eq!(q.get("refund_status_0"), Some("PROCESSING"), "{q:?}");
    sb.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run with `cargo test -p wxpay-sandbox --test it burst -- --ignored --nocapture` (add
/// `--release` for the binary's numbers): 2500 refunds over 16 connections, persist on and off.
#[test]
#[ignore = "timing, prints numbers"]
fn burst_of_refunds_with_and_without_persist() {
    for persist in [false, true] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let dir = temp_dir("persist-burst");
            let sb = Sandbox::start(SandboxConfig {
                state_dir: dir.clone(),
                persist,
                ..config("persist")
            })
            .await
            .expect("starts");
            for o in 0..50 {
                order(&sb, &format!("order-b{o:02}"), 1_000_000);
            }
            let sb = std::sync::Arc::new(sb);
            let t = tokio::time::Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..16usize {
                let sb = sb.clone();
                tasks.spawn(async move {
                    let c = client(&sb);
                    for i in (w..2500).step_by(16) {
                        let fields = apply_fields(
                            &sb,
                            &format!("order-b{:02}", i % 50),
                            &format!("rb-{i:04}"),
                            1_000_000,
                            100,
                        );
                        let r =
                            call(&sb, &c, "/secapi/pay/refund", wxpay::SignType::Md5, fields).await;
                        assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.expect("worker");
            }
            let took = t.elapsed();
            let size = std::fs::metadata(dir.join(wxpay_sandbox::BOOKS_FILE))
                .map(|m| m.len())
                .unwrap_or(0);
            println!(
                "persist={persist}: 2500 refunds in {took:?} ({:.0}/s), books.json {size} bytes",
                2500.0 / took.as_secs_f64()
            );
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
