//! The admin listener's `/dashboard` page in a real browser (Debian's headless Chromium, driven by
//! playwright-core through gateway/tests/dashboard/drive.cjs): it loads with no console error behind the
//! Host check and the bearer token, shows the running gateway's routes, servers and tenants, the cells
//! the page computes with known values (request rates against the pace the test kept, the 5xx ratio of a
//! route that always fails and of one that never does, a rolled-back canary, the tenants' counts, the
//! refusals by reason and policy), and marks a killed upstream server down within two health intervals.
//! The screenshot is saved under the test's output folder (`$CARGO_TARGET_TMPDIR/dashboard/`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

const TOKEN: &str = "dashboard-test-token-0123456789";
/// The upstreams' health-check interval; the page polls four times as often.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const JWT_SECRET: &str = "dashboard-jwt-secret-0123456789abcdef";

fn node_modules() -> PathBuf {
    std::env::var("DASHBOARD_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/aggios-edge/node/node_modules")
        })
}

/// The browser driver (gateway/tests/dashboard/drive.cjs): one command in, one JSON event out.
struct Driver {
    stdin: ChildStdin,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Driver {
    async fn next(&mut self) -> serde_json::Value {
        let mut out = self.stdout.take().expect("driver output");
        let (v, out) = tokio::task::spawn_blocking(move || (next_event(&mut out), out))
            .await
            .expect("driver");
        self.stdout = Some(out);
        v
    }

    async fn ask(&mut self, command: &str) -> serde_json::Value {
        writeln!(self.stdin, "{command}").expect("tell the driver");
        let v = self.next().await;
        assert_eq!(
            v["errors"],
            serde_json::json!([]),
            "console errors after {command}: {v}"
        );
        v
    }
}

/// The row of route `name` in a snapshot.
fn route_row<'a>(snap: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    snap["routes"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no route {name} on the page: {snap}"))
}

/// The cells of a table's rows (`tenants` or `refusals`) as strings.
fn rows(snap: &serde_json::Value, table: &str) -> Vec<Vec<String>> {
    snap[table]
        .as_array()
        .unwrap_or_else(|| panic!("no {table} in {snap}"))
        .iter()
        .map(|r| {
            r.as_array()
                .expect("cells")
                .iter()
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .collect()
}

/// A request every `every` to `host` `path` until `stop`, counting the answers by status.
fn pace(
    port: u16,
    host: &'static str,
    path: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let r = send(port, "GET", host, path, &[], bytes::Bytes::new()).await;
            *(if r.status == 200 {
                &mut ok
            } else {
                &mut failed
            }) += 1;
        }
        (ok, failed)
    })
}

fn next_event(out: &mut impl BufRead) -> serde_json::Value {
    let mut line = String::new();
    out.read_line(&mut line).expect("read the driver");
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("driver said: {line:?}"));
    assert_ne!(
        v["event"], "error",
        "browser driver failed: {}",
        v["message"]
    );
    v
}

