//! Client certificates at the edge (`client_auth = { mode, ca, crl, tenant_uri }`, `auth =
//! "client_cert"`): asked for only on the names such routes serve, verified per route against its CA
//! and CRL, passed upstream in fields the edge owns, bound to the host's tenant — and re-verified on a
//! resumed session and on a connection opened before a reload changed the CA. Each refusal is checked
//! where it is decided: the upstream saw nothing.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::Digest;

use crate::helpers::*;
use crate::tls_helpers::*;

const DAY: i64 = 86_400;
const TENANT_URI: &str = "spiffe://partners.test/tenant/";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn config(up: &TestUpstream, certs: &std::path::Path, ca: &str, crl: Option<&str>) -> String {
    let crl = crl.map_or(String::new(), |c| format!(", crl = \"{c}\""));
    format!(
        r#"[tenancy]
base_domains = ["aggios.test"]

[tls]
[[tls.certificates]]
cert = "{dir}/dev.crt"
key = "{dir}/dev.key"

{up}
[[routes]]
name = "partners"
hosts = ["*.aggios.test"]
path_prefix = "/partner"
auth = "client_cert"
client_auth = {{ mode = "required", ca = "{ca}", tenant_uri = "{TENANT_URI}{{tenant}}"{crl} }}
upstream = "u"

[[routes]]
name = "optional"
hosts = ["opt.example.test"]
client_auth = {{ mode = "optional", ca = "{ca}" }}
upstream = "u"

[[routes]]
name = "public"
hosts = ["*.aggios.test", "www.example.test"]
upstream = "u"
"#,
        dir = certs.display(),
        up = upstream_toml("u", &[up], "")
    )
}

/// A client certificate of `pki` naming `uris`, valid for a day around now, as a client config.
fn client(
    pki: &Pki,
    server_ca: &[u8],
    cn: &str,
    uris: &[&str],
    serial: u64,
) -> (std::sync::Arc<rustls::ClientConfig>, String) {
    let (cert, key, der) = pki.client(cn, uris, (now() - DAY, now() + DAY), serial);
    (
        client_config_with_cert(server_ca, &[b"http/1.1"], &cert, &key, false),
        hex::encode(sha2::Sha256::digest(&der)),
    )
}

fn seen_header(r: &TlsResp, name: &str) -> Option<String> {
    r.json()["headers"][name][0].as_str().map(str::to_string)
}

