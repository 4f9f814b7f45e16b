//! The HTTP/1.1 server for the router outside Lambda (the local stack), with what API Gateway does
//! in front of the functions: a deadline for a request's headers and one for its whole body, so a
//! client that sends slowly (slow-loris) holds a connection for a bounded time and no more memory
//! than the body caps allow.
//!
//! `axum::serve` has neither deadline: a client sending one header byte a minute keeps its
//! connection and task forever. On Lambda the API Gateway buffers the whole request first, so the
//! functions never see a partial one.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tracing::{debug, info, warn};

use super::{ApiError, MAX_JSON_BODY, MAX_NOTIFY_BODY};

/// How long a client may take to send a request's headers and its body.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// From the connection's first byte (or the previous response) to the end of the headers;
    /// past it the connection is closed (there is no request to answer yet).
    pub header_read: Duration,
    /// From the end of the headers to the end of the body; past it the request is answered `408`
    /// and the connection closed.
    pub body_read: Duration,
    /// How long shutdown waits for requests under way before dropping their connections.
    pub drain: Duration,
}

impl Default for ServeLimits {
    /// API Gateway's own bounds are near these: it gives up on a client after ~30 s.
    fn default() -> Self {
        ServeLimits {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            drain: Duration::from_secs(30),
        }
    }
}

/// The largest body any route accepts: read whole under the deadline before the route sees it,
/// then capped again exactly by the route's own limit (413 there).
const LARGEST_BODY: usize = if MAX_JSON_BODY > MAX_NOTIFY_BODY {
    MAX_JSON_BODY
} else {
    MAX_NOTIFY_BODY
};

/// Reads the whole body within `limit` before the handler runs: a slow body is answered
/// `408 request_timeout`, one over every route's cap `413 body_too_large`. Either way the body is
/// never held beyond [`LARGEST_BODY`] bytes.
async fn body_deadline(limit: Duration, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, LARGEST_BODY + 1)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body is larger than the limit",
                )
                .into_response()
            } else {
                // The client went away mid-body: nobody reads this answer.
                debug!(error = %e, path = %parts.uri.path(), "request body not read");
                ApiError::bad_request("invalid_body", "the request body could not be read")
                    .into_response()
            }
        }
        Err(_) => {
            info!(
                method = %parts.method,
                path = %parts.uri.path(),
                status = 408,
                error = "request_timeout",
                "request refused"
            );
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    limit.as_secs_f64()
                ),
            )
            .into_response();
            // The rest of the body may still be on its way: do not read it, close.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, under `limits`; then lets requests
/// under way finish (at most `limits.drain`).
pub async fn serve_local(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let body_read = limits.body_read;
    let app = router.layer(middleware::from_fn(move |req: Request, next: Next| {
        body_deadline(body_read, req, next)
    }));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: the listener is fine, wait and go on.
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection closed by its client or by a deadline is not the server's error.
            if let Err(e) = connection.await {
                debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("shutdown: requests still under way were dropped");
    }
    Ok(())
}
