//! Overload control (#25): every request takes a slot of its upstream's concurrency limit; with none
//! free it waits in a bounded queue for at most `[overload] queue_timeout` and is then refused with 503
//! and `Retry-After`; waiting tenants are served in turn, so a flood cannot take a quiet tenant's share;
//! an adaptive limit follows the upstream's latency; and slots come back on every path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;

/// A GET with a bearer sent in the background (a request that waits: held at the upstream, or
/// held back by the gateway).
fn spawn_get(
    port: u16,
    host: &'static str,
    path: &'static str,
    bearer: String,
) -> tokio::task::JoinHandle<Resp> {
    tokio::spawn(async move {
        send(
            port,
            "GET",
            host,
            path,
            &[("authorization", bearer.as_str())],
            bytes::Bytes::new(),
        )
        .await
    })
}

/// An HTTP/2 connection (prior knowledge) to the gateway's http entrypoint, driven in the background.
async fn h2_connect(
    port: u16,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// Sends `n` GETs at once; their statuses and responses.
async fn burst(gw: &Gateway, host: &str, n: usize) -> Vec<Resp> {
    burst_with(gw, n, |_| (host.to_string(), None)).await
}

/// Sends `n` GETs at once, the `i`th to host `each(i).0` with bearer `each(i).1`.
async fn burst_with(
    gw: &Gateway,
    n: usize,
    each: impl Fn(usize) -> (String, Option<String>),
) -> Vec<Resp> {
    let port = gw.http;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (host, bearer) = each(i);
            tokio::spawn(async move {
                let auth: Vec<(&str, &str)> = bearer
                    .as_deref()
                    .map(|b| vec![("authorization", b)])
                    .unwrap_or_default();
                send(port, "GET", &host, "/", &auth, bytes::Bytes::new()).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

#[tokio::test]
async fn a_fixed_limit_holds_and_the_excess_is_refused_with_retry_after() {
    let slow = TestUpstream::start("slow");
    slow.behaviour.delay_ms.store(600, Ordering::SeqCst);
    let gw = Gateway::start(&format!(
        "[overload]\nqueue_timeout = \"100ms\"\n\n{}\
         [[routes]]\nname = \"r\"\nhosts = [\"a.x.test\"]\nupstream = \"slow\"\n",
        upstream_toml(
            "slow",
            &[&slow],
            "concurrency = { max = 2, adaptive = false }"
        ),
    ))
    .await;
    assert_eq!(
        gw.metric("gateway_upstream_concurrency_limit{upstream=\"slow\"}")
            .await,
        2.0
    );
    let answers = burst(&gw, "a.x.test", 8).await;
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Resp> = answers.iter().filter(|r| r.status != 200).collect();
    // What the upstream saw: never more than the limit at once.
    assert!(
        slow.seen.max_in_flight.load(Ordering::SeqCst) <= 2,
        "the upstream had {} requests at once",
        slow.seen.max_in_flight.load(Ordering::SeqCst)
    );
    assert!(ok >= 2, "the limit's two slots served: {ok}");
    assert!(!refused.is_empty(), "the excess is refused");
    for r in &refused {
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.error_code(), "overloaded_deadline");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.header("x-request-id").is_some());
    }
    assert_eq!(
        slow.hits(),
        ok,
        "a refused request never reached the upstream"
    );
    assert_eq!(
        gw.metric("gateway_overload_refusals_total{reason=\"deadline\",upstream=\"slow\"}")
            .await,
        refused.len() as f64
    );
    // Every slot came back: two at once are served again.
    let again = burst(&gw, "a.x.test", 2).await;
    assert!(again.iter().all(|r| r.status == 200), "{again:?}");
    // The access log names the refusal reason.
    let log = gw.access_log();
    assert!(
        log.iter()
            .any(|l| l["status"] == 503 && l["error"] == "overloaded_deadline"),
        "{log:?}"
    );
}

const SECRET: &str = "overload-test-secret-overload-test-01";

/// A gateway for the fairness tests: tenants' API (`/api`, jwt_tenant) and a public page (`/`, no auth)
/// on one slow upstream with a single slot; waits of up to 2 s.
async fn shared_slot_gateway(up: &TestUpstream) -> Arc<Gateway> {
    Arc::new(
        Gateway::start_with_env(
            &format!(
                "[tenancy]\nbase_domains = [\"aggios.app\"]\n\n\
                 [auth.jwt]\nsecret_env = \"GW_SECRET\"\n\n\
                 [overload]\nqueue_timeout = \"2s\"\n\n{}\
                 [[routes]]\nname = \"api\"\nhosts = [\"*.aggios.app\"]\npath_prefix = \"/api\"\n\
                 auth = \"jwt_tenant\"\nupstream = \"shared\"\n\n\
                 [[routes]]\nname = \"public\"\nhosts = [\"*.aggios.app\"]\nupstream = \"shared\"\n",
                upstream_toml(
                    "shared",
                    &[up],
                    "concurrency = { max = 1, adaptive = false }"
                ),
            ),
            &[("GW_SECRET", SECRET)],
        )
        .await,
    )
}

/// Three requests of the quiet tenant, one after the other, each served while the queue is full of
/// another class's: in turn, each waits for one slot at most.
async fn quiet_tenant_is_served(gw: &Gateway) {
    let quiet = Token::new(SECRET, "quiet").bearer();
    for i in 0..3 {
        let r = gw
            .get_with("quiet.aggios.app", "/api/x", &[("authorization", &quiet)])
            .await;
        assert_eq!(r.status, 200, "quiet request {i}: {r:?}");
    }
}

#[tokio::test]
async fn the_quiet_tenant_is_served_while_the_noisy_one_floods() {
    let up = TestUpstream::start("shared");
    up.behaviour.delay_ms.store(100, Ordering::SeqCst);
    let gw = shared_slot_gateway(&up).await;
    // The noisy tenant queues 40 requests at once: 4 s of the upstream's time, past the deadline.
    let noisy = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move {
            let bearer = Token::new(SECRET, "noisy").bearer();
            burst_with(&gw, 40, move |_| {
                ("noisy.aggios.app".to_string(), Some(bearer.clone()))
            })
            .await
        })
    };
    eventually("the noisy tenant's requests wait", || async {
        gw.metric("gateway_upstream_queue_length{upstream=\"shared\"}")
            .await
            >= 20.0
    })
    .await;
    // First come, first served, the quiet tenant would wait behind them and be refused; in turn, each
    // of its requests waits for one slot at most.
    quiet_tenant_is_served(&gw).await;
    let noisy = noisy.await.expect("join");
    let refused = noisy.iter().filter(|r| r.status == 503).count();
    assert!(refused > 0, "the noisy tenant is the one refused");
    assert!(noisy
        .iter()
        .all(|r| r.status == 200 || r.error_code() == "overloaded_deadline"));
    // The tenants' own figures count overload refusals apart from rate limits.
    let stats = |tenant: &'static str| {
        let gw = Arc::clone(&gw);
        async move {
            let (status, body) = gw.admin_get(&format!("/api/tenants/{tenant}/stats")).await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).expect("json")
        }
    };
    let noisy_stats = stats("noisy").await;
    assert_eq!(noisy_stats["overloaded"], refused as u64, "{noisy_stats}");
    assert_eq!(noisy_stats["ratelimited"], 0);
    assert_eq!(stats("quiet").await["overloaded"], 0);
}

