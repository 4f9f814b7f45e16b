//! A minimal Lambda Runtime API emulator (the HTTP API a Lambda runtime polls), so the real
//! function binaries can be started and invoked in tests exactly as the Lambda service does.
//!
//! Implemented: `GET /2018-06-01/runtime/invocation/next` (long-poll: held until an event is
//! queued), `POST /2018-06-01/runtime/invocation/{id}/response` and `/error`, and
//! `POST /2018-06-01/runtime/init/error`. Anything else is answered 404 (or 400 for an unknown
//! request id), never a panic, so a misbehaving runtime shows up as a failed invocation instead of
//! a hung test. [`LambdaEmulator::process_died`] does what the Lambda service does when the
//! function's process dies mid-invocation (SIGKILL, out of memory): the invocations it held end
//! with `Runtime.ExitError`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

const API_PREFIX: &str = "/2018-06-01/runtime";
/// Lambda's synchronous payload limit; the runtime client may send up to this much.
const MAX_PAYLOAD: usize = 6 * 1024 * 1024;
/// The deadline handed to the function with each event (it only matters to handlers that read it).
const INVOCATION_DEADLINE: Duration = Duration::from_secs(30);
const ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";

/// What the runtime reported for one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `POST .../response`: the function's result, as sent.
    Response(Vec<u8>),
    /// `POST .../error`: the error type header (if any) and the body.
    Error {
        error_type: Option<String>,
        body: Vec<u8>,
    },
}

impl Outcome {
    /// The response parsed as JSON; panics (with the raw text) on an error outcome or non-JSON.
    pub fn json(&self) -> Value {
        match self {
            Outcome::Response(body) => serde_json::from_slice(body).unwrap_or_else(|e| {
                panic!(
                    "the function's response is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(body)
                )
            }),
            Outcome::Error { error_type, body } => panic!(
                "the function reported an invocation error ({error_type:?}): {}",
                String::from_utf8_lossy(body)
            ),
        }
    }
}

/// `POST /runtime/init/error`: the runtime could not initialise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitError {
    pub error_type: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmulatorError {
    #[error("no response for invocation {request_id} within {timeout:?}")]
    Timeout {
        request_id: String,
        timeout: Duration,
    },
    #[error("the emulator stopped before invocation {0} was answered")]
    Stopped(String),
}

struct Queued {
    request_id: String,
    event: Vec<u8>,
}

struct Shared {
    function_arn: String,
    queue_tx: mpsc::UnboundedSender<Queued>,
    /// One `next` at a time takes from the queue; others wait on the lock (still long-polling).
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    /// Invocations handed out (or queued) and not yet answered.
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: watch::Sender<Option<InitError>>,
    delivered: Mutex<Vec<String>>,
    /// When the runtime first asked for an event: the end of its cold start.
    first_poll: watch::Sender<Option<std::time::Instant>>,
}

/// A queued invocation: await its outcome with [`Invocation::outcome`].
pub struct Invocation {
    pub request_id: String,
    rx: oneshot::Receiver<Outcome>,
}

impl Invocation {
    pub async fn outcome(self, timeout: Duration) -> Result<Outcome, EmulatorError> {
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(EmulatorError::Stopped(self.request_id)),
            Err(_) => Err(EmulatorError::Timeout {
                request_id: self.request_id,
                timeout,
            }),
        }
    }
}

