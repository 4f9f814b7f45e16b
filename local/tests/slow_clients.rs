//! The local server against clients that send slowly or too much: slow-loris headers and bodies
//! are cut at their deadlines, bodies over the caps are refused unread, and none of it leaves
//! memory or connections behind. Raw TCP, so the test controls every byte and pause.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wxrefund::http::{ServeLimits, serve_local};
use wxrefund::testing::proc_status_kib;

mod common;

const LIMITS: ServeLimits = ServeLimits {
    header_read: Duration::from_millis(400),
    body_read: Duration::from_millis(600),
    drain: Duration::from_secs(1),
};

/// The router on a loopback port under [`LIMITS`]; stopped when the returned sender drops.
async fn start(dir: &tempfile::TempDir) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = common::router(dir);
    tokio::spawn(serve_local(
        router,
        listener,
        async move {
            let _ = stopped.await;
        },
        LIMITS,
    ));
    (addr, stop)
}

/// Reads until the server closes the connection (or `within` passes): what it sent, and whether it
/// closed in time.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

fn rss_kib() -> u64 {
    proc_status_kib(None, "VmRSS:").expect("VmRSS of this process (Linux)")
}

/// `n` connections at once that send part of a request's headers, a byte every 100 ms, and never
/// finish them. Returns how many the server closed within `LIMITS.header_read` + 1 s.
async fn slow_header_round(addr: SocketAddr, n: usize) -> usize {
    let clients = (0..n).map(|_| {
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"POST /refunds HTTP/1.1\r\nHost: local\r\nX-Slow: ")
                .await
                .expect("first bytes");
            let started = Instant::now();
            let trickle = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if s.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            };
            // The trickle ends when the server closes (a write fails) or the test gives up.
            let _ =
                tokio::time::timeout(LIMITS.header_read + Duration::from_secs(1), trickle).await;
            let (_, closed) = read_until_closed(&mut s, Duration::from_millis(200)).await;
            closed && started.elapsed() < LIMITS.header_read + Duration::from_secs(1)
        })
    });
    let mut closed = 0;
    for c in clients.collect::<Vec<_>>() {
        if c.await.expect("client task") {
            closed += 1;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_headers_are_cut_at_the_header_deadline_and_leave_no_memory() {
    // GIVEN the local server with a 400 ms header deadline
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _stop) = start(&dir).await;
    // WHEN 200 connections trickle their headers, three rounds one after another
    let first = slow_header_round(addr, 200).await;
    let after_first = rss_kib();
    let second = slow_header_round(addr, 200).await;
    let third = slow_header_round(addr, 200).await;
    let after_third = rss_kib();
    // THEN the server closed every one of them at its deadline
    assert_eq!((first, second, third), (200, 200, 200));
    // AND the later rounds left no memory behind (a leak per connection would show 400 times)
    let grew = after_third.saturating_sub(after_first);
    assert!(
        grew < 4 * 1024,
        "RSS grew {grew} KiB over 400 closed slow connections ({after_first} -> {after_third} KiB)"
    );
    // AND the server still answers a whole request at once
    let answer = get(addr, "/refunds/R-SLOW-1").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains(r#""error":"not_found""#), "{answer}");
}

/// A whole GET sent at once; the server's answer.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed,
        "the server kept a Connection: close request open: {answer}"
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_answered_408_in_the_json_envelope_and_closed() {
    // GIVEN the local server with a 600 ms body deadline
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _stop) = start(&dir).await;
    // WHEN a refund request announces 200 bytes, sends 10 and stalls
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    s.write_all(
        b"POST /refunds HTTP/1.1\r\nHost: local\r\nContent-Type: application/json\r\n\
          Content-Length: 200\r\n\r\n{\"out_ref",
    )
    .await
    .expect("partial request");
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    // THEN it is answered 408 request_timeout at the deadline, and the connection closed
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    assert!(closed, "the connection stayed open after the 408");
    let took = started.elapsed();
    assert!(
        took >= LIMITS.body_read && took < LIMITS.body_read + Duration::from_secs(2),
        "answered after {took:?}"
    );
    // AND the server goes on serving
    let answer = get(addr, "/refunds/R-SLOW-2").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

/// One request whose body (`len` bytes, announced or chunked) is far over every cap, written as
/// fast as the server reads; returns the server's answer.
async fn oversized(addr: SocketAddr, len: usize, chunked: bool) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = if chunked {
        "POST /refunds HTTP/1.1\r\nHost: local\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
            .to_owned()
    } else {
        format!(
            "POST /refunds HTTP/1.1\r\nHost: local\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\n\r\n"
        )
    };
    s.write_all(head.as_bytes()).await.expect("head");
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let block = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = block.len().min(len - sent);
            let ok = if chunked {
                let mut chunk = format!("{n:x}\r\n").into_bytes();
                chunk.extend_from_slice(&block[..n]);
                chunk.extend_from_slice(b"\r\n");
                w.write_all(&chunk).await
            } else {
                w.write_all(&block[..n]).await
            };
            // The server stops reading once it has refused the body.
            if ok.is_err() {
                break;
            }
            sent += n;
        }
        sent
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut got)).await;
    let sent = writer.await.expect("writer");
    assert!(sent < len, "the server read the whole {len}-byte body");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_caps_are_refused_unread_without_growing_memory() {
    // GIVEN the local server
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _stop) = start(&dir).await;
    let _ = oversized(addr, 16 << 20, false).await;
    let before = rss_kib();
    // WHEN 40 requests each try to upload 16 MiB to POST /refunds, half announced, half chunked
    let mut answers = Vec::new();
    for i in 0..40 {
        answers.push(oversized(addr, 16 << 20, i % 2 == 1).await);
    }
    let after = rss_kib();
    // THEN each is answered 413 body_too_large in the JSON envelope
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 413"), "{a}");
        assert!(a.contains(r#""error":"body_too_large""#), "{a}");
    }
    // AND the 640 MiB offered did not stay in memory (the server holds at most one cap per body)
    let grew = after.saturating_sub(before);
    assert!(
        grew < 8 * 1024,
        "RSS grew {grew} KiB over 40 refused 16 MiB uploads ({before} -> {after} KiB)"
    );
}
