//! Forwarding hygiene and per-route behaviour: X-Forwarded-*, request ids, traceparent, hop-by-hop
//! headers, strip_prefix, header rules, redirect_https and body limits.

use bytes::Bytes;

use crate::helpers::*;

fn cfg(up: &TestUpstream, trusted: &str) -> String {
    format!(
        r#"[forwarding]
trusted_proxies = [{trusted}]

{}
[[routes]]
name = "api"
path_prefix = "/api"
strip_prefix = true
upstream = "u"
max_body_bytes = 1024
request_headers = {{ set = {{ "X-Edge" = "aggios" }}, add = {{ "X-Added" = "1" }}, remove = ["X-Debug"] }}
response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }}, remove = ["X-Upstream-Secret"] }}

[[routes]]
name = "secure"
hosts = ["secure.test"]
redirect_https = true

[[routes]]
name = "rest"
upstream = "u"
"#,
        upstream_toml("u", &[up], "")
    )
}

fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"][name][0].as_str()
}

#[tokio::test]
async fn untrusted_peer_gets_forwarded_headers_replaced() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&cfg(&up, "")).await;
    let r = gw
        .get_with(
            "app.test",
            "/api/users?x=1",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "bad id with spaces"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("x-debug", "1"),
                ("connection", "x-secret-hop"),
                ("x-secret-hop", "1"),
                ("keep-alive", "timeout=5"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["uri"], "/users?x=1", "strip_prefix");
    assert_eq!(header(&echo, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&echo, "x-forwarded-host"), Some("app.test"));
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        header(&echo, "traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    let id = header(&echo, "x-request-id")
        .expect("request id")
        .to_string();
    assert_eq!(id.len(), 32, "malformed client id must be replaced: {id}");
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    assert_eq!(header(&echo, "x-edge"), Some("aggios"));
    assert_eq!(header(&echo, "x-added"), Some("1"));
    for gone in ["x-debug", "x-secret-hop", "keep-alive"] {
        assert_eq!(header(&echo, gone), None, "{gone} must not be forwarded");
    }
    assert_eq!(r.header("x-frame-options"), Some("DENY"));

    // A well-formed client request id is kept end to end.
    let r = gw
        .get_with("app.test", "/api/x", &[("x-request-id", "req-abc.123")])
        .await;
    assert_eq!(header(&r.json(), "x-request-id"), Some("req-abc.123"));
    assert_eq!(r.header("x-request-id"), Some("req-abc.123"));
}

#[tokio::test]
async fn trusted_proxy_chain_is_appended() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&cfg(&up, "\"127.0.0.0/8\"")).await;
    let r = gw
        .get_with(
            "app.test",
            "/x",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "shop.example"),
            ],
        )
        .await;
    let echo = r.json();
    assert_eq!(
        header(&echo, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("https"));
    assert_eq!(header(&echo, "x-forwarded-host"), Some("shop.example"));
    let id = r.header("x-request-id").expect("id").to_string();
    let mut line = None;
    eventually("access log", || {
        line = gw
            .access_log()
            .into_iter()
            .find(|l| l["request_id"] == id.as_str());
        let ok = line.is_some();
        async move { ok }
    })
    .await;
    assert_eq!(
        line.expect("line")["client_ip"],
        "203.0.113.9",
        "client IP from the trusted chain"
    );
}

#[tokio::test]
async fn redirect_and_body_limits() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&cfg(&up, "")).await;
    let r = gw.get("secure.test", "/login?next=/a").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://secure.test/login?next=/a")
    );

    let before = up.hits();
    let r = gw
        .request(
            "POST",
            "app.test",
            "/api/upload",
            &[],
            Bytes::from(vec![b'x'; 2048]),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    assert_eq!(
        up.hits(),
        before,
        "a 413 decided from Content-Length must not reach the upstream"
    );
    let r = gw
        .request(
            "POST",
            "app.test",
            "/api/upload",
            &[],
            Bytes::from(vec![b'x'; 1024]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 1024);

    // Chunked body over the limit: refused with 413 while streaming.
    let mut req =
        b"POST /api/upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (resp, _) = raw_bytes(gw.http, &req).await;
    assert_eq!(split_response(&resp).0, 413, "{resp}");
}

/// #23 point 8: look-alike identity fields (`X_Tenant_Id`, `X_User_Role`, `X_Forwarded_Host`) and the
/// other spellings of forwarding facts (`Forwarded`, `X-Real-IP`) from an untrusted client never reach
/// the upstream; from a trusted proxy `Forwarded`/`X-Real-IP` are kept, and
/// `underscores_in_headers = true` keeps underscored names. Before the fix all five passed through.
#[tokio::test]
async fn look_alike_identity_fields_do_not_reach_upstreams() {
    let up = TestUpstream::start("u");
    let sent: &[(&str, &str)] = &[
        ("x_tenant_id", "victim"),
        ("x_user_role", "platform_admin"),
        ("x_forwarded_host", "evil.example"),
        ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
        ("x-real-ip", "6.6.6.6"),
        ("x-plain", "kept"),
    ];
    let gw = Gateway::start(&cfg(&up, "")).await;
    let echo = gw.get_with("app.test", "/x", sent).await.json();
    for (name, _) in &sent[..5] {
        assert_eq!(
            header(&echo, name),
            None,
            "{name} reached the upstream: {echo}"
        );
    }
    assert_eq!(header(&echo, "x-plain"), Some("kept"));
    drop(gw);

    // A trusted proxy may state the client's address its own way; underscores kept when configured.
    let body = cfg(&up, "\"127.0.0.1\"").replacen(
        "[forwarding]\n",
        "[forwarding]\nunderscores_in_headers = true\n",
        1,
    );
    let gw = Gateway::start(&body).await;
    let echo = gw.get_with("app.test", "/x", sent).await.json();
    assert_eq!(header(&echo, "x-real-ip"), Some("6.6.6.6"), "{echo}");
    assert_eq!(
        header(&echo, "forwarded"),
        Some("for=6.6.6.6;host=evil.example;proto=https")
    );
    assert_eq!(header(&echo, "x_tenant_id"), Some("victim"), "{echo}");
}