/// The running emulator, on a loopback port. Dropping it stops the server.
pub struct LambdaEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for LambdaEmulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl LambdaEmulator {
    /// Binds `127.0.0.1:0` and serves the Runtime API for a function called `function_name`.
    pub async fn start(function_name: &str) -> std::io::Result<LambdaEmulator> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{function_name}"),
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            waiting: Mutex::new(HashMap::new()),
            init_error: watch::channel(None).0,
            delivered: Mutex::new(Vec::new()),
            first_poll: watch::channel(None).0,
        });
        let app = Router::new()
            .route(&format!("{API_PREFIX}/invocation/next"), get(next))
            .route(
                &format!("{API_PREFIX}/invocation/{{id}}/response"),
                post(response),
            )
            .route(
                &format!("{API_PREFIX}/invocation/{{id}}/error"),
                post(error),
            )
            .route(&format!("{API_PREFIX}/init/error"), post(init_error))
            .fallback(unknown_route)
            .layer(DefaultBodyLimit::max(MAX_PAYLOAD))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(LambdaEmulator {
            addr,
            shared,
            server,
        })
    }

    /// The value for `AWS_LAMBDA_RUNTIME_API` (`host:port`, no scheme).
    pub fn runtime_api(&self) -> String {
        self.addr.to_string()
    }

    /// Queues one event; the function receives it on its next `next` poll.
    pub fn enqueue(&self, event: &Value) -> Invocation {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.waiting).insert(request_id.clone(), tx);
        // The receiver lives in `shared` as long as `self` does, so the send cannot fail.
        let _ = self.shared.queue_tx.send(Queued {
            request_id: request_id.clone(),
            event: event.to_string().into_bytes(),
        });
        Invocation { request_id, rx }
    }

    /// Queues `event` and waits for the function's response or error.
    pub async fn invoke(&self, event: &Value, timeout: Duration) -> Result<Outcome, EmulatorError> {
        self.enqueue(event).outcome(timeout).await
    }

    /// Waits up to `timeout` for `POST /runtime/init/error`.
    pub async fn init_error(&self, timeout: Duration) -> Option<InitError> {
        let mut rx = self.shared.init_error.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|v| v.clone()))
    }

    /// Waits up to `timeout` for the runtime's first `GET /invocation/next` and returns when it
    /// arrived (the moment a cold start ends, as Lambda counts it).
    pub async fn first_poll(&self, timeout: Duration) -> Option<std::time::Instant> {
        let mut rx = self.shared.first_poll.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|v| *v))
    }

    /// Request ids handed to the function so far, in order.
    pub fn delivered(&self) -> Vec<String> {
        lock(&self.shared.delivered).clone()
    }

    /// Request ids handed to the function and not answered yet (the invocations it is running).
    pub fn in_flight(&self) -> Vec<String> {
        let waiting = lock(&self.shared.waiting);
        lock(&self.shared.delivered)
            .iter()
            .filter(|id| waiting.contains_key(*id))
            .cloned()
            .collect()
    }

    /// The function's process died (the test killed it): as the Lambda service reports it, every
    /// invocation handed to it and not answered ends with a `Runtime.ExitError` error carrying
    /// `message`, and every one still queued ends as [`EmulatorError::Stopped`] (the caller, like
    /// API Gateway's client, sees it fail and may send it again). Returns (in flight, queued).
    /// The emulator is spent: a restarted process gets a new one (a dead runtime's long-poll may
    /// still be parked in this one's queue).
    pub fn process_died(&self, message: &str) -> (usize, usize) {
        let delivered = lock(&self.shared.delivered).clone();
        let waiting: Vec<(String, oneshot::Sender<Outcome>)> =
            lock(&self.shared.waiting).drain().collect();
        let (mut in_flight, mut queued) = (0, 0);
        for (id, tx) in waiting {
            if delivered.contains(&id) {
                in_flight += 1;
                let body = json!({"errorType": "Runtime.ExitError", "errorMessage": message});
                let _ = tx.send(Outcome::Error {
                    error_type: Some("Runtime.ExitError".into()),
                    body: body.to_string().into_bytes(),
                });
            } else {
                // Dropping the sender ends the caller's wait with `Stopped`.
                queued += 1;
            }
        }
        (in_flight, queued)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not turn every later request into a second panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errorType": error_type, "errorMessage": message})),
    )
        .into_response()
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    let now = std::time::Instant::now();
    shared.first_poll.send_if_modified(|first| {
        let unset = first.is_none();
        if unset {
            *first = Some(now);
        }
        unset
    });
    // Long-poll: held here until a test queues an event (as the real API does between invocations).
    let queued = { shared.queue_rx.lock().await.recv().await };
    let Some(Queued { request_id, event }) = queued else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "EmulatorStopped",
            "no more events",
        );
    };
    lock(&shared.delivered).push(request_id.clone());
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d + INVOCATION_DEADLINE).as_millis())
        .unwrap_or_default();
    let trace = format!(
        "Root=1-{:08x}-{};Parent={};Sampled=0",
        deadline / 1000,
        &uuid::Uuid::new_v4().simple().to_string()[..24],
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let mut resp = (StatusCode::OK, event).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in [
        ("lambda-runtime-aws-request-id", request_id),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            shared.function_arn.clone(),
        ),
        ("lambda-runtime-trace-id", trace),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

fn finish(shared: &Shared, id: &str, outcome: Outcome) -> Response {
    match lock(&shared.waiting).remove(id) {
        Some(tx) => {
            // The test may have stopped waiting (timed out); the runtime still did its part.
            let _ = tx.send(outcome);
            accepted()
        }
        None => api_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            "unknown or already answered request id",
        ),
    }
}

fn error_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(ERROR_TYPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    finish(&shared, &id, Outcome::Response(body.to_vec()))
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let outcome = Outcome::Error {
        error_type: error_type(&headers),
        body: body.to_vec(),
    };
    finish(&shared, &id, outcome)
}

async fn init_error(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.init_error.send_replace(Some(InitError {
        error_type: error_type(&headers),
        body: body.to_vec(),
    }));
    accepted()
}

