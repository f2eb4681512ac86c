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

/// The compare runs take turns: each pins its proxies to one core and its generator to the other, and
/// two at once starve each other's start-up.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One round of `scenario` against the gateway and nginx, `duration` long over `connections`.
fn short_run(
    scenario: Scenario,
    connections: usize,
    duration: Duration,
    out: &std::path::Path,
) -> CompareArgs {
    CompareArgs {
        scenario,
        duration,
        rounds: 1,
        peers: vec!["nginx".into()],
        connections,
        threads: 1,
        warmup: Duration::from_millis(300),
        instructions: false,
        gateway_bin: Some(gateway_bin()),
        bare_pingora: None,
        variants: vec![],
        backend_bin: None,
        pg_admin_url: String::new(),
        out: out.to_path_buf(),
        redis: "127.0.0.1:6379".into(),
        keep_files: false,
        json: false,
    }
}

#[test]
fn compare_plain_gateway_and_nginx() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = std::env::temp_dir().join(format!("aggios-compare-smoke-{}", std::process::id()));
    let args = CompareArgs {
        // A configuration of ours as a row of its own (the ablation rows of the harness).
        variants: vec![loadtest::compare::variants::Variant::NoAccessLog],
        ..short_run(Scenario::Plain, 16, Duration::from_secs(2), &out)
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

/// What a stand-in proxy checks before it answers 200 (each `false` is one proxy that skips that check).
#[derive(Clone, Copy)]
struct Checks {
    signature: bool,
    token_required: bool,
    tenant_binding: bool,
    serves_good: bool,
}

/// A stand-in proxy for the tenant-work check: it knows the scenario's real tokens and which host each
/// belongs to, and answers each request on a fresh connection as a proxy doing `checks` would: 401 for
/// an unknown token (a forged signature) or none, 403 for another host's token, 200 otherwise.
fn stand_in(requests: &[loadtest::generator::RequestSpec], checks: Checks) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let tokens: Vec<(String, String)> = requests
        .iter()
        .filter_map(|r| {
            let auth = r
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))?;
            Some((auth.1.clone(), r.host.clone()))
        })
        .collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut host, mut auth) = (String::new(), None::<String>);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((n, v)) = line.trim_end().split_once(':') {
                    let v = v.trim().to_string();
                    match n.to_ascii_lowercase().as_str() {
                        "host" => host = v,
                        "authorization" => auth = Some(v),
                        _ => {}
                    }
                }
                line.clear();
            }
            let owner = auth
                .as_ref()
                .and_then(|a| tokens.iter().find(|(t, _)| t == a).map(|(_, h)| h));
            let status = match (&auth, owner) {
                (None, _) if checks.token_required => 401,
                (Some(_), None) if checks.signature => 401,
                (Some(_), Some(h)) if checks.tenant_binding && *h != host => 403,
                _ if !checks.serves_good => 503,
                _ => 200,
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    addr
}

/// Each of the check's probes runs and catches the proxy that skips its check; a proxy doing all of
/// them passes (so no probe refuses a proxy that does the work).
#[test]
fn each_tenant_work_probe_catches_the_proxy_that_skips_its_check() {
    let requests = Scenario::TenantJwt.requests().unwrap();
    let all = Checks {
        signature: true,
        token_required: true,
        tenant_binding: true,
        serves_good: true,
    };
    let check = |checks: Checks, binding: bool| {
        loadtest::compare::probe::check_tenant_work(stand_in(&requests, checks), &requests, binding)
            .map_err(|e| e.to_string())
    };
    assert_eq!(check(all, true), Ok(()));
    let cases = [
        (
            Checks {
                serves_good: false,
                ..all
            },
            "its own tenant's token: expected 2xx, got 503",
        ),
        (
            Checks {
                signature: false,
                ..all
            },
            "a forged signature: expected 401, got 200",
        ),
        (
            Checks {
                token_required: false,
                ..all
            },
            "no token: expected 401, got 200",
        ),
        (
            Checks {
                tenant_binding: false,
                ..all
            },
            "another tenant's token: expected 403, got 200",
        ),
    ];
    for (checks, want) in cases {
        assert_eq!(check(checks, true), Err(want.to_string()));
    }
    // A row that does not claim the binding is not asked for it.
    assert_eq!(
        check(
            Checks {
                tenant_binding: false,
                ..all
            },
            false
        ),
        Ok(())
    );
}

/// `compressed`: both proxies compress the JSON (the harness refuses a proxy row answered uncompressed),
/// and each row says what a response weighed.
#[test]
fn compare_compressed_weighs_the_responses() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = std::env::temp_dir().join(format!("aggios-compare-gzip-{}", std::process::id()));
    let args = short_run(Scenario::Compressed, 8, Duration::from_secs(1), &out);
    let r = compare(&args).expect("compare ran");
    let size = |name: &str| {
        r.target(name)
            .and_then(|t| t.response.clone())
            .unwrap_or_else(|| panic!("{name} not weighed"))
    };
    let (up, gw, nginx) = (size("upstream"), size("gateway"), size("nginx"));
    assert_eq!(up.encoding, "identity");
    assert_eq!(up.bytes as usize, loadtest::scenario::json_body().len());
    assert_eq!(
        (gw.encoding.as_str(), nginx.encoding.as_str()),
        ("gzip", "gzip")
    );
    // gzip level 1 both (zlib-ng's and zlib's differ in bytes: README, "Compression"): well under a
    // third of the JSON.
    assert!(
        gw.bytes * 3 < up.bytes && nginx.bytes * 3 < up.bytes,
        "{gw:?} {nginx:?} of {up:?}"
    );
    let md = report::markdown(&r);
    assert!(md.contains("Bytes per response: upstream"), "{md}");
    let _ = std::fs::remove_dir_all(out);
}
