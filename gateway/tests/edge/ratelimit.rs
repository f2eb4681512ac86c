//! Rate limits against real Redis: exactness, one limit across two gateway processes, per-tenant keys and
//! overrides, Redis stopped and started mid-run, `SCRIPT FLUSH`, local policies and the header fields.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

fn tenant() -> String {
    format!("t{}", fastrand::u64(..))
}

fn config(up: &TestUpstream, policies: &str, route_policies: &str) -> String {
    format!(
        r#"[tenancy]
base_domains = ["aggios.app"]

[redis]
url_env = "GW_REDIS"
timeout = "200ms"

{policies}

{}
[[routes]]
name = "api"
hosts = ["*.aggios.app"]
upstream = "u"
rate_limits = [{route_policies}]
"#,
        upstream_toml("u", &[up], "")
    )
}

async fn hit(gw: &Gateway, tenant: &str) -> Resp {
    gw.get(&format!("{tenant}.aggios.app"), "/x").await
}

#[tokio::test]
async fn one_policy_is_exact_and_refills_on_time() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(
        &config(
            &up,
            "[rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = 5\nperiod = \"10s\"\nburst = 3\n",
            "\"per_tenant\"",
        ),
        &[("GW_REDIS", &redis_url())],
    )
    .await;
    let t = tenant();
    let mut last_allowed = Instant::now();
    for i in 0..8 {
        let r = hit(&gw, &t).await;
        last_allowed = Instant::now();
        assert_eq!(r.status, 200, "request {i} of limit + burst");
        assert!(
            r.header("ratelimit")
                .is_some_and(|h| h.starts_with(&format!("\"per_tenant\";r={};", 7 - i))),
            "{:?}",
            r.header("ratelimit")
        );
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"per_tenant\";q=5;w=10")
        );
    }
    let hits = up.hits();
    let r = hit(&gw, &t).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry), "one interval is 2 s: {retry}");
    assert!(r
        .header("ratelimit")
        .is_some_and(|h| h.starts_with("\"per_tenant\";r=0;")));
    assert_eq!(up.hits(), hits, "a refused request reached the backend");

    // One request per interval (2 s) comes back: not sooner than an interval after the last one allowed
    // (measured from its answer to the next one's sending, a lower bound of the gap the gateway saw), and
    // one at a time. Conditions, not a fixed sleep: a loaded machine only makes the test wait.
    let deadline = Instant::now() + DEADLINE;
    let mut checked_one_at_a_time = false;
    for _ in 0..5 {
        let sent = loop {
            let sent = Instant::now();
            if hit(&gw, &t).await.status == 200 {
                break sent;
            }
            assert!(Instant::now() < deadline, "never refilled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let gap = sent.duration_since(last_allowed);
        assert!(
            gap >= Duration::from_millis(1_500),
            "refilled {gap:?} after the last allowed request (the interval is 2 s)"
        );
        last_allowed = Instant::now();
        let next = hit(&gw, &t).await.status;
        // Answered within the interval of the one just allowed: it must be refused. (If this machine
        // took longer than that for the round trip, the check is made again at the next refill.)
        if sent.elapsed() < Duration::from_millis(1_900) {
            assert_eq!(next, 429, "only one request per interval");
            checked_one_at_a_time = true;
            break;
        }
        if next == 200 {
            last_allowed = Instant::now();
        }
    }
    assert!(
        checked_one_at_a_time,
        "every round trip took longer than an interval"
    );
    assert!(
        gw.metric(r#"gateway_ratelimit_decisions_total{decision="refused",policy="per_tenant"}"#)
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn tenants_have_their_own_quota_and_overrides_apply() {
    let up = TestUpstream::start("u");
    let big = tenant();
    let gw = Gateway::start_with_env(
        &config(
            &up,
            &format!("[rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = 3\nperiod = \"60s\"\noverrides = {{ {big} = {{ limit = 6 }} }}\n"),
            "\"per_tenant\"",
        ),
        &[("GW_REDIS", &redis_url())],
    )
    .await;
    let (a, b) = (tenant(), tenant());
    let mut flood = 0;
    for _ in 0..30 {
        if hit(&gw, &a).await.status == 200 {
            flood += 1;
        }
    }
    assert_eq!(flood, 3, "the flooding tenant gets its quota");
    let mut other = 0;
    for _ in 0..4 {
        if hit(&gw, &b).await.status == 200 {
            other += 1;
        }
    }
    assert_eq!(other, 3, "another tenant's quota is intact");
    let mut bigger = 0;
    for _ in 0..10 {
        if hit(&gw, &big).await.status == 200 {
            bigger += 1;
        }
    }
    assert_eq!(bigger, 6, "the override");
    // Redis decided every one of them: no local fallback stood in.
    let decided = |d: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(&format!(
                "gateway_ratelimit_decisions_total{{decision=\"{d}\",policy=\"per_tenant\"}}"
            ))
            .await
        }
    };
    assert_eq!(decided("allowed").await, 12.0);
    // The refusals: by Redis, or shed in process once a counter is at twice its quota here.
    assert_eq!(decided("refused").await + decided("shed").await, 32.0);
    assert_eq!(gw.metric("gateway_ratelimit_store_errors_total").await, 0.0);
}

#[tokio::test]
async fn two_gateways_share_one_global_limit() {
    let up = TestUpstream::start("u");
    let body = config(
        &up,
        "[rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = 40\nperiod = \"1s\"\n",
        "\"per_tenant\"",
    );
    let url = redis_url();
    let g1 = Gateway::start_with_env(&body, &[("GW_REDIS", &url)]).await;
    let g2 = Gateway::start_with_env(&body, &[("GW_REDIS", &url)]).await;
    let t = tenant();
    let allowed = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let run = Duration::from_secs(10);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for port in [g1.http, g2.http, g1.http, g2.http] {
        let (allowed, refused, errors, host) = (
            allowed.clone(),
            refused.clone(),
            errors.clone(),
            format!("{t}.aggios.app"),
        );
        tasks.push(tokio::spawn(async move {
            let mut c = KeepAlive::connect(port).await;
            while start.elapsed() < run {
                match c.get(&host, "/x").await {
                    Some(200) => {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(429) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        c = KeepAlive::connect(port).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = allowed.load(Ordering::Relaxed) as f64;
    let asked = allowed + refused.load(Ordering::Relaxed) as f64;
    // GCRA: the bucket's capacity at once, then the rate — never more, however the two gateways'
    // requests interleave.
    let expected = 40.0 + 40.0 * elapsed;
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no errors");
    assert!(
        allowed <= expected * 1.02,
        "allowed {allowed} across two gateways, more than the limit's {expected:.0}"
    );
    // And not less while the clients asked for far more (a loaded machine may ask for less: then
    // the limit is not what bounds them, and only the ceiling above is checked).
    if asked >= 2.0 * expected {
        assert!(
            allowed >= expected * 0.9,
            "allowed {allowed} of {asked} asked, the limit gives {expected:.0}"
        );
    }
    let series = r#"gateway_ratelimit_decisions_total{decision="allowed",policy="per_tenant"}"#;
    let (a1, a2) = (g1.metric(series).await, g2.metric(series).await);
    assert!(a1 > 0.0 && a2 > 0.0, "both gateways served: {a1} {a2}");
    assert!(
        ((a1 + a2) - allowed).abs() < 1.0,
        "metrics agree with the clients: {a1} + {a2} vs {allowed}"
    );
}

#[tokio::test]
async fn redis_outage_falls_back_locally_without_5xx_and_recovers() {
    let up = TestUpstream::start("u");
    let mut redis = RedisServer::start().await;
    let gw = Gateway::start_with_env(
        &config(
            &up,
            "[rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = 20\nperiod = \"60s\"\nexpected_replicas = 2\n",
            "\"per_tenant\"",
        ),
        &[("GW_REDIS", &redis.url())],
    )
    .await;
    let t = tenant();
    let allowed_metric =
        r#"gateway_ratelimit_decisions_total{decision="allowed",policy="per_tenant"}"#;
    let fallback_allowed =
        r#"gateway_ratelimit_decisions_total{decision="fallback_allowed",policy="per_tenant"}"#;
    let fallback_refused =
        r#"gateway_ratelimit_decisions_total{decision="fallback_refused",policy="per_tenant"}"#;
    for _ in 0..5 {
        assert_eq!(hit(&gw, &t).await.status, 200);
    }
    assert_eq!(gw.metric(allowed_metric).await, 5.0, "decided by Redis");

    redis.stop();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *statuses.entry(hit(&gw, &t).await.status).or_insert(0) += 1;
    }
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 429),
        "no 5xx: {statuses:?}"
    );
    assert_eq!(
        statuses.get(&200),
        Some(&10),
        "the local fallback: limit / expected_replicas: {statuses:?}"
    );
    assert!(gw.metric("gateway_ratelimit_store_errors_total").await >= 1.0);
    assert_eq!(gw.metric(fallback_allowed).await, 10.0);
    assert!(gw.metric(fallback_refused).await >= 1.0);

    redis.restart().await;
    let t2 = tenant();
    eventually("global limiting resumes", || async {
        hit(&gw, &t2).await;
        gw.metric(allowed_metric).await > 5.0
    })
    .await;
}

#[tokio::test]
async fn script_flush_is_recovered() {
    let up = TestUpstream::start("u");
    let redis = RedisServer::start().await;
    let gw = Gateway::start_with_env(
        &config(
            &up,
            "[rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = 100\nperiod = \"60s\"\n",
            "\"per_tenant\"",
        ),
        &[("GW_REDIS", &redis.url())],
    )
    .await;
    let t = tenant();
    assert_eq!(hit(&gw, &t).await.status, 200);
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    for _ in 0..3 {
        assert_eq!(hit(&gw, &t).await.status, 200);
    }
    let allowed = r#"gateway_ratelimit_decisions_total{decision="allowed",policy="per_tenant"}"#;
    assert_eq!(
        gw.metric(allowed).await,
        4.0,
        "every decision made by Redis"
    );
    assert_eq!(gw.metric("gateway_ratelimit_store_errors_total").await, 0.0);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("aggios:rl:*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    // The route does not verify the tenant (no auth): its counter is the tenant's on this route.
    assert_eq!(keys, vec![format!("aggios:rl:{{per_tenant:{t}@api}}")]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(ttl > 0, "counters expire by themselves");
}

#[tokio::test]
async fn local_policies_and_switchable_headers() {
    let up = TestUpstream::start("u");
    // No [redis]: the global policy is decided locally too, as the gateway says at start.
    let gw = Gateway::start(&format!(
        r#"[tenancy]
base_domains = ["aggios.app"]

[rate_limits.per_ip]
key = "client_ip"
limit = 2
period = "60s"
scope = "local"
headers = false

[rate_limits.per_route]
key = ["route", "tenant"]
limit = 4
period = "60s"

{}
[[routes]]
name = "quiet"
hosts = ["*.aggios.app"]
path_prefix = "/quiet"
upstream = "u"
rate_limits = ["per_ip"]

[[routes]]
name = "loud"
hosts = ["*.aggios.app"]
path_prefix = "/loud"
upstream = "u"
rate_limits = ["per_route"]
"#,
        upstream_toml("u", &[&up], "")
    ))
    .await;
    let host = format!("{}.aggios.app", tenant());
    let r = gw.get(&host, "/quiet").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit"), None, "headers = false");
    assert_eq!(gw.get(&host, "/quiet").await.status, 200);
    let r = gw.get(&host, "/quiet").await;
    assert_eq!(r.status, 429);
    assert!(
        r.header("retry-after").is_some(),
        "a refusal always says when to retry"
    );
    let r = gw.get(&host, "/loud").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("ratelimit")
        .is_some_and(|h| h.starts_with("\"per_route\";r=")));
    assert!(gw.stderr().contains("every rate limit is local"));
}

#[tokio::test]
async fn redis_with_tls_and_a_password() {
    let up = TestUpstream::start("u");
    let redis = RedisServer::start_tls().await;
    let ca = redis.ca.clone().expect("ca");
    let body = config(
        &up,
        "[rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = 3\nperiod = \"60s\"\n",
        "\"per_tenant\"",
    )
    .replace(
        "url_env = \"GW_REDIS\"",
        &format!("url_env = \"GW_REDIS\"\nca_file = \"{}\"", ca.display()),
    );
    let gw = Gateway::start_with_env(&body, &[("GW_REDIS", &redis.url())]).await;
    let t = tenant();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(hit(&gw, &t).await.status);
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    let allowed = r#"gateway_ratelimit_decisions_total{decision="allowed",policy="per_tenant"}"#;
    assert_eq!(gw.metric(allowed).await, 3.0, "decided by Redis over TLS");
    assert_eq!(gw.metric("gateway_ratelimit_store_errors_total").await, 0.0);
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("aggios:rl:*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1);
}

#[tokio::test]
async fn redis_cluster_with_hash_tagged_keys() {
    let up = TestUpstream::start("u");
    let cluster = RedisCluster::start().await;
    let body = config(
        &up,
        "[rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = 4\nperiod = \"60s\"\n\n[rate_limits.per_route]\nkey = [\"route\", \"tenant\"]\nlimit = 100\nperiod = \"60s\"\n",
        "\"per_tenant\", \"per_route\"",
    )
    .replace("url_env = \"GW_REDIS\"", "url_env = \"GW_REDIS\"\ncluster = true");
    let gw = Gateway::start_with_env(&body, &[("GW_REDIS", &cluster.urls())]).await;
    let t = tenant();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(hit(&gw, &t).await.status);
    }
    // Scripts flushed on every node mid-run: reloaded where needed.
    for mut c in cluster.node_conns().await {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut c)
            .await
            .expect("flush");
    }
    for _ in 0..3 {
        statuses.push(hit(&gw, &t).await.status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 429, 429]);
    let series = |p: &str, d: &str| {
        format!(r#"gateway_ratelimit_decisions_total{{decision="{d}",policy="{p}"}}"#)
    };
    assert_eq!(gw.metric(&series("per_tenant", "allowed")).await, 4.0);
    assert_eq!(gw.metric(&series("per_tenant", "refused")).await, 2.0);
    assert_eq!(
        gw.metric(&series("per_route", "allowed")).await,
        6.0,
        "decided on its own slot"
    );
    assert_eq!(gw.metric("gateway_ratelimit_store_errors_total").await, 0.0);
}

/// With Redis away, `fail = "open"` lets requests through past the limit and `fail = "closed"` refuses
/// every one, each counted as such.
#[tokio::test]
async fn fail_open_and_fail_closed_while_redis_is_away() {
    let up = TestUpstream::start("u");
    let mut redis = RedisServer::start().await;
    let policies = "[rate_limits.open]\nkey = \"tenant\"\nlimit = 2\nperiod = \"60s\"\nfail = \"open\"\n\n[rate_limits.closed]\nkey = \"tenant\"\nlimit = 100\nperiod = \"60s\"\nfail = \"closed\"\n";
    let env = [("GW_REDIS", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let open = Gateway::start_with_env(&config(&up, policies, "\"open\""), &env).await;
    let closed = Gateway::start_with_env(&config(&up, policies, "\"closed\""), &env).await;
    // Redis up: the open policy's limit of 2 holds.
    let t = tenant();
    assert_eq!(hit(&open, &t).await.status, 200);
    assert_eq!(hit(&open, &t).await.status, 200);
    assert_eq!(hit(&open, &t).await.status, 429);
    redis.stop();
    // A fresh tenant: twice its limit passes (the default local fallback would allow 2; the in-process
    // shed guard stops any counter at twice the limit, whatever Redis does).
    let t2 = tenant();
    let before = up.hits();
    for _ in 0..4 {
        assert_eq!(
            hit(&open, &t2).await.status,
            200,
            "fail = open serves while Redis is away"
        );
    }
    assert_eq!(up.hits(), before + 4);
    for _ in 0..5 {
        let r = hit(&closed, &t2).await;
        assert_eq!(r.status, 429, "fail = closed refuses while Redis is away");
        assert_eq!(r.error_code(), "rate_limited");
    }
    assert_eq!(
        up.hits(),
        before + 4,
        "a closed refusal reached the upstream"
    );
    assert_eq!(
        open.metric(r#"gateway_ratelimit_decisions_total{decision="fail_open",policy="open"}"#)
            .await,
        4.0
    );
    assert_eq!(
        closed
            .metric(r#"gateway_ratelimit_decisions_total{decision="fail_closed",policy="closed"}"#)
            .await,
        5.0
    );
}

/// #23 point 3: a `per_tenant` limit on a route that does not verify the tenant (`auth = "none"`) counts
/// anonymous requests on that route only. Anonymous floods 429 themselves there, and the tenant's
/// signed-in users keep their budget on the authenticated route. Before the fix both routes shared the
/// tenant's one counter: 20 anonymous requests locked the users out.
#[tokio::test]
async fn anonymous_floods_do_not_spend_the_tenants_authenticated_budget() {
    const SECRET: &str = "ratelimit-anon-secret-0123456789abcdef";
    let up = TestUpstream::start("u");
    let body = format!(
        r#"[tenancy]
base_domains = ["aggios.app"]

[redis]
url_env = "GW_REDIS"
timeout = "200ms"

[auth.jwt]
secret_env = "GW_SECRET"

[rate_limits.per_tenant]
key = "tenant"
limit = 5
period = "60s"
burst = 0

{}
[[routes]]
name = "public"
hosts = ["*.aggios.app"]
path_prefix = "/public"
upstream = "u"
rate_limits = ["per_tenant"]

[[routes]]
name = "api"
hosts = ["*.aggios.app"]
path_prefix = "/api"
auth = "jwt_tenant"
upstream = "u"
rate_limits = ["per_tenant"]
"#,
        upstream_toml("u", &[&up], "")
    );
    let gw =
        Gateway::start_with_env(&body, &[("GW_REDIS", &redis_url()), ("GW_SECRET", SECRET)]).await;
    let t = tenant();
    let host = format!("{t}.aggios.app");
    let mut refused = 0;
    for _ in 0..20 {
        let r = gw.get(&host, "/public/page").await;
        if r.status == 429 {
            assert_eq!(r.error_code(), "rate_limited");
            refused += 1;
        }
    }
    assert_eq!(refused, 15, "the anonymous route keeps its own limit");
    let hits = up.hits();
    let bearer = Token::new(SECRET, &t).bearer();
    for i in 0..5 {
        let r = gw
            .get_with(&host, "/api/me", &[("authorization", &bearer)])
            .await;
        assert_eq!(
            r.status, 200,
            "authenticated call {i} after the anonymous flood: {:?}",
            r.body
        );
    }
    assert_eq!(
        up.hits(),
        hits + 5,
        "the upstream saw every authenticated call"
    );
    // The authenticated budget is the tenant's own, and it is exact too.
    let r = gw
        .get_with(&host, "/api/me", &[("authorization", &bearer)])
        .await;
    assert_eq!(r.status, 429);
}