async fn unknown_route() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "UnknownRoute",
        "not a Lambda Runtime API route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn http(method: reqwest::Method, url: String, body: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .request(method, url)
            .body(body.to_owned())
            .send()
            .await
            .expect("the emulator answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    #[tokio::test]
    async fn next_waits_for_an_event_and_the_response_reaches_the_test() {
        // GIVEN an emulator and a runtime already long-polling before anything is queued
        let emu = LambdaEmulator::start("fn").await.expect("start");
        let base = format!("http://{}{API_PREFIX}", emu.runtime_api());
        let poll = tokio::spawn(reqwest::get(format!("{base}/invocation/next")));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!poll.is_finished(), "next must wait for an event");

        // WHEN an event is queued and the runtime answers it
        let inv = emu.enqueue(&json!({"hello": 1}));
        let resp = poll.await.expect("join").expect("next");
        let id = resp.headers()["lambda-runtime-aws-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(id, inv.request_id);
        assert!(
            resp.headers()["lambda-runtime-invoked-function-arn"]
                .to_str()
                .expect("ascii")
                .ends_with(":function:fn")
        );
        let deadline: u128 = resp.headers()["lambda-runtime-deadline-ms"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("millis");
        assert!(deadline > 1_600_000_000_000);
        assert!(resp.headers().contains_key("lambda-runtime-trace-id"));
        assert_eq!(resp.text().await.expect("body"), r#"{"hello":1}"#);
        let (status, _) = http(
            reqwest::Method::POST,
            format!("{base}/invocation/{id}/response"),
            r#"{"ok":true}"#,
        )
        .await;

        // THEN the test gets the response, and a second answer for the same id is refused
        assert_eq!(status, 202);
        let outcome = inv.outcome(Duration::from_secs(2)).await.expect("outcome");
        assert_eq!(outcome.json(), json!({"ok": true}));
        let (status, _) = http(
            reqwest::Method::POST,
            format!("{base}/invocation/{id}/response"),
            "{}",
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(emu.delivered(), vec![id]);
    }

    #[tokio::test]
    async fn errors_init_errors_and_unknown_routes_are_answered_not_panicked_on() {
        let emu = LambdaEmulator::start("fn").await.expect("start");
        let base = format!("http://{}{API_PREFIX}", emu.runtime_api());

        // An invocation error carries its type header and body to the test.
        let inv = emu.enqueue(&json!({}));
        let id = inv.request_id.clone();
        let resp = reqwest::Client::new()
            .post(format!("{base}/invocation/{id}/error"))
            .header(ERROR_TYPE_HEADER, "Runtime.Boom")
            .body("bad")
            .send()
            .await
            .expect("error post");
        assert_eq!(resp.status().as_u16(), 202);
        assert_eq!(
            inv.outcome(Duration::from_secs(2)).await.expect("outcome"),
            Outcome::Error {
                error_type: Some("Runtime.Boom".into()),
                body: b"bad".to_vec()
            }
        );

        // An init error is kept for the test.
        let (status, _) = http(
            reqwest::Method::POST,
            format!("{base}/init/error"),
            "init failed",
        )
        .await;
        assert_eq!(status, 202);
        let init = emu
            .init_error(Duration::from_secs(1))
            .await
            .expect("init error");
        assert_eq!(init.body, b"init failed");

        // Unknown routes and ids get 404 / 400.
        let (status, _) = http(reqwest::Method::GET, format!("{base}/nope"), "").await;
        assert_eq!(status, 404);
        let (status, _) = http(
            reqwest::Method::POST,
            format!("{base}/invocation/no-such-id/response"),
            "{}",
        )
        .await;
        assert_eq!(status, 400);

        // An unanswered invocation times out in the test rather than hanging it.
        let err = emu
            .invoke(&json!({}), Duration::from_millis(50))
            .await
            .expect_err("nobody polls");
        assert!(matches!(err, EmulatorError::Timeout { .. }));
    }

    #[tokio::test]
    async fn a_process_dying_mid_invocation_ends_its_invocation_with_an_exit_error() {
        // GIVEN two queued events, the first handed to a runtime that never answers it
        let emu = LambdaEmulator::start("fn").await.expect("start");
        let base = format!("http://{}{API_PREFIX}", emu.runtime_api());
        let running = emu.enqueue(&json!({"n": 1}));
        let queued = emu.enqueue(&json!({"n": 2}));
        let resp = reqwest::get(format!("{base}/invocation/next"))
            .await
            .expect("next");
        assert_eq!(
            resp.headers()["lambda-runtime-aws-request-id"],
            running.request_id.as_str()
        );
        assert_eq!(emu.in_flight(), vec![running.request_id.clone()]);

        // WHEN its process dies
        let counts = emu.process_died("signal: killed");

        // THEN the running invocation ends with Runtime.ExitError, the queued one as stopped,
        // and nothing is in flight any more
        assert_eq!(counts, (1, 1));
        match running
            .outcome(Duration::from_secs(2))
            .await
            .expect("ended")
        {
            Outcome::Error { error_type, body } => {
                assert_eq!(error_type.as_deref(), Some("Runtime.ExitError"));
                assert!(String::from_utf8_lossy(&body).contains("signal: killed"));
            }
            other => panic!("expected an exit error, got {other:?}"),
        }
        assert!(matches!(
            queued.outcome(Duration::from_secs(2)).await,
            Err(EmulatorError::Stopped(_))
        ));
        assert!(emu.in_flight().is_empty());
    }
}
