//! DNS service discovery: an upstream server given as a host name is every address the name resolves
//! to, re-resolved without a reload. The name server is a real one (Debian's `knotd`) whose answers the
//! test changes with signed dynamic updates; the servers are test upstreams on 127.0.0.2, .3 and .4.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::tls_helpers::Knot;

const ZONE: &str = "svc.test";

/// `(addr, healthy)` of the upstream's servers, as the admin API shows them.
async fn servers(gw: &Gateway) -> Vec<(String, bool)> {
    let (status, body) = gw.admin_get("/api/routes").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mut out: Vec<(String, bool)> = v["upstreams"][0]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            (
                s["addr"].as_str().unwrap_or_default().to_string(),
                s["healthy"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

fn config(knot_port: u16, port: u16) -> String {
    format!(
        "[dns]\nnameservers = [\"127.0.0.1:{knot_port}\"]\nrefresh = \"200ms\"\ntimeout = \"300ms\"\n\n\
         [[upstreams]]\nname = \"u\"\nservers = [\"backend.{ZONE}:{port}\"]\n\
         health = {{ path = \"/healthz\", interval = \"200ms\", timeout = \"1s\", unhealthy_threshold = 1 }}\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"u\"\n"
    )
}

/// Sends requests back to back until stopped; counts answers that are not 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(http: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, n, f) = (stop.clone(), sent.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let mut conn = KeepAlive::connect(http).await;
            while !s.load(Ordering::SeqCst) {
                let status = conn.get("x.test", "/").await;
                n.fetch_add(1, Ordering::SeqCst);
                if status != Some(200) {
                    f.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{status:?}"));
                    conn = KeepAlive::connect(http).await;
                }
            }
        });
        Load {
            stop,
            sent,
            failed,
            task,
        }
    }

    /// Lets `more` requests go, then stops; every request must have been answered 200.
    async fn finish_clean_after(self, more: usize) {
        let at = self.sent.load(Ordering::SeqCst);
        eventually("load after the change", || async {
            self.sent.load(Ordering::SeqCst) > at + more
        })
        .await;
        let (sent, failed) = self.finish().await;
        assert!(
            failed.is_empty(),
            "{} of {sent} requests failed: {failed:?}",
            failed.len()
        );
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.sent.load(Ordering::SeqCst), failed)
    }
}