/// Abuse: a flood spread over 40 made-up tenant labels on a public route (no credential) is one class
/// — its client address — not 40: it cannot take 40 turns to the quiet tenant's one. Classed by the
/// Host label, the quiet tenant waited behind 40 turns of 100 ms and was refused.
#[tokio::test]
async fn made_up_tenant_labels_do_not_buy_a_flood_more_turns() {
    let up = TestUpstream::start("shared");
    up.behaviour.delay_ms.store(100, Ordering::SeqCst);
    let gw = shared_slot_gateway(&up).await;
    let flood = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move {
            burst_with(&gw, 40, |i| {
                (format!("t{i}-{}.aggios.app", fastrand::u32(..)), None)
            })
            .await
        })
    };
    eventually("the flood waits", || async {
        gw.metric("gateway_upstream_queue_length{upstream=\"shared\"}")
            .await
            >= 20.0
    })
    .await;
    quiet_tenant_is_served(&gw).await;
    let flood = flood.await.expect("join");
    assert!(
        flood.iter().any(|r| r.status == 503),
        "the flood is refused"
    );
}

#[tokio::test]
async fn a_slow_upstream_shrinks_the_adaptive_limit_and_it_grows_back() {
    // The upstream's own latency: 20 ms at no load, well above what the gateway adds itself (a debug
    // build on a loaded machine adds a few ms as its concurrency grows, which the limit would follow).
    let up = TestUpstream::start("adaptive");
    up.behaviour.delay_ms.store(20, Ordering::SeqCst);
    let gw = Arc::new(
        Gateway::start(&format!(
            "{}[[routes]]\nname = \"r\"\nhosts = [\"a.x.test\"]\nupstream = \"adaptive\"\n",
            upstream_toml(
                "adaptive",
                &[&up],
                "concurrency = { min = 2, max = 40, adaptive = true }"
            ),
        ))
        .await,
    );
    let limit = || {
        let gw = Arc::clone(&gw);
        async move {
            gw.metric("gateway_upstream_concurrency_limit{upstream=\"adaptive\"}")
                .await
        }
    };
    assert_eq!(limit().await, 40.0, "an adaptive limit starts open");
    // The no-load baseline (a probe at low concurrency at the first window).
    for _ in 0..5 {
        burst(&gw, "a.x.test", 16).await;
    }
    eventually("fast answers keep it open", || async {
        burst(&gw, "a.x.test", 16).await;
        limit().await >= 40.0
    })
    .await;
    // The upstream slows down tenfold: the limit shrinks (the excess waits or is refused).
    up.behaviour.delay_ms.store(200, Ordering::SeqCst);
    eventually("the limit shrinks under latency", || async {
        burst(&gw, "a.x.test", 16).await;
        limit().await < 40.0
    })
    .await;
    let low = limit().await;
    assert!(low >= 2.0, "never below min: {low}");
    // It recovers: the limit grows back to its bound.
    up.behaviour.delay_ms.store(20, Ordering::SeqCst);
    eventually("the limit grows back", || async {
        burst(&gw, "a.x.test", 16).await;
        limit().await >= 40.0
    })
    .await;
}

