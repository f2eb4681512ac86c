//! Health checks, retries, timeouts and the 502/503/504 answers.

use std::sync::atomic::Ordering;

use crate::helpers::*;

const FAST_HEALTH: &str = "health = { path = \"/healthz\", interval = \"100ms\", timeout = \"500ms\", healthy_threshold = 1, unhealthy_threshold = 1 }";

#[tokio::test]
async fn killed_server_is_taken_out_and_back_after_recovery() {
    let mut a = TestUpstream::start("a");
    let b = TestUpstream::start("b");
    let cfg = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&a, &b], FAST_HEALTH)
    );
    let gw = Gateway::start(&cfg).await;
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    let a_series = format!(
        "gateway_upstream_server_up{{server=\"{}\",upstream=\"u\"}}",
        a.addr
    );

    a.kill();
    eventually("a reported down", || async {
        gw.metric(&a_series).await == 0.0
    })
    .await;
    let (_, routes) = gw.admin_get("/api/routes").await;
    let v: serde_json::Value = serde_json::from_str(&routes).expect("json");
    let servers = v["upstreams"][0]["servers"]
        .as_array()
        .expect("servers")
        .clone();
    assert!(
        servers
            .iter()
            .any(|s| s["addr"] == a.addr.to_string() && s["healthy"] == false),
        "{routes}"
    );
    for _ in 0..20 {
        let r = gw.get("x.test", "/").await;
        assert_eq!((r.status, r.upstream()), (200, Some("b")));
    }

    a.restart();
    eventually("a back in rotation", || async {
        gw.metric(&a_series).await == 1.0
    })
    .await;
    let hits_before = a.hits();
    for _ in 0..10 {
        assert_eq!(gw.get("x.test", "/").await.status, 200);
    }
    assert!(a.hits() > hits_before, "recovered server got no traffic");
}

#[tokio::test]
async fn requests_keep_succeeding_while_a_server_dies() {
    // No health checks at all: only retries protect the clients.
    let mut a = TestUpstream::start("a");
    let b = TestUpstream::start("b");
    let cfg = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&a, &b], "max_tries = 2")
    );
    let gw = Gateway::start(&cfg).await;
    for _ in 0..10 {
        assert_eq!(gw.get("x.test", "/").await.status, 200);
    }
    a.kill();
    for _ in 0..30 {
        let r = gw.get("x.test", "/").await;
        assert_eq!((r.status, r.upstream()), (200, Some("b")), "{:?}", r.body);
    }
}

#[tokio::test]
async fn retry_on_connection_refused() {
    let live = TestUpstream::start("live");
    let dead_port = dead_port();
    let dead = format!("127.0.0.1:{}", dead_port.port);
    let cfg = format!(
        "[[upstreams]]\nname = \"u\"\nservers = [\"{dead}\", \"{}\"]\nmax_tries = 2\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        live.addr
    );
    let gw = Gateway::start(&cfg).await;
    for _ in 0..20 {
        let r = gw.get("x.test", "/").await;
        assert_eq!((r.status, r.upstream()), (200, Some("live")));
    }
    assert_eq!(live.hits(), 20);
}

#[tokio::test]
async fn error_answers_502_503_504() {
    let slow = TestUpstream::start("slow");
    slow.behaviour.delay_ms.store(5000, Ordering::SeqCst);
    let sick = TestUpstream::start("sick");
    sick.behaviour.health_status.store(500, Ordering::SeqCst);
    let (d1, d2) = (dead_port(), dead_port());
    let dead1 = format!("127.0.0.1:{}", d1.port);
    let dead2 = format!("127.0.0.1:{}", d2.port);
    let cfg = format!(
        r#"{}{}[[upstreams]]
name = "dead"
servers = ["{dead1}", "{dead2}"]
max_tries = 2

[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "slow"
timeouts = {{ read = "300ms" }}

[[routes]]
name = "sick"
path_prefix = "/sick"
upstream = "sick"

[[routes]]
name = "dead"
path_prefix = "/dead"
upstream = "dead"
"#,
        upstream_toml("slow", &[&slow], ""),
        upstream_toml("sick", &[&sick], FAST_HEALTH),
    );
    let gw = Gateway::start(&cfg).await;

    let r = gw.get("x.test", "/slow").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "upstream_timeout"),
        "{:?}",
        r.body
    );
    assert_eq!(slow.hits(), 1, "a timed-out request must not be retried");

    let r = gw.get("x.test", "/dead").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "bad_gateway"),
        "{:?}",
        r.body
    );

    eventually("sick server out", || async {
        gw.get("x.test", "/sick").await.status == 503
    })
    .await;
    let r = gw.get("x.test", "/sick").await;
    assert_eq!(r.error_code(), "no_healthy_upstream");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["error"]["request_id"].is_string());
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("sick"), "{body}");
}

#[tokio::test]
async fn reset_before_any_response_byte_is_retried_for_idempotent_methods_only() {
    let good = TestUpstream::start("good");
    let (reset, resets) = resetting_server();
    let cfg = format!(
        "[[upstreams]]\nname = \"u\"\nservers = [\"{reset}\", \"{}\"]\nmax_tries = 2\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        good.addr
    );
    let gw = Gateway::start(&cfg).await;
    for _ in 0..10 {
        let r = gw.get("x.test", "/").await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, Some("good")),
            "{:?}",
            r.body
        );
    }
    assert!(
        resets.load(Ordering::SeqCst) >= 3,
        "the resetting server was never tried"
    );
    // A POST may have had effects upstream: it is not replayed, the client gets 502.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            gw.request("POST", "x.test", "/", &[], bytes::Bytes::from_static(b"{}"))
                .await
                .status,
        );
    }
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 502),
        "{statuses:?}"
    );
}

/// `unhealthy_threshold = 3` takes a server out only after three failed checks in a row, and
/// `healthy_threshold = 2` puts it back only after two passes.
#[tokio::test]
async fn thresholds_above_one_count_checks_in_a_row() {
    let a = TestUpstream::start("a");
    let b = TestUpstream::start("b");
    let cfg = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml(
            "u",
            &[&a, &b],
            "health = { path = \"/healthz\", interval = \"150ms\", timeout = \"500ms\", healthy_threshold = 2, unhealthy_threshold = 3 }"
        )
    );
    let gw = Gateway::start(&cfg).await;
    let series = format!(
        "gateway_upstream_server_up{{server=\"{}\",upstream=\"u\"}}",
        a.addr
    );
    eventually("a checked and up", || async {
        a.behaviour.probes_ok.load(Ordering::SeqCst) >= 2 && gw.metric(&series).await == 1.0
    })
    .await;

    a.behaviour.health_status.store(500, Ordering::SeqCst);
    let failed_before = a.behaviour.probes_failed.load(Ordering::SeqCst);
    let start = std::time::Instant::now();
    while gw.metric(&series).await == 1.0 {
        assert!(start.elapsed() < DEADLINE, "a never taken out");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let failed = a.behaviour.probes_failed.load(Ordering::SeqCst) - failed_before;
    assert!(failed >= 3, "taken out after {failed} failed checks");

    a.behaviour.health_status.store(0, Ordering::SeqCst);
    let ok_before = a.behaviour.probes_ok.load(Ordering::SeqCst);
    let start = std::time::Instant::now();
    while gw.metric(&series).await == 0.0 {
        assert!(start.elapsed() < DEADLINE, "a never put back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ok = a.behaviour.probes_ok.load(Ordering::SeqCst) - ok_before;
    assert!(ok >= 2, "put back after {ok} passing checks");
}
