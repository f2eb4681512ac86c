//! TLS termination on the https entrypoint: certificates by SNI from a live store, HTTP/1.1 and
//! HTTP/2 with every edge check, refused names, the handshake deadline, live certificate reloads.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::tls_helpers::*;
use rustls::pki_types::pem::PemObject;

const SECRET: &str = "tls-test-secret-tls-test-secret-0001";

fn config(up: &TestUpstream, certs: &std::path::Path, extra_tls: &str) -> String {
    format!(
        r#"[tenancy]
base_domains = ["aggios.test"]
reserved = ["api"]

[tls]
{extra_tls}
[[tls.certificates]]
cert = "{dir}/dev.crt"
key = "{dir}/dev.key"

[auth.jwt]
secret_env = "GW_SECRET"

{up}
[[routes]]
name = "tenant-api"
hosts = ["*.aggios.test"]
path_prefix = "/api"
auth = "jwt_tenant"
upstream = "u"

[[routes]]
name = "login"
hosts = ["login.example.test"]
redirect_https = true

[[routes]]
name = "public"
hosts = ["*.aggios.test"]
upstream = "u"
"#,
        dir = certs.display(),
        up = upstream_toml("u", &[up], "")
    )
}

const ENV: &[(&str, &str)] = &[("GW_SECRET", SECRET)];

/// A balancer's PROXY protocol header before the TLS handshake: the client it names is the client of the
/// HTTPS request (HTTP/1.1 and HTTP/2); the same header from anyone else fails the handshake.
#[tokio::test]
async fn a_proxy_protocol_header_before_tls_names_the_client() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = dev_certs(certs.path(), &["*.aggios.test"]);
    let up = TestUpstream::start("u");
    let body = format!(
        "{}\n[entrypoints.proxy_protocol]\nfrom = [\"127.0.0.2\"]\n",
        config(&up, certs.path(), "")
    );
    let gw = Gateway::start_with_env(&body, ENV).await;
    let header = gateway::support::proxy_protocol::v2_header(
        "198.51.100.7:5555".parse().expect("addr"),
        "10.0.0.1:443".parse().expect("addr"),
    );
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let r = get_from(
            [127, 0, 0, 2],
            &header,
            gw.https,
            "acme.aggios.test",
            "/hello",
            &[],
            client_config(&ca, &[alpn]),
        )
        .await
        .expect("https request through the balancer");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["x-aggios-client-ip"][0], "198.51.100.7");
        assert_eq!(r.json()["headers"]["x-forwarded-proto"][0], "https");
    }
    let spoofed = get_from(
        [127, 0, 0, 1],
        &header,
        gw.https,
        "acme.aggios.test",
        "/hello",
        &[],
        client_config(&ca, &[b"http/1.1"]),
    )
    .await;
    assert!(spoofed.is_err(), "{spoofed:?}");
    // Without a header, the client is its own address.
    let r = get(
        gw.https,
        "acme.aggios.test",
        "/hello",
        &[],
        client_config(&ca, &[b"http/1.1"]),
    )
    .await
    .expect("direct https");
    assert_eq!(r.json()["headers"]["x-aggios-client-ip"][0], "127.0.0.1");
}