#[tokio::test]
async fn slots_come_back_on_every_error_path() {
    let mut flaky = TestUpstream::start("flaky");
    let gw = Gateway::start(&format!(
        "[overload]\nqueue_timeout = \"100ms\"\n\n{}\
         [[routes]]\nname = \"r\"\nhosts = [\"a.x.test\"]\nupstream = \"flaky\"\n\
         timeouts = {{ read = \"300ms\" }}\n",
        upstream_toml(
            "flaky",
            &[&flaky],
            "concurrency = { max = 2, adaptive = false }\nmax_tries = 1"
        ),
    ))
    .await;
    // The upstream times out (504).
    flaky.behaviour.delay_ms.store(1000, Ordering::SeqCst);
    for r in burst(&gw, "a.x.test", 2).await {
        assert_eq!(r.status, 504, "{r:?}");
    }
    // The client goes away while its request waits for the upstream.
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.http))
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: a.x.test\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    // The upstream is gone (502).
    flaky.kill();
    for r in burst(&gw, "a.x.test", 2).await {
        assert_eq!(r.status, 502, "{r:?}");
    }
    flaky.restart();
    // Each answer holds its slot longer than the queue timeout (and less than the read timeout): with
    // a slot leaked, one of two requests at once would be refused. A leak is forever; a late release
    // is not, hence the wait.
    flaky.behaviour.delay_ms.store(150, Ordering::SeqCst);
    eventually("both slots free again", || async {
        burst(&gw, "a.x.test", 2)
            .await
            .iter()
            .all(|r| r.status == 200)
    })
    .await;
}

