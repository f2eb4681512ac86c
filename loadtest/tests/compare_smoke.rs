//! A short `compare` run: the gateway and nginx on the plain scenario, 2 s, one round. It checks that
//! the harness starts, loads, measures and stops every target, and writes its report.

use std::path::PathBuf;
use std::time::Duration;

use loadtest::compare::{compare, CompareArgs};
use loadtest::report::{self, Work};
use loadtest::scenario::Scenario;

/// The gateway binary next to this test's (cargo test --workspace builds it); built when missing.
fn gateway_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug");
    let bin = debug.join("gateway");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-p", "gateway", "--bin", "gateway"])
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "building the gateway failed");
    }
    bin
}

#[test]
fn compare_plain_gateway_and_nginx() {
    let out = std::env::temp_dir().join(format!("aggios-compare-smoke-{}", std::process::id()));
    let args = CompareArgs {
        scenario: Scenario::Plain,
        duration: Duration::from_secs(2),
        rounds: 1,
        peers: vec!["nginx".into()],
        connections: 16,
        threads: 1,
        warmup: Duration::from_millis(500),
        instructions: false,
        gateway_bin: Some(gateway_bin()),
        bare_pingora: None,
        // A configuration of ours as a row of its own (the ablation rows of the harness).
        variants: vec![loadtest::compare::variants::Variant::NoAccessLog],
        backend_bin: None,
        pg_admin_url: String::new(),
        out: out.clone(),
        redis: "127.0.0.1:6379".into(),
        keep_files: false,
        json: false,
    };
    let r = compare(&args).expect("compare ran");
    let names: Vec<&str> = r.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["upstream", "gateway", "gateway-no-access-log", "nginx"]
    );
    for t in &r.targets {
        assert_eq!(t.work, Work::Same, "{}", t.name);
        let m = t
            .median
            .as_ref()
            .unwrap_or_else(|| panic!("{} not measured", t.name));
        assert!(m.responses > 100, "{}: {m:?}", t.name);
        assert_eq!((m.non_2xx, m.failed), (0, 0), "{}: {m:?}", t.name);
        if t.name == "upstream" {
            assert!(m.cpu_us_per_request.is_none());
        } else {
            // The proxy's own CPU time and memory were read from its processes.
            assert!(
                m.cpu_us_per_request.is_some_and(|c| c > 0.0),
                "{}: {m:?}",
                t.name
            );
            assert!(m.peak_rss_mib.is_some_and(|r| r > 1.0), "{}: {m:?}", t.name);
        }
    }
    let written = report::write(&r, &out).expect("report written");
    assert!(written.iter().any(|p| p.ends_with("plain.json")));
    let md = std::fs::read_to_string(out.join("plain.md")).unwrap();
    assert!(
        md.contains("| gateway (") && md.contains("| nginx ("),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn the_tenant_work_check_catches_a_proxy_that_forwards_forged_tokens() {
    // The upstream answers 200 to anything: as a "proxy" it would pass forged and foreign tokens.
    let up = loadtest::upstream::Upstream::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let requests = Scenario::TenantJwt.requests().unwrap();
    let err = loadtest::compare::probe::check_tenant_work(up.addr, &requests, true).unwrap_err();
    assert!(
        err.to_string()
            .contains("a forged signature: expected 401, got 200"),
        "{err}"
    );
}
