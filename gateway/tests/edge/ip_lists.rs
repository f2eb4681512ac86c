//! Client-address lists per route (`allow_ips`, `deny_ips`): decided on the client address after
//! trusted-proxy handling and before auth (a refused address gets 403 `ip_denied`, never 401), IPv4 and
//! IPv6, never reaching the upstream, counted, and changed by a reload.

use crate::helpers::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-ip";

fn cfg(up: &TestUpstream, trusted: &str, allow: &str) -> String {
    format!(
        r#"[forwarding]
trusted_proxies = [{trusted}]

[auth.jwt]
secret_env = "GW_SECRET"

{}
[[routes]]
name = "office"
path_prefix = "/office"
allow_ips = [{allow}]
auth = "jwt"
upstream = "u"

[[routes]]
name = "public"
path_prefix = "/public"
deny_ips = ["192.0.2.0/24", "2001:db8:bad::/48"]
upstream = "u"
"#,
        upstream_toml("u", &[up], "")
    )
}

#[tokio::test]
async fn client_address_lists_decide_before_auth_and_follow_reloads() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start_with_env(
        &cfg(
            &up,
            "\"127.0.0.1/32\"",
            "\"10.0.0.0/8\", \"2001:db8:1::/48\"",
        ),
        &[("GW_SECRET", SECRET)],
    )
    .await;
    let from = |ip: &'static str, path: &'static str| {
        let gw = &gw;
        async move {
            gw.get_with("x.test", path, &[("x-forwarded-for", ip)])
                .await
        }
    };
    // (client address as the trusted proxy states it, path, status, code)
    let cases = [
        ("10.1.2.3", "/office", 401, "missing_token"),
        ("::ffff:10.9.9.9", "/office", 401, "missing_token"),
        ("2001:db8:1::7", "/office", 401, "missing_token"),
        ("192.168.1.1", "/office", 403, "ip_denied"),
        ("2001:db8:2::7", "/office", 403, "ip_denied"),
        ("192.0.2.55", "/public", 403, "ip_denied"),
        ("2001:db8:bad::1", "/public", 403, "ip_denied"),
    ];
    for (ip, path, status, code) in cases {
        let r = from(ip, path).await;
        assert_eq!(
            (r.status, r.error_code()),
            (status, code.to_string()),
            "{ip} {path}"
        );
    }
    assert_eq!(up.hits(), 0, "refused requests never reached the upstream");
    for ip in ["203.0.113.9", "2001:db8:600d::1"] {
        assert_eq!(from(ip, "/public").await.status, 200, "{ip}");
    }
    let token = Token::new(SECRET, "acme").bearer();
    let r = gw
        .get_with(
            "x.test",
            "/office",
            &[("x-forwarded-for", "10.1.2.3"), ("authorization", &token)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.metric("gateway_auth_rejections_total{reason=\"ip_denied\",route=\"office\"}")
            .await,
        2.0
    );
    // Without a trusted proxy, a client's own X-Forwarded-For is not believed: its address is the
    // peer's (127.0.0.1), outside the list.
    gw.rewrite(&cfg(&up, "", "\"10.0.0.0/8\""));
    eventually("untrusted X-Forwarded-For no longer believed", || async {
        from("10.1.2.3", "/office").await.status == 403
    })
    .await;
    // The list changed by a reload.
    gw.rewrite(&cfg(&up, "", "\"10.0.0.0/8\", \"127.0.0.1\""));
    eventually("the new allow list applies", || async {
        from("10.1.2.3", "/office").await.status == 401
    })
    .await;
}
