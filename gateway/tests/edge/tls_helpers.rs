//! TLS clients for the https entrypoint, and a real ACME server (Debian's pebble) with its DNS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::helpers::{free_port, DEADLINE};

/// A client config trusting only the PEM roots given, offering `alpn`. Sessions are never resumed, so
/// every connection sees the certificate served at that moment.
pub fn client_config(roots_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem) {
        roots.add(c.expect("root PEM")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Like [`client_config`], presenting the client certificate `cert_pem` (chain) with `key_pem`, and
/// resuming sessions when `resume` (each config keeps its own session cache).
pub fn client_config_with_cert(
    roots_pem: &[u8],
    alpn: &[&[u8]],
    cert_pem: &str,
    key_pem: &str,
    resume: bool,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem) {
        roots.add(c.expect("root PEM")).expect("add root");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("client chain");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// One verified TLS connection: what the handshake negotiated.
pub struct TlsConn {
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
    pub alpn: Option<Vec<u8>>,
    /// Serial of the leaf the server presented (hex, as x509-parser prints it).
    pub serial: String,
    /// The session was resumed (no certificate exchanged in this handshake).
    pub resumed: bool,
}

/// Connects to `port` with SNI `sni`; `Err` carries the handshake error.
pub async fn connect(
    port: u16,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsConn, String> {
    connect_from([127, 0, 0, 1], &[], port, sni, config).await
}

/// Like [`connect`], from the loopback address `source`, writing `prelude` (a PROXY protocol header)
/// before the handshake.
pub async fn connect_from(
    source: [u8; 4],
    prelude: &[u8],
    port: u16,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsConn, String> {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind: {e}"))?;
    let mut tcp: TcpStream = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(prelude)
        .await
        .map_err(|e| format!("prelude: {e}"))?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = stream.get_ref();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no peer certificate")?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let serial = x509.raw_serial_as_string();
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok(TlsConn {
        stream,
        alpn,
        serial,
        resumed,
    })
}

/// A response over TLS, with the protocol version it came on.
#[derive(Debug)]
pub struct TlsResp {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub serial: String,
}

impl TlsResp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The edge's error code (`error.code` of the JSON body), or the body when it has none.
    pub fn error_code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// One GET over a new TLS connection, HTTP/2 when ALPN chose it, else HTTP/1.1.
pub async fn get(
    port: u16,
    sni: &str,
    path: &str,
    headers: &[(&str, &str)],
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsResp, String> {
    get_from([127, 0, 0, 1], &[], port, sni, path, headers, config).await
}

/// Like [`get`], over a connection from `source` that starts with `prelude` (see [`connect_from`]).
pub async fn get_from(
    source: [u8; 4],
    prelude: &[u8],
    port: u16,
    sni: &str,
    path: &str,
    headers: &[(&str, &str)],
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsResp, String> {
    let conn = connect_from(source, prelude, port, sni, config).await?;
    request_on(conn, sni, path, headers).await
}

/// One GET for `host` (which may differ from the connection's SNI name) over `conn`.
pub async fn request_on(
    conn: TlsConn,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<TlsResp, String> {
    let serial = conn.serial.clone();
    let h2 = conn.alpn.as_deref() == Some(b"h2");
    let io = TokioIo::new(conn.stream);
    let mut req = Request::builder().uri(format!("https://{host}{path}"));
    if !h2 {
        req = req.header("host", host);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = if h2 {
        let (mut sender, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(c);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, c) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(c);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(TlsResp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
        serial,
    })
}

/// A test CA that issues server and client certificates.
pub struct Pki {
    pub pem: String,
    pub key_pem: String,
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA");
        Pki {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses) with common name `cn`: (cert PEM, key PEM).
    pub fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate (EKU clientAuth) with common name `cn` and the URI SANs `uris`, valid
    /// from `not_before` to `not_after` (Unix seconds), with serial `serial`: (cert PEM, key PEM, DER).
    pub fn client(
        &self,
        cn: &str,
        uris: &[&str],
        (not_before, not_after): (i64, i64),
        serial: u64,
    ) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Partner, Inc.");
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).expect("URI")))
            .collect();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).expect("time");
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).expect("time");
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// A CRL of this CA revoking the serials `revoked`, as PEM.
    pub fn crl(&self, revoked: &[u64]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("CRL")
            .pem()
            .expect("CRL PEM")
    }

    /// Writes the CA's PEM into `dir/name`; returns the path.
    pub fn write(&self, dir: &std::path::Path, name: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).expect("write CA");
        path.display().to_string()
    }
}

/// Runs `gateway validate` on `text` written to `dir/gateway.toml` and asserts that it fails with each
/// `(place, message)`: a line `file:line:col: …message…` where `line:col` is where `place` first
/// occurs in `text`.
pub fn assert_refused_at(dir: &Path, text: &str, expected: &[(String, &str)]) {
    let config = dir.join("gateway.toml");
    std::fs::write(&config, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    for (place, message) in expected {
        let (offset, _) = text.match_indices(place.as_str()).next().expect(place);
        let line = text[..offset].matches('\n').count() + 1;
        let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        let want = format!("{}:{line}:{col}: ", config.display());
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(message)),
            "no `{want}…{message}` in:\n{stderr}"
        );
    }
}

/// Runs `gateway certs dev` into `dir` for `names`; returns the CA's PEM.
pub fn dev_certs(dir: &Path, names: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["certs", "dev", "--out"]).arg(dir);
    for n in names {
        cmd.args(["--domain", n]);
    }
    let out = cmd.output().expect("run gateway certs dev");
    assert!(
        out.status.success(),
        "certs dev failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join("dev-ca.crt")).expect("dev CA")
}

/// A pebble ACME server with pebble-challtestsrv as its DNS (every name resolves to 127.0.0.1), whose
/// validation connects to the given gateway ports. Both processes are killed on drop.
pub struct Pebble {
    pub dir: tempfile::TempDir,
    pub port: u16,
    management: u16,
    /// The CA the tests made for pebble's own HTTPS endpoint (the gateway's `ca_root`).
    pub endpoint_ca: PathBuf,
    pebble: Option<Child>,
    /// pebble-challtestsrv, unless another DNS server answers for pebble.
    dns: Option<Child>,
    config: PathBuf,
    dns_port: u16,
    /// pebble-challtestsrv's management API (`/set-txt`, `/clear-txt`).
    pub dns_management: u16,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`; issued
    /// certificates are valid for `validity` seconds.
    pub async fn start(http_port: u16, tls_port: u16, validity: u64) -> Pebble {
        Self::start_with_dns(http_port, tls_port, validity, None).await
    }

    /// Like [`Pebble::start`], requiring External Account Binding with the one key `(kid, hmac)`.
    pub async fn start_with_eab(http_port: u16, tls_port: u16, kid: &str, hmac: &str) -> Pebble {
        Self::start_full(http_port, tls_port, 3600, None, Some((kid, hmac))).await
    }

    /// Like [`Pebble::start`]; with `dns`, pebble resolves through that server (port on 127.0.0.1)
    /// instead of pebble-challtestsrv.
    pub async fn start_with_dns(
        http_port: u16,
        tls_port: u16,
        validity: u64,
        dns: Option<u16>,
    ) -> Pebble {
        Self::start_full(http_port, tls_port, validity, dns, None).await
    }

    async fn start_full(
        http_port: u16,
        tls_port: u16,
        validity: u64,
        dns: Option<u16>,
        eab: Option<(&str, &str)>,
    ) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        // Pebble's own endpoint needs a certificate; Debian's package ships none.
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble endpoint test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
        let endpoint_ca = dir.path().join("endpoint-ca.pem");
        std::fs::write(&endpoint_ca, ca_cert.pem()).expect("write");
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).expect("write");
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).expect("write");
        let port = free_port();
        let management = free_port();
        let config = dir.path().join("pebble.json");
        let json = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": eab.is_some(),
                "externalAccountMACKeys": eab
                    .map(|(kid, hmac)| serde_json::json!({ kid: hmac }))
                    .unwrap_or_else(|| serde_json::json!({})),
                "certificateValidityPeriod": validity,
            }
        });
        std::fs::write(&config, json.to_string()).expect("write");
        let dns_port = dns.unwrap_or_else(free_port);
        let dns_management = free_port();
        let dns = dns.is_none().then(|| {
            Command::new("pebble-challtestsrv")
                .args([
                    "-dns01",
                    &format!("127.0.0.1:{dns_port}"),
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    &format!("127.0.0.1:{dns_management}"),
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                ])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.path().join("dns.log")).expect("log"))
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn pebble-challtestsrv (Debian package pebble)")
        });
        let mut p = Pebble {
            dir,
            port,
            management,
            endpoint_ca,
            pebble: None,
            dns,
            config,
            dns_port,
            dns_management,
        };
        // The DNS server is up once its management port answers.
        let start = Instant::now();
        while let Some(child) = p.dns.as_mut() {
            if TcpStream::connect(("127.0.0.1", dns_management))
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("pebble-challtestsrv exited: {status}");
            }
            assert!(
                start.elapsed() < DEADLINE,
                "pebble-challtestsrv did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p.spawn_pebble().await;
        p
    }

    async fn spawn_pebble(&mut self) {
        let child = Command::new("pebble")
            .args(["-config"])
            .arg(&self.config)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join("pebble.log")).expect("log"))
            .stderr(std::fs::File::create(self.dir.path().join("pebble.err")).expect("log"))
            .spawn()
            .expect("spawn pebble (Debian package pebble)");
        self.pebble = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                start.elapsed() < DEADLINE,
                "pebble did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// Pebble's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("pebble.err")).unwrap_or_default()
    }

    /// Stops pebble (the CA becomes unreachable); [`Pebble::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn_pebble().await;
    }

    /// The PEM root that signs pebble's certificates (it changes with every pebble start).
    pub async fn issuing_root(&self) -> Vec<u8> {
        let config = client_config(
            &std::fs::read(&self.endpoint_ca).expect("endpoint CA"),
            &[b"http/1.1"],
        );
        let resp = get(self.management, "localhost", "/roots/0", &[], config)
            .await
            .expect("pebble management /roots/0");
        assert_eq!(resp.status, 200);
        resp.body.to_vec()
    }

    /// Makes pebble's DNS answer `addr` for `host` (an address where nothing listens fails validation).
    pub async fn add_a(&self, host: &str, addr: &str) {
        let body = serde_json::json!({ "host": host, "addresses": [addr] }).to_string();
        let r = crate::helpers::send(
            self.dns_management,
            "POST",
            "127.0.0.1",
            "/add-a",
            &[("content-type", "application/json")],
            bytes::Bytes::from(body),
        )
        .await;
        assert_eq!(r.status, 200, "challtestsrv /add-a: {:?}", r.body);
    }

    /// How many orders pebble has received, from its log.
    pub fn orders(&self) -> usize {
        self.log().matches("POST /order-plz").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut d) = self.dns.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// An authoritative Knot DNS server for one zone on a loopback port, accepting RFC 2136 updates
/// signed with one TSIG key (hmac-sha256). Killed on drop.
pub struct Knot {
    pub port: u16,
    /// The TSIG secret, base64 (as the gateway reads it).
    pub secret: String,
    pub key_name: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl Knot {
    /// A zone whose every name answers 127.0.0.1 (`* A 127.0.0.1`).
    pub async fn start(zone: &str) -> Knot {
        Self::start_with(zone, "* A 127.0.0.1\n").await
    }

    /// A zone with `records` (zone-file lines relative to the origin) besides its SOA and NS.
    pub async fn start_with(zone: &str, records: &str) -> Knot {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let port = free_port();
        let secret = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            (0..32).map(|_| fastrand::u8(..)).collect::<Vec<u8>>(),
        );
        let key_name = "acme-key".to_string();
        std::fs::write(
            d.join(format!("{zone}.zone")),
            format!(
                "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n@ NS ns1.{zone}.\nns1 A 127.0.0.1\n{records}"
            ),
        )
        .expect("zone file");
        std::fs::write(
            d.join("knot.conf"),
            format!(
                "server:\n    listen: 127.0.0.1@{port}\n    rundir: {dir}\n\ndatabase:\n    storage: {dir}\n\nlog:\n  - target: stderr\n    any: info\n\nkey:\n  - id: {key_name}\n    algorithm: hmac-sha256\n    secret: {secret}\n\nacl:\n  - id: acme-update\n    key: {key_name}\n    action: update\n\nzone:\n  - domain: {zone}\n    storage: {dir}\n    file: {zone}.zone\n    acl: acme-update\n    zonefile-sync: -1\n",
                dir = d.display()
            ),
        )
        .expect("knot.conf");
        let child = Command::new("knotd")
            .arg("-c")
            .arg(d.join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("knot.log")).expect("log"))
            .spawn()
            .expect("spawn knotd (Debian package knot)");
        let mut k = Knot {
            port,
            secret,
            key_name,
            dir,
            child,
        };
        let start = Instant::now();
        while k.try_query("SOA", zone).is_none_or(|soa| soa.is_empty()) {
            if let Ok(Some(status)) = k.child.try_wait() {
                panic!("knotd exited ({status}): {}", k.log());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "knotd did not answer: {}",
                k.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        k
    }

    /// `kdig +short` of one record type.
    /// The records `kdig +short` gets for `name`: empty means the server answered none. A query that
    /// gets no answer at all (kdig missing, the server down, a timeout) fails the test instead, so that
    /// "no record" is never "could not ask".
    pub fn query(&self, rtype: &str, name: &str) -> String {
        self.try_query(rtype, name).unwrap_or_else(|| {
            panic!(
                "kdig {rtype} {name} got no answer from 127.0.0.1:{}: {}",
                self.port,
                self.log()
            )
        })
    }

    /// Like [`Knot::query`], `None` when the server gave no answer (while it starts).
    pub fn try_query(&self, rtype: &str, name: &str) -> Option<String> {
        let out = Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                rtype,
                name,
                "+short",
                "+timeout=5",
                "+retry=2",
            ])
            .output()
            .expect("run kdig (Debian knot-dnsutils)");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        (out.status.success() && !stdout.contains(";;") && !stderr.contains(";;")).then_some(stdout)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default()
    }

    /// Sends one signed dynamic update (`knsupdate`, Debian knot-dnsutils) of `zone` with `lines`
    /// (`update add NAME TTL TYPE DATA` / `update delete NAME [TYPE [DATA]]`); panics if refused.
    pub fn update(&self, zone: &str, lines: &[&str]) {
        use std::io::Write;
        let mut child = Command::new("knsupdate")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn knsupdate (Debian package knot-dnsutils)");
        let script = format!(
            "server 127.0.0.1 {}\nzone {zone}.\nkey hmac-sha256:{}:{}\n{}\nsend\nquit\n",
            self.port,
            self.key_name,
            self.secret,
            lines.join("\n")
        );
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write knsupdate script");
        let out = child.wait_with_output().expect("knsupdate");
        assert!(
            out.status.success(),
            "knsupdate failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stops the server (the gateway's lookups then time out).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter with aioquic (`H3_PYTHON`, which `scripts/test.sh` exports).
fn h3_python() -> String {
    std::env::var("H3_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A command running `tests/h3/{script}` with the aioquic interpreter.
fn h3_script(script: &str) -> tokio::process::Command {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/h3")
        .join(script);
    let mut cmd = tokio::process::Command::new(h3_python());
    cmd.arg(path);
    cmd
}

/// Runs an HTTP/3 test client with `input` on its stdin; its one JSON report, within `limit`.
async fn run_h3_script(
    mut cmd: tokio::process::Command,
    input: String,
    limit: Duration,
) -> serde_json::Value {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the HTTP/3 client (H3_PYTHON with aioquic; scripts/test.sh installs it)");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.as_bytes())
            .await
            .expect("write requests");
    }
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect("the HTTP/3 client did not end")
        .expect("HTTP/3 client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "HTTP/3 client: {e}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Sends `requests` over `connections` QUIC connections at once (each sends them all, in order) with
/// a real HTTP/3 client (Python aioquic, `tests/h3/client.py`), for SNI `server_name`, trusting the
/// PEM CA file `ca`; returns the client's report, one entry per connection.
pub async fn h3_requests(
    port: u16,
    server_name: &str,
    ca: &std::path::Path,
    requests: &serde_json::Value,
    connections: usize,
) -> Vec<serde_json::Value> {
    let mut cmd = h3_script("client.py");
    cmd.args([&port.to_string(), server_name])
        .arg(ca)
        .args(["--connections", &connections.to_string()]);
    let report = run_h3_script(cmd, requests.to_string(), DEADLINE * 2).await;
    report["connections"]
        .as_array()
        .expect("connections")
        .clone()
}

/// What `tests/h3/early.py` is asked to do: resume with a session ticket (0-RTT when the ticket
/// allows it), replay its first flight from other sockets, and hold every answer until `hold_until`
/// exists (then finish the handshake with `resume`, or give up).
pub struct EarlyFlight<'a> {
    pub ticket: bool,
    /// Replays sent once the server has answered the original flight.
    pub replays: usize,
    /// Replays sent once `replay_after` exists.
    pub late_replays: Option<(usize, &'a std::path::Path)>,
    pub hold_until: &'a std::path::Path,
    pub resume: bool,
}

/// Runs `tests/h3/early.py` (see [`EarlyFlight`]) for `acme.aggios.test` with `requests`; returns its
/// report once it ends (the caller creates `hold_until` meanwhile).
pub fn h3_early_flight(
    port: u16,
    ca: &std::path::Path,
    requests: &serde_json::Value,
    flight: &EarlyFlight<'_>,
) -> tokio::task::JoinHandle<serde_json::Value> {
    let mut cmd = h3_script("early.py");
    cmd.args([&port.to_string(), "acme.aggios.test"])
        .arg(ca)
        .arg("--hold-until")
        .arg(flight.hold_until)
        .args(["--replays", &flight.replays.to_string()])
        .args(["--then", if flight.resume { "resume" } else { "exit" }]);
    if flight.ticket {
        cmd.arg("--ticket");
    }
    if let Some((n, after)) = flight.late_replays {
        cmd.args(["--late-replays", &n.to_string()])
            .arg("--replay-after")
            .arg(after);
    }
    tokio::spawn(run_h3_script(cmd, requests.to_string(), DEADLINE * 4))
}
