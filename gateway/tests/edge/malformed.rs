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
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: b\r\n c\r\n\r\n".into(), 400),
        ("obs-fold in HTTP/1.0", "GET / HTTP/1.0\r\nHost: a.test\r\nX-A: b\r\n c\r\n\r\n".into(), 400),
        ("space before colon", "GET / HTTP/1.1\r\nHost : a.test\r\n\r\n".into(), 400),
        ("bare LF", "GET / HTTP/1.1\nHost: a.test\n\n".into(), 400),
        ("bare LF in one line", "GET / HTTP/1.1\r\nHost: a.test\nX: y\r\n\r\n".into(), 400),
        ("absolute-form other host", "GET http://evil.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n".into(), 400),
        ("duplicate Host", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n".into(), 400),
        ("no Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n".into(), 400),
        // Raw UTF-8 in the target: httparse lets it through; the edge's check refuses it (found by
        // the differential test against h11, tests/head_differential.rs).
        ("raw UTF-8 in the target", "GET /caf\u{e9} HTTP/1.1\r\nHost: a.test\r\n\r\n".into(), 400),
        ("too many headers", format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many_headers}\r\n"), 431),
        ("oversize header section", format!("GET / HTTP/1.1\r\nHost: a.test\r\n{big_header}\r\n"), 431),
    ];
    for (what, request, want) in &cases {
        let before = gw.metric("gateway_http_malformed_requests_total").await;
        let (resp, closed) = raw_bytes(gw.http, request.as_bytes()).await;
        let (status, body) = split_response(&resp);
        assert_eq!(status, *want, "{what}: {resp:?}");
        assert!(
            closed,
            "{what}: connection left open after a malformed request"
        );
        // Refused by the edge with its JSON error, whichever parser caught it (Pingora's or ours).
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: no JSON error body ({e}): {resp:?}"));
        let code = v["error"]["code"].as_str().unwrap_or_default();
        assert!(
            matches!(
                code,
                "malformed_request" | "invalid_host" | "header_too_large" | "too_many_headers"
            ),
            "{what}: {body}"
        );
        let id = v["error"]["request_id"].as_str().unwrap_or_default();
        assert!(
            !id.is_empty()
                && resp
                    .to_ascii_lowercase()
                    .contains(&format!("x-request-id: {id}")),
            "{what}: request id missing: {resp:?}"
        );
        assert_eq!(
            gw.metric("gateway_http_malformed_requests_total").await - before,
            1.0,
            "{what}: counted once as malformed"
        );
    }
    // Every refusal has its access-log line.
    eventually("an access-log line per refused head", || async {
        gw.access_log()
            .iter()
            .filter(|l| l["status"] == 400 || l["status"] == 431)
            .count()
            >= cases.len()
    })
    .await;
    // CONNECT is not tunnelled: 405 with the JSON error, and the connection closed.
    let (resp, closed) = raw_bytes(
        gw.http,
        b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
    )
    .await;
    let (status, body) = split_response(&resp);
    assert_eq!(status, 405, "{resp:?}");
    assert!(body.contains("\"method_not_allowed\""), "{body}");
    assert!(closed);
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
}

