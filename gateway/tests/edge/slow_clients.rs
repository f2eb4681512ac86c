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
