//! The transport against tiny local servers: mutual TLS with the legacy p12, outcome classes
//! (not sent / unknown / HTTP status / not XML), failover on connect failure only, pacing, and
//! downloads (any body, their own size cap).

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use wxpay::cert::MerchantIdentity;
use wxpay::client::{ClientConfig, PacingConfig, SystemRoots, TransportError, WxPayClient};

const MCH_ID: &str = "1900000109";
const OK_XML: &str = "<xml><return_code>SUCCESS</return_code></xml>";
const BILL: &str =
    "交易时间,商户退款单号\n`2026-11-26 10:00:00,`R1\n总交易单数,退款总金额\n`1,`0.01\n";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn identity() -> MerchantIdentity {
    MerchantIdentity::from_p12_der(
        &fixture("merchant-legacy.p12"),
        None,
        MCH_ID,
        SystemTime::now(),
    )
    .expect("legacy p12")
}

/// Answers by path; counts requests.
async fn handle(
    req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let (status, body): (u16, String) = match req.uri().path() {
        "/bill" => (200, BILL.into()),
        "/big" => (200, "`".repeat(2 << 20)),
        "/html" => (200, "<html><body>502 Bad Gateway</body></html>".into()),
        "/502" => (502, "<html>bad gateway</html>".into()),
        "/500" => (500, "oops".into()),
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            (200, OK_XML.into())
        }
        _ => (200, OK_XML.into()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    Ok(resp)
}

/// A plain HTTP server on 127.0.0.1; returns its base URL and the hit counter.
async fn plain_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, counter.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

/// A TLS server that requires a client certificate issued by the test CA (like WeChat's
/// `/secapi` endpoints); returns its base URL and the hit counter.
async fn mtls_server() -> (String, Arc<AtomicUsize>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&fixture("ca.pem")).expect("ca"))
        .expect("add ca");
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .expect("verifier");
    let certs = vec![CertificateDer::from_pem_slice(&fixture("server.pem")).expect("server cert")];
    let key = PrivateKeyDer::from_pem_slice(&fixture("server.key")).expect("server key");
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req| handle(req, counter.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (format!("https://localhost:{port}"), hits)
}

/// A base URL on which nothing listens.
async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn config(base: &str) -> ClientConfig {
    let mut cfg = ClientConfig::for_base_url(base);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.total_timeout = Duration::from_millis(800);
    cfg
}

