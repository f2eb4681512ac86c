//! Connections that never send a whole request head are closed from the accept, whatever they sent
//! (nothing, part of an HTTP/1 head, part of the HTTP/2 preface); short HTTP/1 requests are answered at
//! once; idle HTTP/2 connections are closed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn config(up: &TestUpstream, limits: &str) -> String {
    format!(
        "[limits]\n{limits}\n\n{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[up], "")
    )
}

#[tokio::test]
async fn connections_without_a_complete_head_are_closed_from_the_accept() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&config(&up, "header_timeout = \"2s\"")).await;
    let shapes: [&[u8]; 4] = [b"", b"GET / HTT", b"PRI * HTTP/2.0\r\n", b"G"];
    let mut stalled = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(("127.0.0.1", gw.http))
            .await
            .expect("connect");
        let bytes = shapes[i % shapes.len()];
        if !bytes.is_empty() {
            s.write_all(bytes).await.expect("write");
        }
        stalled.push(s);
    }
    let opened = Instant::now();
    // A well-behaved client keeps being served meanwhile.
    for _ in 0..10 {
        assert_eq!(gw.get("a.test", "/ok").await.status, 200);
    }
    let hits = up.hits();
    let mut still_open = 0;
    for mut s in stalled {
        let mut buf = [0u8; 256];
        let left = Duration::from_secs(20).saturating_sub(opened.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            // Closed, with a 408 for an HTTP/1 head cut short, or without a word.
            Ok(Ok(n))
                if n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") => {}
            Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!(
                "unexpected answer: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => still_open += 1,
        }
    }
    assert_eq!(
        still_open, 0,
        "connections held past header_timeout (2 s) + 18 s"
    );
    assert_eq!(up.hits(), hits, "a partial head reached the upstream");
}

#[tokio::test]
async fn a_short_http1_request_is_answered_at_once() {
    let up = TestUpstream::start("u");
    // A long header_timeout: an answer cannot come from the deadline.
    let gw = Gateway::start(&config(&up, "header_timeout = \"30s\"")).await;
    // 18 bytes: shorter than the HTTP/2 preface, and already different from it.
    let (resp, _) = raw_bytes(gw.http, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1."),
        "no answer to an 18-byte request: {resp:?}"
    );
    let (status, _) = split_response(&resp);
    assert_eq!(status, 400, "{resp}");
    // With a Host it is served.
    let (resp, _) = raw_bytes(gw.http, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert_eq!(split_response(&resp).0, 200, "{resp}");
}

/// The deadlines hold as set, not only eventually: a head left unfinished is cut at
/// `header_timeout`, an idle HTTP/2 connection at `h2_idle_timeout` (with GOAWAY, ending the client's
/// driver) — not before, and within a second after (timers on a loaded machine fire late by
/// milliseconds, not seconds).
#[tokio::test]
async fn deadlines_are_kept_to_the_second() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&config(
        &up,
        "header_timeout = \"2s\"\nh2_idle_timeout = \"2s\"",
    ))
    .await;
    let within = |what: &str, took: Duration| {
        assert!(
            took >= Duration::from_millis(1_900) && took <= Duration::from_secs(3),
            "{what}: closed after {took:?}, the deadline is 2 s"
        );
    };

    // Part of an HTTP/1 head, then nothing.
    let mut s = TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .expect("write");
    let sent = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a partial head held past {DEADLINE:?}"),
        }
    }
    within("a partial HTTP/1 head", sent.elapsed());

    // An HTTP/2 connection whose last request was answered.
    let stream = TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("http://a.test/x")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let status = sender
        .send_request(req)
        .await
        .expect("h2c request")
        .status();
    let answered = Instant::now();
    assert_eq!(status, 200);
    tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("idle HTTP/2 connection still open")
        .expect("join")
        .ok();
    within("an idle HTTP/2 connection", answered.elapsed());
}

/// Reads one response (head and Content-Length body) from a kept-alive connection: its status and the
/// upstream's echo of the request path, or `None` when the gateway closed the connection instead.
async fn next_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while got.len() < end + 4 + len {
                let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
                    .await
                    .expect("a whole body")
                    .ok()?;
                assert!(n > 0, "closed inside the body");
                got.extend_from_slice(&buf[..n]);
            }
            let (status, _) = split_response(&String::from_utf8_lossy(&got[..end + 4]));
            let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
            return Some((status, body));
        }
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer and not closed within {DEADLINE:?}"),
        }
    }
}

/// Between requests a kept-alive HTTP/1 connection waits for its next head in a small state of its own
/// (vendored Pingora patch 0015), whose first read is handed to the next request: no clock runs while it
/// is idle (idle longer than `header_timeout`, it is still served), a head that comes in pieces — the
/// first before the rest, or longer than that first read — is put together whole, and a head trickled
/// after the idle time is cut at `header_timeout` from its first byte.
#[tokio::test]
async fn a_kept_alive_connection_waits_for_its_next_head_and_reads_it_whole() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&config(&up, "header_timeout = \"1s\"")).await;
    let mut s = TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .expect("connect");
    let get =
        |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n{extra}\r\n");
    s.write_all(get("/first", "").as_bytes())
        .await
        .expect("write");
    let (status, body) = next_response(&mut s).await.expect("the first answer");
    assert_eq!(status, 200, "{body}");

    // Idle for twice header_timeout: no clock runs between requests.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    s.write_all(get("/after-idle", "").as_bytes())
        .await
        .expect("write");
    let (status, body) = next_response(&mut s)
        .await
        .expect("served after the idle time");
    assert_eq!(status, 200);
    assert!(body.contains("/after-idle"), "{body}");

    // The first bytes alone, the rest 300 ms later: one request, whole.
    let head = get("/in-two-pieces", "X-Part: two\r\n");
    s.write_all(&head.as_bytes()[..5]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(&head.as_bytes()[5..]).await.expect("write");
    let (status, body) = next_response(&mut s)
        .await
        .expect("the split head answered");
    assert_eq!(status, 200);
    assert!(
        body.contains("/in-two-pieces") && body.contains("two"),
        "{body}"
    );

    // A head longer than the wait's first read (4 KiB), in one write.
    let long = "v".repeat(6_000);
    s.write_all(get("/long-head", &format!("X-Long: {long}\r\n")).as_bytes())
        .await
        .expect("write");
    let (status, body) = next_response(&mut s).await.expect("the long head answered");
    assert_eq!(status, 200);
    assert!(
        body.contains("/long-head") && body.contains(&long),
        "the long field arrived whole"
    );

    // After another idle time, a head trickled: cut at header_timeout from its first byte (408).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let hits = up.hits();
    s.write_all(b"GET /trickled HTTP/1.1\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut cut = None;
    for line in [
        "X-A: 1\r\n",
        "X-B: 2\r\n",
        "X-C: 3\r\n",
        "X-D: 4\r\n",
        "X-E: 5\r\n",
    ] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if s.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        if started.elapsed() > Duration::from_millis(1_500) {
            break;
        }
    }
    if let Some((status, _)) = next_response(&mut s).await {
        cut = Some(status);
    }
    let took = started.elapsed();
    assert!(matches!(cut, None | Some(408)), "answered {cut:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "cut after {took:?}, header_timeout is 1 s from the head's first byte"
    );
    assert_eq!(up.hits(), hits, "the trickled head reached the upstream");
}