#[tokio::test]
async fn https_serves_http1_and_h2_with_every_edge_check() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = dev_certs(certs.path(), &["*.aggios.test", "login.example.test"]);
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(&config(&up, certs.path(), ""), ENV).await;

    // HTTP/1.1 over TLS: the upstream learns the request came over HTTPS; HSTS goes back.
    let h1 = client_config(&ca, &[b"http/1.1"]);
    let r = get(gw.https, "acme.aggios.test", "/hello", &[], h1.clone())
        .await
        .expect("https request");
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(
        r.json()["headers"]["x-forwarded-host"][0],
        "acme.aggios.test"
    );
    assert_eq!(
        r.headers
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok()),
        Some("max-age=31536000")
    );
    // HSTS is an HTTPS-only header.
    let plain = gw.get("acme.aggios.test", "/hello").await;
    assert_eq!(plain.status, 200);
    assert!(plain.header("strict-transport-security").is_none());
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"][0], "http");

    // HTTP/2 by ALPN, with the same edge: no token → 401 at the edge, the upstream sees nothing.
    let h2 = client_config(&ca, &[b"h2", b"http/1.1"]);
    let hits = up.hits.load(Ordering::SeqCst);
    let r = get(gw.https, "acme.aggios.test", "/api/x", &[], h2.clone())
        .await
        .expect("h2 request");
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "missing_token");
    // Another tenant's token on this tenant's host: refused at the edge as well.
    let bearer = Token::new(SECRET, "other").bearer();
    let r = get(
        gw.https,
        "acme.aggios.test",
        "/api/x",
        &[("authorization", &bearer)],
        h2.clone(),
    )
    .await
    .expect("h2 request");
    assert_eq!(r.status, 403);
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        hits,
        "refused requests reached the upstream"
    );
    // A valid token over HTTP/2 goes through, with identity headers set by the gateway.
    let bearer = Token::new(SECRET, "acme").bearer();
    let r = get(
        gw.https,
        "acme.aggios.test",
        "/api/x",
        &[("authorization", &bearer), ("x-tenant-id", "spoofed")],
        h2.clone(),
    )
    .await
    .expect("h2 request");
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-tenant-id"], json!(["acme"]));
    assert_eq!(r.json()["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(up.hits.load(Ordering::SeqCst), hits + 1);

    // redirect_https: 308 on HTTP, served on HTTPS.
    let r = gw.get("login.example.test", "/sign-in?next=%2F").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://login.example.test/sign-in?next=%2F")
    );

    // A name no certificate covers (and no default): refused at the handshake, counted.
    let before = gw
        .metric("gateway_tls_handshake_refusals_total{reason=\"unknown_name\"}")
        .await;
    let err = connect(gw.https, "elsewhere.example.org", h1.clone())
        .await
        .err()
        .expect("the handshake must fail");
    assert!(err.contains("handshake"), "{err}");
    // One label only under a wildcard.
    assert!(connect(gw.https, "a.b.aggios.test", h1.clone())
        .await
        .is_err());
    eventually("refusals counted", || async {
        gw.metric("gateway_tls_handshake_refusals_total{reason=\"unknown_name\"}")
            .await
            >= before + 2.0
    })
    .await;
    // The listing shows what is served.
    let (status, body) = gw.admin_get("/api/certificates").await;
    assert_eq!(status, 200);
    let listing: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        listing["certificates"][0]["names"],
        json!(["*.aggios.test", "login.example.test"])
    );
    assert_eq!(listing["certificates"][0]["source"], "file");
    assert!(
        gw.metric("gateway_tls_certificate_expiry_timestamp_seconds{domain=\"*.aggios.test\"}")
            .await
            > 0.0
    );
}

#[tokio::test]
async fn certificate_files_are_replaced_live_without_dropping_connections() {
    let first = tempfile::tempdir().expect("tempdir");
    let ca1 = dev_certs(first.path(), &["*.aggios.test"]);
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(&config(&up, first.path(), ""), ENV).await;
    let h1 = client_config(&ca1, &[b"http/1.1"]);
    let before = connect(gw.https, "acme.aggios.test", h1.clone())
        .await
        .expect("handshake");
    // A keep-alive connection opened before the reload.
    let conn = connect(gw.https, "acme.aggios.test", h1.clone())
        .await
        .expect("handshake");
    let (mut sender, c) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn.stream))
            .await
            .expect("h1");
    tokio::spawn(c);
    let req = || {
        hyper::Request::builder()
            .uri("/k")
            .header("host", "acme.aggios.test")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request")
    };
    assert_eq!(
        sender.send_request(req()).await.expect("first").status(),
        200
    );

    // A new certificate from another CA: the next handshake serves it.
    let second = tempfile::tempdir().expect("tempdir");
    let ca2 = dev_certs(second.path(), &["*.aggios.test"]);
    gw.rewrite(&config(&up, second.path(), ""));
    let h1_new = client_config(&ca2, &[b"http/1.1"]);
    eventually("the new certificate served", || {
        let cfg = h1_new.clone();
        let old = before.serial.clone();
        async move {
            matches!(connect(gw.https, "acme.aggios.test", cfg).await, Ok(c) if c.serial != old)
        }
    })
    .await;
    // A client with no session to resume, trusting only the old CA, is refused now.
    assert!(
        connect(
            gw.https,
            "acme.aggios.test",
            client_config(&ca1, &[b"http/1.1"])
        )
        .await
        .is_err(),
        "the old certificate is still served"
    );
    // The connection made before the reload keeps working.
    sender.ready().await.expect("still open");
    assert_eq!(
        sender
            .send_request(req())
            .await
            .expect("after reload")
            .status(),
        200
    );
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_at_the_deadline() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = dev_certs(certs.path(), &["*.aggios.test"]);
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(
        &config(&up, certs.path(), "handshake_timeout = \"1s\""),
        ENV,
    )
    .await;
    let h1 = client_config(&ca, &[b"http/1.1"]);
    // Silent connections and one that sends half a ClientHello record.
    let mut stalled = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", gw.https))
            .await
            .expect("connect");
        if i % 2 == 0 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await
                .expect("write");
        }
        stalled.push(s);
    }
    let start = Instant::now();
    // A well-behaved client is served meanwhile.
    let r = get(gw.https, "acme.aggios.test", "/ok", &[], h1.clone())
        .await
        .expect("served while others stall");
    assert_eq!(r.status, 200);
    for mut s in stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("unexpected {n} bytes to a stalled handshake"),
            Err(_) => panic!("stalled handshake still open after 15 s (deadline 1 s)"),
        }
    }
    let waited = start.elapsed();
    // Closed by the deadline, not by chance: not before it, and well before Pingora's own 60 s.
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "closed too late: {waited:?}"
    );
    eventually("timeouts counted", || async {
        gw.metric("gateway_tls_handshakes_total{result=\"timeout\"}")
            .await
            >= 20.0
    })
    .await;
}