#[tokio::test]
async fn mutual_tls_with_the_legacy_p12_gets_a_reply() {
    // GIVEN a TLS server that requires a client certificate from the test CA
    let (base, hits) = mtls_server().await;
    let mut cfg = config(&base);
    cfg.extra_root_ca_pem = Some(fixture("ca.pem"));
    let client = WxPayClient::new(&cfg, Some(&identity())).expect("client");
    // WHEN a refund is posted
    let reply = client
        .post_xml("/secapi/pay/refund", "<xml></xml>".into(), true)
        .await
        .expect("reply over mTLS");
    // THEN the reply arrives from the primary
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, OK_XML.as_bytes());
    assert_eq!(reply.base_url, base);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_client_certificate_the_server_refuses() {
    // GIVEN the same server and a client built without identity
    let (base, hits) = mtls_server().await;
    let mut cfg = config(&base);
    cfg.extra_root_ca_pem = Some(fixture("ca.pem"));
    let client = WxPayClient::new(&cfg, None).expect("client");
    // WHEN a refund is attempted, it is refused locally (never sent without the certificate)
    let local = client
        .post_xml("/secapi/pay/refund", "<xml/>".into(), true)
        .await;
    assert_eq!(local, Err(TransportError::NoIdentity));
    // AND a call that does not claim to need it is refused by the server's handshake
    let remote = client
        .post_xml("/pay/refundquery", "<xml/>".into(), false)
        .await;
    assert!(remote.is_err(), "{remote:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn untrusted_server_certificate_is_refused_without_extra_ca() {
    // GIVEN the TLS server and a client without the test CA (verification is never disabled)
    let (base, hits) = mtls_server().await;
    let client = WxPayClient::new(&config(&base), Some(&identity())).expect("client");
    // WHEN posting
    let err = client
        .post_xml("/pay/refundquery", "<xml/>".into(), false)
        .await
        .unwrap_err();
    // THEN the handshake fails before anything is sent
    assert!(matches!(err, TransportError::NotSent(_)), "{err:?}");
    assert!(!err.outcome_unknown());
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn system_roots_read_ahead_verify_the_same_way() {
    // GIVEN the system's roots read ahead (as a cold start does during the secret fetch)
    let roots = SystemRoots::load().expect("the system's roots");
    assert!(roots.len() > 10, "{roots:?}");
    let (base, hits) = mtls_server().await;
    // WHEN a client trusts them plus the test CA THEN the mutual-TLS call gets its reply
    let mut cfg = config(&base);
    cfg.extra_root_ca_pem = Some(fixture("ca.pem"));
    cfg.system_roots = Some(roots.clone());
    let client = WxPayClient::new(&cfg, Some(&identity())).expect("client");
    let reply = client
        .post_xml("/secapi/pay/refund", "<xml></xml>".into(), true)
        .await
        .expect("reply over mTLS");
    assert_eq!(reply.status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // WHEN a client trusts them alone THEN the test server's certificate is refused, unsent
    let mut cfg = config(&base);
    cfg.system_roots = Some(roots);
    let client = WxPayClient::new(&cfg, Some(&identity())).expect("client");
    let err = client
        .post_xml("/pay/refundquery", "<xml/>".into(), false)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::NotSent(_)), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connect_failure_fails_over_to_the_backup_for_a_bounded_time() {
    // GIVEN a closed port as primary and a live backup, holding the backup for 300 ms
    let (backup, hits) = plain_server().await;
    let mut cfg = config(&closed_port_url().await);
    cfg.backup_base_url = Some(backup.clone());
    cfg.failover_hold = Duration::from_millis(300);
    let client = WxPayClient::new(&cfg, None).expect("client");
    // WHEN a request is posted
    let reply = client
        .post_xml("/pay/refundquery", "<xml/>".into(), false)
        .await
        .expect("served by the backup");
    // THEN the backup answered and stays preferred
    assert_eq!(reply.base_url, backup);
    assert!(client.on_backup());
    let again = client
        .post_xml("/pay/refundquery", "<xml/>".into(), false)
        .await
        .expect("backup");
    assert_eq!(again.base_url, backup);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // AND after the hold the primary is tried again first
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(!client.on_backup());
}

#[tokio::test]
async fn both_domains_unreachable_is_not_sent() {
    // GIVEN two closed ports
    let mut cfg = config(&closed_port_url().await);
    cfg.backup_base_url = Some(closed_port_url().await);
    let client = WxPayClient::new(&cfg, None).expect("client");
    // WHEN posting
    let err = client
        .post_xml("/pay/refundquery", "<xml/>".into(), false)
        .await
        .unwrap_err();
    // THEN the request is known not to have been sent
    assert!(matches!(err, TransportError::NotSent(_)), "{err:?}");
    assert!(!err.outcome_unknown());
}

#[tokio::test]
async fn read_timeout_is_unknown_and_does_not_fail_over() {
    // GIVEN a primary that accepts and never answers, and a live backup
    let (primary, primary_hits) = plain_server().await;
    let (backup, backup_hits) = plain_server().await;
    let mut cfg = config(&primary);
    cfg.backup_base_url = Some(backup);
    cfg.total_timeout = Duration::from_millis(300);
    let client = WxPayClient::new(&cfg, Some(&identity())).expect("client");
    // WHEN a refund is posted
    let err = client
        .post_xml("/hang", "<xml/>".into(), true)
        .await
        .unwrap_err();
    // THEN the outcome is unknown and the refund was not re-sent anywhere
    assert!(matches!(err, TransportError::Unknown(_)), "{err:?}");
    assert!(err.outcome_unknown());
    assert_eq!(primary_hits.load(Ordering::SeqCst), 1);
    assert_eq!(backup_hits.load(Ordering::SeqCst), 0);
    assert!(!client.on_backup());
}

#[tokio::test]
async fn http_errors_and_html_are_unknown_outcomes() {
    // GIVEN a server answering 502 and an HTML page with 200
    let (base, _) = plain_server().await;
    let client = WxPayClient::new(&config(&base), None).expect("client");
    // WHEN posting to each
    let status = client
        .post_xml("/502", "<xml/>".into(), false)
        .await
        .unwrap_err();
    let html = client
        .post_xml("/html", "<xml/>".into(), false)
        .await
        .unwrap_err();
    // THEN both are classified and kept for diagnostics
    assert_eq!(
        status,
        TransportError::HttpStatus {
            status: 502,
            snippet: "<html>bad gateway</html>".into()
        }
    );
    assert!(
        matches!(html, TransportError::NotXml { status: 200, .. }),
        "{html:?}"
    );
    assert!(status.outcome_unknown() && html.outcome_unknown());
}

#[tokio::test]
async fn downloads_return_any_body_up_to_the_download_cap() {
    // GIVEN a server answering a plain-text bill, and a 2 MiB body
    let (base, hits) = plain_server().await;
    let client = WxPayClient::new(&config(&base), None).expect("client");
    // WHEN an XML body comes back (WeChat's refusal) THEN it is returned raw, for the caller
    let refusal = client
        .post_for_bytes(wxpay::bill::PATH, "<xml/>".into())
        .await
        .map(|r| r.body);
    assert_eq!(refusal.as_deref(), Ok(OK_XML.as_bytes()));
    // WHEN the bill is downloaded THEN its bytes come back as sent, though they are not XML
    let reply = client
        .post_for_bytes("/bill", "<xml/>".into())
        .await
        .map(|r| r.body);
    assert_eq!(reply.as_deref(), Ok(BILL.as_bytes()));
    // AND post_xml still refuses the same body
    assert!(matches!(
        client.post_xml("/bill", "<xml/>".into(), false).await,
        Err(TransportError::NotXml { status: 200, .. })
    ));
    // WHEN a reply is over the 1 MiB XML cap THEN an XML call stops reading, a download does not
    let xml = client.post_xml("/big", "<xml/>".into(), false).await;
    assert_eq!(
        xml,
        Err(TransportError::Unknown(
            "reply larger than 1048576 bytes".into()
        ))
    );
    let download = client.post_for_bytes("/big", "<xml/>".into()).await;
    assert_eq!(download.map(|r| r.body.len()), Ok(2 << 20));
    assert_eq!(wxpay::client::MAX_DOWNLOAD_BYTES, 512 << 20);
    // AND HTTP errors are classified as for any call
    assert!(matches!(
        client.post_for_bytes("/502", "<xml/>".into()).await,
        Err(TransportError::HttpStatus { status: 502, .. })
    ));
    assert_eq!(hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn refund_burst_is_paced_then_refused_past_the_wait_bound() {
    // GIVEN refund pacing at 5/s and no waiting allowed
    let (base, hits) = plain_server().await;
    let mut cfg = config(&base);
    cfg.pacing = PacingConfig {
        refund_per_sec: NonZeroU32::new(5).expect("nonzero"),
        failing_per_sec: NonZeroU32::new(100).expect("nonzero"),
        max_wait: Duration::ZERO,
    };
    let client = WxPayClient::new(&cfg, Some(&identity())).expect("client");
    // WHEN 8 refunds are fired at once
    let mut results = Vec::new();
    for _ in 0..8 {
        results.push(
            client
                .post_xml("/secapi/pay/refund", "<xml/>".into(), true)
                .await,
        );
    }
    // THEN the first 5 go out and the rest are refused locally, unsent
    let sent = results.iter().filter(|r| r.is_ok()).count();
    let paced = results
        .iter()
        .filter(|r| matches!(r, Err(TransportError::Paced("refund apply"))))
        .count();
    assert_eq!((sent, paced), (5, 3));
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    // AND queries (no certificate) are not limited by the refund budget
    assert!(
        client
            .post_xml("/pay/refundquery", "<xml/>".into(), false)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn refund_burst_waits_for_the_budget_within_the_bound() {
    // GIVEN refund pacing at 5/s and up to 2 s of waiting
    let (base, hits) = plain_server().await;
    let mut cfg = config(&base);
    cfg.pacing.refund_per_sec = NonZeroU32::new(5).expect("nonzero");
    cfg.pacing.max_wait = Duration::from_secs(2);
    let client = WxPayClient::new(&cfg, Some(&identity())).expect("client");
    // WHEN 8 refunds are fired concurrently
    let start = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                c.post_xml("/secapi/pay/refund", "<xml/>".into(), true)
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.expect("join").is_ok());
    }
    // THEN all went out, spread over at least ~3 refill intervals (200 ms each)
    assert_eq!(hits.load(Ordering::SeqCst), 8);
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn failing_requests_budget_stops_further_requests() {
    // GIVEN a failing-request budget of 2/s and no waiting
    let (base, hits) = plain_server().await;
    let mut cfg = config(&base);
    cfg.pacing.failing_per_sec = NonZeroU32::new(2).expect("nonzero");
    cfg.pacing.max_wait = Duration::ZERO;
    let client = WxPayClient::new(&cfg, None).expect("client");
    // WHEN three requests fail with HTTP 500
    for _ in 0..3 {
        let r = client.post_xml("/500", "<xml/>".into(), false).await;
        assert!(
            matches!(r, Err(TransportError::HttpStatus { status: 500, .. })),
            "{r:?}"
        );
    }
    // THEN the next request is held back locally, even a healthy one
    let paced = client.post_xml("/ok", "<xml/>".into(), false).await;
    assert_eq!(paced, Err(TransportError::Paced("failing requests")));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // AND once the budget refills requests flow again
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(client.post_xml("/ok", "<xml/>".into(), false).await.is_ok());
}

#[tokio::test]
async fn invalid_config_is_reported_at_build_time() {
    // GIVEN a bad base URL and a non-PEM CA file
    let bad_url = WxPayClient::new(&ClientConfig::for_base_url("api.mch.weixin.qq.com"), None);
    let cfg = ClientConfig {
        extra_root_ca_pem: Some(b"not a pem".to_vec()),
        ..ClientConfig::default()
    };
    let bad_ca = WxPayClient::new(&cfg, None);
    // THEN both fail with messages naming the problem
    assert!(
        bad_url
            .unwrap_err()
            .to_string()
            .contains("must start with https://")
    );
    assert!(bad_ca.unwrap_err().to_string().starts_with("WXPAY_CA_FILE"));
    // AND the defaults are the documented ones
    let d = ClientConfig::default();
    assert_eq!(d.base_url, "https://api.mch.weixin.qq.com");
    assert_eq!(
        d.backup_base_url.as_deref(),
        Some("https://api2.mch.weixin.qq.com")
    );
    assert_eq!(
        (d.connect_timeout, d.total_timeout, d.download_timeout),
        (
            Duration::from_secs(3),
            Duration::from_secs(10),
            Duration::from_secs(60)
        )
    );
    assert_eq!(d.pacing.refund_per_sec.get(), 150);
    assert_eq!(d.pacing.failing_per_sec.get(), 6);
}

#[tokio::test]
async fn client_debug_shows_no_identity_material() {
    // GIVEN a client with the merchant identity
    let id = identity();
    let client = WxPayClient::new(&ClientConfig::default(), Some(&id)).expect("client");
    // WHEN formatted
    let text = format!("{client:?}");
    // THEN only URLs and a flag appear
    assert!(text.contains("api.mch.weixin.qq.com"));
    assert!(!text.contains("PRIVATE KEY") && !text.contains("CERTIFICATE"));
}