#[tokio::test]
async fn client_certificates_are_verified_per_route_and_bound_to_the_tenant() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = dev_certs(
        certs.path(),
        &["*.aggios.test", "opt.example.test", "www.example.test"],
    );
    let partners = Pki::new("Partners CA");
    let stranger = Pki::new("Stranger CA");
    let partners_ca = partners.write(certs.path(), "partners-ca.pem");
    let crl = certs.path().join("partners.crl");
    std::fs::write(&crl, partners.crl(&[13])).expect("write CRL");
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&config(
        &up,
        certs.path(),
        &partners_ca,
        Some(&crl.display().to_string()),
    ))
    .await;
    let acme_uri = format!("{TENANT_URI}acme");
    // Ops see what each route asks for.
    let (_, routes) = gw.admin_get("/api/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).expect("routes JSON");
    let partners_route = routes["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "partners"))
        .expect("partners route");
    assert_eq!(
        partners_route["client_auth"],
        serde_json::json!({
            "mode": "required",
            "ca": partners_ca,
            "crl": crl.display().to_string(),
            "tenant_uri": format!("{TENANT_URI}{{tenant}}"),
        })
    );

    // A partner's integration for tenant acme: served, and the upstream learns which certificate
    // acted — in fields the edge set, whatever the client sent under those names.
    let (acme, acme_sha) = client(&partners, &ca, "acme integration", &[&acme_uri], 11);
    let r = get(
        gw.https,
        "acme.aggios.test",
        "/partner/orders",
        &[
            ("x-auth-client-cert-subject", "CN=forged"),
            ("x-auth-client-cert-sha256", "00"),
            ("authorization", "Bearer forged"),
            ("x-tenant-id", "evil"),
        ],
        acme.clone(),
    )
    .await
    .expect("request with a client certificate");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        seen_header(&r, "x-auth-client-cert-subject").as_deref(),
        Some("O=Partner\\, Inc.,CN=acme integration")
    );
    assert_eq!(
        seen_header(&r, "x-auth-client-cert-san"),
        Some(format!("URI:{acme_uri}"))
    );
    assert_eq!(
        seen_header(&r, "x-auth-client-cert-sha256").as_deref(),
        Some(acme_sha.as_str())
    );
    assert_eq!(
        r.json()["headers"]["x-auth-client-cert-sha256"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(seen_header(&r, "x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(seen_header(&r, "x-user-id"), Some(acme_sha.clone()));
    assert_eq!(
        seen_header(&r, "x-user-role").as_deref(),
        Some("client_cert")
    );
    assert!(
        r.json()["headers"].get("authorization").is_none(),
        "an unverified Authorization went upstream: {}",
        r.json()
    );

    // Refusals, each decided at the edge: the upstream sees none of them.
    let (beta_cert, _) = client(
        &partners,
        &ca,
        "beta integration",
        &[&format!("{TENANT_URI}beta")],
        12,
    );
    let (revoked, _) = client(&partners, &ca, "revoked", &[&acme_uri], 13);
    let (foreign, _) = client(&stranger, &ca, "acme integration", &[&acme_uri], 11);
    let (no_tenant, _) = client(
        &partners,
        &ca,
        "no tenant",
        &["spiffe://elsewhere.test/x"],
        14,
    );
    let (two_tenants, _) = client(
        &partners,
        &ca,
        "two",
        &[&acme_uri, &format!("{TENANT_URI}beta")],
        15,
    );
    let expired = {
        let (cert, key, _) =
            partners.client("old", &[&acme_uri], (now() - 10 * DAY, now() - DAY), 16);
        client_config_with_cert(&ca, &[b"http/1.1"], &cert, &key, false)
    };
    let none = client_config(&ca, &[b"http/1.1"]);
    let hits = up.hits();
    for (who, host, cfg, status, code) in [
        (
            "acme's cert on beta's host",
            "beta.aggios.test",
            acme.clone(),
            403,
            "tenant_mismatch",
        ),
        (
            "beta's cert on acme's host",
            "acme.aggios.test",
            beta_cert,
            403,
            "tenant_mismatch",
        ),
        (
            "no certificate",
            "acme.aggios.test",
            none.clone(),
            401,
            "client_cert_required",
        ),
        (
            "another CA",
            "acme.aggios.test",
            foreign.clone(),
            401,
            "client_cert_invalid",
        ),
        (
            "revoked in the CRL",
            "acme.aggios.test",
            revoked,
            401,
            "client_cert_invalid",
        ),
        (
            "expired",
            "acme.aggios.test",
            expired,
            401,
            "client_cert_invalid",
        ),
        (
            "no tenant URI",
            "acme.aggios.test",
            no_tenant,
            403,
            "client_cert_no_tenant",
        ),
        (
            "two tenants",
            "acme.aggios.test",
            two_tenants,
            403,
            "client_cert_no_tenant",
        ),
    ] {
        let r = get(gw.https, host, "/partner/orders", &[], cfg)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (status, Some(code)),
            "{who}"
        );
        assert!(
            r.headers.get("www-authenticate").is_none(),
            "{who}: a Bearer challenge for a certificate"
        );
    }
    assert_eq!(up.hits(), hits, "a refused request reached the upstream");
    for (reason, n) in [
        ("client_cert_required", 1.0),
        ("client_cert_invalid", 3.0),
        ("client_cert_no_tenant", 2.0),
        ("tenant_mismatch", 2.0),
    ] {
        assert_eq!(
            gw.metric(&format!(
                "gateway_auth_rejections_total{{reason=\"{reason}\",route=\"partners\"}}"
            ))
            .await,
            n,
            "{reason}"
        );
    }

    // What a certificate says cannot forge a field: a subject with a line break arrives encoded.
    let (evil_cert, evil_key, _) = partners.client(
        "x\r\nx-tenant-id: beta",
        &[&acme_uri],
        (now() - DAY, now() + DAY),
        18,
    );
    let evil = client_config_with_cert(&ca, &[b"http/1.1"], &evil_cert, &evil_key, false);
    let r = get(gw.https, "acme.aggios.test", "/partner/orders", &[], evil)
        .await
        .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(
        seen_header(&r, "x-auth-client-cert-subject").as_deref(),
        Some("O=Partner\\, Inc.,CN=x%0D%0Ax-tenant-id: beta")
    );
    assert_eq!(
        r.json()["headers"]["x-tenant-id"],
        serde_json::json!(["acme"])
    );
    // An anonymous client cannot make the handshake keep a long chain: more than 8 certificates
    // end it.
    let (leaf, leaf_key, _) = partners.client("long", &[&acme_uri], (now() - DAY, now() + DAY), 19);
    let long_chain = format!("{leaf}{}", partners.pem.repeat(8));
    let long = client_config_with_cert(&ca, &[b"http/1.1"], &long_chain, &leaf_key, false);
    assert!(
        get(gw.https, "acme.aggios.test", "/partner/orders", &[], long)
            .await
            .is_err(),
        "a chain of 9 certificates was accepted"
    );

    // A route without client_auth on the same name: served with or without a certificate, and never
    // passes certificate fields on (a client's own are stripped).
    for cfg in [none.clone(), acme.clone()] {
        let r = get(
            gw.https,
            "acme.aggios.test",
            "/",
            &[("x-auth-client-cert-sha256", "forged")],
            cfg,
        )
        .await
        .expect("public route");
        assert_eq!(r.status, 200);
        assert_eq!(seen_header(&r, "x-auth-client-cert-sha256"), None);
    }

    // mode = "optional": no certificate is served without fields; a valid one is passed on; an
    // invalid one is refused.
    let r = get(
        gw.https,
        "opt.example.test",
        "/x",
        &[("x-auth-client-cert-subject", "CN=forged")],
        none.clone(),
    )
    .await
    .expect("optional without");
    assert_eq!(r.status, 200);
    assert_eq!(seen_header(&r, "x-auth-client-cert-subject"), None);
    let r = get(gw.https, "opt.example.test", "/x", &[], acme.clone())
        .await
        .expect("optional with");
    assert_eq!(r.status, 200);
    assert_eq!(
        seen_header(&r, "x-auth-client-cert-sha256"),
        Some(acme_sha.clone())
    );
    let hits = up.hits();
    let r = get(gw.https, "opt.example.test", "/x", &[], foreign)
        .await
        .expect("optional, foreign");
    assert_eq!(
        (r.status, r.error_code()),
        (401, "client_cert_invalid".to_string())
    );
    assert_eq!(up.hits(), hits);

    // A name no client_auth route serves is never asked for a certificate (a browser would prompt its
    // user); asked names hint the route's CA.
    let s_client = |name: &str| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", gw.https)])
            .args(["-servername", name])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let plain = s_client("www.example.test");
    assert!(
        plain.contains("No client certificate CA names sent") && !plain.contains("Partners CA"),
        "www.example.test asked:\n{plain}"
    );
    let asked = s_client("acme.aggios.test");
    assert!(
        asked.contains("Acceptable client certificate CA names")
            && asked.contains("CN = Partners CA"),
        "acme.aggios.test did not hint the CA:\n{asked}"
    );
    // …and a connection made for such a name cannot be used for a route that requires one.
    let conn = connect(gw.https, "www.example.test", acme.clone())
        .await
        .expect("handshake");
    let hits = up.hits();
    let r = request_on(conn, "acme.aggios.test", "/partner/orders", &[])
        .await
        .expect("misdirected");
    assert_eq!(
        (r.status, r.error_code()),
        (421, "misdirected_request".to_string())
    );
    assert_eq!(up.hits(), hits);

    // curl, a real client with its own TLS stack.
    let (cert, key, _) = partners.client("curl", &[&acme_uri], (now() - DAY, now() + DAY), 17);
    std::fs::write(certs.path().join("curl.pem"), cert).expect("write");
    std::fs::write(certs.path().join("curl.key"), key).expect("write");
    std::fs::write(certs.path().join("server-ca.pem"), &ca).expect("write");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(certs.path().join("server-ca.pem"))
        .arg("--cert")
        .arg(certs.path().join("curl.pem"))
        .arg("--key")
        .arg(certs.path().join("curl.key"))
        .args([
            "--resolve",
            &format!("acme.aggios.test:{}:127.0.0.1", gw.https),
        ])
        .arg(format!(
            "https://acme.aggios.test:{}/partner/curl",
            gw.https
        ))
        .output()
        .expect("curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("\n200"),
        "curl: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CN=curl"), "{stdout}");
}

#[tokio::test]
async fn a_resumed_session_and_an_open_connection_are_verified_again_after_a_reload() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = dev_certs(certs.path(), &["*.aggios.test"]);
    let first = Pki::new("First Partners CA");
    let second = Pki::new("Second Partners CA");
    let first_ca = first.write(certs.path(), "first.pem");
    let second_ca = second.write(certs.path(), "second.pem");
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&config(&up, certs.path(), &first_ca, None)).await;
    let uri = format!("{TENANT_URI}acme");
    let (cert, key, _) = first.client("acme", &[&uri], (now() - DAY, now() + DAY), 21);
    // One config: its session cache lets the next connection resume.
    let resuming = client_config_with_cert(&ca, &[b"http/1.1"], &cert, &key, true);

    let conn = connect(gw.https, "acme.aggios.test", resuming.clone())
        .await
        .expect("first handshake");
    assert!(!conn.resumed);
    let r = request_on(conn, "acme.aggios.test", "/partner/a", &[])
        .await
        .expect("first request");
    assert_eq!(r.status, 200);
    let conn = connect(gw.https, "acme.aggios.test", resuming.clone())
        .await
        .expect("second handshake");
    assert!(
        conn.resumed,
        "the session was not resumed: the test proves nothing"
    );
    let r = request_on(conn, "acme.aggios.test", "/partner/a", &[])
        .await
        .expect("resumed request");
    assert_eq!(r.status, 200);

    // A keep-alive connection opened before the reload.
    let open = connect(gw.https, "acme.aggios.test", resuming.clone())
        .await
        .expect("handshake");
    let (mut sender, c) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(open.stream))
            .await
            .expect("h1");
    tokio::spawn(c);
    let req = || {
        hyper::Request::builder()
            .uri("/partner/k")
            .header("host", "acme.aggios.test")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request")
    };
    assert_eq!(
        sender.send_request(req()).await.expect("before").status(),
        200
    );

    // The route now trusts another CA only.
    gw.rewrite(&config(&up, certs.path(), &second_ca, None));
    let (new_cert, new_key, _) = second.client("acme", &[&uri], (now() - DAY, now() + DAY), 22);
    let fresh = client_config_with_cert(&ca, &[b"http/1.1"], &new_cert, &new_key, false);
    eventually("the new CA trusted", || {
        let cfg = fresh.clone();
        async move {
            matches!(get(gw.https, "acme.aggios.test", "/partner/n", &[], cfg).await, Ok(r) if r.status == 200)
        }
    })
    .await;

    let hits = up.hits();
    // A session resumed from before the reload carries the old chain: checked again, refused.
    let conn = connect(gw.https, "acme.aggios.test", resuming.clone())
        .await
        .expect("third handshake");
    assert!(
        conn.resumed,
        "the session was not resumed after the reload: the test proves nothing"
    );
    let r = request_on(conn, "acme.aggios.test", "/partner/a", &[])
        .await
        .expect("resumed after reload");
    assert_eq!(
        (r.status, r.error_code()),
        (401, "client_cert_invalid".to_string())
    );
    // The connection opened before the reload: its next request is checked against the new CA.
    let resp = sender.send_request(req()).await.expect("after reload");
    assert_eq!(resp.status(), 401);
    assert_eq!(
        up.hits(),
        hits,
        "a request under the old CA reached the upstream"
    );
}