#[tokio::test]
async fn the_connection_cap_closes_extra_connections_while_the_open_ones_are_served() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&format!(
        "[overload]\nper_client_connections = 3\n\n{}\
         [[routes]]\nname = \"r\"\nhosts = [\"a.x.test\"]\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], ""),
    ))
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = KeepAlive::connect(gw.http).await;
        assert_eq!(c.get("a.x.test", "/").await, Some(200));
        open.push(c);
    }
    // The fourth from the same address is closed before a byte of HTTP is read: no answer at all.
    let hits = up.hits();
    let mut extra = KeepAlive::connect(gw.http).await;
    assert_eq!(extra.get("a.x.test", "/").await, None);
    assert_eq!(
        up.hits(),
        hits,
        "the refused connection's request never reached the upstream"
    );
    assert!(
        gw.metric("gateway_overload_refusals_total{reason=\"connections\",upstream=\"\"}")
            .await
            >= 1.0
    );
    // The open ones are still served.
    for c in &mut open {
        assert_eq!(c.get("a.x.test", "/").await, Some(200));
    }
    // One closes: a new one is taken (the count follows the connections).
    open.pop();
    eventually("a freed place is taken again", || async {
        KeepAlive::connect(gw.http).await.get("a.x.test", "/").await == Some(200)
    })
    .await;
}

#[tokio::test]
async fn one_http2_connection_gets_at_most_its_streams() {
    let up = TestUpstream::start("u");
    up.behaviour.delay_ms.store(300, Ordering::SeqCst);
    let gw = Gateway::start(&format!(
        "[overload]\nh2_streams_per_connection = 2\n\n{}\
         [[routes]]\nname = \"r\"\nhosts = [\"a.x.test\"]\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], ""),
    ))
    .await;
    let sender = h2_connect(gw.http).await;
    let six =
        |sender: &hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>| {
            let tasks: Vec<_> = (0..6)
                .map(|_| {
                    let mut sender = sender.clone();
                    tokio::spawn(async move {
                        let req = hyper::Request::builder()
                            .uri("http://a.x.test/")
                            .body(http_body_util::Full::new(bytes::Bytes::new()))
                            .expect("request");
                        sender.send_request(req).await.map(|r| r.status().as_u16())
                    })
                })
                .collect::<Vec<_>>();
            async move {
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.expect("join"));
                }
                out
            }
        };
    // Six requests at once, sent before the client has the server's SETTINGS: the streams past the
    // limit are refused by HTTP/2 itself (REFUSED_STREAM: never processed, safe to retry).
    let first = six(&sender).await;
    let served = first.iter().filter(|r| matches!(r, Ok(200))).count();
    for r in &first {
        match r {
            Ok(s) => assert_eq!(*s, 200),
            Err(e) => assert!(format!("{e:?}").contains("REFUSED_STREAM"), "{e:?}"),
        }
    }
    assert!(served >= 2, "{first:?}");
    // Six more once the client knows the limit: it keeps two open at a time, and all are served.
    let second = six(&sender).await;
    assert!(second.iter().all(|r| matches!(r, Ok(200))), "{second:?}");
    assert_eq!(
        up.hits(),
        served + 6,
        "a refused stream never reached the upstream"
    );
    assert!(
        up.seen.max_in_flight.load(Ordering::SeqCst) <= 2,
        "the upstream saw {} of the connection's requests at once",
        up.seen.max_in_flight.load(Ordering::SeqCst)
    );
}

