//! The admin listener answers only its own address or configured names (no DNS rebinding), and
//! requires its bearer token when one is configured; `validate` warns about an open one.

use crate::helpers::*;

#[tokio::test]
async fn admin_refuses_foreign_hosts_and_requires_its_token() {
    let up = TestUpstream::start("u");
    let body = format!(
        "[admin]\nnames = [\"gw.internal\"]\ntoken_env = \"GW_ADMIN_TOKEN\"\n\n{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up], "")
    );
    let gw = Gateway::start_with_env(&body, &[("GW_ADMIN_TOKEN", "admin-token-admin-token")]).await;
    let get = |host: String, auth: Option<&str>, path: &str| {
        let auth = auth
            .map(|a| format!("Authorization: Bearer {a}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
        let port = gw.admin;
        async move { split_response(&raw(port, &req).await) }
    };
    let own = format!("127.0.0.1:{}", gw.admin);
    // A page on another origin resolving its name to 127.0.0.1 (DNS rebinding) is refused.
    let (status, body) = get(
        format!("evil.example:{}", gw.admin),
        Some("admin-token-admin-token"),
        "/metrics",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host_not_allowed"), "{body}");
    let (status, _) = get(own.clone(), None, "/metrics").await;
    assert_eq!(status, 401);
    let (status, _) = get(own.clone(), Some("wrong-token-wrong-token"), "/api/routes").await;
    assert_eq!(status, 401);
    let (status, body) = get(own.clone(), Some("admin-token-admin-token"), "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("gateway_config_reloads_total"), "{body}");
    let (status, _) = get(
        format!("gw.internal:{}", gw.admin),
        Some("admin-token-admin-token"),
        "/api/routes",
    )
    .await;
    assert_eq!(status, 200);
    // Probes need no token.
    let (status, _) = get(own, None, "/healthz").await;
    assert_eq!(status, 200);
}

/// #23 point 10: `/dashboard` is sent with a Content-Security-Policy that allows exactly its own inline
/// script and style (by hash) and requests to the admin listener, and may not be framed. Before the fix
/// it had neither header.
#[tokio::test]
async fn the_dashboard_page_has_a_content_security_policy_and_refuses_framing() {
    let gw = Gateway::start("").await;
    let resp = raw(
        gw.admin,
        &format!(
            "GET /dashboard HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            gw.admin
        ),
    )
    .await;
    let (head, body) = resp.split_once("\r\n\r\n").expect("head and body");
    let field = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{head}"))
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(field("x-frame-options"), "DENY");
    assert_eq!(field("x-content-type-options"), "nosniff");
    let csp = field("content-security-policy");
    let hash_of = |open: &str, close: &str| {
        let start = body.find(open).expect("open tag") + open.len();
        let end = start + body[start..].find(close).expect("close tag");
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&body.as_bytes()[start..end]);
        format!(
            "'sha256-{}'",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest)
        )
    };
    for part in [
        "default-src 'none'".to_string(),
        format!("script-src {}", hash_of("<script>", "</script>")),
        format!("style-src {}", hash_of("<style>", "</style>")),
        "connect-src 'self'".to_string(),
        "frame-ancestors 'none'".to_string(),
    ] {
        assert!(csp.contains(&part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
}
