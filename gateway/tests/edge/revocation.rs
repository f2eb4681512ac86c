//! Revoked tokens (the backend's Redis denylist) are refused at the edge; a Redis outage follows the
//! route's `on_store_error`.

use crate::helpers::*;

const SECRET: &str = "revocation-test-secret-revocation-01";

fn config(up: &TestUpstream) -> String {
    format!(
        r#"[tenancy]
base_domains = ["aggios.app"]

[auth.jwt]
secret_env = "GW_SECRET"

[redis]
url_env = "GW_REDIS"
# Generous for a loaded test machine (the default is 5ms).
timeout = "500ms"
revocation_cache = "200ms"

{}
[[routes]]
name = "open"
hosts = ["*.aggios.app"]
path_prefix = "/open"
auth = "jwt_tenant"
upstream = "u"

[[routes]]
name = "closed"
hosts = ["*.aggios.app"]
path_prefix = "/closed"
auth = "jwt_tenant"
on_store_error = "closed"
upstream = "u"
"#,
        upstream_toml("u", &[up], "")
    )
}

#[tokio::test]
async fn a_revoked_jti_is_refused() {
    let up = TestUpstream::start("u");
    let url = redis_url();
    let gw =
        Gateway::start_with_env(&config(&up), &[("GW_SECRET", SECRET), ("GW_REDIS", &url)]).await;
    let jti = format!("test-{}", fastrand::u64(..));
    let auth = Token::new(SECRET, "acme").user("u-1").jti(&jti).bearer();
    assert_eq!(
        gw.get_with("acme.aggios.app", "/open/x", &[("authorization", &auth)])
            .await
            .status,
        200
    );

    let key = deny_jti(&url, &jti).await;
    eventually("revoked token refused", || async {
        let r = gw
            .get_with("acme.aggios.app", "/open/x", &[("authorization", &auth)])
            .await;
        r.status == 401 && r.error_code() == "token_revoked"
    })
    .await;
    let hits_after_refusal = up.hits();
    for _ in 0..5 {
        assert_eq!(
            gw.get_with("acme.aggios.app", "/closed/x", &[("authorization", &auth)])
                .await
                .status,
            401
        );
    }
    assert_eq!(
        up.hits(),
        hits_after_refusal,
        "refused requests reached the upstream"
    );
    let mut conn = redis::Client::open(url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("del");
}

#[tokio::test]
async fn redis_down_follows_on_store_error() {
    let up = TestUpstream::start("u");
    let dead_port = dead_port();
    let dead = format!("redis://127.0.0.1:{}", dead_port.port);
    let gw =
        Gateway::start_with_env(&config(&up), &[("GW_SECRET", SECRET), ("GW_REDIS", &dead)]).await;
    let auth = Token::new(SECRET, "acme").user("u-1").bearer();
    let r = gw
        .get_with("acme.aggios.app", "/open/x", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, 200, "fail open: {:?}", r.body);
    let r = gw
        .get_with("acme.aggios.app", "/closed/x", &[("authorization", &auth)])
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "store_unavailable")
    );
    assert!(gw.metric("gateway_auth_store_errors_total").await >= 2.0);
}
