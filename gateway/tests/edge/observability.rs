//! The alert rules and the dashboard as code (compose/prometheus, compose/grafana): `promtool` checks the
//! rules and runs their unit tests (each alert fired from synthetic series), and every gateway metric that
//! a rule or a panel uses exists on a live gateway's `/metrics` (the backend's: backend/tests/api/service.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::helpers::*;
use super::tls_helpers::dev_certs;

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/prometheus")
}

/// The rules' and the dashboard's text (PromQL inside YAML and JSON).
fn rules_and_dashboard() -> String {
    let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose");
    let rules = std::fs::read_to_string(compose.join("prometheus/rules/aggios-edge.rules.yml"))
        .expect("the rules file");
    let dashboard = std::fs::read_to_string(compose.join("grafana/dashboards/aggios-edge.json"))
        .expect("the dashboard");
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    format!("{rules}\n{dashboard}")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_and_scrape_config_pass_promtool_and_the_rules_unit_tests() {
    let check = promtool(&["check", "rules", "rules/aggios-edge.rules.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let tests = promtool(&["test", "rules", "tests/aggios-edge.test.yml"]);
    assert!(tests.contains("SUCCESS"), "{tests}");
    // The scrape config (its rule_files path is the container's, hence syntax only).
    let config = promtool(&["check", "config", "--syntax-only", "prometheus.yml"]);
    assert!(config.contains("SUCCESS"), "{config}");
}

/// Series that exist only while ACME manages a name; acme.rs
/// (`renewal_under_load_then_a_ca_outage_keeps_the_old_certificate`) reads them from a live gateway.
const ACME_ONLY: &[&str] = &["gateway_acme_consecutive_failures"];

#[tokio::test]
async fn every_gateway_metric_the_rules_and_the_dashboard_use_is_on_live_metrics() {
    let used = contracts::metrics::names_in(&rules_and_dashboard(), "gateway_");
    assert!(used.len() >= 10, "{used:?}");

    // A gateway with a certificate, a health-checked upstream, a rate-limited route and a JWT route, after
    // one request on each and one rejected reload: every labelled series used has a child by then.
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["*.aggios.test"]);
    let up = TestUpstream::start("u");
    let body = format!(
        "[tenancy]\nbase_domains = [\"aggios.test\"]\n[tls]\n[[tls.certificates]]\ncert = \"{dir}/dev.crt\"\nkey = \"{dir}/dev.key\"\n[auth.jwt]\nsecret_env = \"GW_SECRET\"\n[rate_limits.per_ip]\nkey = \"client_ip\"\nlimit = 1000\nperiod = \"1s\"\nscope = \"local\"\n{up}\n[[routes]]\nname = \"r\"\nhosts = [\"*.aggios.test\"]\nupstream = \"u\"\nrate_limits = [\"per_ip\"]\n[[routes]]\nname = \"private\"\nhosts = [\"*.aggios.test\"]\npath_prefix = \"/private\"\nauth = \"jwt\"\nupstream = \"u\"\n",
        dir = certs.path().display(),
        up = upstream_toml("u", &[&up], "health = { path = \"/\", interval = \"1s\", timeout = \"1s\" }"),
    );
    let gw = Gateway::start_with_env(
        &body,
        &[("GW_SECRET", "observability-secret-observability-secret")],
    )
    .await;
    assert_eq!(gw.get("acme.aggios.test", "/").await.status, 200);
    assert_eq!(gw.get("acme.aggios.test", "/private/x").await.status, 401);
    std::fs::write(&gw.config, "this is not toml [").expect("write");
    eventually("the rejected reload counted", || async {
        gw.admin_get("/metrics")
            .await
            .1
            .contains("gateway_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    eventually("the upstream's health published", || async {
        gw.admin_get("/metrics")
            .await
            .1
            .contains("gateway_upstream_server_up{")
    })
    .await;
    let (_, text) = gw.admin_get("/metrics").await;
    for name in used.iter().filter(|n| !ACME_ONLY.contains(&n.as_str())) {
        // A histogram is used through its series (`_bucket`), which is what /metrics lists.
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "{name} (used by the alert rules or the dashboard) is missing from /metrics:\n{text}"
        );
    }
}
