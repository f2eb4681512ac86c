//! gRPC through the edge: a real gRPC server and client (Python grpcio, `tests/grpc/echo.py`) over h2c,
//! the edge's refusals as gRPC statuses (never a JSON body a gRPC client cannot read), `grpc-timeout`
//! honoured at the edge, and gRPC health checks (`grpc.health.v1`) taking a server out and back.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

const SECRET: &str = "grpc-test-secret-grpc-test-secret-01";

/// The Python interpreter with grpcio (`GRPC_PYTHON`, which `scripts/test.sh` exports).
fn python() -> String {
    std::env::var("GRPC_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/echo.py")
}

/// `echo.py server`: killed on drop.
struct GrpcServer {
    port: u16,
    child: tokio::process::Child,
}

impl GrpcServer {
    async fn start() -> GrpcServer {
        let port = free_port();
        let mut child = tokio::process::Command::new(python())
            .arg(script())
            .args(["server", &port.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "start the grpcio server (GRPC_PYTHON with grpcio; scripts/test.sh installs it)",
            );
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("the grpcio server never said ready");
        assert_eq!(ready.ok().flatten().as_deref(), Some("ready"));
        GrpcServer { port, child }
    }

    /// Calls and cancelled calls the server has seen (asked directly, not through the gateway).
    async fn count(&self) -> (u64, u64) {
        let v = call(self.port, "Count", "", None, None).await;
        let n: serde_json::Value =
            serde_json::from_str(v["responses"][0].as_str().expect("count")).expect("json");
        (
            n["calls"].as_u64().expect("calls"),
            n["cancelled"].as_u64().expect("cancelled"),
        )
    }

    async fn set_health(&self, status: &str) {
        let v = call(self.port, "SetHealth", status, None, None).await;
        assert_eq!(v["code"], "OK", "{v}");
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One call with `echo.py call` to 127.0.0.1:`port` for `:authority` `authority`, with a bearer `token`.
async fn call(
    port: u16,
    method: &str,
    arg: &str,
    authority: Option<&str>,
    token: Option<&str>,
) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(script())
        .args(["call", &format!("127.0.0.1:{port}"), method, arg])
        .env_remove("TOKEN")
        .env_remove("AUTHORITY");
    if let Some(a) = authority {
        cmd.env("AUTHORITY", a);
    }
    if let Some(t) = token {
        cmd.env("TOKEN", t);
    }
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("the call did not end")
        .expect("run echo.py call");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{method}: {e}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn config(server: &GrpcServer) -> String {
    format!(
        r#"[tenancy]
base_domains = ["aggios.app"]
reserved = ["api"]

[auth.jwt]
secret_env = "GW_SECRET"

[rate_limits.per_tenant]
key = "tenant"
limit = 1000
period = "60s"
overrides = {{ tiny = {{ limit = 1 }} }}

[[upstreams]]
name = "grpc"
servers = ["127.0.0.1:{}"]
protocol = "h2c"
health = {{ grpc = true, interval = "200ms", timeout = "2s" }}

[[routes]]
name = "echo"
hosts = ["*.aggios.app"]
path_prefix = "/test.Echo"
auth = "jwt_tenant"
rate_limits = ["per_tenant"]
grpc_web = true
upstream = "grpc"
"#,
        server.port
    )
}

#[tokio::test]
async fn grpc_calls_pass_with_trailers_and_streams_both_ways_and_grpc_health_decides_rotation() {
    let server = GrpcServer::start().await;
    let gw = Gateway::start_with_env(&config(&server), &[("GW_SECRET", SECRET)]).await;
    let token = Token::new(SECRET, "acme").sign();
    let host = Some("acme.aggios.app");
    let v = call(gw.http, "Unary", "hi", host, Some(&token)).await;
    assert_eq!(v["code"], "OK", "{v}");
    assert_eq!(v["responses"][0], "echo:hi");
    assert_eq!(v["trailers"]["x-trailer"], "kept", "trailers lost: {v}");
    let v = call(gw.http, "ServerStream", "5", host, Some(&token)).await;
    assert_eq!(v["code"], "OK", "{v}");
    assert_eq!(v["responses"].as_array().map(Vec::len), Some(5), "{v}");
    let v = call(gw.http, "ClientStream", "7", host, Some(&token)).await;
    assert_eq!(v["responses"][0], "7", "{v}");
    let v = call(gw.http, "Bidi", "4", host, Some(&token)).await;
    assert_eq!(
        v["responses"],
        serde_json::json!(["re:m0", "re:m1", "re:m2", "re:m3"]),
        "{v}"
    );

    // grpc.health.v1 says NOT_SERVING: the server leaves rotation (the call is refused UNAVAILABLE at
    // the edge, the server does not see it), and comes back when it says SERVING.
    server.set_health("NOT_SERVING").await;
    eventually("the server out of rotation", || async {
        call(gw.http, "Unary", "x", host, Some(&token)).await["code"] == "UNAVAILABLE"
    })
    .await;
    let (before, _) = server.count().await;
    let v = call(gw.http, "Unary", "x", host, Some(&token)).await;
    assert_eq!(v["code"], "UNAVAILABLE", "{v}");
    assert!(
        v["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("no_healthy_upstream")),
        "{v}"
    );
    assert_eq!(
        server.count().await.0,
        before,
        "the call reached the server"
    );
    server.set_health("SERVING").await;
    eventually("the server back in rotation", || async {
        call(gw.http, "Unary", "y", host, Some(&token)).await["code"] == "OK"
    })
    .await;
}

#[tokio::test]
async fn edge_refusals_of_grpc_calls_are_grpc_statuses_and_reach_no_server() {
    let server = GrpcServer::start().await;
    let gw = Gateway::start_with_env(&config(&server), &[("GW_SECRET", SECRET)]).await;
    let (before, _) = server.count().await;
    let acme = Some("acme.aggios.app");
    let other = Token::new(SECRET, "other").sign();
    let forged = Token::new("not-the-secret-not-the-secret-00001", "acme").sign();
    let tiny = Token::new(SECRET, "tiny").sign();
    let v = call(gw.http, "Unary", "x", acme, None).await;
    assert_eq!(v["code"], "UNAUTHENTICATED", "no token: {v}");
    assert!(
        v["details"].as_str().is_some_and(|d| d.contains(':')),
        "{v}"
    );
    let v = call(gw.http, "Unary", "x", acme, Some(&forged)).await;
    assert_eq!(v["code"], "UNAUTHENTICATED", "forged token: {v}");
    let v = call(gw.http, "Unary", "x", acme, Some(&other)).await;
    assert_eq!(
        v["code"], "PERMISSION_DENIED",
        "another tenant's token: {v}"
    );
    let v = call(gw.http, "Unary", "x", Some("tiny.aggios.app"), Some(&tiny)).await;
    assert_eq!(v["code"], "OK", "tiny's one call: {v}");
    let v = call(gw.http, "Unary", "x", Some("tiny.aggios.app"), Some(&tiny)).await;
    assert_eq!(v["code"], "RESOURCE_EXHAUSTED", "over tiny's limit: {v}");
    // The gateway's own fields stay in the head (a client can still read when to retry).
    assert!(
        v["initial"]["retry-after"].is_string() || v["trailers"]["retry-after"].is_string(),
        "{v}"
    );
    let (after, _) = server.count().await;
    assert_eq!(
        after,
        before + 1,
        "only tiny's allowed call reached the server"
    );
    // Metrics and the access log count each refusal with its own status, not the wire's 200.
    let series = |status: &str| {
        format!(r#"gateway_http_requests_total{{method="POST",route="echo",status="{status}"}}"#)
    };
    eventually("the refusals counted by their own status", || async {
        // Read without `metric()`, which fails on a series not there yet (counted after the answer).
        let (_, body) = gw.admin_get("/metrics").await;
        let value = |status: &str| {
            let series = series(status);
            body.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        value("401") == Some(2.0) && value("403") == Some(1.0) && value("429") == Some(1.0)
    })
    .await;
    eventually(
        "the access log says 401 for the calls without a valid token",
        || async {
            gw.access_log()
                .iter()
                .filter(|l| l["path"] == "/test.Echo/Unary" && l["status"] == 401)
                .count()
                == 2
        },
    )
    .await;
}

/// A raw HTTP/2 gRPC call (the `h2` crate) that does not cancel by itself at its deadline: the edge must.
#[tokio::test]
async fn the_edge_ends_a_call_at_its_grpc_timeout() {
    let server = GrpcServer::start().await;
    let gw = Gateway::start_with_env(&config(&server), &[("GW_SECRET", SECRET)]).await;
    let token = Token::new(SECRET, "acme").sign();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::builder()
        .method("POST")
        .uri("http://acme.aggios.app/test.Echo/Slow")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "500m")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("send");
    // Slow sleeps 8 s: a message frame holding "8".
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 1, b'8']), true)
        .expect("data");
    let t0 = Instant::now();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("no answer at all")
        .expect("response");
    let took = t0.elapsed();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let status = match headers.get("grpc-status") {
        Some(s) => s.to_str().expect("ascii").to_string(),
        None => {
            let mut body = response.into_body();
            while body.data().await.is_some() {}
            let trailers = body.trailers().await.expect("trailers").expect("some");
            trailers["grpc-status"].to_str().expect("ascii").to_string()
        }
    };
    assert_eq!(status, "4", "not DEADLINE_EXCEEDED: {headers:?}");
    // Answered at the deadline, long before the server's 8 s (generous for a loaded machine).
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    // … and the server's call was cancelled, not left to run.
    eventually("the server saw the call cancelled", || async {
        server.count().await.1 >= 1
    })
    .await;
}

/// One gRPC-Web call over HTTP/1.1, as a browser's grpc-web client makes it: (status, head, body).
async fn web_call(
    port: u16,
    method: &str,
    content_type: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h1");
    tokio::spawn(conn);
    let mut req = hyper::Request::post(format!("/test.Echo/{method}"))
        .header("host", "acme.aggios.app")
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header("accept", content_type);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(
            req.body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .expect("request"),
        )
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes().to_vec();
    (parts.status.as_u16(), parts.headers, body)
}

/// A gRPC message frame.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The frames of a gRPC-Web body: (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "truncated frame in {body:?}");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "bytes after the last frame: {body:?}");
    out
}

/// A `-text` body: base64 in 4-character groups, each decoded alone (padding may come mid-body).
fn unbase64(text: &[u8]) -> Vec<u8> {
    use base64::Engine;
    text.chunks(4)
        .flat_map(|g| {
            base64::engine::general_purpose::STANDARD
                .decode(g)
                .expect("base64 group")
        })
        .collect()
}

/// (data messages as text, trailers text)
fn messages_and_trailers(frames: &[(u8, Vec<u8>)]) -> (Vec<String>, String) {
    let data = frames
        .iter()
        .filter(|(f, _)| *f == 0)
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    let trailers: Vec<&(u8, Vec<u8>)> = frames.iter().filter(|(f, _)| *f == 0x80).collect();
    assert_eq!(trailers.len(), 1, "one trailers frame, last: {frames:?}");
    assert_eq!(frames.last().map(|f| f.0), Some(0x80), "trailers not last");
    (data, String::from_utf8_lossy(&trailers[0].1).into_owned())
}

#[tokio::test]
async fn grpc_web_calls_from_browsers_are_bridged_to_grpc_both_ways() {
    use base64::Engine;
    let server = GrpcServer::start().await;
    let gw = Gateway::start_with_env(&config(&server), &[("GW_SECRET", SECRET)]).await;
    let token = Token::new(SECRET, "acme").sign();

    // Binary: the message reaches the gRPC server (it answers it), and its trailers come back as the
    // body's last frame.
    let (status, head, body) = web_call(
        gw.http,
        "Unary",
        "application/grpc-web+proto",
        frame(0, b"hi"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(head["content-type"], "application/grpc-web+proto");
    let (data, trailers) = messages_and_trailers(&frames(&body));
    assert_eq!(data, ["echo:hi"]);
    assert!(trailers.contains("grpc-status:0\r\n"), "{trailers:?}");
    assert!(trailers.contains("x-trailer:kept\r\n"), "{trailers:?}");

    // A server stream: every message, then the trailers.
    let (_, _, body) = web_call(
        gw.http,
        "ServerStream",
        "application/grpc-web+proto",
        frame(0, b"3"),
        Some(&token),
    )
    .await;
    let (data, trailers) = messages_and_trailers(&frames(&body));
    assert_eq!(data, ["item-0", "item-1", "item-2"]);
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");

    // -text (grpc-web's default mode): base64 both ways.
    let request = base64::engine::general_purpose::STANDARD.encode(frame(0, b"text"));
    let (status, head, body) = web_call(
        gw.http,
        "Unary",
        "application/grpc-web-text",
        request.into_bytes(),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(head["content-type"], "application/grpc-web-text");
    let (data, trailers) = messages_and_trailers(&frames(&unbase64(&body)));
    assert_eq!(data, ["echo:text"]);
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");

    // A method the server lacks: its trailers-only answer passes as it is (status in the head).
    let (status, head, _) = web_call(
        gw.http,
        "Nope",
        "application/grpc-web+proto",
        frame(0, b"x"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(head["grpc-status"], "12", "{head:?}");

    // Refused at the edge: a gRPC-Web answer too, and the server sees nothing.
    let (calls, _) = server.count().await;
    let (status, head, body) = web_call(
        gw.http,
        "Unary",
        "application/grpc-web+proto",
        frame(0, b"x"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(head["grpc-status"], "16", "{head:?}");
    assert_eq!(head["content-type"], "application/grpc-web+proto");
    assert!(body.is_empty());
    // Not base64: refused at the edge as malformed.
    let (status, head, _) = web_call(
        gw.http,
        "Unary",
        "application/grpc-web-text",
        b"**not base64**".to_vec(),
        Some(&token),
    )
    .await;
    assert!(
        status == 400 || head.get("grpc-status").is_some_and(|s| s == "3"),
        "{status} {head:?}"
    );
    assert_eq!(
        server.count().await.0,
        calls,
        "a refused call reached the server"
    );
}

#[test]
fn grpc_web_needs_an_http2_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "[entrypoints]\nhttp = \"127.0.0.1:1\"\n\n\
                [[upstreams]]\nname = \"plain\"\nservers = [\"127.0.0.1:2\"]\n\n\
                [[routes]]\nname = \"web\"\nupstream = \"plain\"\ngrpc_web = true\n";
    crate::tls_helpers::assert_refused_at(
        dir.path(),
        text,
        &[("true".to_string(), "needs an HTTP/2 upstream")],
    );
}
