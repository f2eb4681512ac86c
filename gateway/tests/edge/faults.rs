//! Faults under load: steady keep-alive traffic from several clients through the real gateway while an
//! upstream server dies and returns, the config is reloaded a hundred times, or Redis dies and returns.
//! Each test is bounded (well under a minute) and counts every answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Clients sending GETs over keep-alive connections until stopped; every answer counted by status
/// (0: the connection failed, and the client reconnects).
struct Load {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<BTreeMap<u16, usize>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize, host: &str, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(BTreeMap::new()));
        let tasks = (0..clients)
            .map(|i| {
                let (stop, statuses) = (stop.clone(), statuses.clone());
                let (host, path) = (host.replace("{i}", &i.to_string()), path.to_string());
                tokio::spawn(async move {
                    let mut conn = KeepAlive::connect(port).await;
                    while !stop.load(Ordering::SeqCst) {
                        let status = conn.get(&host, &path).await.unwrap_or(0);
                        *statuses
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(status)
                            .or_default() += 1;
                        if status == 0 {
                            conn = KeepAlive::connect(port).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            statuses,
            tasks,
        }
    }

    fn total(&self) -> usize {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Waits until `n` more answers have come back.
    async fn wait_for(&self, n: usize) {
        let target = self.total() + n;
        let start = Instant::now();
        while self.total() < target {
            assert!(
                start.elapsed() < DEADLINE,
                "traffic stalled at {}",
                self.total()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> BTreeMap<u16, usize> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("client task");
        }
        let s = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        s.clone()
    }
}

#[tokio::test]
async fn an_upstream_server_killed_and_restarted_under_load_fails_no_request() {
    let mut a = TestUpstream::start("a");
    let b = TestUpstream::start("b");
    let cfg = format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml(
            "u",
            &[&a, &b],
            "max_tries = 2\nhealth = { path = \"/healthz\", interval = \"100ms\", timeout = \"500ms\", healthy_threshold = 1, unhealthy_threshold = 1 }"
        )
    );
    let gw = Gateway::start(&cfg).await;
    let load = Load::start(gw.http, 4, "x.test", "/");
    load.wait_for(200).await;
    a.kill();
    load.wait_for(1_000).await;
    let a_before = a.hits();
    a.restart();
    eventually("a serves again", || async { a.hits() > a_before + 20 }).await;
    load.wait_for(200).await;
    let statuses = load.stop().await;
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "every request answered 200: {statuses:?}"
    );
    assert!(b.hits() > 1_000);
}

#[tokio::test]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let cfg = |generation: usize| {
        let target = if generation % 2 == 0 { "a" } else { "b" };
        format!(
            "{}{}[[routes]]\nname = \"main\"\nupstream = \"{target}\"\n\n[[routes]]\nname = \"gen{generation}\"\nhosts = [\"gen{generation}.test\"]\nupstream = \"a\"\n",
            upstream_toml("a", &[&a], ""),
            upstream_toml("b", &[&b], "")
        )
    };
    let gw = Gateway::start(&cfg(0)).await;
    let load = Load::start(gw.http, 4, "x.test", "/");
    load.wait_for(100).await;
    for generation in 1..=100 {
        gw.rewrite(&cfg(generation));
        eventually("the reload applied", || async {
            gw.metric("gateway_config_reloads_total{result=\"success\"}")
                .await
                >= generation as f64
        })
        .await;
    }
    load.wait_for(100).await;
    let statuses = load.stop().await;
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{statuses:?}"
    );
    assert_eq!(
        gw.metric("gateway_config_reloads_total{result=\"success\"}")
            .await,
        100.0
    );
    assert!(a.hits() > 0 && b.hits() > 0, "both generations served");
}

#[tokio::test]
async fn redis_killed_and_restarted_under_load_gives_no_5xx() {
    let up = TestUpstream::start("u");
    let mut redis = RedisServer::start().await;
    let gw = Gateway::start_with_env(
        &format!(
            r#"[tenancy]
base_domains = ["aggios.app"]

[redis]
url_env = "GW_REDIS"
timeout = "200ms"

[rate_limits.per_tenant]
key = "tenant"
limit = 1000000
period = "1s"

{}
[[routes]]
name = "api"
hosts = ["*.aggios.app"]
upstream = "u"
rate_limits = ["per_tenant"]
"#,
            upstream_toml("u", &[&up], "")
        ),
        &[("GW_REDIS", &redis.url())],
    )
    .await;
    let decided = |d: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(&format!(
                "gateway_ratelimit_decisions_total{{decision=\"{d}\",policy=\"per_tenant\"}}"
            ))
            .await
        }
    };
    let load = Load::start(gw.http, 4, "t{i}.aggios.app", "/");
    load.wait_for(200).await;
    assert!(decided("allowed").await > 0.0, "Redis decides while up");
    assert_eq!(gw.metric("gateway_redis_breaker_open").await, 0.0);
    redis.stop();
    eventually("the local fallback decides", || async {
        decided("fallback_allowed").await > 50.0
    })
    .await;
    // The breaker is open at some scrape while Redis is away (it re-closes for one probe every
    // interval, so wait for a scrape that sees it open).
    eventually("the breaker shows open", || async {
        gw.metric("gateway_redis_breaker_open").await == 1.0
    })
    .await;
    redis.restart().await;
    let by_redis = decided("allowed").await;
    eventually("Redis decides again", || async {
        decided("allowed").await > by_redis + 50.0
    })
    .await;
    eventually("the breaker shows closed", || async {
        gw.metric("gateway_redis_breaker_open").await == 0.0
    })
    .await;
    let statuses = load.stop().await;
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{statuses:?}"
    );
    assert!(gw.metric("gateway_ratelimit_store_errors_total").await > 0.0);
}
