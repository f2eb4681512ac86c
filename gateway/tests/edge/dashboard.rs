//! The admin listener's `/dashboard` page in a real browser (Debian's headless Chromium, driven by
//! playwright-core through gateway/tests/dashboard/drive.cjs): it loads with no console error behind the
//! Host check and the bearer token, shows the running gateway's routes, servers and tenants, and marks a
//! killed upstream server down within two health intervals. The screenshot is saved under the test's
//! output folder (`$CARGO_TARGET_TMPDIR/dashboard/`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

const TOKEN: &str = "dashboard-test-token-0123456789";
/// The upstreams' health-check interval; the page polls four times as often.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

fn node_modules() -> PathBuf {
    std::env::var("DASHBOARD_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/aggios-edge/node/node_modules")
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
async fn the_dashboard_shows_routes_and_marks_a_killed_server_down_in_chromium() {
    let api = TestUpstream::start("api");
    let mut files = TestUpstream::start("files");
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
            "[admin]\ntoken_env = \"GW_ADMIN_TOKEN\"\n\n[tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n{}{}\
             [[routes]]\nname = \"tenant-files\"\nhosts = [\"*.x.test\"]\npath_prefix = \"/files\"\nupstream = \"files\"\n\n\
             [[routes]]\nname = \"tenant-api\"\nhosts = [\"*.x.test\"]\nupstream = \"api\"\n",
            certs.path().join("dev.crt").display(),
            certs.path().join("dev.key").display(),
            upstream_toml("api", &[&api], &health),
            upstream_toml("files", &[&files], &health),
        ),
        &[("GW_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    for t in ["acme", "globex", "acme"] {
        assert_eq!(gw.get(&format!("{t}.x.test"), "/").await.status, 200);
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
    let url = format!(
        "http://127.0.0.1:{}/dashboard?poll={}",
        gw.admin,
        HEALTH_INTERVAL.as_millis() / 4
    );
    let mut driver = Command::new("node")
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
    let mut stdin = driver.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(driver.stdout.take().expect("stdout"));

    let ready = tokio::task::spawn_blocking(move || {
        let v = next_event(&mut stdout);
        (v, stdout)
    });
    let (ready, mut stdout) = ready.await.expect("driver");
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
    assert_eq!(routes, vec!["tenant-files", "tenant-api"], "{ready}");
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

    // Kill one upstream server: the page shows it down within two health intervals.
    files.kill();
    writeln!(stdin, "killed").expect("tell the driver");
    let down = tokio::task::spawn_blocking(move || next_event(&mut stdout))
        .await
        .expect("driver");
    assert_eq!(down["event"], "down", "{down}");
    let ms = down["ms"].as_u64().expect("ms");
    assert!(
        ms <= 2 * HEALTH_INTERVAL.as_millis() as u64,
        "marked down after {ms} ms (two health intervals: {} ms)",
        2 * HEALTH_INTERVAL.as_millis()
    );
    assert_eq!(
        down["errors"],
        serde_json::json!([]),
        "console errors: {down}"
    );
    let status = driver.wait().expect("driver exit");
    assert!(status.success());
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        screenshot.display()
    );
}
