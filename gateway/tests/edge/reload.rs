//! Live reload: rewriting the file under load loses no request; an invalid file keeps the old config.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::helpers::*;

fn routes(a: &TestUpstream, b: &TestUpstream, generation: usize) -> String {
    // Alternate the route's upstream and add a route per generation, so every reload really changes the
    // routing table.
    let target = if generation % 2 == 0 { "a" } else { "b" };
    let mut s = format!(
        "{}{}[[routes]]\nname = \"main\"\nupstream = \"{target}\"\n",
        upstream_toml("a", &[a], ""),
        upstream_toml("b", &[b], "")
    );
    s.push_str(&format!("[[routes]]\nname = \"gen{generation}\"\nhosts = [\"gen{generation}.test\"]\nupstream = \"a\"\n"));
    s
}

#[tokio::test]
async fn thousand_requests_across_twenty_reloads_without_a_failure() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let gw = Gateway::start(&routes(&a, &b, 0)).await;
    let port = gw.http;
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (done, failures) = (done.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            // One keep-alive connection per worker for the whole run: a reload must not close it.
            let mut conn = KeepAlive::connect(port).await;
            while done.load(Ordering::SeqCst) < 1000 {
                match conn.get("x.test", "/").await {
                    Some(200) => {}
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for generation in 1..=20 {
        let target = 1000 * generation / 21;
        eventually("traffic progress", || {
            let d = done.load(Ordering::SeqCst);
            async move { d >= target }
        })
        .await;
        gw.rewrite(&routes(&a, &b, generation));
        let name = format!("gen{generation}");
        eventually("reload applied", || {
            let gw = &gw;
            let name = name.clone();
            async move { gw.admin_get("/api/routes").await.1.contains(&name) }
        })
        .await;
    }
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(done.load(Ordering::SeqCst) >= 1000);
    assert!(
        gw.metric("gateway_config_reloads_total{result=\"success\"}")
            .await
            >= 20.0
    );
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both generations served traffic"
    );
}

#[tokio::test]
async fn invalid_reload_keeps_the_old_routes() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let gw = Gateway::start(&routes(&a, &b, 0)).await;
    assert_eq!(gw.get("x.test", "/").await.upstream(), Some("a"));
    let before_ts = gw
        .metric("gateway_config_last_reload_success_timestamp_seconds")
        .await;
    // Unknown upstream and a bad duration: rejected as a whole.
    gw.rewrite(&format!(
        "{}[[routes]]\nname = \"main\"\nupstream = \"missing\"\ntimeouts = {{ read = \"soon\" }}\n",
        upstream_toml("a", &[&a], "")
    ));
    eventually("failure counted", || async {
        gw.metric("gateway_config_reloads_total{result=\"failure\"}")
            .await
            >= 1.0
    })
    .await;
    for _ in 0..10 {
        assert_eq!(gw.get("x.test", "/").await.upstream(), Some("a"));
    }
    assert_eq!(
        gw.metric("gateway_config_last_reload_success_timestamp_seconds")
            .await,
        before_ts
    );
    let log = gw.stderr();
    assert!(log.contains("unknown upstream `missing`"), "{log}");
    // A later valid file is picked up again.
    gw.rewrite(&routes(&a, &b, 1));
    eventually("valid reload after a bad one", || async {
        gw.get("x.test", "/").await.upstream() == Some("b")
    })
    .await;
}

#[tokio::test]
async fn sighup_forces_a_reread_and_listener_changes_need_a_restart() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let gw = Gateway::start(&routes(&a, &b, 0)).await;
    // Ready (`/readyz`) means the reloader runs, with its SIGHUP handler: the listeners answer before
    // it starts, and a SIGHUP sent then is not seen (found when the HTTP/3 service made start-up longer).
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    eventually("SIGHUP reload counted", || async {
        gw.metric("gateway_config_reloads_total{result=\"success\"}")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(
        gw.get("x.test", "/").await.status,
        200,
        "still serving after SIGHUP"
    );
    // A changed listener address is reported, and the old listener keeps serving.
    let other = free_port();
    let text = std::fs::read_to_string(&gw.config).expect("read").replace(
        &format!("127.0.0.1:{}\"", gw.http),
        &format!("127.0.0.1:{other}\""),
    );
    std::fs::write(&gw.config, text).expect("write");
    eventually("restart warning", || async {
        gw.stderr().contains("listeners change only on restart")
    })
    .await;
    assert_eq!(gw.get("x.test", "/").await.status, 200);
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    a.behaviour.delay_ms.store(1500, Ordering::SeqCst);
    let gw = Gateway::start(&routes(&a, &b, 0)).await;
    let port = gw.http;
    let slow =
        tokio::spawn(
            async move { send(port, "GET", "x.test", "/", &[], bytes::Bytes::new()).await },
        );
    eventually("slow request reached a", || async { a.hits() == 1 }).await;
    gw.rewrite(&routes(&a, &b, 1));
    eventually("reload applied", || async {
        gw.get("x.test", "/").await.upstream() == Some("b")
    })
    .await;
    let r = slow.await.expect("join");
    assert_eq!((r.status, r.upstream()), (200, Some("a")));
}

/// What a reload keeps and what it restarts: a server's health state survives (a sick server stays out,
/// even with checks now an hour apart); in-process rate-limit counters restart (config/README.md).
#[tokio::test]
async fn a_reload_keeps_health_state_and_restarts_local_counters() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let cfg = |interval: &str, extra_route: &str| {
        format!(
            "[rate_limits.local_cap]\nkey = \"client_ip\"\nlimit = 2\nperiod = \"1h\"\nscope = \"local\"\n\n{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n\n[[routes]]\nname = \"capped\"\npath_prefix = \"/capped\"\nupstream = \"u\"\nrate_limits = [\"local_cap\"]\n{extra_route}",
            upstream_toml(
                "u",
                &[&a, &b],
                &format!("health = {{ path = \"/healthz\", interval = \"{interval}\", timeout = \"500ms\", healthy_threshold = 1, unhealthy_threshold = 1 }}")
            )
        )
    };
    let gw = Gateway::start(&cfg("100ms", "")).await;
    let a_up = format!(
        "gateway_upstream_server_up{{server=\"{}\",upstream=\"u\"}}",
        a.addr
    );
    a.behaviour.health_status.store(500, Ordering::SeqCst);
    eventually("a taken out", || async { gw.metric(&a_up).await == 0.0 }).await;
    let capped: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(gw.get("x.test", "/capped").await.status);
        }
        v
    };
    assert_eq!(capped, vec![200, 200, 429]);
    // From now on a check of `a` takes 2 s to fail (its timeout is 500 ms): a state restarted as healthy
    // by the reload would send `a` traffic for half a second.
    a.behaviour.health_delay_ms.store(2_000, Ordering::SeqCst);

    gw.rewrite(&cfg(
        "1h",
        "\n[[routes]]\nname = \"new\"\nhosts = [\"new.test\"]\nupstream = \"u\"\n",
    ));
    eventually("the reload is applied", || async {
        gw.metric("gateway_config_reloads_total{result=\"success\"}")
            .await
            >= 1.0
    })
    .await;
    let a_hits = a.hits();
    for _ in 0..20 {
        let r = gw.get("x.test", "/").await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, Some("b")),
            "a sick server back in rotation after a reload"
        );
    }
    assert_eq!(a.hits(), a_hits);
    assert_eq!(gw.metric(&a_up).await, 0.0);
    // The local counter restarted with the new config.
    assert_eq!(gw.get("x.test", "/capped").await.status, 200);
}
