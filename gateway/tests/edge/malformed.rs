//! Malformed HTTP is refused at the edge, the connection is closed, and no backend sees the request.

use crate::helpers::*;

async fn setup() -> (TestUpstream, Gateway) {
    let up = TestUpstream::start("u");
    let cfg = format!(
        "[limits]\nmax_header_bytes = 8192\nmax_headers = 50\nheader_timeout = \"1s\"\n\n{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "")
    );
    let gw = Gateway::start(&cfg).await;
    (up, gw)
}

#[tokio::test]
async fn each_malformed_case_is_refused_and_closed() {
    let (up, gw) = setup().await;
    let many_headers: String = (0..60).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "a".repeat(9000));
    let cases: Vec<(&str, String, u16)> = vec![
        ("CL and TE", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("duplicate CL", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd".into(), 400),
        ("conflicting CL", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".into(), 400),
        ("invalid CL", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4x\r\n\r\nabcd".into(), 400),
        ("CL list", "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4, 4\r\n\r\nabcd".into(), 400),
        ("TE chunked twice", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("TE not chunked", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n".into(), 400),
        ("invalid chunk size", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".into(), 400),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: b\r\n c\r\n\r\n".into(), 400),
        ("space before colon", "GET / HTTP/1.1\r\nHost : a.test\r\n\r\n".into(), 400),
        ("bare LF", "GET / HTTP/1.1\nHost: a.test\n\n".into(), 400),
        ("bare LF in one line", "GET / HTTP/1.1\r\nHost: a.test\nX: y\r\n\r\n".into(), 400),
        ("absolute-form other host", "GET http://evil.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n".into(), 400),
        ("duplicate Host", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n".into(), 400),
        ("no Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n".into(), 400),
        ("too many headers", format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many_headers}\r\n"), 431),
        ("oversize header section", format!("GET / HTTP/1.1\r\nHost: a.test\r\n{big_header}\r\n"), 431),
    ];
    for (what, request, want) in &cases {
        let (resp, closed) = raw_bytes(gw.http, request.as_bytes()).await;
        let (status, _) = split_response(&resp);
        assert_eq!(status, *want, "{what}: {resp:?}");
        assert!(
            closed,
            "{what}: connection left open after a malformed request"
        );
    }
    // Path tricks are refused too; the framing is sound, so the connection may stay open.
    for path in [
        "/a/../admin",
        "/a/%2e%2E/admin",
        "/a/./b",
        "/a%2Fb",
        "/a\\b",
    ] {
        let (resp, _) = raw_bytes(
            gw.http,
            format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let (status, body) = split_response(&resp);
        assert_eq!(status, 400, "{path}: {resp}");
        assert!(body.contains("invalid_path"), "{path}: {body}");
    }
    assert_eq!(up.hits(), 0, "a malformed request reached the backend");
    // The gateway still serves normal traffic afterwards.
    assert_eq!(gw.get("a.test", "/").await.status, 200);
    assert!(gw.metric("gateway_http_malformed_requests_total").await >= 10.0);
}

#[tokio::test]
async fn slowloris_is_cut_off() {
    let (up, gw) = setup().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .expect("write");
    // Trickle one header line every 300 ms: each read is quick, the whole head never arrives in time.
    let start = std::time::Instant::now();
    let mut closed = false;
    for i in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if s.write_all(format!("X-{i}: v\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(1), s.read(&mut buf)).await
        {
            if n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "slow header trickle was never cut off");
    // Cut by header_timeout (1 s), not by anything slower (the 50-header limit would take 15 s here).
    assert!(
        start.elapsed() < std::time::Duration::from_secs(6),
        "cut after {:?}",
        start.elapsed()
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn stalled_body_gets_408() {
    let up = TestUpstream::start("u");
    let cfg = format!(
        "[limits]\nbody_timeout = \"1s\"\n\n{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "")
    );
    let gw = Gateway::start(&cfg).await;
    let start = std::time::Instant::now();
    // Promise 100 bytes, send 10, then stall.
    let (resp, closed) = raw_bytes(
        gw.http,
        b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    let (status, body) = split_response(&resp);
    assert_eq!(status, 408, "{resp}");
    assert!(body.contains("request_timeout"), "{body}");
    assert!(closed);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        up.hits(),
        0,
        "an incomplete body must not become a request at the backend"
    );
}
