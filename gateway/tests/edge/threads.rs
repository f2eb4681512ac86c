//! `[server] threads` with `reuseport`: one service per thread, each with its own `SO_REUSEPORT`
//! listening socket and its own upstream connection pool, so an upstream connection is always reused by
//! the thread that made it. Without it (one service for all threads), Pingora's shared pool hands
//! connections across threads, which `gateway_upstream_connections_total` shows.

use crate::helpers::*;

/// Keeps `connections` clients busy (each over its own kept-alive connection) until `done` holds.
async fn load_until<F, Fut>(gw: &Gateway, connections: usize, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(KeepAlive::connect(gw.http).await);
    }
    let start = std::time::Instant::now();
    loop {
        let rounds = clients.iter_mut().map(|c| c.get("x.test", "/"));
        for status in futures_util::future::join_all(rounds).await {
            assert_eq!(status, Some(200));
        }
        if done().await {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "{what}:\n{}", gw.stderr());
    }
}

fn body(up: &TestUpstream, reuseport: bool) -> String {
    format!(
        "[server]\nthreads = 2\nreuseport = {reuseport}\n\n{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[up], "")
    )
}

#[tokio::test]
async fn with_reuseport_each_thread_has_its_socket_and_reuses_only_its_own_upstream_connections() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&body(&up, true)).await;
    // One SO_REUSEPORT socket per thread (each thread binds its own after the first one accepts).
    listening_sockets_once(gw.http, 2).await;
    // Enough connections that the kernel spreads them over both sockets, and both threads reuse.
    let same = "gateway_upstream_connections_total{kind=\"reused_same_thread\"}";
    load_until(&gw, 16, "upstream connections reused", || async {
        gw.metric(same).await >= 500.0
    })
    .await;
    let other = gw
        .metric("gateway_upstream_connections_total{kind=\"reused_other_thread\"}")
        .await;
    assert_eq!(other, 0.0, "a connection crossed threads");
    assert!(
        gw.metric("gateway_upstream_connections_total{kind=\"new\"}")
            .await
            >= 2.0
    );
    assert!(up.hits() >= 500, "the upstream saw {} requests", up.hits());
}

#[tokio::test]
async fn without_reuseport_the_shared_pool_hands_connections_across_threads() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&body(&up, false)).await;
    assert_eq!(listening_sockets(gw.http).len(), 1, "one shared socket");
    // Pingora gives each connection and each idle upstream connection to a runtime at random: with two
    // threads, crossings come quickly.
    let other = "gateway_upstream_connections_total{kind=\"reused_other_thread\"}";
    load_until(&gw, 16, "a connection reused on another thread", || async {
        gw.metric(other).await >= 1.0
    })
    .await;
}