/// An upgraded connection (a WebSocket) gives its slot back once upgraded: open for as long as its
/// client wants, it must not starve the upstream's other requests of the limit.
#[tokio::test]
async fn a_websocket_gives_its_slot_back_once_upgraded() {
    use futures_util::{SinkExt, StreamExt};
    let up = TestUpstream::start("ws");
    let gw = Gateway::start(&format!(
        "[overload]\nqueue_timeout = \"100ms\"\n\n{}\
         [[routes]]\nname = \"r\"\nhosts = [\"a.x.test\"]\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "concurrency = { max = 1, adaptive = false }"),
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://a.x.test/socket", stream)
        .await
        .expect("ws handshake");
    assert_eq!(resp.status(), 101);
    // With the WebSocket open, the one slot serves other requests.
    up.behaviour.delay_ms.store(200, Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(gw.get("a.x.test", "/").await.status, 200);
    }
    // And the WebSocket still works.
    ws.send(tokio_tungstenite::tungstenite::Message::text("still here"))
        .await
        .expect("send");
    let reply = ws.next().await.expect("reply").expect("frame");
    assert_eq!(reply.into_text().expect("text").as_str(), "ws:still here");
    ws.close(None).await.expect("close");
}

/// #25 point 3, the gateway's own core: while the process is saturated (here held so by
/// `GATEWAY_FAULT_CORE_LIMIT`, a limit of 4 requests in progress) and shared by two tenants, a tenant
/// over its share has its
/// keep-alive connections' next requests read later — deferred, not refused, within the queue deadline
/// (10 s here) — so the flood's upstream sees at most the flood's share at once, and a quiet tenant's
/// requests are still read and served. Without the gate the flood's upstream had all eight of its
/// requests at once.
#[tokio::test]
async fn a_saturated_core_reads_an_over_share_tenant_later_and_serves_the_quiet_one() {
    // The tenants' requests go to upstreams of their own: each one sees one tenant's requests.
    let up = TestUpstream::start("core");
    let quiet_up = TestUpstream::start("quiet");
    let hold_up = TestUpstream::start("hold");
    up.behaviour.delay_ms.store(150, Ordering::SeqCst);
    quiet_up.behaviour.delay_ms.store(150, Ordering::SeqCst);
    hold_up.behaviour.delay_ms.store(5000, Ordering::SeqCst);
    let gw = Arc::new(
        Gateway::start_with_env(
            &format!(
                "[tenancy]\nbase_domains = [\"aggios.app\"]\n\n\
                 [auth.jwt]\nsecret_env = \"GW_SECRET\"\n\n\
                 [overload]\nqueue_timeout = \"10s\"\n\n{}{}{}\
                 [[routes]]\nname = \"noisy\"\nhosts = [\"noisy.aggios.app\"]\n\
                 auth = \"jwt_tenant\"\nupstream = \"core\"\n\n\
                 [[routes]]\nname = \"hold\"\nhosts = [\"quiet.aggios.app\"]\npath_prefix = \"/hold\"\n\
                 auth = \"jwt_tenant\"\nupstream = \"hold\"\n\n\
                 [[routes]]\nname = \"quiet\"\nhosts = [\"quiet.aggios.app\"]\n\
                 auth = \"jwt_tenant\"\nupstream = \"quiet\"\n",
                upstream_toml(
                    "core",
                    &[&up],
                    "concurrency = { max = 100, adaptive = false }"
                ),
                upstream_toml(
                    "quiet",
                    &[&quiet_up],
                    "concurrency = { max = 100, adaptive = false }"
                ),
                upstream_toml(
                    "hold",
                    &[&hold_up],
                    "concurrency = { max = 100, adaptive = false }"
                ),
            ),
            &[("GW_SECRET", SECRET), ("GATEWAY_FAULT_CORE_LIMIT", "4")],
        )
        .await,
    );
    assert_eq!(gw.metric("gateway_core_concurrency_limit").await, 4.0);
    let noisy = Token::new(SECRET, "noisy").bearer();
    let quiet = Token::new(SECRET, "quiet").bearer();
    // Eight keep-alive connections of the noisy tenant and one of the quiet one, each with a first
    // request answered (a connection's first request is never held back: its class is not known yet).
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut c = KeepAlive::connect(gw.http).await;
        let s = c
            .get_with("noisy.aggios.app", "/first", &[("authorization", &noisy)])
            .await;
        assert_eq!(s, Some(200));
        conns.push(c);
    }
    let mut q = KeepAlive::connect(gw.http).await;
    let s = q
        .get_with("quiet.aggios.app", "/first", &[("authorization", &quiet)])
        .await;
    assert_eq!(s, Some(200));
    // The quiet tenant keeps one long request in progress (a class alone has nobody to be fair to and
    // is never held back): two classes, a share of 2 each.
    let hold = spawn_get(gw.http, "quiet.aggios.app", "/hold", quiet.clone());
    eventually("the quiet tenant's long request is in progress", || async {
        hold_up.seen.heads() >= 1
    })
    .await;
    up.seen.max_in_flight.store(0, Ordering::SeqCst);
    // The flood: every noisy connection sends three more requests back to back.
    let flood: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let noisy = noisy.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..3 {
                    statuses.push(
                        c.get_with(
                            "noisy.aggios.app",
                            &format!("/flood/{i}"),
                            &[("authorization", &noisy)],
                        )
                        .await,
                    );
                }
                statuses
            })
        })
        .collect();
    // Meanwhile the quiet tenant's next requests on its connection are read and served.
    eventually("the flood is held back", || async {
        gw.metric("gateway_core_deferrals_total").await >= 1.0
    })
    .await;
    for i in 0..3 {
        let s = q
            .get_with(
                "quiet.aggios.app",
                &format!("/quiet/{i}"),
                &[("authorization", &quiet)],
            )
            .await;
        assert_eq!(s, Some(200), "quiet request {i}");
    }
    let quiet_done_at = up.seen.heads();
    let mut flood_statuses = Vec::new();
    for f in flood {
        flood_statuses.extend(f.await.expect("flood task"));
    }
    // Deferred, not refused: every request of the flood was answered by the upstream.
    assert!(
        flood_statuses.iter().all(|s| *s == Some(200)),
        "{flood_statuses:?}"
    );
    // What the flood's upstream saw: at most the flood's share at once (2 of the limit of 4) — not its
    // eight connections' worth.
    let max = up.seen.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max <= 2,
        "the flood had {max} requests at once at its upstream"
    );
    assert_eq!(
        quiet_up.hits(),
        4,
        "the quiet tenant's requests all reached its upstream"
    );
    // The quiet tenant was served before the flood was through (it did not wait behind it).
    assert!(
        quiet_done_at < up.seen.heads(),
        "the quiet tenant finished only after the whole flood ({quiet_done_at} heads)"
    );
    assert!(gw.metric("gateway_core_deferrals_total").await >= 1.0);
    assert_eq!(hold.await.expect("join").status, 200);
}

