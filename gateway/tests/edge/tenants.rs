//! Per-tenant figures with bounded cardinality: 10 000 tenants through the gateway, and `/metrics`
//! names only the top K by requests plus `other`, exactly, while `/api/tenants/{tenant}/stats` answers
//! exactly for any of them.

use std::collections::BTreeMap;

use crate::helpers::*;

const K: usize = 5;
const LIGHT: usize = 10_000;

/// `name{tenant="…"} value` lines of `/metrics`, for one metric.
async fn series(gw: &Gateway, name: &str) -> BTreeMap<String, f64> {
    let (status, body) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}{{tenant=\"")))
        .filter_map(|rest| {
            let (tenant, value) = rest.split_once("\"} ")?;
            Some((tenant.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn ten_thousand_tenants_give_k_plus_one_series_and_exact_stats() {
    let (ok, failing) = (TestUpstream::start("ok"), TestUpstream::start("failing"));
    failing
        .behaviour
        .status
        .store(500, std::sync::atomic::Ordering::SeqCst);
    let gw = Gateway::start(&format!(
        "[tenant_stats]\ntop_k = {K}\ninterval = \"300ms\"\n\n\
         [rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = 1\nperiod = \"60s\"\nscope = \"local\"\n\n\
         {}{}\
         [[routes]]\nname = \"fail\"\nhosts = [\"*.x.test\"]\npath_prefix = \"/fail\"\nupstream = \"failing\"\n\n\
         [[routes]]\nname = \"limited\"\nhosts = [\"*.x.test\"]\npath_prefix = \"/limited\"\nupstream = \"ok\"\nrate_limits = [\"per_tenant\"]\n\n\
         [[routes]]\nname = \"r\"\nhosts = [\"*.x.test\"]\nupstream = \"ok\"\n",
        upstream_toml("ok", &[&ok], ""),
        upstream_toml("failing", &[&failing], ""),
    ))
    .await;

    // The heavy tenants: 60, 50, 40 (all 5xx), 30 (29 refused by the limit), 20 requests.
    let heavy: [(&str, &str, usize); 5] = [
        ("heavy1", "/", 60),
        ("heavy2", "/", 50),
        ("heavy3", "/fail", 40),
        ("heavy4", "/limited", 30),
        ("heavy5", "/", 20),
    ];
    let port = gw.http;
    let mut tasks = Vec::new();
    for (tenant, path, n) in heavy {
        tasks.push(tokio::spawn(async move {
            let mut c = KeepAlive::connect(port).await;
            for _ in 0..n {
                c.get(&format!("{tenant}.x.test"), path)
                    .await
                    .expect("an answer");
            }
        }));
    }
    // 10 000 light tenants, one request each, over four connections.
    for part in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut c = KeepAlive::connect(port).await;
            for i in (part..LIGHT).step_by(4) {
                assert_eq!(c.get(&format!("t{i}.x.test"), "/").await, Some(200));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }

    // After the next ranking: the K heaviest by name, exactly, and everyone else as `other`.
    let want: BTreeMap<String, f64> = [
        ("heavy1", 60.0),
        ("heavy2", 50.0),
        ("heavy3", 40.0),
        ("heavy4", 30.0),
        ("heavy5", 20.0),
        ("other", LIGHT as f64),
    ]
    .into_iter()
    .map(|(t, v)| (t.to_string(), v))
    .collect();
    eventually("the ranking after all the traffic", || async {
        series(&gw, "gateway_tenant_requests_total").await == want
    })
    .await;
    let errors = series(&gw, "gateway_tenant_errors_total").await;
    assert_eq!(errors.get("heavy3"), Some(&40.0), "{errors:?}");
    assert_eq!(errors.get("other"), Some(&0.0), "{errors:?}");
    let limited = series(&gw, "gateway_tenant_ratelimited_total").await;
    assert_eq!(limited.get("heavy4"), Some(&29.0), "{limited:?}");
    assert_eq!(series(&gw, "gateway_tenant_p99_seconds").await.len(), K + 1);
    // The bound: whatever the number of tenants, 5 metrics × (K + 1) series (requests, errors,
    // rate-limited, overloaded — #25 — and p99).
    let (_, body) = gw.admin_get("/metrics").await;
    let tenant_series = body
        .lines()
        .filter(|l| l.starts_with("gateway_tenant_") && !l.starts_with('#'))
        .count();
    assert_eq!(tenant_series, 5 * (K + 1));
    assert!(
        body.lines().all(|l| !l.contains("tenant=\"t1234\"")),
        "a light tenant has a series"
    );

    // Exact figures for any tenant, heavy or light or unknown.
    let stats = |t: &str| {
        let gw = &gw;
        let t = t.to_string();
        async move {
            let (status, body) = gw.admin_get(&format!("/api/tenants/{t}/stats")).await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).expect("json")
        }
    };
    let t = stats("t1234").await;
    assert_eq!(
        (t["requests"].as_u64(), t["responses"]["2xx"].as_u64()),
        (Some(1), Some(1))
    );
    let h3 = stats("heavy3").await;
    assert_eq!(h3["responses"]["5xx"], 40);
    assert_eq!(h3["error_ratio"], 1.0);
    let h4 = stats("heavy4").await;
    assert_eq!(
        (h4["ratelimited"].as_u64(), h4["responses"]["4xx"].as_u64()),
        (Some(29), Some(29))
    );
    assert_eq!(stats("nobody").await["seen"], false);
    let (status, body) = gw.admin_get("/api/tenants/Bad..Name/stats").await;
    assert_eq!(status, 400, "{body}");
}

/// #23 point 6: a flood of made-up subdomains refused before auth (no token) does not fill
/// `max_tenants`: those requests count in `other`, and a real new tenant is then tracked exactly.
/// Before the fix each refused request took a place as its Host's tenant, and the real one arrived
/// `tracked: false`.
#[tokio::test]
async fn made_up_subdomains_refused_before_auth_leave_room_for_real_tenants() {
    const SECRET: &str = "tenant-stats-secret-0123456789abcdef0";
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(
        &format!(
            "[tenant_stats]\ntop_k = 3\ninterval = \"200ms\"\nmax_tenants = 50\n\n\
             [auth.jwt]\nsecret_env = \"GW_SECRET\"\n\n{}\
             [[routes]]\nname = \"api\"\nhosts = [\"*.x.test\"]\nauth = \"jwt_tenant\"\nupstream = \"u\"\n",
            upstream_toml("u", &[&up], ""),
        ),
        &[("GW_SECRET", SECRET)],
    )
    .await;
    for i in 0..200 {
        let r = gw.get(&format!("rnd{i}.x.test"), "/api/x").await;
        assert_eq!(r.status, 401);
    }
    let bearer = Token::new(SECRET, "realco").bearer();
    for _ in 0..3 {
        let r = gw
            .get_with("realco.x.test", "/api/x", &[("authorization", &bearer)])
            .await;
        assert_eq!(r.status, 200);
    }
    let (status, body) = gw.admin_get("/api/tenants/realco/stats").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["tracked"], true, "{v}");
    assert_eq!(v["requests"], 3, "{v}");
    let (_, body) = gw.admin_get("/api/tenants/rnd7/stats").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["seen"], false,
        "a refused request counted as its Host's tenant: {v}"
    );
    // The refused requests are not lost: they are `other`'s.
    eventually("the flood is counted in other", || async {
        series(&gw, "gateway_tenant_requests_total")
            .await
            .get("other")
            == Some(&200.0)
    })
    .await;
}
