//! The alert rules and the dashboard as code (compose/prometheus, compose/grafana): `promtool` checks the
//! rules and runs their unit tests (each alert fired from synthetic series), and every gateway metric that
//! a rule or a panel uses exists on a live gateway's `/metrics` (the backend's: backend/tests/api/service.rs),
//! with a live series for each selector's label matchers (`result="failure"`, `status=~"5.."`): a label
//! value renamed in code would leave an alert that can never fire.

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

/// One label matcher of a PromQL selector: label, operator (`=`, `!=`, `=~`, `!~`), value.
type Matcher = (String, String, String);

/// Every `gateway_…{matchers}` selector of `text` (the JSON's escaped quotes already undone).
fn selectors(text: &str) -> Vec<(String, Vec<Matcher>)> {
    let text = text.replace("\\\"", "\"");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("gateway_") {
        let tail = &rest[at..];
        let name_len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let (name, after) = tail.split_at(name_len);
        rest = after;
        let Some(body) = after.strip_prefix('{') else {
            continue;
        };
        let Some(end) = body.find('}') else { break };
        let mut matchers = Vec::new();
        for part in body[..end].split(',').filter(|p| !p.trim().is_empty()) {
            let part = part.trim();
            let op_at = part.find(['=', '!']).expect("a matcher operator");
            let label = part[..op_at].trim().to_string();
            let op_len = if part[op_at..].starts_with("=~") || part[op_at..].starts_with("!") {
                2
            } else {
                1
            };
            let op = part[op_at..op_at + op_len].to_string();
            let value = part[op_at + op_len..].trim().trim_matches('"').to_string();
            matchers.push((label, op, value));
        }
        if !matchers.is_empty() {
            out.push((name.to_string(), matchers));
        }
        rest = &body[end..];
    }
    out
}

/// Whether the `/metrics` line `line` is a series of `name` whose labels satisfy every matcher.
fn series_matches(line: &str, name: &str, matchers: &[Matcher]) -> bool {
    let Some(labels) = line
        .strip_prefix(name)
        .and_then(|l| l.strip_prefix('{'))
        .and_then(|l| l.split_once('}'))
        .map(|(labels, _)| labels)
    else {
        return false;
    };
    let value_of = |label: &str| -> String {
        labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .find(|(k, _)| k.trim() == label)
            .map(|(_, v)| v.trim_end_matches('"').to_string())
            .unwrap_or_default()
    };
    matchers.iter().all(|(label, op, want)| {
        let have = value_of(label);
        let re = || regex::Regex::new(&format!("^(?:{want})$")).expect("a PromQL regex");
        match op.as_str() {
            "=" => have == *want,
            "!=" => have != *want,
            "=~" => re().is_match(&have),
            _ => !re().is_match(&have),
        }
    })
}

/// `matchers` once per alternative of each `=~"a|b|c"` (a plain alternation of names).
fn alternatives(matchers: &[Matcher]) -> Vec<Vec<Matcher>> {
    let mut out = vec![matchers.to_vec()];
    for (i, (_, op, value)) in matchers.iter().enumerate() {
        let plain = |a: &str| a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if op == "=~" && value.contains('|') && value.split('|').all(plain) {
            out = out
                .into_iter()
                .flat_map(|m| {
                    value.split('|').map(move |alt| {
                        let mut m = m.clone();
                        m[i].2 = alt.to_string();
                        m
                    })
                })
                .collect();
        }
    }
    out
}

#[test]
fn selectors_are_read_with_their_matchers() {
    let alts = alternatives(&[("decision".into(), "=~".into(), "refused|shed".into())]);
    assert_eq!(alts.len(), 2);
    assert_eq!(alts[1][0].2, "shed");
    let got = selectors(
        r#"rate(gateway_http_requests_total{status=~"5..", route!="x"}[5m]) and gateway_up"#,
    );
    assert_eq!(
        got,
        vec![(
            "gateway_http_requests_total".to_string(),
            vec![
                ("status".into(), "=~".into(), "5..".into()),
                ("route".into(), "!=".into(), "x".into())
            ]
        )]
    );
    let line = r#"gateway_http_requests_total{route="r",status="502"} 1"#;
    assert!(series_matches(
        line,
        "gateway_http_requests_total",
        &got[0].1
    ));
    let line = r#"gateway_http_requests_total{route="x",status="502"} 1"#;
    assert!(!series_matches(
        line,
        "gateway_http_requests_total",
        &got[0].1
    ));
    let line = r#"gateway_http_requests_total{route="r",status="200"} 1"#;
    assert!(!series_matches(
        line,
        "gateway_http_requests_total",
        &got[0].1
    ));
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
        "[tenancy]\nbase_domains = [\"aggios.test\"]\n[tls]\n[[tls.certificates]]\ncert = \"{dir}/dev.crt\"\nkey = \"{dir}/dev.key\"\n[auth.jwt]\nsecret_env = \"GW_SECRET\"\n[rate_limits.per_ip]\nkey = \"client_ip\"\nlimit = 1000\nperiod = \"1s\"\nscope = \"local\"\n[rate_limits.tight]\nkey = \"client_ip\"\nlimit = 1\nperiod = \"60s\"\nscope = \"local\"\n{up}\n[[upstreams]]\nname = \"dead\"\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"dead\"\nhosts = [\"*.aggios.test\"]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n[[routes]]\nname = \"tight\"\nhosts = [\"*.aggios.test\"]\npath_prefix = \"/tight\"\nupstream = \"u\"\nrate_limits = [\"tight\"]\n[[routes]]\nname = \"r\"\nhosts = [\"*.aggios.test\"]\nupstream = \"u\"\nrate_limits = [\"per_ip\"]\n[[routes]]\nname = \"private\"\nhosts = [\"*.aggios.test\"]\npath_prefix = \"/private\"\nauth = \"jwt\"\nupstream = \"u\"\n",
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
    // A 5xx and a refused rate-limit decision, which selectors of the rules and panels match.
    assert_eq!(gw.get("acme.aggios.test", "/dead/x").await.status, 502);
    assert_eq!(gw.get("acme.aggios.test", "/tight").await.status, 200);
    assert_eq!(gw.get("acme.aggios.test", "/tight").await.status, 429);
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
    // Each selector's label matchers find a live series: the label values the rules and panels
    // name are the ones the gateway writes. Each alternative of a `=~"a|b"` matcher on its own (the
    // gateway declares its label values up front, so one right alternative would hide a wrong one).
    let selectors = selectors(&rules_and_dashboard());
    assert!(selectors.len() >= 3, "{selectors:?}");
    for (name, matchers) in selectors
        .iter()
        .flat_map(|(n, m)| alternatives(m).into_iter().map(move |m| (n.clone(), m)))
    {
        if ACME_ONLY.contains(&name.as_str()) {
            continue;
        }
        assert!(
            text.lines().any(|l| series_matches(l, &name, &matchers)),
            "no live series of {name} matches {matchers:?} (a rule or panel selects it):\n{}",
            text.lines()
                .filter(|l| l.starts_with(name.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
