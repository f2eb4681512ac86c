//! `gateway validate`: every file in config/ is valid; broken fixtures give exact `FILE:LINE:COL` lines.

use std::path::Path;
use std::process::Command;

use crate::helpers::fixture;

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `gateway validate` from the repository's root, where the shipped configs' relative paths
/// (certs/dev.crt) point.
fn validate(path: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .current_dir(repo_root())
        // config/gateway.toml takes its JWT key from the environment, as production does.
        .env("JWT_SECRET", "a-test-secret-of-at-least-32-bytes!!")
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .env(
            "ACME_STORAGE_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .expect("run gateway validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_is_valid() {
    // config/dev.toml serves the development certificate, which scripts/stack.sh makes the same way
    // (into the git-ignored certs/).
    let root = repo_root();
    if !root.join("certs/dev.crt").exists() {
        let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .current_dir(&root)
            .args([
                "certs",
                "dev",
                "--out",
                "certs",
                "--domain",
                "aggios.localhost",
            ])
            .args([
                "--domain",
                "*.aggios.localhost",
                "--domain",
                "localhost",
                "--domain",
                "127.0.0.1",
            ])
            .output()
            .expect("gateway certs dev");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = root.join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, stdout, stderr) = validate(&path);
            assert_eq!(code, 0, "{}: {stderr}", path.display());
            assert!(stdout.contains(": ok: "), "{stdout}");
            assert_eq!(
                stdout.lines().count(),
                1,
                "one-line summary expected: {stdout}"
            );
            n += 1;
        }
    }
    assert!(n >= 2, "expected config/dev.toml and config/gateway.toml");
}

/// Each fixture `NAME.toml` has `NAME.expected`: the exact stderr, with `FILE` standing for the path.
#[test]
fn broken_fixtures_give_exact_messages() {
    let mut n = 0;
    for entry in std::fs::read_dir(fixture("")).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let expected =
            std::fs::read_to_string(path.with_extension("expected")).expect("expected file");
        let (code, _, stderr) = validate(&path);
        assert_eq!(code, 1, "{}", path.display());
        let got = stderr.replace(&path.display().to_string(), "FILE");
        assert_eq!(got.trim_end(), expected.trim_end(), "{}", path.display());
        n += 1;
    }
    assert!(n >= 4);
}

#[test]
fn warnings_pass_unless_strict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("open-admin.toml");
    std::fs::write(
        &path,
        "[entrypoints]\nhttp = \"127.0.0.1:8080\"\nadmin = \"0.0.0.0:9000\"\n",
    )
    .expect("write");
    let (code, stdout, stderr) = validate(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok: "), "{stdout}");
    let file = path.display().to_string();
    assert_eq!(
        stderr.trim_end(),
        format!("{file}:3:9: warning: entrypoints.admin 0.0.0.0:9000 is beyond loopback and [admin] has no token_env: anyone who reaches it reads the metrics, routes and certificates")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", "--strict", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn routes_around_the_edges_policies_are_warned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gaps.toml");
    std::fs::write(
        &path,
        r#"[entrypoints]
http = "127.0.0.1:8080"

[auth.jwt]
secret_env = "JWT_SECRET"

[auth.api_keys]
lookup_url = "http://127.0.0.1:8082/internal/api-keys/{prefix}"

[rate_limits.per_ip]
key = "client_ip"
limit = 10
period = "1s"
scope = "local"

[[upstreams]]
name = "backend"
servers = ["127.0.0.1:8081", "127.0.0.1:8082"]

[[routes]]
name = "api"
hosts = ["*.aggios.app"]
path_prefix = "/api"
auth = "jwt_tenant"
rate_limits = ["per_ip"]
upstream = "backend"

[[routes]]
name = "api-beta"
hosts = ["*.aggios.app"]
path_prefix = "/api"
headers = { "X-Beta" = "1" }
upstream = "backend"
"#,
    )
    .expect("write");
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 0, "{stderr}");
    let file = path.display().to_string();
    let got: Vec<String> = stderr.lines().map(|l| l.replace(&file, "FILE")).collect();
    assert_eq!(
        got,
        [
            "FILE:17:8: warning: upstream `backend` contains 127.0.0.1:8082, the backend's internal listener (API-key lookups, tenant-domain asks): routes would expose it",
            "FILE:29:8: warning: route `api-beta` reaches upstream `backend` with no rate limit",
            "FILE:29:8: warning: route `api-beta` (chosen by its header or method matchers) takes requests of route `api` with weaker auth (`none` instead of `jwt_tenant`), fewer rate limits",
        ]
    );
}

/// #23 point 4: the two shapes `--strict` missed. An upstream written `localhost:PORT` is the internal
/// listener the API-key lookup names as `127.0.0.1:PORT`; an exact tenant host with a header matcher
/// and weaker limits, scopes and CORS takes requests of a wildcard route. Both warn with FILE:LINE:COL
/// and fail `--strict`. Before the fix neither was flagged (addresses and hosts compared as strings).
#[test]
fn strict_flags_the_internal_listener_by_name_and_exact_hosts_shadowing_wildcards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shadow.toml");
    std::fs::write(
        &path,
        r#"[entrypoints]
http = "127.0.0.1:8080"

[auth.api_keys]
lookup_url = "http://127.0.0.1:8082/internal/api-keys/{prefix}"

[rate_limits.per_ip]
key = "client_ip"
limit = 10
period = "1s"
scope = "local"

[[upstreams]]
name = "backend"
servers = ["127.0.0.1:8081"]

[[upstreams]]
name = "internal"
servers = ["localhost:8082"]

[[routes]]
name = "api"
hosts = ["*.aggios.app"]
path_prefix = "/api"
auth = "api_key"
scopes = ["files:write"]
rate_limits = ["per_ip"]
upstream = "backend"

[[routes]]
name = "acme-debug"
hosts = ["acme.aggios.app"]
path_prefix = "/api/files"
headers = { "X-Debug" = "1" }
auth = "api_key"
cors = { origins = ["https://evil.example"] }
upstream = "backend"

[[routes]]
name = "open"
path_prefix = "/open"
rate_limits = ["per_ip"]
upstream = "internal"
"#,
    )
    .expect("write");
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 0, "{stderr}");
    let file = path.display().to_string();
    let got: Vec<String> = stderr.lines().map(|l| l.replace(&file, "FILE")).collect();
    assert_eq!(
        got,
        [
            "FILE:18:8: warning: upstream `internal` contains localhost:8082, the backend's internal listener (API-key lookups, tenant-domain asks): routes would expose it",
            "FILE:31:8: warning: route `acme-debug` reaches upstream `backend` with no rate limit",
            "FILE:31:8: warning: route `acme-debug` (chosen by its header or method matchers) takes requests of route `api` with fewer rate limits, fewer API-key scopes, a wider CORS policy",
        ]
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", "--strict", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
}
