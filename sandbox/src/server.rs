//! The HTTPS server: TLS accept loop (tokio-rustls + hyper HTTP/1.1) and routing of each request
//! to the WeChat endpoints (refund, refund query, bill download) or the admin API.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::app::App;
use crate::body;
use crate::books::Endpoint;
use crate::download;
use crate::protocol::{self, Reply};

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
        .and_then(|c| crate::x509::common_name(c));
    let service = hyper::service::service_fn(move |req| {
        let app = app.clone();
        let cn = client_cn.clone();
        async move { handle(app, req, cn).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

fn text_response(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    bytes_response(status, body.into_bytes(), content_type)
}

fn bytes_response(status: StatusCode, body: Vec<u8>, content_type: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    client_cn: Option<String>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let path = req.uri().path().to_string();
    if path == "/sandbox" || path.starts_with("/sandbox/") {
        let method = req.method().clone();
        let body = body::read(req.into_body()).await;
        return Ok(admin::handle(&app, &method, &path, body).await);
    }
    let Some((endpoint, needs_cert)) = protocol::route(&path) else {
        return Ok(text_response(
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
    let body = body::read(req.into_body()).await;
    let body = body.as_deref().map_err(|&e| e);
    let reply = match endpoint {
        Endpoint::Apply => protocol::apply(&app, is_post, body, client_cn.as_deref()).await,
        Endpoint::Query => protocol::query(&app, is_post, body).await,
        Endpoint::Bill => download::download(&app, is_post, body).await,
    };
    render(reply, &app).await
}

async fn render(reply: Reply, app: &App) -> Result<Response<Full<Bytes>>, Dropped> {
    match reply {
        Reply::Xml(x) => Ok(text_response(StatusCode::OK, x, "text/plain")),
        Reply::Html { status, body } => Ok(text_response(status, body, "text/html")),
        Reply::Bill { body, content_type } => {
            Ok(bytes_response(StatusCode::OK, body, content_type))
        }
        Reply::Drop => Err(Dropped),
        Reply::Hang => {
            let mut shutdown = app.shutdown.clone();
            let _ = shutdown.changed().await;
            Err(Dropped)
        }
    }
}
