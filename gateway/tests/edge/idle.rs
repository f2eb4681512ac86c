//! An idle gateway sleeps (#31 point 6): once traffic stops, no thread of it wakes on a short schedule
//! of its own — not Pingora's coarse-timer clock (every 10 ms for the life of the process before vendored
//! patch 0016), not the core gate's event-loop probe (every 5 ms per proxy thread once started), not the
//! upkeep (every second), not a server's health checker while checks are off (every 500 ms). What is
//! left is slow: config poll every 30 s, tenant figures every 15 s,
//! idle limiter keys every 10 s, timers of past requests firing once.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::helpers::*;

/// Times each thread of `pid` was scheduled so far (schedstat's third field), by thread name.
fn runs(pid: u32) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the gateway's threads");
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue; // a thread that just ended
        };
        let n: u64 = stat
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .expect("schedstat's run count");
        *by_name.entry(name.trim().to_string()).or_default() += n;
    }
    by_name
}

#[tokio::test]
async fn an_idle_gateway_does_not_wake_on_a_schedule_of_its_own() {
    // Three servers without health checks: each has a checker task, asleep until checks are switched on
    // (it looked every 500 ms: 24 wake-ups in the window below).
    let ups = [
        TestUpstream::start("u1"),
        TestUpstream::start("u2"),
        TestUpstream::start("u3"),
    ];
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&ups[0], &ups[1], &ups[2]], "")
    ))
    .await;
    // Traffic first: kept-alive and new connections (the probe starts, coarse timers are registered).
    let mut conn = KeepAlive::connect(gw.http).await;
    for i in 0..100 {
        assert_eq!(conn.get("a.test", &format!("/k{i}")).await, Some(200));
    }
    for i in 0..20 {
        assert_eq!(gw.get("a.test", &format!("/n{i}")).await.status, 200);
    }
    drop(conn);
    // The probe stops a second after the last request; the keep-alive task ends with its connection.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let window = Duration::from_secs(4);
    let before = runs(gw.pid());
    tokio::time::sleep(window).await;
    let after = runs(gw.pid());
    let woke: BTreeMap<&str, u64> = after
        .iter()
        .map(|(name, n)| (name.as_str(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let total: u64 = woke.values().sum();
    eprintln!("idle for {window:?}: {total} wake-ups {woke:?}");
    // Before: over 1 000 (the clock thread alone 99 per second, the probe 200 per proxy thread, the
    // checkers 6). Now a slow schedule's few (3 measured).
    assert!(
        total <= 12,
        "{total} wake-ups in {window:?} of idling, by thread: {woke:?}"
    );
}
