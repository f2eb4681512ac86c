//! Response compression at the edge, seen by a real client (curl `--compressed`, and raw requests for
//! the exact fields): gzip, brotli and zstd chosen by `Accept-Encoding`, streamed, with `Vary`; never on
//! an encoded response, `no-transform`, a range, 204/304, a type outside the list, a small body or a
//! route without `compression`.

use tokio::process::Command;

use crate::helpers::*;

fn cfg(doc: &DocServer) -> String {
    format!(
        r#"[[upstreams]]
name = "docs"
servers = ["{}"]

[[routes]]
name = "api"
path_prefix = "/api"
compression = {{ algorithms = ["zstd", "br", "gzip"], types = ["application/json", "text/*"], min_bytes = 1024, levels = {{ gzip = 5 }} }}
upstream = "docs"

[[routes]]
name = "plain"
upstream = "docs"
"#,
        doc.addr
    )
}

/// A JSON document of about `n` bytes, with the repetition API responses have.
fn json(n: usize) -> String {
    let item = r#"{"id":"3f1c0000-0000-4000-8000-000000000001","name":"invoice.pdf","size":12345,"tenant":"acme"}"#;
    let mut s = String::from("[");
    while s.len() < n {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push(']');
    s
}

/// curl through the gateway: (status, response head, body as decoded by curl, bytes on the wire). Run
/// without blocking the test's runtime, which serves the upstream.
async fn curl(port: u16, path: &str, args: &[&str]) -> (u16, String, String, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = dir.path().join("head");
    let out = Command::new("curl")
        .args(["-s", "-H", "Host: x.test", "-D"])
        .arg(&head)
        .args(["-w", "%{http_code} %{size_download}"])
        .args(["-o"])
        .arg(dir.path().join("body"))
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .await
        .expect("curl (scripts/test.sh installs it)");
    let w = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, size) = w.split_once(' ').unwrap_or(("0", "0"));
    (
        status.parse().unwrap_or(0),
        std::fs::read_to_string(&head)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        std::fs::read_to_string(dir.path().join("body")).unwrap_or_default(),
        size.trim().parse().unwrap_or(0),
    )
}

#[tokio::test]
async fn responses_are_compressed_as_the_client_accepts_and_only_then() {
    let doc = DocServer::start().await;
    let body = json(20_000);
    doc.set("/api/list", 200, &body);
    let gw = Gateway::start(&cfg(&doc)).await;
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, br, zstd", "zstd"),
        ("gzip;q=1, br;q=0.5, zstd;q=0.1", "gzip"),
    ] {
        let (status, head, decoded, wire) = curl(
            gw.http,
            "/api/list",
            &["--compressed", "-H", &format!("Accept-Encoding: {accept}")],
        )
        .await;
        assert_eq!(status, 200, "{accept}");
        assert!(
            head.contains(&format!("content-encoding: {coding}\r\n")),
            "{accept}: {head}"
        );
        assert!(head.contains("vary: accept-encoding"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert!(
            decoded == body,
            "{accept}: curl decoded {} bytes, not the original {}",
            decoded.len(),
            body.len()
        );
        assert!(
            wire * 5 < body.len() as u64,
            "{accept}: {wire} bytes on the wire for {}",
            body.len()
        );
    }
    // Not accepted, or not wanted: as it is, with Vary when it could have been compressed.
    for accept in ["identity", "deflate", "gzip;q=0"] {
        let (status, head, decoded, wire) = curl(
            gw.http,
            "/api/list",
            &["-H", &format!("Accept-Encoding: {accept}")],
        )
        .await;
        assert_eq!((status, decoded.len() as u64), (200, wire), "{accept}");
        assert!(!head.contains("content-encoding"), "{accept}: {head}");
        assert!(head.contains("vary: accept-encoding"), "{accept}: {head}");
    }
    let gzip = ["-H", "Accept-Encoding: gzip"];
    let uncompressed = |path: &'static str, extra: &'static [&'static str]| {
        let port = gw.http;
        async move {
            let (status, head, _, _) = curl(port, path, &[&gzip[..], extra].concat()).await;
            (status, head.contains("content-encoding: gzip"))
        }
    };
    doc.set("/api/small", 200, &json(500));
    doc.set_with("/api/encoded", 200, &[("content-encoding", "br")], &body);
    doc.set_with(
        "/api/keep",
        200,
        &[("cache-control", "no-transform")],
        &body,
    );
    doc.set_with("/api/image", 200, &[("content-type", "image/png")], &body);
    doc.set_with(
        "/api/events",
        200,
        &[("content-type", "text/event-stream")],
        &body,
    );
    doc.set("/api/empty", 204, "");
    doc.set("/other", 200, &body);
    for (path, extra, status) in [
        ("/api/small", &[][..], 200),
        ("/api/encoded", &[], 200),
        ("/api/keep", &[], 200),
        ("/api/image", &[], 200),
        ("/api/events", &[], 200),
        ("/api/empty", &[], 204),
        ("/api/list", &["-H", "Range: bytes=0-99"][..], 200),
        ("/api/list", &["-I"][..], 200),
        ("/other", &[], 200),
    ] {
        assert_eq!(
            uncompressed(path, extra).await,
            (status, false),
            "{path} {extra:?}"
        );
    }
    // Text types by their `type/*` pattern; HTTP/2 (h2c) is compressed as HTTP/1.1.
    doc.set_with(
        "/api/page",
        200,
        &[("content-type", "text/html; charset=utf-8")],
        &body,
    );
    assert_eq!(uncompressed("/api/page", &[]).await, (200, true));
    let (status, head, decoded, _) = curl(
        gw.http,
        "/api/list",
        &[
            "--http2-prior-knowledge",
            "--compressed",
            "-H",
            "Accept-Encoding: br",
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("content-encoding: br"), "{head}");
    assert!(decoded == body, "h2: {} bytes decoded", decoded.len());
}
