//! OpenTelemetry across the edge: the real `gateway` and `backend` binaries export to a local OTLP/HTTP
//! receiver (this test), and one login carries one trace: the client's span → the gateway's span → the
//! backend's request span → its database spans, each the parent of the next.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::e2e::{free_port, gateway_bin};
use crate::helpers::*;

/// One received span: service, name, ids (hex), and its attributes as text.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    /// Linked spans: (trace id, span id), hex.
    links: Vec<(String, String)>,
    attributes: HashMap<String, String>,
}

/// A local OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
async fn receiver() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let store = spans.clone();
    let port = http_sink(move |_, body| {
        if let Ok(export) = ExportTraceServiceRequest::decode(body) {
            let mut out = store.lock().unwrap_or_else(|p| p.into_inner());
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push(Received {
                            service: service.clone(),
                            name: s.name.clone(),
                            trace_id: hex::encode(&s.trace_id),
                            span_id: hex::encode(&s.span_id),
                            parent: hex::encode(&s.parent_span_id),
                            links: s
                                .links
                                .iter()
                                .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                                .collect(),
                            attributes: s
                                .attributes
                                .iter()
                                .map(|kv| {
                                    (
                                        kv.key.clone(),
                                        format!("{:?}", kv.value.as_ref().map(|v| &v.value)),
                                    )
                                })
                                .collect(),
                        });
                    }
                }
            }
        }
    })
    .await;
    (port, spans)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` accepts; on failure, shows the process's log.
async fn wait_port(port: u16, log: &std::path::Path) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not listening on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_login_is_one_trace_from_the_client_through_the_gateway_and_backend_to_postgres() {
    let (otlp, spans) = receiver().await;
    // The database, migrated, with a tenant and a user (the in-process app is only used for set-up).
    let app = TestApp::spawn().await;
    app.tenant_with_user("traced", "tess@traced.test", "member")
        .await;

    let backend_port = free_port();
    let storage = tempfile::tempdir().expect("tempdir");
    let _backend = Proc(
        Command::new(env!("CARGO_BIN_EXE_backend"))
            .arg("serve")
            .env("DATABASE_URL", app_url(&app.db_name))
            .env("REDIS_URL", redis_url())
            .env(
                "JWT_SECRET",
                std::str::from_utf8(TEST_JWT_SECRET).expect("utf8"),
            )
            .env("BACKEND_LISTEN", format!("127.0.0.1:{backend_port}"))
            .env(
                "BACKEND_INTERNAL_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("STORAGE_DIR", storage.path())
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp}"),
            )
            .env("MIGRATE_ON_START", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(storage.path().join("backend.log")).expect("log"))
            .spawn()
            .expect("backend binary"),
    );
    wait_port(backend_port, &storage.path().join("backend.log")).await;

    let gw_port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[entrypoints]\nhttp = \"127.0.0.1:{gw_port}\"\nadmin = \"127.0.0.1:{}\"\n\n\
             [tenancy]\nbase_domains = [\"aggios.app\"]\n\n\
             [forwarding]\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
             [tracing]\notlp_endpoint = \"http://127.0.0.1:{otlp}\"\n\n\
             [[upstreams]]\nname = \"backend\"\nservers = [\"127.0.0.1:{backend_port}\"]\n\n\
             [auth.jwt]\nsecret_env = \"OTEL_TEST_JWT\"\n\n\
             [[routes]]\nname = \"login\"\nhosts = [\"*.aggios.app\"]\npath_prefix = \"/api/auth/login\"\nupstream = \"backend\"\n\n\
             [[routes]]\nname = \"api\"\nhosts = [\"*.aggios.app\"]\npath_prefix = \"/api\"\nauth = \"jwt_tenant\"\nupstream = \"backend\"\n",
            free_port()
        ),
    )
    .expect("gateway config");
    let _gateway = Proc(
        Command::new(gateway_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env(
                "OTEL_TEST_JWT",
                std::str::from_utf8(TEST_JWT_SECRET).expect("utf8"),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("gateway.log")).expect("log"))
            .spawn()
            .expect("gateway binary"),
    );
    wait_port(gw_port, &dir.path().join("gateway.log")).await;

    // The client's own trace: the gateway continues it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw_port))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            hyper::Request::post("/api/auth/login")
                .header("host", "traced.aggios.app")
                .header("content-type", "application/json")
                .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
                .body(Full::new(Bytes::from(
                    serde_json::json!({ "email": "tess@traced.test", "password": PASSWORD })
                        .to_string(),
                )))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let access = serde_json::from_slice::<serde_json::Value>(&body).expect("json")["access_token"]
        .as_str()
        .expect("access token")
        .to_string();

    // Wait for the chain: gateway ← backend request ← database calls, all in the client's trace.
    let start = Instant::now();
    let (gw, be, db) = loop {
        let got: Vec<Received> = spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let gw = got
            .iter()
            .find(|s| s.service.contains("aggios-edge-gateway") && s.parent == client_span)
            .cloned();
        let be = gw.as_ref().and_then(|g| {
            got.iter()
                .find(|s| s.service.contains("aggios-edge-backend") && s.parent == g.span_id)
                .cloned()
        });
        let db: Vec<Received> = be
            .as_ref()
            .map(|b| {
                got.iter()
                    .filter(|s| s.parent == b.span_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let (Some(gw), Some(be), false) = (gw, be, db.is_empty()) {
            if db.iter().any(|s| s.name == "users.by_email") {
                break (gw, be, db);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no complete chain in the trace; received: {:#?}",
            spans.lock().unwrap_or_else(|p| p.into_inner())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The gateway's span names the route, tenant, status and upstream timing.
    assert_eq!(gw.name, "POST login");
    let attr = |s: &Received, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    assert!(attr(&gw, "http.route").contains("login"), "{gw:?}");
    assert!(attr(&gw, "aggios.tenant").contains("traced"), "{gw:?}");
    assert!(
        attr(&gw, "http.response.status_code").contains("200"),
        "{gw:?}"
    );
    assert!(
        attr(&gw, "aggios.upstream_ms").contains("DoubleValue"),
        "{gw:?}"
    );
    // The backend's request span, and its database calls as children.
    assert_eq!(be.name, "POST auth_login", "{be:?}");
    assert!(
        attr(&be, "http.response.status_code").contains("200"),
        "{be:?}"
    );
    let names: Vec<&str> = db.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"tenants.by_host"), "{names:?}");
    assert!(
        db.iter()
            .all(|s| attr(s, "db.system").contains("postgresql")),
        "{db:?}"
    );

    // A file upload, without a client trace: the gateway starts one, and the object-storage call is a
    // child of the backend's request span.
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(
        tokio::net::TcpStream::connect(("127.0.0.1", gw_port))
            .await
            .expect("connect"),
    ))
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let put = sender
        .send_request(
            hyper::Request::put("/api/files/notes/traced.txt")
                .header("host", "traced.aggios.app")
                .header("authorization", format!("Bearer {access}"))
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(b"hello")))
                .expect("request"),
        )
        .await
        .expect("response");
    assert!(put.status().is_success(), "{}", put.status());
    let start = Instant::now();
    loop {
        let got = spans.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let chain = got
            .iter()
            .find(|s| s.name == "storage put")
            .and_then(|put| {
                let req = got.iter().find(|s| s.span_id == put.parent)?;
                let edge = got.iter().find(|s| s.span_id == req.parent)?;
                Some((req.clone(), edge.clone(), put.trace_id.clone()))
            });
        if let Some((req, edge, trace)) = chain {
            assert!(req.service.contains("aggios-edge-backend"), "{req:?}");
            assert!(
                req.attributes
                    .get("aggios.tenant")
                    .is_some_and(|t| t.contains("traced")),
                "{req:?}"
            );
            assert!(edge.service.contains("aggios-edge-gateway"), "{edge:?}");
            assert_eq!(edge.name, "PUT api");
            assert!(
                edge.parent.is_empty() || edge.parent == "0000000000000000",
                "a new trace: {edge:?}"
            );
            assert_ne!(trace, trace_id);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no storage put span under the backend's request span: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a gateway with `[tracing]` (sampling `ratio`) exporting to `otlp`, its one route to a port
/// where nothing listens, sends one GET with `traceparent`, then stops it gracefully (which flushes
/// its spans) and returns once it has exited.
async fn one_traced_request(otlp: u16, ratio: f64, traceparent: &str) {
    let gw_port = free_port();
    let gone = crate::e2e::dead_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[entrypoints]\nhttp = \"127.0.0.1:{gw_port}\"\nadmin = \"127.0.0.1:{}\"\n\n\
             [server]\nshutdown_grace = \"5s\"\n\n\
             [tracing]\notlp_endpoint = \"http://127.0.0.1:{otlp}\"\nsample_ratio = {ratio:?}\n\n\
             [[upstreams]]\nname = \"gone\"\nservers = [\"127.0.0.1:{}\"]\n\n\
             [[routes]]\nname = \"r\"\nupstream = \"gone\"\n",
            free_port(),
            gone.port
        ),
    )
    .expect("gateway config");
    let mut gateway = Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("gateway.log")).expect("log"))
        .spawn()
        .expect("gateway binary");
    wait_port(gw_port, &dir.path().join("gateway.log")).await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw_port))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            hyper::Request::builder()
                .uri("/x")
                .header("host", "app.test")
                .header("traceparent", traceparent)
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let status = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let start = Instant::now();
    while gateway.try_wait().ok().flatten().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the gateway did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// #23 point 10: a client that is not a trusted proxy cannot force sampling with its `traceparent`'s
/// sampled flag (at `sample_ratio = 0` nothing of its trace is recorded), and its trace is not
/// continued: the gateway starts a new root and links the client's span. Before the fix the client's
/// flag decided, and the gateway's span joined the client's trace.
#[tokio::test]
async fn an_untrusted_clients_traceparent_is_linked_not_continued_and_forces_no_sampling() {
    let (otlp, spans) = receiver().await;
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let traceparent = format!("00-{client_trace}-{client_span}-01");

    one_traced_request(otlp, 0.0, &traceparent).await;
    let gateway_spans = |spans: &Arc<Mutex<Vec<Received>>>| {
        spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.service.contains("aggios-edge-gateway"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        gateway_spans(&spans).is_empty(),
        "the client's sampled flag forced a recording: {:?}",
        gateway_spans(&spans)
    );

    one_traced_request(otlp, 1.0, &traceparent).await;
    let start = Instant::now();
    let span = loop {
        if let Some(s) = gateway_spans(&spans).into_iter().next() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no gateway span arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(
        span.trace_id, client_trace,
        "the client's trace was continued"
    );
    assert_eq!(span.parent, "", "a new root: {span:?}");
    assert_eq!(
        span.links,
        vec![(client_trace.to_string(), client_span.to_string())],
        "the client's span is linked"
    );
}
