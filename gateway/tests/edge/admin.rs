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
