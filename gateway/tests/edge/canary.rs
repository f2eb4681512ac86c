//! Canary releases at the edge: a route splits its traffic between a stable and a canary upstream, and
//! rolls the canary back by itself when it errs or slows down, with no idempotent request failing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::helpers::*;

/// The route `r` with a canary; the test client (127.0.0.1) is a trusted proxy, so its override
/// header or cookie is honoured.
fn config(stable: &TestUpstream, canary: &TestUpstream, canary_settings: &str) -> String {
    format!(
        "[forwarding]\ntrusted_proxies = [\"127.0.0.1\"]\n\n{}",
        untrusted_config(stable, canary, canary_settings)
    )
}

/// Like [`config`], with the test client an ordinary (untrusted) client.
fn untrusted_config(stable: &TestUpstream, canary: &TestUpstream, canary_settings: &str) -> String {
    format!(
        "{}{}[[routes]]\nname = \"r\"\nhosts = [\"*.x.test\"]\nupstream = \"stable\"\ncanary = {{ upstream = \"canary\", {canary_settings} }}\n",
        upstream_toml("stable", &[stable], ""),
        upstream_toml("canary", &[canary], ""),
    )
}

/// The route's canary as `/api/routes` shows it.
async fn canary_view(gw: &Gateway) -> serde_json::Value {
    let (status, body) = gw.admin_get("/api/routes").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["name"] == "r")
        .expect("route r")["canary"]
        .clone()
}

async fn tally(gw: &Gateway, method: &str, host: &str, n: usize) -> BTreeMap<(u16, String), usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = send(gw.http, method, host, "/", &[], bytes::Bytes::new()).await;
        *out.entry((r.status, r.upstream().unwrap_or("-").to_string()))
            .or_default() += 1;
    }
    out
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_and_no_idempotent_request_fails() {
    let (stable, canary) = (TestUpstream::start("stable"), TestUpstream::start("canary"));
    // This test is about the 5xx ratio: the p99 rule is out of reach (on a loaded 2-core machine one
    // late answer among a healthy canary's 30 made it the p99 and rolled the canary back by latency).
    let gw = Gateway::start(&config(
        &stable,
        &canary,
        "weight = 50, sticky = \"none\", window = \"30s\", min_requests = 10, max_error_ratio = 0.05, max_p99_ratio = 1000.0",
    ))
    .await;

    // A healthy canary takes its share.
    let t = tally(&gw, "GET", "a.x.test", 60).await;
    assert_eq!(
        t.keys().map(|(s, _)| *s).collect::<Vec<_>>().len(),
        2,
        "{t:?}"
    );
    assert!(
        t.get(&(200, "canary".into())).is_some_and(|n| *n >= 10)
            && t.get(&(200, "stable".into())).is_some_and(|n| *n >= 10),
        "{t:?}"
    );
    let view = canary_view(&gw).await;
    assert_eq!(view["weight"], 50);
    assert_eq!(view["effective_weight"], 50);
    assert_eq!(view["verdict"], "serving");

    // The canary starts failing: every GET it fails is answered by the stable upstream instead, and
    // once its 5xx ratio over the window passes the stable's + 0.05, it gets no more traffic.
    canary.behaviour.status.store(500, Ordering::SeqCst);
    let before = canary.hits();
    let t = tally(&gw, "GET", "a.x.test", 200).await;
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        vec![&(200, "stable".to_string())],
        "a GET failed or came from the failing canary: {t:?}"
    );
    let failed_on_canary = canary.hits() - before;
    // With ~30 good answers in the window, the third failure at the latest passes 5 % (3 of 33).
    assert!(
        (1..=3).contains(&failed_on_canary),
        "the canary took {failed_on_canary} requests after it began to fail"
    );
    let view = canary_view(&gw).await;
    assert_eq!(view["effective_weight"], 0, "{view}");
    assert_eq!(view["verdict"], "rolled_back", "{view}");
    assert!(
        view["reason"]
            .as_str()
            .is_some_and(|r| r.contains("5xx ratio")),
        "{view}"
    );
    assert_eq!(
        gw.metric("gateway_canary_rollbacks_total{route=\"r\"}")
            .await,
        1.0
    );
    assert_eq!(gw.metric("gateway_canary_weight{route=\"r\"}").await, 0.0);
    assert!(
        gw.stderr().contains("canary rolled back"),
        "{}",
        gw.stderr()
    );

    // After the rollback the canary gets nothing, not even a forced request; an unrelated reload
    // keeps the verdict.
    let after = canary.hits();
    let t = tally(&gw, "GET", "b.x.test", 30).await;
    assert_eq!(t.get(&(200, "stable".into())), Some(&30), "{t:?}");
    assert_eq!(canary.hits(), after);
    gw.rewrite(&format!(
        "{}\n[[routes]]\nname = \"other\"\nhosts = [\"other.test\"]\nupstream = \"stable\"\n",
        config(
            &stable,
            &canary,
            "weight = 50, sticky = \"none\", window = \"30s\", min_requests = 10, max_error_ratio = 0.05, max_p99_ratio = 1000.0",
        )
    ));
    eventually("the reload", || async {
        gw.admin_get("/api/routes").await.1.contains("\"other\"")
    })
    .await;
    assert_eq!(canary_view(&gw).await["verdict"], "rolled_back");
}