/// … and nothing waits past `[overload] queue_timeout`: a request of a class still over its share by
/// then is refused fast (503, `Retry-After`, `overloaded_core`) and never reaches the upstream — past
/// saturation the excess must be answered, or what is served waits behind a backlog that only grows.
#[tokio::test]
async fn a_request_held_back_past_the_queue_deadline_is_refused() {
    let up = TestUpstream::start("held");
    up.behaviour.delay_ms.store(1500, Ordering::SeqCst);
    let gw = Gateway::start_with_env(
        &format!(
            "[tenancy]\nbase_domains = [\"aggios.app\"]\n\n\
             [auth.jwt]\nsecret_env = \"GW_SECRET\"\n\n\
             [overload]\nqueue_timeout = \"100ms\"\n\n{}\
             [[routes]]\nname = \"api\"\nhosts = [\"*.aggios.app\"]\n\
             auth = \"jwt_tenant\"\nupstream = \"held\"\n",
            upstream_toml(
                "held",
                &[&up],
                "concurrency = { max = 100, adaptive = false }"
            ),
        ),
        &[("GW_SECRET", SECRET), ("GATEWAY_FAULT_CORE_LIMIT", "1")],
    )
    .await;
    let bearer = Token::new(SECRET, "noisy").bearer();
    let auth = [("authorization", bearer.as_str())];
    // Two tenants with a slow request each (a single class has nobody to be fair to and is never held
    // back): a limit of 1 gives each a share of 1, which the noisy one's request holds.
    let port = gw.http;
    let other = spawn_get(
        port,
        "other.aggios.app",
        "/slow",
        Token::new(SECRET, "other").bearer(),
    );
    eventually(
        "the other tenant's request reached the upstream",
        || async { up.seen.heads() >= 1 },
    )
    .await;
    let held = spawn_get(port, "noisy.aggios.app", "/slow", bearer.clone());
    eventually("the slow request reached the upstream", || async {
        up.seen.heads() >= 2
    })
    .await;
    // Another request of the same tenant: held back for the deadline, then refused at the edge.
    let r = gw.get_with("noisy.aggios.app", "/second", &auth).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.error_code(), "overloaded_core");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        up.seen.heads(),
        2,
        "the refused request never reached the upstream"
    );
    assert_eq!(
        gw.metric("gateway_overload_refusals_total{reason=\"core\",upstream=\"\"}")
            .await,
        1.0
    );
    // The held requests themselves are served.
    assert_eq!(held.await.expect("join").status, 200);
    assert_eq!(other.await.expect("join").status, 200);
    let log = gw.access_log();
    assert!(
        log.iter()
            .any(|l| l["status"] == 503 && l["error"] == "overloaded_core"),
        "{log:?}"
    );
}

