//! SIGTERM: the listeners close at once, requests in flight finish within `[server] shutdown_grace`, and
//! the process is gone by the end of the grace whatever is still running. With `[server] shutdown_delay`
//! the gateway first serves on, not ready, closing each connection after its next response.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::helpers::*;

fn config(up: &TestUpstream, grace: &str) -> String {
    config_with(up, &format!("shutdown_grace = \"{grace}\""))
}

fn config_with(up: &TestUpstream, server: &str) -> String {
    format!(
        "[server]\n{server}\n\n{}[[routes]]\nname = \"r\"\nupstream = \"u\"\ntimeouts = {{ read = \"60s\" }}\n",
        upstream_toml("u", &[up], "")
    )
}

async fn wait_exit(gw: &mut Gateway, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if gw.exited().is_some() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still running {within:?} after SIGTERM:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_ones() {
    let up = TestUpstream::start("u");
    up.behaviour.delay_ms.store(1_500, Ordering::SeqCst);
    let mut gw = Gateway::start(&config(&up, "20s")).await;
    let port = gw.http;
    let in_flight = tokio::spawn(async move {
        send(port, "GET", "x.test", "/slow", &[], bytes::Bytes::new()).await
    });
    eventually("the request reached the upstream", || async {
        up.seen.heads() >= 1
    })
    .await;
    let t0 = Instant::now();
    gw.terminate();
    // No new connection is accepted once the stop has begun.
    eventually("the listener is closed", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    let r = in_flight.await.expect("task");
    assert_eq!(r.status, 200, "the request in flight was cut: {:?}", r.body);
    assert_eq!(r.upstream(), Some("u"));
    // The process leaves once nothing is in flight, long before the 20 s grace.
    let waited = wait_exit(&mut gw, Duration::from_secs(20)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "exit took {:?} after SIGTERM (waited {waited:?} after the request)",
        t0.elapsed()
    );
}

#[tokio::test]
async fn sigterm_stops_within_the_grace_when_a_request_runs_longer() {
    let up = TestUpstream::start("u");
    up.behaviour.delay_ms.store(30_000, Ordering::SeqCst);
    let mut gw = Gateway::start(&config(&up, "1s")).await;
    let port = gw.http;
    let in_flight = tokio::spawn(async move {
        raw_bytes(port, b"GET /stuck HTTP/1.1\r\nHost: x.test\r\n\r\n").await
    });
    eventually("the request reached the upstream", || async {
        up.seen.heads() >= 1
    })
    .await;
    let t0 = Instant::now();
    gw.terminate();
    // Gone after the 1 s grace: not held by the 30 s request (a loaded machine gets some slack).
    wait_exit(&mut gw, Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "left before the grace: {took:?}"
    );
    let (resp, closed) = in_flight.await.expect("task");
    assert!(
        closed && !resp.starts_with("HTTP/1.1 200"),
        "the stuck request cannot have finished: {resp:?}"
    );
}

/// Writes one keep-alive request on `conn` and reads its whole response (by Content-Length); returns the
/// head (lowercase) and whether the gateway then closed the connection.
async fn exchange(conn: &mut tokio::net::TcpStream, path: &str) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x.test\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body_len) = loop {
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
            .await
            .expect("a response within 20 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("content-length");
            break (head, end + 4 + len);
        }
    };
    while got.len() < body_len {
        let n = conn.read(&mut buf).await.expect("read body");
        assert!(n > 0, "closed inside the body");
        got.extend_from_slice(&buf[..n]);
    }
    // Closed afterwards? (a read of 0 bytes, or a reset, within a short wait; an open connection
    // just has nothing to say)
    let closed = matches!(
        tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    (head, closed)
}

#[tokio::test]
async fn a_shutdown_delay_serves_on_not_ready_and_moves_keep_alive_clients_before_the_listeners_close(
) {
    let up = TestUpstream::start("u");
    let mut gw = Gateway::start(&config_with(
        &up,
        "shutdown_delay = \"3s\"\nshutdown_grace = \"5s\"",
    ))
    .await;
    let port = gw.http;
    eventually("/readyz says ready", || async {
        gw.admin_get("/readyz").await.0 == 200
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (head, closed) = exchange(&mut conn, "/before").await;
    assert!(head.starts_with("http/1.1 200") && !closed, "{head}");
    assert!(!head.contains("connection: close"), "{head}");

    let t0 = Instant::now();
    gw.terminate();
    // Not ready at once, so that a balancer's health check takes this gateway out …
    eventually("/readyz says 503 stopping", || async {
        let (status, body) = gw.admin_get("/readyz").await;
        status == 503 && body.contains("stopping")
    })
    .await;
    // … while it still accepts and serves new connections, each closed after its response,
    let (resp, closed) = raw_bytes(port, b"GET /new HTTP/1.1\r\nHost: x.test\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "a new connection during the delay: {resp:?}"
    );
    assert!(closed, "the new connection was kept open: {resp:?}");
    // and the keep-alive client's next request is answered, then its connection closed: it reconnects
    // elsewhere after a complete response instead of meeting a closed connection.
    let (head, closed) = exchange(&mut conn, "/after").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("connection: close") && closed,
        "kept alive: {head}"
    );
    let after = up
        .seen
        .log()
        .iter()
        .filter(|(_, _, p)| p == "/after")
        .count();
    assert_eq!(after, 1, "the upstream did not see the request once");
    // Then the listeners close and the process ends (nothing in flight), not before the delay.
    let waited = wait_exit(&mut gw, Duration::from_secs(30)).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(2_900),
        "stopped after {:?}, before the 3 s delay (waited {waited:?})",
        t0.elapsed()
    );
    assert!(gw.stderr().contains("shutdown_delay"), "{}", gw.stderr());
}

#[tokio::test]
async fn a_second_sigterm_ends_the_shutdown_delay() {
    let up = TestUpstream::start("u");
    let mut gw = Gateway::start(&config_with(&up, "shutdown_delay = \"120s\"")).await;
    gw.terminate();
    eventually("/readyz says 503 stopping", || async {
        gw.admin_get("/readyz").await.0 == 503
    })
    .await;
    gw.terminate();
    // Far sooner than the 120 s delay (generous for a loaded machine).
    wait_exit(&mut gw, Duration::from_secs(60)).await;
    assert!(gw.stderr().contains("second SIGTERM"), "{}", gw.stderr());
}

/// An idle gateway leaves soon after SIGTERM: once nothing has been in flight for the drain's settle
/// time (200 ms), not at the end of the grace (20 s here). The bound is the settle time plus what a
/// loaded machine needs to close listeners and runtimes.
#[tokio::test]
async fn an_idle_gateway_exits_soon_after_sigterm() {
    let up = TestUpstream::start("u");
    let mut gw = Gateway::start(&config(&up, "20s")).await;
    assert_eq!(gw.get("x.test", "/warm").await.status, 200);
    let t0 = Instant::now();
    gw.terminate();
    wait_exit(&mut gw, Duration::from_secs(20)).await;
    let took = t0.elapsed();
    eprintln!("idle exit took {took:?}");
    assert!(
        took < Duration::from_millis(200) + Duration::from_secs(3),
        "an idle gateway took {took:?} to exit after SIGTERM (settle 200 ms, grace 20 s)"
    );
}