#[tokio::test]
async fn a_canary_post_is_not_replayed_and_a_slow_canary_is_rolled_back() {
    let (stable, canary) = (TestUpstream::start("stable"), TestUpstream::start("canary"));
    let gw = Gateway::start(&config(
        &stable,
        &canary,
        "weight = 100, window = \"30s\", min_requests = 5, max_p99_ratio = 3.0, max_error_ratio = 0.5, header = \"x-release\"",
    ))
    .await;
    // Weight 100 is blue-green's "green": everything to the canary, but the header can pin a side.
    let t = tally(&gw, "GET", "a.x.test", 10).await;
    assert_eq!(t.get(&(200, "canary".into())), Some(&10), "{t:?}");
    let r = gw
        .get_with("a.x.test", "/", &[("x-release", "stable")])
        .await;
    assert_eq!(r.upstream(), Some("stable"));
    // A POST is not idempotent: the canary's 500 is the answer (it may have acted on it).
    canary.behaviour.status.store(500, Ordering::SeqCst);
    let r = send(
        gw.http,
        "POST",
        "a.x.test",
        "/",
        &[],
        bytes::Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!((r.status, r.upstream()), (500, Some("canary")));
    canary.behaviour.status.store(0, Ordering::SeqCst);

    // Forced answers are kept out of the verdict (#23 point 9): the stable side gets answers of its
    // own at weight 50 (a new release of the canary), then the canary slows down tenfold.
    gw.rewrite(&config(
        &stable,
        &canary,
        "weight = 50, sticky = \"none\", window = \"30s\", min_requests = 5, max_p99_ratio = 3.0, max_error_ratio = 0.5, header = \"x-release\"",
    ));
    eventually("weight 50 applied", || async {
        canary_view(&gw).await["weight"] == 50
    })
    .await;
    for _ in 0..20 {
        assert_eq!(gw.get("a.x.test", "/").await.status, 200);
    }
    canary.behaviour.delay_ms.store(200, Ordering::SeqCst);
    eventually("the slow canary is rolled back", || async {
        let r = gw.get("a.x.test", "/").await;
        assert_eq!(r.status, 200, "a request failed");
        canary_view(&gw).await["verdict"] == "rolled_back"
    })
    .await;
    let view = canary_view(&gw).await;
    assert!(
        view["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("p99")),
        "{view}"
    );
    assert_eq!(gw.get("a.x.test", "/").await.upstream(), Some("stable"));
}

#[tokio::test]
async fn sticky_per_tenant_keeps_each_tenant_on_one_side_and_weight_zero_is_all_stable() {
    let (stable, canary) = (TestUpstream::start("stable"), TestUpstream::start("canary"));
    // About stickiness and overrides: the p99 rule is out of reach (on a loaded CI machine a healthy
    // canary was once rolled back by latency noise between the two checks).
    let gw = Gateway::start(&config(
        &stable,
        &canary,
        "weight = 50, sticky = \"tenant\", cookie = \"release\", max_p99_ratio = 1000.0",
    ))
    .await;
    let mut sides = BTreeMap::new();
    for i in 0..30 {
        let host = format!("t{i}.x.test");
        let first = gw
            .get(&host, "/")
            .await
            .upstream()
            .unwrap_or("-")
            .to_string();
        for _ in 0..3 {
            assert_eq!(
                gw.get(&host, "/").await.upstream(),
                Some(first.as_str()),
                "tenant t{i} moved"
            );
        }
        *sides.entry(first).or_insert(0) += 1;
    }
    assert_eq!(sides.len(), 2, "30 tenants all on one side: {sides:?}");
    // A cookie pins a side whatever the tenant.
    for i in 0..5 {
        let r = gw
            .get_with(
                &format!("t{i}.x.test"),
                "/",
                &[("cookie", "a=1; release=canary")],
            )
            .await;
        assert_eq!(r.upstream(), Some("canary"));
    }
    // Weight 0: blue-green's "blue" (a new release, so a new state).
    gw.rewrite(&config(&stable, &canary, "weight = 0, sticky = \"tenant\""));
    eventually("weight 0 applied", || async {
        canary_view(&gw).await["weight"] == 0
    })
    .await;
    let before = canary.hits();
    for i in 0..30 {
        assert_eq!(
            gw.get(&format!("t{i}.x.test"), "/").await.upstream(),
            Some("stable")
        );
    }
    assert_eq!(canary.hits(), before);
}

#[tokio::test]
async fn canary_settings_are_validated() {
    let (stable, canary) = (TestUpstream::start("stable"), TestUpstream::start("canary"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.toml");
    for (settings, message) in [
        ("weight = 150", "canary weight is a percentage: 0 to 100"),
        (
            "weight = 5, sticky = \"session\"",
            "canary sticky `session` is not one of client, tenant, none",
        ),
        (
            "weight = 5, max_error_ratio = 2.0",
            "canary max_error_ratio must be between 0 and 1",
        ),
    ] {
        std::fs::write(
            &path,
            format!(
                "[entrypoints]\nhttp = \"127.0.0.1:1\"\n{}",
                config(&stable, &canary, settings)
            ),
        )
        .expect("write");
        let (ok, err) = validate(&path);
        assert!(!ok && err.contains(message), "{settings}: {err}");
        assert!(err.contains("g.toml:"), "{err}");
    }
    std::fs::write(
        &path,
        format!(
            "[entrypoints]\nhttp = \"127.0.0.1:1\"\n{}",
            config(&stable, &canary, "weight = 5")
                .replace("upstream = \"canary\", ", "upstream = \"nope\", ")
        ),
    )
    .expect("write");
    assert!(validate(&path)
        .1
        .contains("canary upstream `nope` is not an [[upstreams]] name"));
}

/// `gateway validate --config path`: whether it passed, and what it wrote on stderr.
fn validate(path: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .expect("validate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// #23 point 9: an ordinary client cannot force the canary (not even at weight 0), and forced requests
/// stay out of the verdict: a trusted proxy forcing failing requests onto a canary does not roll it
/// back. Before the fix the header worked for every client, at weight 0 too, and the forced 5xx
/// answers rolled the canary back.
#[tokio::test]
async fn only_trusted_overrides_force_a_side_and_forced_requests_are_not_judged() {
    let (stable, canary) = (TestUpstream::start("stable"), TestUpstream::start("canary"));
    let gw = Gateway::start(&untrusted_config(
        &stable,
        &canary,
        "weight = 0, header = \"x-canary\", cookie = \"release\"",
    ))
    .await;
    for _ in 0..10 {
        let r = gw
            .get_with(
                "a.x.test",
                "/",
                &[("x-canary", "canary"), ("cookie", "release=canary")],
            )
            .await;
        assert_eq!(
            r.upstream(),
            Some("stable"),
            "an ordinary client forced the canary"
        );
    }
    assert_eq!(canary.hits(), 0);
    drop(gw);

    let gw = Gateway::start(&config(
        &stable,
        &canary,
        "weight = 50, sticky = \"none\", window = \"30s\", min_requests = 5, max_error_ratio = 0.05, header = \"x-canary\"",
    ))
    .await;
    canary.behaviour.status.store(500, Ordering::SeqCst);
    let before = canary.hits();
    for _ in 0..20 {
        // Replayable: the canary's 500 is tried again on the stable upstream.
        let r = gw
            .get_with("a.x.test", "/", &[("x-canary", "canary")])
            .await;
        assert_eq!((r.status, r.upstream()), (200, Some("stable")));
    }
    assert_eq!(
        canary.hits(),
        before + 20,
        "the override reached the canary"
    );
    let view = canary_view(&gw).await;
    assert!(
        view["verdict"] != "rolled_back",
        "forced requests judged the canary: {view}"
    );
    assert_eq!(view["effective_weight"], 50, "{view}");
}