/// A gateway whose core gate is held at `core_limit` requests in progress, with a `jwt_tenant` route
/// per tenant `{name}.aggios.app` to an upstream of its own (a fixed limit of 100: only the core gate
/// holds anything back); `extra` goes before the `[overload]` section.
async fn core_gate_gateway(
    tenants: [(&str, &TestUpstream); 2],
    extra: &str,
    core_limit: &str,
) -> Gateway {
    let mut body = format!(
        "[tenancy]\nbase_domains = [\"aggios.app\"]\n\n\
         [auth.jwt]\nsecret_env = \"GW_SECRET\"\n\n{extra}\
         [overload]\nqueue_timeout = \"30s\"\n\n"
    );
    for (name, up) in tenants {
        body.push_str(&upstream_toml(
            name,
            &[up],
            "concurrency = { max = 100, adaptive = false }",
        ));
    }
    for (name, _) in tenants {
        body.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nhosts = [\"{name}.aggios.app\"]\n\
             auth = \"jwt_tenant\"\nupstream = \"{name}\"\n\n"
        ));
    }
    Gateway::start_with_env(
        &body,
        &[
            ("GW_SECRET", SECRET),
            ("GATEWAY_FAULT_CORE_LIMIT", core_limit),
        ],
    )
    .await
}

/// #25 point 3 over HTTP/2: a saturated core (`GATEWAY_FAULT_CORE_LIMIT` 4, two tenants: a share of 2
/// each) accepts an over-share tenant's next streams later. The noisy tenant's connection has its two
/// streams in progress; a third stream on it (with a token the edge refuses at once when it looks at
/// it) is not even looked at — no 401 — while the quiet tenant is served, and is answered as soon as one
/// of the noisy tenant's streams ends (reset by its client), long before the queue deadline. Without the
/// HTTP/2 gate the third stream was accepted and refused with 401 at once.
#[tokio::test]
async fn a_saturated_core_accepts_an_over_share_tenants_next_http2_streams_later() {
    let noisy_up = TestUpstream::start("noisy");
    let quiet_up = TestUpstream::start("quiet");
    noisy_up.behaviour.delay_ms.store(60_000, Ordering::SeqCst);
    quiet_up.behaviour.delay_ms.store(50, Ordering::SeqCst);
    let gw = core_gate_gateway([("noisy", &noisy_up), ("quiet", &quiet_up)], "", "4").await;
    let noisy = Token::new(SECRET, "noisy").bearer();
    let quiet = Token::new(SECRET, "quiet").bearer();
    // The quiet tenant has a long request in progress (a class alone is never held back).
    quiet_up.behaviour.delay_ms.store(60_000, Ordering::SeqCst);
    let port = gw.http;
    let hold = spawn_get(port, "quiet.aggios.app", "/hold", quiet.clone());
    eventually("the quiet tenant's long request is in progress", || async {
        quiet_up.seen.heads() >= 1
    })
    .await;
    quiet_up.behaviour.delay_ms.store(50, Ordering::SeqCst);

    // One HTTP/2 connection of the noisy tenant, two streams in progress: its share.
    let sender = h2_connect(port).await;
    let get = |path: &str, bearer: &str| {
        let mut sender = sender.clone();
        let req = hyper::Request::builder()
            .uri(format!("http://noisy.aggios.app{path}"))
            .header("authorization", bearer)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        tokio::spawn(async move {
            let r = sender.send_request(req).await.map(|r| r.status().as_u16());
            (r, std::time::Instant::now())
        })
    };
    let first = get("/slow/1", &noisy);
    let second = get("/slow/2", &noisy);
    eventually("the noisy tenant's two streams are in progress", || async {
        noisy_up.seen.heads() >= 2
    })
    .await;
    // A third stream on the same connection: over the share, not accepted yet.
    let third = get("/refused-when-read", "Bearer not-a-token");
    // Meanwhile the quiet tenant's requests are read and served.
    for i in 0..3 {
        let r = gw
            .get_with(
                "quiet.aggios.app",
                &format!("/quiet/{i}"),
                &[("authorization", quiet.as_str())],
            )
            .await;
        assert_eq!(r.status, 200, "quiet request {i}: {r:?}");
    }
    assert!(
        !third.is_finished(),
        "the over-share tenant's next stream was read and answered: {:?}",
        third.await
    );
    assert!(gw.metric("gateway_core_deferrals_total").await >= 1.0);
    // One of the noisy tenant's streams ends (its client resets it): the next one is accepted, and the
    // edge answers it (the token is refused) — well before the 30 s queue deadline.
    let ended_at = std::time::Instant::now();
    first.abort();
    let (status, answered_at) = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("the held stream was accepted once a stream of its tenant ended")
        .expect("join");
    assert_eq!(status.expect("answered"), 401);
    assert!(answered_at >= ended_at);
    assert_eq!(
        noisy_up.seen.heads(),
        2,
        "the refused stream never reached the upstream"
    );
    second.abort();
    hold.abort();
}