/// Bad chunked framing. Pingora sends a request's head upstream before its body, so the upstream may see
/// the head of a request whose body then turns out malformed. What must hold: the client gets 400 and
/// its connection is closed; no such request ever arrives whole at the upstream (each head it saw ends
/// aborted); the upstream connection that carried it is never used again; and bytes after the bad chunk
/// never become a request of their own (no smuggling).
#[tokio::test]
async fn bad_chunked_framing_never_becomes_a_request_upstream() {
    let (up, gw) = setup().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let shapes: Vec<(&str, String)> = vec![
        ("size not hex", format!("zz\r\nabc\r\n0\r\n\r\n{smuggled}")),
        (
            "negative size",
            format!("-5\r\nabcde\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "size over 64 bits",
            format!("10000000000000003\r\nabc\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "data longer than its size, no CRLF",
            format!("3\r\nabcdef0\r\n\r\n{smuggled}"),
        ),
        (
            "size with a space inside",
            format!("1 0\r\n{}\r\n0\r\n\r\n", "a".repeat(16)),
        ),
        (
            "chunk ends with bare LF",
            format!("3\r\nabc\n0\r\n\r\n{smuggled}"),
        ),
    ];
    for (i, (what, body)) in shapes.iter().enumerate() {
        let request = format!(
            "POST /case-{i} HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let (resp, closed) = raw_bytes(gw.http, request.as_bytes()).await;
        let (status, _) = split_response(&resp);
        assert_eq!(status, 400, "{what}: {resp:?}");
        assert!(closed, "{what}: connection left open after bad framing");
    }
    // Trailers may not carry framing or routing fields: whatever the edge does with them, the upstream
    // never sees them as headers.
    let (resp, _) = raw_bytes(
        gw.http,
        b"POST /trailers HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 5\r\nHost: evil.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    let (status, body) = split_response(&resp);
    if status == 200 {
        let echo: serde_json::Value = serde_json::from_str(&body).expect("echo json");
        assert_eq!(echo["headers"]["host"][0], "a.test", "{body}");
        assert!(
            echo["headers"]
                .get("content-length")
                .is_none_or(|v| v[0] == "3"),
            "{body}"
        );
        assert_eq!(echo["body_len"], 3, "{body}");
    } else {
        assert_eq!(status, 400, "{resp}");
    }
    let whole_before = up.hits();
    assert!(
        whole_before <= 1,
        "only the trailers request may arrive whole"
    );

    eventually(
        "every head of a badly framed request ends aborted at the upstream",
        || {
            let ok = up.seen.heads() == up.seen.aborted() + up.hits();
            async move { ok }
        },
    )
    .await;
    // Normal traffic afterwards, over whatever upstream connections the gateway holds.
    for _ in 0..5 {
        assert_eq!(gw.get("a.test", "/after").await.status, 200);
    }
    let log = up.seen.log();
    assert!(
        log.iter().all(|(_, _, path)| path != "/smuggled"),
        "bytes after a bad chunk became a request upstream: {log:?}"
    );
    for (at, (conn, _, path)) in log.iter().enumerate() {
        if path.starts_with("/case-") {
            assert!(
                log[at + 1..].iter().all(|(c, _, _)| c != conn),
                "the upstream connection of an aborted request ({path}) was used again: {log:?}"
            );
        }
    }
    assert_eq!(up.hits(), whole_before + 5);
    eprintln!(
        "bad framing: {} of {} requests had their head reach the upstream (aborted there)",
        up.seen.aborted(),
        shapes.len()
    );
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

/// #23 point 10: a chunk-size line with a 70 KB extension is refused with 400 and the client reads it,
/// even while it is still sending: the gateway half-closes and drains the rest of the input (lingering
/// close) instead of closing with unread bytes, which made the kernel reset the connection and the
/// client lose the answer. Before the fix every one of these clients got `connection reset by peer`.
#[tokio::test]
async fn an_oversized_chunk_extension_gets_400_not_a_reset() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "")
    ))
    .await;
    let ext = "a".repeat(70 * 1024);
    let request = format!(
        "POST /ext HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3;x={ext}\r\nabc\r\n0\r\n\r\n"
    );
    let port = gw.http;
    for i in 0..5 {
        let request = request.clone();
        // A plain blocking client: it writes the whole request, then reads the answer.
        let (resp, outcome) = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            if let Err(e) = s.write_all(request.as_bytes()) {
                return (String::new(), format!("write: {e}"));
            }
            let mut out = Vec::new();
            let r = s.read_to_end(&mut out);
            (
                String::from_utf8_lossy(&out).into_owned(),
                format!("read: {r:?}"),
            )
        })
        .await
        .expect("client");
        let (status, body) = split_response(&resp);
        assert_eq!(status, 400, "client {i}: {outcome}: {resp:?}");
        assert!(body.contains("\"error\""), "{body}");
        assert!(outcome.starts_with("read: Ok"), "client {i}: {outcome}");
    }
    assert_eq!(up.hits(), 0, "the request reached the upstream whole");
    assert_eq!(gw.get("a.test", "/after").await.status, 200);
}
