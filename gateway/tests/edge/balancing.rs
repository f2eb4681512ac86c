//! Load-balancing distribution for each algorithm, through the real gateway.

use std::collections::HashMap;

use crate::helpers::*;

fn route(upstream: &str) -> String {
    format!("[[routes]]\nname = \"r\"\nupstream = \"{upstream}\"\n")
}

async fn tally(gw: &Gateway, n: usize, host: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = gw.get(host, "/").await;
        assert_eq!(r.status, 200);
        *out.entry(r.upstream().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    out
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let ups: Vec<TestUpstream> = (0..3)
        .map(|i| TestUpstream::start(&format!("s{i}")))
        .collect();
    let refs: Vec<&TestUpstream> = ups.iter().collect();
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream_toml("u", &refs, "balance = \"round_robin\""),
        route("u")
    ))
    .await;
    let t = tally(&gw, 30, "x.test").await;
    assert_eq!(
        t.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{t:?}"
    );
}

#[tokio::test]
async fn weighted_follows_weights() {
    let (a, b) = (TestUpstream::start("heavy"), TestUpstream::start("light"));
    let cfg = format!(
        "[[upstreams]]\nname = \"u\"\nbalance = \"weighted\"\nservers = [{{ addr = \"{}\", weight = 3 }}, {{ addr = \"{}\", weight = 1 }}]\n{}",
        a.addr,
        b.addr,
        route("u")
    );
    let gw = Gateway::start(&cfg).await;
    let t = tally(&gw, 40, "x.test").await;
    assert_eq!(t.get("heavy"), Some(&30), "{t:?}");
    assert_eq!(t.get("light"), Some(&10), "{t:?}");
}

#[tokio::test]
async fn least_conn_avoids_the_busy_server() {
    let (slow, fast) = (TestUpstream::start("slow"), TestUpstream::start("fast"));
    slow.behaviour
        .delay_ms
        .store(3000, std::sync::atomic::Ordering::SeqCst);
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream_toml("u", &[&slow, &fast], "balance = \"least_conn\""),
        route("u")
    ))
    .await;
    // Occupy the slow server with requests in flight, then check that new requests go to the idle one.
    let port = gw.http;
    let mut busy = Vec::new();
    for _ in 0..4 {
        busy.push(tokio::spawn(async move {
            send(port, "GET", "x.test", "/", &[], bytes::Bytes::new()).await
        }));
    }
    eventually("slow server busy", || async { slow.hits() >= 2 }).await;
    let before_slow = slow.hits();
    let t = tally(&gw, 20, "x.test").await;
    assert_eq!(t.get("fast"), Some(&20), "{t:?}");
    assert_eq!(slow.hits(), before_slow);
    for b in busy {
        assert_eq!(b.await.expect("join").status, 200);
    }
}

#[tokio::test]
async fn hash_tenant_is_sticky_per_tenant() {
    let ups: Vec<TestUpstream> = (0..3)
        .map(|i| TestUpstream::start(&format!("s{i}")))
        .collect();
    let refs: Vec<&TestUpstream> = ups.iter().collect();
    let cfg = format!(
        "[tenancy]\nbase_domains = [\"aggios.app\"]\n{}[[routes]]\nname = \"r\"\nhosts = [\"*.aggios.app\"]\nupstream = \"u\"\n",
        upstream_toml("u", &refs, "balance = \"hash_tenant\"")
    );
    let gw = Gateway::start(&cfg).await;
    let mut owners = HashMap::new();
    for i in 0..30 {
        let host = format!("tenant{i}.aggios.app");
        let t = tally(&gw, 5, &host).await;
        assert_eq!(t.len(), 1, "tenant{i} moved between servers: {t:?}");
        owners.insert(i, t.into_keys().next().expect("one"));
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "30 tenants should land on all 3 servers: {owners:?}"
    );
}
