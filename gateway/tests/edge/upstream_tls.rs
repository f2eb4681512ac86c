//! TLS to upstreams (`protocol = "https"` / `"h2"`, `tls = { ca, sni, cert, key, verify }`): real TLS
//! upstreams that record what each handshake and request carried (SNI, ALPN, the client certificate,
//! resumption), so that each test asserts what the upstream saw, not only the status.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::helpers::*;
use crate::tls_helpers::{assert_refused_at, Pki};

/// What one request arrived with.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    version: hyper::Version,
    sni: Option<String>,
    alpn: Option<String>,
    /// The client certificate's subject, when one was presented.
    client: Option<String>,
}

/// An HTTPS (HTTP/1.1 and HTTP/2 by ALPN) upstream with a certificate that can be swapped while it runs.
struct TlsUpstream {
    addr: SocketAddr,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    handshakes: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(
    (cert, key): &(String, String),
    client_ca: Option<&Pki>,
) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                roots.add(c.expect("CA PEM")).expect("root");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

impl TlsUpstream {
    async fn start(config: Arc<rustls::ServerConfig>) -> TlsUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = Arc::new(Mutex::new(config));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (handshakes, resumed, failed) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (c, s, h, r, f) = (
            config.clone(),
            seen.clone(),
            handshakes.clone(),
            resumed.clone(),
            failed.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let current = c.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (s, h, r, f) = (s.clone(), h.clone(), r.clone(), f.clone());
                tokio::spawn(async move {
                    let Ok(tls) = tokio_rustls::TlsAcceptor::from(current).accept(tcp).await else {
                        f.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let conn = tls.get_ref().1;
                    if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    let sni = conn.server_name().map(str::to_string);
                    let alpn = conn
                        .alpn_protocol()
                        .map(|a| String::from_utf8_lossy(a).into_owned());
                    let client = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|leaf| {
                            x509_parser::parse_x509_certificate(leaf.as_ref())
                                .map(|(_, x)| x.subject().to_string())
                                .unwrap_or_default()
                        });
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        let seen = Seen {
                            path: req.uri().path().to_string(),
                            version: req.version(),
                            sni: sni.clone(),
                            alpn: alpn.clone(),
                            client: client.clone(),
                        };
                        async move {
                            let close = seen.path.starts_with("/close");
                            s.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
                            let mut resp = Response::builder().header("x-upstream", "tls");
                            if close {
                                resp = resp.header("connection", "close");
                            }
                            Ok::<_, std::convert::Infallible>(
                                resp.body(Full::new(Bytes::from_static(b"ok")))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            config,
            seen,
            handshakes,
            resumed,
            failed,
            task,
        }
    }

    fn set_config(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

/// An upstream over TLS and a route `/{name}/` to it (prefix stripped: the upstream sees the rest).
fn tls_upstream(name: &str, up: &TlsUpstream, protocol: &str, tls: &str, health: bool) -> String {
    let health = if health {
        "health = { path = \"/healthz\", interval = \"200ms\" }\n"
    } else {
        ""
    };
    format!(
        "[[upstreams]]\nname = \"{name}\"\nservers = [\"{}\"]\nprotocol = \"{protocol}\"\ntls = {{ {tls} }}\n{health}\n\
         [[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nstrip_prefix = true\nupstream = \"{name}\"\n\n",
        up.addr
    )
}

#[tokio::test]
async fn an_https_upstream_is_verified_by_its_ca_asked_by_its_name_and_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("internal test CA");
    let up = TlsUpstream::start(server_config(&pki.leaf("svc", &["svc.internal"]), None)).await;
    let ca = pki.write(dir.path(), "ca.pem");
    let gw = Gateway::start(&tls_upstream(
        "svc",
        &up,
        "https",
        &format!("ca = \"{ca}\", sni = \"svc.internal\""),
        true,
    ))
    .await;
    // Health checks go over the same TLS: the server is checked, by its name, and in rotation.
    eventually("a health check over TLS", || async {
        !up.seen("/healthz").is_empty()
    })
    .await;
    let check = &up.seen("/healthz")[0];
    assert_eq!(check.sni.as_deref(), Some("svc.internal"));
    assert_eq!(check.alpn.as_deref(), Some("http/1.1"));

    let r = send(gw.http, "GET", "x.test", "/svc/hello", &[], Bytes::new()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-upstream"), Some("tls"));
    let seen = up.seen("/hello");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].sni.as_deref(), Some("svc.internal"));
    assert_eq!(seen[0].alpn.as_deref(), Some("http/1.1"));
    assert_eq!(seen[0].version, hyper::Version::HTTP_11);
    assert_eq!(seen[0].client, None, "no client certificate was configured");

    // Each `/close…` answer closes the upstream connection: the next request makes a new one, which
    // resumes the TLS session (one client configuration per upstream keeps the session cache).
    for i in 0..4 {
        let r = send(
            gw.http,
            "GET",
            "x.test",
            &format!("/svc/close{i}"),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert!(
        up.resumed.load(Ordering::SeqCst) >= 2,
        "{} of {} handshakes resumed",
        up.resumed.load(Ordering::SeqCst),
        up.handshakes.load(Ordering::SeqCst)
    );
    let (_, routes) = gw.admin_get("/api/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).expect("json");
    let svc = &routes["upstreams"][0];
    assert_eq!(svc["protocol"], "https");
    assert_eq!(svc["tls"]["sni"], "svc.internal");
    assert_eq!(svc["tls"]["verify"], true);
}

#[tokio::test]
async fn verification_is_on_by_default_an_unknown_ca_or_a_wrong_name_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = Pki::new("our CA");
    let theirs = Pki::new("someone else's CA");
    let ca = ours.write(dir.path(), "ca.pem");
    // An impostor with a certificate for the right name from a CA we do not trust.
    let impostor =
        TlsUpstream::start(server_config(&theirs.leaf("svc", &["svc.internal"]), None)).await;
    // A genuine server of ours, asked under another name than its certificate's.
    let other = TlsUpstream::start(server_config(&ours.leaf("svc", &["svc.internal"]), None)).await;
    // The system's roots (no `ca`) do not trust a private CA either.
    let system =
        TlsUpstream::start(server_config(&ours.leaf("svc", &["svc.internal"]), None)).await;
    // Verification off: the impostor's certificate is taken (with a warning from validate).
    let unverified =
        TlsUpstream::start(server_config(&theirs.leaf("svc", &["svc.internal"]), None)).await;
    let body = [
        tls_upstream(
            "impostor",
            &impostor,
            "https",
            &format!("ca = \"{ca}\", sni = \"svc.internal\""),
            false,
        ),
        tls_upstream(
            "other",
            &other,
            "https",
            &format!("ca = \"{ca}\", sni = \"other.internal\""),
            false,
        ),
        tls_upstream("system", &system, "https", "sni = \"svc.internal\"", false),
        tls_upstream("unverified", &unverified, "https", "verify = false", false),
    ]
    .concat();
    let gw = Gateway::start(&body).await;
    for (name, up) in [
        ("impostor", &impostor),
        ("other", &other),
        ("system", &system),
    ] {
        let r = send(
            gw.http,
            "GET",
            "x.test",
            &format!("/{name}/secret"),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 502, "{name}: {:?}", r.body);
        assert!(
            up.failed.load(Ordering::SeqCst) >= 1,
            "{name}: no handshake was refused"
        );
        assert!(
            up.seen("/secret").is_empty(),
            "{name}: the request reached a server not verified"
        );
    }
    let r = send(
        gw.http,
        "GET",
        "x.test",
        "/unverified/secret",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // With no `sni` and a server given by address, the address is the name (no SNI is sent).
    assert_eq!(unverified.seen("/secret")[0].sni, None);

    let config = gw.config.clone();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("validate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("upstream `unverified`: tls.verify = false"),
        "no warning: {text}"
    );
}

#[tokio::test]
async fn mutual_tls_presents_the_configured_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_ca = Pki::new("server CA");
    let client_ca = Pki::new("client CA");
    let ca = server_ca.write(dir.path(), "ca.pem");
    let (cert, key) = client_ca.leaf("gateway.internal", &["gateway.internal"]);
    let (cert_path, key_path) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&cert_path, cert).expect("write");
    std::fs::write(&key_path, key).expect("write");
    let strict = TlsUpstream::start(server_config(
        &server_ca.leaf("svc", &["127.0.0.1"]),
        Some(&client_ca),
    ))
    .await;
    let body = [
        tls_upstream(
            "anonymous",
            &strict,
            "https",
            &format!("ca = \"{ca}\""),
            false,
        ),
        tls_upstream(
            "mtls",
            &strict,
            "https",
            &format!(
                "ca = \"{ca}\", cert = \"{}\", key = \"{}\"",
                cert_path.display(),
                key_path.display()
            ),
            true,
        ),
    ]
    .concat();
    let gw = Gateway::start(&body).await;
    let r = send(gw.http, "GET", "x.test", "/anonymous/a", &[], Bytes::new()).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert!(
        strict.seen("/a").is_empty(),
        "served without a client certificate"
    );
    let r = send(gw.http, "GET", "x.test", "/mtls/b", &[], Bytes::new()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = strict.seen("/b");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].client.as_deref(), Some("CN=gateway.internal"));
    // The server is named by its IP address (its certificate's IP SAN), health checks included.
    eventually("a health check with the client certificate", || async {
        strict
            .seen("/healthz")
            .iter()
            .any(|s| s.client.as_deref() == Some("CN=gateway.internal"))
    })
    .await;
}

#[tokio::test]
async fn h2_over_tls_speaks_http2_to_the_upstream_and_checks_it_in_http2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("internal test CA");
    let ca = pki.write(dir.path(), "ca.pem");
    let up = TlsUpstream::start(server_config(&pki.leaf("svc", &["svc.internal"]), None)).await;
    let gw = Gateway::start(&tls_upstream(
        "grpcish",
        &up,
        "h2",
        &format!("ca = \"{ca}\", sni = \"svc.internal\""),
        true,
    ))
    .await;
    eventually("an HTTP/2 health check", || async {
        up.seen("/healthz")
            .iter()
            .any(|s| s.version == hyper::Version::HTTP_2)
    })
    .await;
    for i in 0..3 {
        let r = send(
            gw.http,
            "GET",
            "x.test",
            &format!("/grpcish/s{i}"),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let seen = up.seen(&format!("/s{i}"));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].version, hyper::Version::HTTP_2);
        assert_eq!(seen[0].alpn.as_deref(), Some("h2"));
    }
}

#[tokio::test]
async fn a_reload_reads_the_certificate_files_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (Pki::new("old CA"), Pki::new("new CA"));
    let ca = old.write(dir.path(), "ca.pem");
    let up = TlsUpstream::start(server_config(&old.leaf("svc", &["svc.internal"]), None)).await;
    let body = tls_upstream(
        "svc",
        &up,
        "https",
        &format!("ca = \"{ca}\", sni = \"svc.internal\""),
        false,
    );
    let gw = Gateway::start(&body).await;
    let r = send(gw.http, "GET", "x.test", "/svc/close-1", &[], Bytes::new()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The upstream moves to the new CA, and so does the CA file: until a reload the gateway still
    // trusts the old CA it read (a new connection is refused) …
    up.set_config(server_config(&new.leaf("svc", &["svc.internal"]), None));
    new.write(dir.path(), "ca.pem");
    let r = send(gw.http, "GET", "x.test", "/svc/close-2", &[], Bytes::new()).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    // … and after it, the new one.
    gw.rewrite(&format!("{body}# reloaded\n"));
    eventually("the reload trusts the new CA", || async {
        send(gw.http, "GET", "x.test", "/svc/close-3", &[], Bytes::new())
            .await
            .status
            == 200
    })
    .await;
    assert!(!up.seen("/close-3").is_empty());
}

#[test]
fn validate_names_each_bad_tls_setting_at_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("a CA");
    let ca = pki.write(dir.path(), "ca.pem");
    let (cert, _) = pki.leaf("client", &["client.internal"]);
    let (_, other_key) = pki.leaf("other", &["other.internal"]);
    std::fs::write(dir.path().join("client.pem"), cert).expect("write");
    std::fs::write(dir.path().join("other.key"), other_key).expect("write");
    let d = dir.path().display();
    let text = format!(
        "[entrypoints]\nhttp = \"127.0.0.1:1\"\n\n\
         [[upstreams]]\nname = \"plain\"\nservers = [\"127.0.0.1:2\"]\ntls = {{ ca = \"{ca}\" }}\n\n\
         [[upstreams]]\nname = \"missing\"\nservers = [\"127.0.0.1:3\"]\nprotocol = \"https\"\ntls = {{ ca = \"{d}/nope.pem\" }}\n\n\
         [[upstreams]]\nname = \"half\"\nservers = [\"127.0.0.1:4\"]\nprotocol = \"https\"\ntls = {{ ca = \"{ca}\", cert = \"{d}/client.pem\" }}\n\n\
         [[upstreams]]\nname = \"mismatch\"\nservers = [\"127.0.0.1:5\"]\nprotocol = \"h2\"\ntls = {{ ca = \"{ca}\", cert = \"{d}/client.pem\", key = \"{d}/other.key\" }}\n\n\
         [[upstreams]]\nname = \"notca\"\nservers = [\"127.0.0.1:6\"]\nprotocol = \"https\"\ntls = {{ ca = \"{d}/other.key\", sni = \"bad name!\" }}\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"plain\"\n"
    );
    assert_refused_at(
        dir.path(),
        &text,
        &[
            (
                format!("{{ ca = \"{ca}\" }}"),
                "upstream `plain`: tls applies to protocol = \"https\" or \"h2\"",
            ),
            (format!("\"{d}/nope.pem\""), "cannot read tls.ca"),
            (
                format!("\"{d}/client.pem\" }}"),
                "tls.cert and tls.key go together",
            ),
            (
                format!("\"{d}/other.key\" }}"),
                "does not belong to the certificate",
            ),
            (
                format!("\"{d}/other.key\", sni"),
                "holds no PEM certificate",
            ),
            ("\"bad name!\"".to_string(), "is not a host name"),
        ],
    );
}
