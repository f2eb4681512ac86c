//! WebSocket upgrades both ways, HTTP/2 (h2c) from clients and to upstreams, keep-alive reuse.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let up = TestUpstream::start("ws");
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "")
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.test/socket", stream)
        .await
        .expect("ws handshake");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}")))
            .await
            .expect("send");
        let reply = ws.next().await.expect("reply").expect("frame");
        assert_eq!(
            reply.into_text().expect("text").as_str(),
            format!("ws:hello {i}")
        );
    }
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(
        ws.next()
            .await
            .expect("reply")
            .expect("frame")
            .into_data()
            .as_ref(),
        &[1u8, 2, 3]
    );
    // A frame far larger than an upgraded connection's 16 KiB read buffers (vendored patch 0013),
    // each way, whole.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.expect("send");
    let reply = ws.next().await.expect("reply").expect("frame").into_data();
    assert_eq!(reply.len(), big.len());
    assert!(
        reply.as_ref() == big.as_slice(),
        "the large frame came back altered"
    );
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn http2_from_the_client_and_h2c_to_the_upstream() {
    let up = TestUpstream::start("h2");
    let cfg = format!(
        "{}{}[[routes]]\nname = \"h1\"\npath_prefix = \"/h1\"\nupstream = \"h1\"\n[[routes]]\nname = \"h2\"\npath_prefix = \"/h2\"\nupstream = \"h2\"\n",
        upstream_toml("h1", &[&up], ""),
        upstream_toml("h2", &[&up], "protocol = \"h2c\"")
    );
    let gw = Gateway::start(&cfg).await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    // Several streams on one HTTP/2 connection, to an HTTP/1.1 and to an h2c upstream.
    for (path, version) in [
        ("/h1/a", "HTTP/1.1"),
        ("/h2/b", "HTTP/2.0"),
        ("/h1/c", "HTTP/1.1"),
        ("/h2/d", "HTTP/2.0"),
    ] {
        let req = hyper::Request::builder()
            .uri(format!("http://app.test{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let echo: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(echo["version"], version, "{path}: {echo}");
        assert_eq!(
            echo["headers"]["x-forwarded-host"][0], "app.test",
            "{path}: {echo}"
        );
    }
}

/// A client's `Connection: close` (and HTTP/1.0 without keep-alive) ends the connection after the
/// response; an HTTP/1.1 client that says nothing keeps it.
#[tokio::test]
async fn the_clients_connection_close_is_honoured() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "")
    ))
    .await;
    for request in [
        "GET / HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: x.test\r\n\r\n",
    ] {
        let (resp, closed) = raw_bytes(gw.http, request.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{request:?} → {resp}"
        );
        assert!(
            closed,
            "the gateway kept the connection open after {request:?}"
        );
    }
    let (resp, closed) = raw_bytes(gw.http, b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n").await;
    assert!(
        resp.to_ascii_lowercase()
            .contains("\r\nconnection: keep-alive\r\n"),
        "{resp}"
    );
    assert!(!closed, "a keep-alive connection was closed");
}

/// #23 point 7: `max_headers` and `max_header_bytes` hold over HTTP/2 (h2c) as over HTTP/1: 150 fields
/// or one 40 KiB field are refused at the edge with 431, and the upstream never sees them. Before the
/// fix both passed over h2c.
#[tokio::test]
async fn http2_heads_meet_the_same_limits_as_http1() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "")
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(1 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let hits = up.hits();
    let many = {
        let mut req = hyper::Request::builder().uri("http://app.test/many");
        for i in 0..150 {
            req = req.header(format!("x-field-{i}"), "v");
        }
        req.body(Full::new(Bytes::new())).expect("request")
    };
    let big = hyper::Request::builder()
        .uri("http://app.test/big")
        .header("x-big", "a".repeat(40 * 1024))
        .body(Full::new(Bytes::new()))
        .expect("request");
    for (what, req) in [("150 fields", many), ("one 40 KiB field", big)] {
        match sender.send_request(req).await {
            Ok(resp) => {
                assert_eq!(resp.status(), 431, "{what}");
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body:?}"));
                assert!(v["error"]["code"].is_string(), "{what}: {v}");
            }
            // The decoder's own bound (a bare 431 and a reset stream) also keeps it from the upstream.
            Err(e) => assert!(
                format!("{e:?}").contains("REFUSED_STREAM") || format!("{e:?}").contains("431"),
                "{what}: {e:?}"
            ),
        }
    }
    assert_eq!(up.hits(), hits, "the upstream saw an oversized HTTP/2 head");
    // The connection still serves a normal request.
    let ok = hyper::Request::builder()
        .uri("http://app.test/ok")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(sender.send_request(ok).await.expect("h2").status(), 200);
}

