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