#[tokio::test]
async fn websocket_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = dev_certs(certs.path(), &["*.aggios.test"]);
    let up = TestUpstream::start("ws");
    let gw = Gateway::start_with_env(&config(&up, certs.path(), ""), ENV).await;
    // WebSocket is an HTTP/1.1 upgrade: the client offers http/1.1 only, as browsers do for wss://.
    let conn = connect(
        gw.https,
        "chat.aggios.test",
        client_config(&ca, &[b"http/1.1"]),
    )
    .await
    .expect("handshake");
    let (mut ws, resp) =
        tokio_tungstenite::client_async("wss://chat.aggios.test/socket", conn.stream)
            .await
            .expect("wss handshake");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("tls {i}")))
            .await
            .expect("send");
        let reply = ws.next().await.expect("reply").expect("frame");
        assert_eq!(
            reply.into_text().expect("text").as_str(),
            format!("ws:tls {i}")
        );
    }
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn rsa_and_ecdsa_certificates_and_tls_versions() {
    // An RSA certificate (made with openssl: rcgen's ring backend cannot make RSA keys) beside the
    // ECDSA one; each name gets its own, over TLS 1.2 and 1.3.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dev_certs(dir.path(), &["*.aggios.test"]);
    let d = dir.path();
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:rsa.example.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=rsa-test-ca -keyout rsa-ca.key -out rsa-ca.crt",
        "req -newkey rsa:2048 -nodes -subj /CN=rsa.example.test -keyout rsa.key -out rsa.csr",
        "x509 -req -in rsa.csr -CA rsa-ca.crt -CAkey rsa-ca.key -CAcreateserial -days 2 -extfile ext.cnf -out rsa.crt",
    ] {
        openssl(d, &args.split(' ').collect::<Vec<_>>());
    }
    let up = TestUpstream::start("u");
    let body = format!(
        "{}[[tls.certificates]]\ncert = \"{d}/rsa.crt\"\nkey = \"{d}/rsa.key\"\n\n[[routes]]\nname = \"rsa\"\nhosts = [\"rsa.example.test\"]\nupstream = \"u\"\n",
        config(&up, dir.path(), ""),
        d = dir.path().display()
    );
    let gw = Gateway::start_with_env(&body, ENV).await;
    let rsa_root = std::fs::read(dir.path().join("rsa-ca.crt")).expect("rsa CA");
    for versions in [
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    ] {
        for (host, root) in [("rsa.example.test", &rsa_root), ("acme.aggios.test", &ca)] {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(root) {
                roots.add(c.expect("pem")).expect("root");
            }
            let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let r = get(gw.https, host, "/", &[], std::sync::Arc::new(cfg))
                .await
                .unwrap_or_else(|e| panic!("{host} over {versions:?}: {e}"));
            assert_eq!(r.status, 200, "{host}");
        }
    }
    // TLS 1.1 is refused by the gateway itself (the client is allowed to offer it).
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", gw.https)])
        .args([
            "-servername",
            "acme.aggios.test",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a TLS 1.1 handshake succeeded: {said}"
    );
    assert!(
        said.contains("alert handshake failure") || said.contains("alert protocol version"),
        "not refused by the server: {said}"
    );
}