/// #32 point 2: the edge checks an HTTP/1 request gets hold over HTTP/2 — h2c with prior knowledge on
/// the plain port and h2 over TLS — each decided before the upstream: a rate limit (429 with
/// `Retry-After`), a body limit (413), the head limits (431), a CORS preflight allowed and one
/// refused. The upstream sees only what was let through.
#[tokio::test]
async fn every_edge_check_holds_over_h2c_and_h2() {
    use crate::tls_helpers::{client_config, connect, dev_certs};
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = dev_certs(certs.path(), &["*.aggios.test"]);
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&format!(
        r#"[tls]
[[tls.certificates]]
cert = "{dir}/dev.crt"
key = "{dir}/dev.key"

[limits]
max_headers = 50

[rate_limits.per_ip]
key = "client_ip"
limit = 2
period = "60s"
scope = "local"

{u}
[[routes]]
name = "limited"
path_prefix = "/limited"
rate_limits = ["per_ip"]
upstream = "u"

[[routes]]
name = "small"
path_prefix = "/small"
max_body_bytes = 16
upstream = "u"

[[routes]]
name = "cors"
path_prefix = "/cors"
cors = {{ origins = ["https://app.example.com"], methods = ["GET", "PUT"], headers = ["Authorization"] }}
upstream = "u"
"#,
        dir = certs.path().display(),
        u = upstream_toml("u", &[&up], ""),
    ))
    .await;
    let request = |method: &str, path: &str, headers: &[(&str, &str)], body: &'static [u8]| {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("https://h2.aggios.test{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(Bytes::from_static(body)))
            .expect("request")
    };
    for protocol in ["h2c", "h2"] {
        let (mut sender, conn) = if protocol == "h2c" {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.http))
                .await
                .expect("connect");
            let (s, c) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .expect("h2c handshake");
            (s, tokio::spawn(async move { c.await.ok() }))
        } else {
            let tls = connect(gw.https, "h2.aggios.test", client_config(&ca, &[b"h2"]))
                .await
                .expect("TLS");
            assert_eq!(tls.alpn.as_deref(), Some(&b"h2"[..]));
            let (s, c) = hyper::client::conn::http2::handshake(
                TokioExecutor::new(),
                TokioIo::new(tls.stream),
            )
            .await
            .expect("h2 handshake");
            (s, tokio::spawn(async move { c.await.ok() }))
        };
        let hits = up.hits();
        let mut statuses = Vec::new();
        let mut send = |req| {
            let fut = sender.send_request(req);
            async move {
                let resp = fut.await.expect("an HTTP/2 answer");
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.expect("body").to_bytes();
                (parts, body)
            }
        };
        // Rate limit: each protocol run has a budget of its own (the limit is per client address
        // and both runs come from 127.0.0.1: the h2 run finds it spent).
        for _ in 0..3 {
            let (parts, _) = send(request("GET", "/limited", &[], b"")).await;
            statuses.push(parts.status.as_u16());
            if parts.status == 429 {
                assert!(parts.headers.contains_key("retry-after"), "{protocol}");
            }
        }
        // Body limit.
        let (parts, body) = send(request("PUT", "/small", &[], b"0123456789abcdefXYZ")).await;
        assert_eq!(parts.status, 413, "{protocol}: {body:?}");
        // Head limits: more fields than max_headers.
        let many: Vec<(String, String)> = (0..60)
            .map(|i| (format!("x-f{i}"), "v".to_string()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (parts, body) = send(request("GET", "/small", &many, b"")).await;
        assert_eq!(parts.status, 431, "{protocol}: {body:?}");
        // CORS preflights: an allowed origin gets the grant, another none.
        let preflight = |origin: &'static str| {
            request(
                "OPTIONS",
                "/cors/x",
                &[("origin", origin), ("access-control-request-method", "PUT")],
                b"",
            )
        };
        let (parts, _) = send(preflight("https://app.example.com")).await;
        assert_eq!(
            parts
                .headers
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            Some("https://app.example.com"),
            "{protocol}: {parts:?}"
        );
        let (parts, _) = send(preflight("https://evil.example")).await;
        assert!(
            parts.headers.get("access-control-allow-origin").is_none(),
            "{protocol}: a foreign origin was granted: {parts:?}"
        );
        // What went through: only the requests under the rate limit.
        let allowed = statuses.iter().filter(|s| **s == 200).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(allowed + limited, 3, "{protocol}: {statuses:?}");
        assert!(
            limited >= 1,
            "{protocol}: no 429 past the limit: {statuses:?}"
        );
        assert_eq!(
            up.hits() - hits,
            allowed,
            "{protocol}: a refused request reached the upstream"
        );
        drop(sender);
        conn.abort();
    }
}