/// A stand-in for the backend's `GET /internal/tenant-policy/{tenant}`: every tenant active, on a plan
/// whose `concurrency_weight` is `weight(tenant)`.
async fn policy_server(weight: fn(&str) -> u32) -> u16 {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| async move {
                let tenant = req
                    .uri()
                    .path()
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let policy = contracts::plans::TenantPolicy {
                    concurrency_weight: weight(&tenant),
                    tenant,
                    plan: "test".into(),
                    version: 1,
                    suspended: false,
                    requests_per_second: 10_000,
                    burst: 10_000,
                    monthly_requests: 0,
                    storage_bytes: 0,
                    max_upload_bytes: 0,
                    max_api_keys: 0,
                    max_users: 0,
                };
                let body = serde_json::to_vec(&policy).expect("json");
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(body),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    port
}

/// #25 point 3 with #26's plans: at a saturated core the shares follow each tenant's plan
/// (`concurrency_weight`), as in the upstream queue. With a limit of 8 shared by a tenant of weight 3
/// and one of weight 1, the heavy tenant has 6 requests in progress at once (an equal share was 4).
#[tokio::test]
async fn a_saturated_core_shares_by_plan_weight() {
    let heavy_up = TestUpstream::start("heavy");
    let light_up = TestUpstream::start("light");
    let policies = policy_server(|t| if t == "heavy" { 3 } else { 1 }).await;
    let plans = format!(
        "[plans]\nlookup_url = \"http://127.0.0.1:{policies}/internal/tenant-policy/{{tenant}}\"\n\
         default = {{ plan = \"free\", requests_per_second = 1000, burst = 1000 }}\n\n"
    );
    let gw = core_gate_gateway([("heavy", &heavy_up), ("light", &light_up)], &plans, "8").await;
    let heavy = Token::new(SECRET, "heavy").bearer();
    let light = Token::new(SECRET, "light").bearer();
    // Each tenant's plan is looked up once (then in process).
    for (host, bearer) in [("heavy.aggios.app", &heavy), ("light.aggios.app", &light)] {
        let r = gw
            .get_with(host, "/first", &[("authorization", bearer.as_str())])
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // The light tenant has two long requests in progress: two classes, weights 3 and 1.
    light_up.behaviour.delay_ms.store(60_000, Ordering::SeqCst);
    let port = gw.http;
    let light_held: Vec<_> = (0..2)
        .map(|_| spawn_get(port, "light.aggios.app", "/held", light.clone()))
        .collect();
    eventually("the light tenant's requests are in progress", || async {
        light_up.seen.heads() >= 3
    })
    .await;
    // The heavy tenant sends eight at once.
    heavy_up.behaviour.delay_ms.store(3_000, Ordering::SeqCst);
    heavy_up.seen.max_in_flight.store(0, Ordering::SeqCst);
    let heavy_sent: Vec<_> = (0..8)
        .map(|_| spawn_get(port, "heavy.aggios.app", "/work", heavy.clone()))
        .collect();
    let mut statuses = Vec::new();
    for h in heavy_sent {
        statuses.push(h.await.expect("join").status);
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        heavy_up.seen.max_in_flight.load(Ordering::SeqCst),
        6,
        "the heavy tenant's share of 8 at weights 3:1 (equal shares gave 4)"
    );
    for h in light_held {
        h.abort();
    }
}