#[tokio::test]
async fn upstream_names_follow_dns_answers_without_a_reload_and_keep_health_state() {
    let port = free_port();
    let at = |last: u8| -> SocketAddr { format!("127.0.0.{last}:{port}").parse().expect("addr") };
    let (a, b, c) = (
        TestUpstream::start_at("a", at(2)),
        TestUpstream::start_at("b", at(3)),
        TestUpstream::start_at("c", at(4)),
    );
    let mut knot = Knot::start_with(ZONE, "backend 1 A 127.0.0.2\nbackend 1 A 127.0.0.3\n").await;
    let gw = Gateway::start(&config(knot.port, port)).await;

    // Both addresses of the name are servers from the start.
    assert_eq!(
        servers(&gw).await,
        vec![(at(2).to_string(), true), (at(3).to_string(), true)]
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let r = gw.get("x.test", "/").await;
        assert_eq!(r.status, 200);
        seen.insert(r.upstream().unwrap_or("?").to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
    let (_, body) = gw.admin_get("/api/routes").await;
    assert!(
        body.contains(&format!("\"via\":\"backend.{ZONE}:{port}\"")),
        "{body}"
    );

    // b fails its checks: out of rotation.
    b.behaviour.health_status.store(500, Ordering::SeqCst);
    eventually("b marked down", || async {
        servers(&gw).await.contains(&(at(3).to_string(), false))
    })
    .await;
    let b_hits = b.hits();

    // Under constant load, the name now answers .3 and .4: .2 leaves, .4 joins, and b stays down (its
    // state survives the change: had it been reset, b would take requests until its next failed check).
    let load = Load::start(gw.http);
    eventually("some load before the change", || async {
        load.sent.load(Ordering::SeqCst) > 20
    })
    .await;
    knot.update(
        ZONE,
        &[
            &format!("update delete backend.{ZONE}. A 127.0.0.2"),
            &format!("update add backend.{ZONE}. 1 A 127.0.0.4"),
        ],
    );
    eventually("the servers follow the DNS answer", || async {
        servers(&gw).await == vec![(at(3).to_string(), false), (at(4).to_string(), true)]
    })
    .await;
    let a_hits = a.hits();
    load.finish_clean_after(50).await;
    assert_eq!(
        b.hits(),
        b_hits,
        "the unhealthy server that stayed got traffic"
    );
    assert_eq!(a.hits(), a_hits, "the removed server still got traffic");
    assert!(c.hits() > 50, "the new server got {} requests", c.hits());
    assert!(
        gw.stderr().contains("upstream servers changed (DNS)"),
        "{}",
        gw.stderr()
    );

    // The name disappears (a service scaled to zero): no servers, a clear 503, and not ready.
    knot.update(ZONE, &[&format!("update delete backend.{ZONE}.")]);
    eventually("no servers without an answer", || async {
        servers(&gw).await.is_empty()
    })
    .await;
    let r = gw.get("x.test", "/").await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        !r.error_code().is_empty(),
        "a JSON error body: {:?}",
        r.body
    );
    assert_eq!(gw.admin_get("/readyz").await.0, 503);

    // It comes back; then the name server dies: lookups fail, and the last answer stands.
    knot.update(
        ZONE,
        &[&format!("update add backend.{ZONE}. 1 A 127.0.0.2")],
    );
    eventually("servers again", || async {
        servers(&gw).await == vec![(at(2).to_string(), true)]
    })
    .await;
    knot.kill();
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(2) {
        assert_eq!(servers(&gw).await, vec![(at(2).to_string(), true)]);
        assert_eq!(gw.get("x.test", "/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("the failed lookup is logged", || async {
        gw.stderr()
            .contains("lookup failed; its last known addresses stay in use")
    })
    .await;
}

#[tokio::test]
async fn validate_accepts_a_name_it_cannot_resolve_and_rejects_a_malformed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.toml");
    let body = |server: &str| {
        format!(
            "[entrypoints]\nhttp = \"127.0.0.1:8080\"\n[[upstreams]]\nname = \"u\"\nservers = [\"{server}\"]\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n"
        )
    };
    // `backend` resolves only inside the compose network: validation must not need it.
    std::fs::write(&path, body("backend.invalid:8081")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&path, body("backend:http")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run validate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("g.toml:5:12:") && err.contains("`http` is not a port"),
        "{err}"
    );
}

/// Name servers are asked in their listed order, one at a time, like the C library's resolver: a
/// container's resolv.conf under podman lists the network's DNS (which knows the service names) and
/// then the host's (which answers NXDOMAIN for them). Asked concurrently or by latency, the second's
/// NXDOMAIN emptied the upstream every minute or so in the compose stack (scripts/compose-test.sh).
#[tokio::test(flavor = "multi_thread")]
async fn a_later_name_server_that_does_not_know_the_name_does_not_empty_the_upstream() {
    let port = free_port();
    let up = TestUpstream::start_at("a", format!("127.0.0.2:{port}").parse().expect("addr"));
    let stack_dns = Knot::start_with(ZONE, "backend 1 A 127.0.0.2\n").await;
    let host_dns = Knot::start_with(ZONE, "other 1 A 127.0.0.9\n").await;
    let config = config(stack_dns.port, port).replace(
        &format!("nameservers = [\"127.0.0.1:{}\"]", stack_dns.port),
        &format!(
            "nameservers = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
            stack_dns.port, host_dns.port
        ),
    );
    assert!(config.contains(&host_dns.port.to_string()), "{config}");
    let gw = Gateway::start(&config).await;
    // Twenty refreshes (200 ms each): the server never leaves, and every request is answered by it.
    let until = Instant::now() + Duration::from_secs(4);
    let mut refreshes_seen = 0;
    while Instant::now() < until {
        let s = servers(&gw).await;
        assert_eq!(
            s,
            vec![(format!("127.0.0.2:{port}"), true)],
            "the upstream lost its server"
        );
        let r = gw.get("x.test", "/").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        refreshes_seen += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refreshes_seen >= 10, "{refreshes_seen} samples");
    assert!(up.hits() >= 10);
}

/// compose/README's claims on a DNS change: each new address is probed once before it joins (one that
/// fails its probe enters out of rotation and gets no request, even under constant load), and a request
/// in flight on an address that left the answer finishes there.
#[tokio::test]
async fn a_new_address_is_probed_before_it_joins_and_requests_in_flight_on_a_left_one_finish() {
    let port = free_port();
    let at = |last: u8| -> SocketAddr { format!("127.0.0.{last}:{port}").parse().expect("addr") };
    let (a, c, d) = (
        TestUpstream::start_at("a", at(2)),
        TestUpstream::start_at("c", at(3)),
        TestUpstream::start_at("d", at(4)),
    );
    // c fails its checks, slowly: were it let in before its verdict, the load would meet it meanwhile.
    c.behaviour.health_status.store(500, Ordering::SeqCst);
    c.behaviour.health_delay_ms.store(700, Ordering::SeqCst);
    let knot = Knot::start_with(ZONE, "backend 1 A 127.0.0.2\n").await;
    let gw = Gateway::start(&config(knot.port, port)).await;
    assert_eq!(servers(&gw).await, vec![(at(2).to_string(), true)]);

    // A slow request on a, in flight across the change (a's later requests are fast again).
    a.behaviour.delay_ms.store(3_000, Ordering::SeqCst);
    let http = gw.http;
    let slow = tokio::spawn(async move {
        send(http, "GET", "x.test", "/slow", &[], bytes::Bytes::new()).await
    });
    eventually("the slow request at a", || async {
        a.seen.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    a.behaviour.delay_ms.store(0, Ordering::SeqCst);
    let load = Load::start(gw.http);
    eventually("load before the change", || async {
        load.sent.load(Ordering::SeqCst) > 20
    })
    .await;

    knot.update(
        ZONE,
        &[
            &format!("update delete backend.{ZONE}. A 127.0.0.2"),
            &format!("update add backend.{ZONE}. 1 A 127.0.0.3"),
            &format!("update add backend.{ZONE}. 1 A 127.0.0.4"),
        ],
    );
    eventually("the servers follow the DNS answer", || async {
        servers(&gw).await == vec![(at(3).to_string(), false), (at(4).to_string(), true)]
    })
    .await;
    assert!(
        !slow.is_finished(),
        "the slow request ended before its server left the answer"
    );
    assert!(
        c.behaviour.probes_failed.load(Ordering::SeqCst) >= 1,
        "the new address joined without a probe"
    );
    load.finish_clean_after(50).await;
    assert_eq!(
        c.hits(),
        0,
        "the address that failed its probe got requests"
    );
    assert!(d.hits() > 50, "the new healthy address got {}", d.hits());

    let slow = slow.await.expect("slow request");
    assert_eq!(
        (slow.status, slow.upstream()),
        (200, Some("a")),
        "the request in flight on the address that left: {:?}",
        slow.body
    );
    assert_eq!(a.seen.in_flight.load(Ordering::SeqCst), 0);
}
