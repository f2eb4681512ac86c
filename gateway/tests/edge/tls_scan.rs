//! The https entrypoint's TLS configuration, scanned by sslyze (PyPI; `SSLYZE`, installed by
//! `scripts/test.sh`): no protocol below TLS 1.2, only forward-secret AEAD suites, no compression,
//! secure renegotiation signalled and client renegotiation refused, TLS_FALLBACK_SCSV, extended master
//! secret, not vulnerable to Heartbleed, CCS injection or ROBOT, a complete chain in order that
//! validates against the CA, HSTS on responses, and Mozilla's "intermediate" profile met (sslyze's
//! own compliance check). With `TLS_SCAN_FINDINGS=FILE` the findings are also written there (the
//! committed record is `gateway/tests/tls/findings.md`).

use serde_json::Value;

use crate::helpers::*;
use crate::tls_helpers::dev_certs;

fn names(v: &Value) -> Vec<String> {
    v["accepted_cipher_suites"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["cipher_suite"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_https_entrypoint_passes_a_tls_configuration_scan() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["*.aggios.test"]);
    let ca_file = certs.path().join("dev-ca.crt");
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&format!(
        "[tls]\n[[tls.certificates]]\ncert = \"{dir}/dev.crt\"\nkey = \"{dir}/dev.key\"\ndefault = true\n\n{u}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        dir = certs.path().display(),
        u = upstream_toml("u", &[&up], ""),
    ))
    .await;
    let json_out = certs.path().join("scan.json");
    let sslyze = std::env::var("SSLYZE").unwrap_or_else(|_| "sslyze".into());
    let out = tokio::time::timeout(
        DEADLINE * 4,
        tokio::process::Command::new(&sslyze)
            .arg(format!("--json_out={}", json_out.display()))
            .arg(format!("--certinfo_ca_file={}", ca_file.display()))
            .args(["--http_headers", "--mozilla_config=intermediate"])
            .arg(format!("scan.aggios.test:{}{{127.0.0.1}}", gw.https))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("sslyze did not end")
    .expect("run sslyze (SSLYZE; scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_slice(&std::fs::read(&json_out).expect("sslyze's JSON"))
        .unwrap_or_else(|e| panic!("sslyze's JSON: {e}\n{stdout}"));
    let server = &report["server_scan_results"][0];
    assert_eq!(server["scan_status"], "COMPLETED", "{stdout}");
    let scan = &server["scan_result"];
    let result = |name: &str| -> &Value {
        let r = &scan[name];
        assert_eq!(r["status"], "COMPLETED", "{name}: {r}");
        &r["result"]
    };

    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ] {
        assert_eq!(names(result(old)), Vec::<String>::new(), "{old} accepted");
    }
    let tls12 = names(result("tls_1_2_cipher_suites"));
    let tls13 = names(result("tls_1_3_cipher_suites"));
    assert!(
        !tls12.is_empty() && !tls13.is_empty(),
        "{tls12:?} {tls13:?}"
    );
    for suite in &tls12 {
        assert!(
            suite.starts_with("TLS_ECDHE_")
                && (suite.contains("_GCM_") || suite.contains("_CHACHA20_POLY1305_")),
            "TLS 1.2 suite without forward secrecy or AEAD: {suite}"
        );
    }
    assert_eq!(result("tls_compression")["supports_compression"], false);
    let reneg = result("session_renegotiation");
    assert_eq!(reneg["supports_secure_renegotiation"], true, "{reneg}");
    assert_eq!(reneg["is_vulnerable_to_client_renegotiation_dos"], false);
    assert_eq!(result("tls_fallback_scsv")["supports_fallback_scsv"], true);
    assert_eq!(
        result("tls_extended_master_secret")["supports_ems_extension"],
        true
    );
    assert_eq!(result("heartbleed")["is_vulnerable_to_heartbleed"], false);
    assert_eq!(
        result("openssl_ccs_injection")["is_vulnerable_to_ccs_injection"],
        false
    );
    let robot = result("robot")["robot_result"].as_str().unwrap_or("");
    assert!(robot.starts_with("NOT_VULNERABLE"), "{robot}");

    let deployment = &result("certificate_info")["certificate_deployments"][0];
    assert_eq!(deployment["received_chain_has_valid_order"], true);
    assert_eq!(deployment["verified_chain_has_sha1_signature"], false);
    let trusted_by_ca: Vec<&Value> = deployment["path_validation_results"]
        .as_array()
        .expect("path validation")
        .iter()
        .filter(|p| p["trust_store"]["name"] == "Supplied CA file")
        .collect();
    assert_eq!(trusted_by_ca.len(), 1);
    assert_eq!(
        trusted_by_ca[0]["was_validation_successful"], true,
        "the served chain does not validate against its CA: {}",
        trusted_by_ca[0]
    );

    let hsts = &result("http_headers")["strict_transport_security_header"];
    assert!(
        hsts["max_age"].as_u64() >= Some(15_552_000),
        "HSTS max-age under 180 days: {hsts}"
    );
    assert!(
        out.status.success(),
        "sslyze: not compliant with Mozilla's intermediate profile:\n{stdout}"
    );

    if let Ok(path) = std::env::var("TLS_SCAN_FINDINGS") {
        let row = |what: &str, v: String| format!("| {what} | {v} |\n");
        let mut md = format!(
            "# TLS configuration scan of the https entrypoint\n\nRun {} with sslyze {} (`gateway/tests/edge/tls_scan.rs`, in CI), against a gateway with the dev CA's leaf.\n\n| check | finding |\n|---|---|\n",
            report["date_scans_started"].as_str().unwrap_or("?"),
            report["sslyze_version"].as_str().unwrap_or("?"),
        );
        md += &row(
            "SSL 2.0, SSL 3.0, TLS 1.0, TLS 1.1",
            "refused (no suite accepted)".into(),
        );
        md += &row("TLS 1.2 suites", tls12.join(", "));
        md += &row("TLS 1.3 suites", tls13.join(", "));
        md += &row("compression", "off".into());
        md += &row(
            "renegotiation",
            "secure renegotiation signalled; client-initiated refused".into(),
        );
        md += &row(
            "TLS_FALLBACK_SCSV, extended master secret",
            "supported".into(),
        );
        md += &row(
            "Heartbleed, CCS injection, ROBOT",
            format!("not vulnerable ({robot})"),
        );
        md += &row(
            "certificate chain",
            "complete, in order, validates against the CA, no SHA-1".into(),
        );
        md += &row("HSTS", hsts.to_string());
        md += &row("Mozilla intermediate profile", "compliant".into());
        std::fs::write(&path, md).expect("write the findings");
    }
}
