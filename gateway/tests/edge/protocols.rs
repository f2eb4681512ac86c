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