#[tokio::test]
async fn the_dashboard_shows_known_figures_and_marks_a_killed_server_down_in_chromium() {
    let api = TestUpstream::start("api");
    let mut files = TestUpstream::start("files");
    let broken = TestUpstream::start("broken");
    broken.behaviour.status.store(500, Ordering::SeqCst);
    let interval = format!("{}s", HEALTH_INTERVAL.as_secs());
    let health = format!(
        "health = {{ path = \"/healthz\", interval = \"{interval}\", timeout = \"1s\", unhealthy_threshold = 1 }}"
    );
    // A certificate on the https entrypoint, for the page's certificate table.
    let certs = tempfile::tempdir().expect("tempdir");
    let made = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["certs", "dev", "--domain", "*.x.test", "--out"])
        .arg(certs.path())
        .output()
        .expect("gateway certs dev");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let gw = Gateway::start_with_env(
        &format!(
            "[admin]\ntoken_env = \"GW_ADMIN_TOKEN\"\n\n[tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n\
             [auth.jwt]\nkeys = [{{ kid = \"k\", secret_env = \"GW_JWT\" }}]\n\n\
             [rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = 2\nperiod = \"60s\"\nscope = \"local\"\n\n{}{}{}\
             [[routes]]\nname = \"tenant-files\"\nhosts = [\"*.x.test\"]\npath_prefix = \"/files\"\nupstream = \"files\"\n\n\
             [[routes]]\nname = \"tenant-api\"\nhosts = [\"*.x.test\"]\nupstream = \"api\"\n\n\
             [[routes]]\nname = \"failing\"\nhosts = [\"*.x.test\"]\npath_prefix = \"/failing\"\nupstream = \"broken\"\n\n\
             [[routes]]\nname = \"limited\"\nhosts = [\"*.x.test\"]\npath_prefix = \"/limited\"\nupstream = \"api\"\nrate_limits = [\"per_tenant\"]\n\n\
             [[routes]]\nname = \"private\"\nhosts = [\"*.x.test\"]\npath_prefix = \"/private\"\nauth = \"jwt\"\nupstream = \"api\"\n\n\
             [[routes]]\nname = \"canaried\"\nhosts = [\"canary.x.test\"]\nupstream = \"api\"\n\
             canary = {{ upstream = \"broken\", weight = 50, sticky = \"none\", window = \"60s\", min_requests = 4, max_error_ratio = 0.05, max_p99_ratio = 1000.0 }}\n",
            certs.path().join("dev.crt").display(),
            certs.path().join("dev.key").display(),
            upstream_toml("api", &[&api], &health),
            upstream_toml("files", &[&files], &health),
            upstream_toml("broken", &[&broken], ""),
        ),
        &[("GW_ADMIN_TOKEN", TOKEN), ("GW_JWT", JWT_SECRET)],
    )
    .await;
    for t in ["acme", "globex", "acme"] {
        assert_eq!(gw.get(&format!("{t}.x.test"), "/").await.status, 200);
    }
    // Known refusals: 3 requests without a token and 1 with garbage on the JWT route (tenant anon),
    // 5 requests of tenant lim on a 2-per-minute limit.
    for _ in 0..3 {
        assert_eq!(gw.get("anon.x.test", "/private").await.status, 401);
    }
    let garbage = send(
        gw.http,
        "GET",
        "anon.x.test",
        "/private",
        &[("authorization", "Bearer garbage")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(garbage.status, 401);
    let limited: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(gw.get("lim.x.test", "/limited").await.status);
        }
        v
    };
    assert_eq!(limited, [200, 200, 429, 429, 429]);
    // A canary whose every answer is a 5xx: rolled back (its GETs answered by the stable upstream).
    for _ in 0..40 {
        assert_eq!(gw.get("canary.x.test", "/").await.status, 200);
    }
    // The data endpoints want the token; the page itself is static and loads without it.
    assert_eq!(gw.admin_get("/api/summary").await.0, 401);
    let (status, page) = gw.admin_get("/dashboard").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Aggios Edge"), "{page}");

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&out_dir).expect("output folder");
    let screenshot = out_dir.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/drive.cjs");
    let poll = HEALTH_INTERVAL / 4;
    let url = format!(
        "http://127.0.0.1:{}/dashboard?poll={}",
        gw.admin,
        poll.as_millis()
    );
    let mut child = Command::new("node")
        .arg(&script)
        .args([&url, TOKEN])
        .arg(&screenshot)
        .arg(files.addr.to_string())
        .env("NODE_PATH", node_modules())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node (scripts/test.sh installs nodejs, chromium and playwright-core)");
    let mut driver = Driver {
        stdin: child.stdin.take().expect("stdin"),
        stdout: Some(BufReader::new(child.stdout.take().expect("stdout"))),
    };

    let ready = driver.next().await;
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(
        ready["errors"],
        serde_json::json!([]),
        "console errors: {ready}"
    );
    let routes: Vec<&str> = ready["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        routes,
        vec![
            "tenant-files",
            "tenant-api",
            "failing",
            "limited",
            "private",
            "canaried"
        ],
        "{ready}"
    );
    let servers = ready["servers"].to_string();
    assert!(
        servers.contains(&api.addr.to_string()) && servers.contains(&files.addr.to_string()),
        "{ready}"
    );
    assert!(ready["tenants"].to_string().contains("acme"), "{ready}");
    let certificates = ready["certificates"].to_string();
    assert!(
        certificates.contains("*.x.test") && certificates.contains("days"),
        "{ready}"
    );
    assert_eq!(
        ready["token_in_url"], false,
        "the token stayed in the address bar"
    );

    // The rolled-back canary, shown as such with its reason.
    let snap = driver.ask("snapshot").await;
    let canaried = route_row(&snap, "canaried");
    let cell = canaried["upstream"].as_str().unwrap_or_default();
    assert!(
        cell.starts_with("api + canary broken 0 % (rolled back: ") && cell.contains("5xx ratio"),
        "{canaried}"
    );
    assert_eq!(canaried["canary_class"], "down", "{canaried}");

    // Rates: tenant-api at 20 requests/s, failing at 10/s (every answer a 5xx), for about 4 s. The
    // page's req/s is the counters' change over its poll interval, so it reads the pace the clients
    // kept (a count per poll instead of per second would read a quarter of it) and its 5xx ratio reads
    // 100 % on the failing route and 0 % on the other.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let api_load = pace(
        gw.http,
        "acme.x.test",
        "/",
        Duration::from_millis(50),
        stop.clone(),
    );
    let failing_load = pace(
        gw.http,
        "bad.x.test",
        "/failing",
        Duration::from_millis(100),
        stop.clone(),
    );
    let mut samples: Vec<(f64, f64, String, String, String, String)> = Vec::new();
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(poll / 2).await;
        let snap = driver.ask("snapshot").await;
        if started.elapsed() < Duration::from_millis(1200) {
            continue; // the first polls straddle the start of the traffic
        }
        let (a, f) = (route_row(&snap, "tenant-api"), route_row(&snap, "failing"));
        let num = |v: &serde_json::Value| v["rps"].as_str().and_then(|s| s.parse::<f64>().ok());
        let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        samples.push((
            num(a).unwrap_or_else(|| panic!("tenant-api req/s: {a}")),
            num(f).unwrap_or_else(|| panic!("failing req/s: {f}")),
            text(a, "ratio"),
            text(a, "ratio_class"),
            text(f, "ratio"),
            text(f, "ratio_class"),
        ));
    }
    stop.store(true, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let (api_ok, api_failed) = api_load.await.expect("load");
    let (failing_ok, failing_failed) = failing_load.await.expect("load");
    assert_eq!((api_failed, failing_ok), (0, 0));
    let (api_rate, failing_rate) = (api_ok as f64 / elapsed, failing_failed as f64 / elapsed);
    assert!(samples.len() >= 4, "{samples:?}");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let api_shown = median(samples.iter().map(|s| s.0).collect());
    let failing_shown = median(samples.iter().map(|s| s.1).collect());
    assert!(
        (0.6..=1.5).contains(&(api_shown / api_rate)),
        "tenant-api: the page read {api_shown} req/s for {api_rate:.1}: {samples:?}"
    );
    assert!(
        (0.6..=1.5).contains(&(failing_shown / failing_rate)),
        "failing: the page read {failing_shown} req/s for {failing_rate:.1}: {samples:?}"
    );
    for s in samples.iter().filter(|s| s.0 > 0.0 && s.1 > 0.0) {
        assert_eq!((s.2.as_str(), s.3.as_str()), ("0.0 %", "num"), "{s:?}");
        assert_eq!(
            (s.4.as_str(), s.5.as_str()),
            ("100.0 %", "num down"),
            "{s:?}"
        );
    }
    // Once the traffic stops, the next polls read no rate.
    let mut last = serde_json::Value::Null;
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(30) {
        last = driver.ask("snapshot").await;
        if ["tenant-api", "failing"]
            .iter()
            .all(|r| route_row(&last, r)["rps"] == "0.0")
        {
            break;
        }
        tokio::time::sleep(poll / 2).await;
    }
    for r in ["tenant-api", "failing"] {
        assert_eq!(route_row(&last, r)["rps"], "0.0", "{last}");
    }

    // The tenants' counts and the refusals, exactly (the tenant figures are ranked on a schedule:
    // wait for the counts to arrive, then require them whole).
    let acme = (2 + api_ok).to_string();
    let bad = failing_failed.to_string();
    let want_tenants: Vec<Vec<String>> = [
        ["acme", "–", acme.as_str(), "0", "0"],
        ["lim", "–", "5", "0", "3"],
        ["bad", "–", bad.as_str(), bad.as_str(), "0"],
        ["globex", "–", "1", "0", "0"],
    ]
    .iter()
    .map(|r| r.iter().map(|c| c.to_string()).collect())
    .collect();
    let want_refusals: Vec<Vec<String>> = [
        ["auth", "malformed_token", "1"],
        ["auth", "missing_token", "3"],
        ["rate limit", "per_tenant", "3"],
    ]
    .iter()
    .map(|r| r.iter().map(|c| c.to_string()).collect())
    .collect();
    let quiet = Instant::now();
    let shown = |snap: &serde_json::Value| {
        let mut tenants = rows(snap, "tenants");
        tenants.retain(|t| ["acme", "lim", "bad", "globex"].contains(&t[0].as_str()));
        tenants.sort_by_key(|a| want_order(a));
        let mut refusals = rows(snap, "refusals");
        refusals.sort();
        (tenants, refusals)
    };
    loop {
        let (tenants, refusals) = shown(&last);
        if (tenants == want_tenants && refusals == want_refusals)
            || quiet.elapsed() > Duration::from_secs(30)
        {
            assert_eq!(tenants, want_tenants, "{last}");
            assert_eq!(refusals, want_refusals, "{last}");
            break;
        }
        tokio::time::sleep(poll / 2).await;
        last = driver.ask("snapshot").await;
    }

    // Kill one upstream server: the page shows it down within two health intervals.
    files.kill();
    let down = driver.ask("killed").await;
    assert_eq!(down["event"], "down", "{down}");
    let ms = down["ms"].as_u64().expect("ms");
    assert!(
        ms <= 2 * HEALTH_INTERVAL.as_millis() as u64,
        "marked down after {ms} ms (two health intervals: {} ms)",
        2 * HEALTH_INTERVAL.as_millis()
    );
    let end = driver.ask("end").await;
    assert_eq!(end["event"], "end", "{end}");
    let status = child.wait().expect("driver exit");
    assert!(status.success());
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        screenshot.display()
    );
}

/// The order the test lists its tenants in.
fn want_order(row: &[String]) -> usize {
    ["acme", "lim", "bad", "globex"]
        .iter()
        .position(|t| *t == row[0])
        .unwrap_or(usize::MAX)
}
