//! The HTTPS server: TLS accept loop (tokio-rustls + hyper HTTP/1.1), routing to the WeChat
//! endpoints and the admin API, the settle loop and the notification pushes.

use std::sync::Arc;
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use wxpay::ApiKey;

use crate::admin;
use crate::books::{Books, Endpoint, RefundStatus, State};
use crate::certs::MerchantJson;
use crate::notify;
use crate::protocol::{self, Reply};

/// Request bodies above this are refused (the XML decoder has the same cap).
pub const MAX_BODY: usize = wxpay::xml::MAX_BODY;

/// Shared by every connection.
pub struct App {
    pub books: Books,
    pub merchant: MerchantJson,
    pub key: ApiKey,
    pub settle_after: Duration,
    pub notify_retry_factor: f64,
    pub default_notify_url: Option<String>,
    pub apply_limiter: DefaultDirectRateLimiter,
    pub failure_limiter: DefaultDirectRateLimiter,
    pub notify_client: reqwest::Client,
    pub shutdown: watch::Receiver<bool>,
}

/// Returned by the service to make hyper close the connection without a response.
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, app: Arc<App>) {
    let mut shutdown = app.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let app = app.clone();
                conns.spawn(async move { connection(tcp, acceptor, app).await });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Dropping the set aborts every open connection.
}

async fn connection(tcp: tokio::net::TcpStream, acceptor: TlsAcceptor, app: Arc<App>) {
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    // Verified by rustls against our CA; only its CN is left to check.
    let client_cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::common_name(c));
    let service = hyper::service::service_fn(move |req| {
        let app = app.clone();
        let cn = client_cn.clone();
        async move { handle(app, req, cn).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

fn xml_response(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ()> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(_) => Err(()),
    }
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    client_cn: Option<String>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let path = req.uri().path().to_string();
    if path == "/sandbox" || path.starts_with("/sandbox/") {
        let method = req.method().clone();
        let body = read_body(req).await;
        return Ok(admin::handle(&app, &method, &path, body).await);
    }
    let Some((endpoint, needs_cert)) = protocol::route(&path) else {
        return Ok(xml_response(
            StatusCode::NOT_FOUND,
            "<html><body><h1>404 Not Found</h1></body></html>".into(),
            "text/html",
        ));
    };
    // WeChat's front end refuses a missing certificate before the application sees anything.
    if needs_cert && client_cn.is_none() {
        return render(protocol::cert_missing(), &app).await;
    }
    let is_post = req.method() == Method::POST;
    let body = read_body(req).await.unwrap_or_else(|()| {
        // Over the cap: let the XML decoder report it as a format error.
        Bytes::from(vec![b'x'; MAX_BODY + 1])
    });
    let reply = match endpoint {
        Endpoint::Apply => protocol::apply(&app, is_post, &body, client_cn.as_deref()).await,
        Endpoint::Query => protocol::query(&app, is_post, &body).await,
    };
    render(reply, &app).await
}

async fn render(reply: Reply, app: &App) -> Result<Response<Full<Bytes>>, Dropped> {
    match reply {
        Reply::Xml(x) => Ok(xml_response(StatusCode::OK, x, "text/plain")),
        Reply::Html { status, body } => Ok(xml_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            body,
            "text/html",
        )),
        Reply::Drop => Err(Dropped),
        Reply::Hang => {
            let mut shutdown = app.shutdown.clone();
            let _ = shutdown.changed().await;
            Err(Dropped)
        }
    }
}

/// Settles due refunds and starts their notification pushes (after the settled state is saved,
/// so a notification never announces what a restart would undo).
pub fn settle(app: &Arc<App>, force: bool) -> Vec<String> {
    let (settled, pushes) = app.books.update(|st| {
        let settled = st.settle(
            tokio::time::Instant::now(),
            time::OffsetDateTime::now_utc(),
            force,
        );
        let pushes: Vec<_> = settled
            .iter()
            .filter_map(|no| prepare_push(app, st, no))
            .collect();
        (settled, pushes)
    });
    for (no, url, body) in pushes {
        spawn_push(app, no, url, body, 0, Duration::ZERO);
    }
    settled
}

/// Builds a settled refund's notification and records where it goes; None when it goes nowhere.
fn prepare_push(app: &App, st: &mut State, no: &str) -> Option<(String, String, String)> {
    let (url, fields) = st.notification(no, app.default_notify_url.as_deref())?;
    match (url, build_notification(app, &fields)) {
        (Some(url), Ok(body)) => {
            st.set_notify_target(no, Some(url.clone()), None);
            Some((no.to_string(), url, body))
        }
        (None, _) => {
            st.set_notify_target(no, None, Some("no notify_url".into()));
            None
        }
        (Some(url), Err(e)) => {
            st.set_notify_target(no, Some(url), Some(e));
            None
        }
    }
}

fn spawn_push(app: &App, no: String, url: String, body: String, done: u32, wait: Duration) {
    tokio::spawn(notify::deliver(notify::Push {
        books: app.books.clone(),
        client: app.notify_client.clone(),
        out_refund_no: no,
        url,
        body,
        retry_factor: app.notify_retry_factor,
        shutdown: app.shutdown.clone(),
        attempts_done: done,
        first_wait: wait,
    }));
}

/// After a restart: restarts the pushes of loaded refunds that were settled but neither delivered
/// nor given up, continuing their retry schedule where it stood (an attempt that was due while the
/// sandbox was down goes out now). The body is rebuilt, with a fresh nonce, as a retry would be.
pub fn resume_pushes(app: &Arc<App>) -> usize {
    let wall = time::OffsetDateTime::now_utc();
    let mut pending: Vec<_> = {
        let st = app.books.read();
        st.refunds
            .values()
            .filter(|r| r.status != RefundStatus::Processing && r.notify.pending())
            .filter_map(|r| {
                let (url, fields) =
                    st.notification(&r.out_refund_no, app.default_notify_url.as_deref())?;
                let body = build_notification(app, &fields).ok()?;
                let wait = r
                    .notify
                    .next_attempt_at
                    .and_then(|t| Duration::try_from(t - wall).ok())
                    .unwrap_or(Duration::ZERO);
                Some((r.out_refund_no.clone(), url?, body, r.notify.attempts, wait))
            })
            .collect()
    };
    pending.sort_by(|a, b| a.0.cmp(&b.0));
    let resumed = pending.len();
    for (no, url, body, done, wait) in pending {
        spawn_push(app, no, url, body, done, wait);
    }
    resumed
}

fn build_notification(app: &App, fields: &[(String, String)]) -> Result<String, String> {
    let req_info = notify::encrypt_req_info(
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &app.key,
    )
    .map_err(|e| e.to_string())?;
    let nonce = wxpay::NonceStr::random();
    wxpay::xml::encode([
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", app.merchant.appid.as_str()),
        ("mch_id", app.merchant.mch_id.as_str()),
        ("nonce_str", nonce.as_str()),
        ("req_info", req_info.as_str()),
    ])
    .map_err(|e| e.to_string())
}

/// Ticks the settle loop until shutdown.
pub async fn settle_loop(app: Arc<App>) {
    let mut shutdown = app.shutdown.clone();
    let tick = (app.settle_after / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = interval.tick() => { settle(&app, false); }
            _ = shutdown.changed() => return,
        }
    }
}