#[test]
fn bad_client_auth_settings_are_named_at_their_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("a CA");
    let ca = pki.write(dir.path(), "ca.pem");
    let (_, key) = pki.leaf("x", &["x.test"]);
    std::fs::write(dir.path().join("x.key"), key).expect("write");
    std::fs::write(
        dir.path().join("bad.crl"),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .expect("write");
    let d = dir.path().display();
    let text = format!(
        "[entrypoints]\nhttp = \"127.0.0.1:1\"\n\n\
         [[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:2\"]\n\n\
         [[routes]]\nname = \"missing\"\npath_prefix = \"/a\"\nupstream = \"u\"\nclient_auth = {{ ca = \"{d}/nope.pem\" }}\n\n\
         [[routes]]\nname = \"notca\"\npath_prefix = \"/b\"\nupstream = \"u\"\nclient_auth = {{ ca = \"{d}/x.key\" }}\n\n\
         [[routes]]\nname = \"mode\"\npath_prefix = \"/c\"\nupstream = \"u\"\nclient_auth = {{ mode = \"sometimes\", ca = \"{ca}\" }}\n\n\
         [[routes]]\nname = \"uri\"\npath_prefix = \"/d\"\nupstream = \"u\"\nclient_auth = {{ ca = \"{ca}\", tenant_uri = \"spiffe://x/tenant\" }}\n\n\
         [[routes]]\nname = \"nocfg\"\npath_prefix = \"/e\"\nupstream = \"u\"\nauth = \"client_cert\"\n\n\
         [[routes]]\nname = \"optional\"\npath_prefix = \"/f\"\nupstream = \"u\"\nauth = \"client_cert\"\nclient_auth = {{ mode = \"optional\", ca = \"{ca}\", tenant_uri = \"urn:t:{{tenant}}\" }}\n\n\
         [[routes]]\nname = \"scopes\"\npath_prefix = \"/g\"\nupstream = \"u\"\nauth = \"client_cert\"\nscopes = [\"write\"]\nclient_auth = {{ ca = \"{ca}\", tenant_uri = \"urn:t:{{tenant}}\", crl = \"{d}/bad.crl\" }}\n"
    );
    assert_refused_at(
        dir.path(),
        &text,
        &[
            (format!("\"{d}/nope.pem\""), "cannot read client_auth.ca"),
            (format!("\"{d}/x.key\""), "holds no PEM certificate"),
            ("\"sometimes\"".to_string(), "client_auth.mode"),
            ("\"spiffe://x/tenant\"".to_string(), "`{tenant}` once"),
            ("\"client_cert\"\n\n".to_string(), "has no client_auth"),
            (
                "{ mode = \"optional\"".to_string(),
                "needs client_auth.mode = \"required\"",
            ),
            ("\"write\"".to_string(), "carries no scopes"),
            (format!("\"{d}/bad.crl\""), "client_auth.crl"),
        ],
    );
}
