//! SIGTERM: the listeners close at once, requests in flight finish within `[server] shutdown_grace`, and
//! the process is gone by the end of the grace whatever is still running.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::helpers::*;

fn config(up: &TestUpstream, grace: &str) -> String {
    format!(
        "[server]\nshutdown_grace = \"{grace}\"\n\n{}[[routes]]\nname = \"r\"\nupstream = \"u\"\ntimeouts = {{ read = \"60s\" }}\n",
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
