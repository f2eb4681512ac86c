//! API keys at the edge: looked up by prefix (in process, then Redis, then the backend's lookup), compared
//! by hash, bound to the host's tenant, checked for scopes; revoked keys stop within the cache TTL.
//! `X-API-Version` routes and is passed through.

use sha2::{Digest, Sha256};

use crate::helpers::*;

const SECRET: &str = "api-key-test-secret-api-key-test-01";

/// A bearer token of user `u-1` of `tenant`.
fn token_of(tenant: &str) -> String {
    Token::new(SECRET, tenant).user("u-1").bearer()
}

pub(crate) struct Key {
    pub full: String,
    pub prefix: String,
}

pub(crate) fn new_key() -> Key {
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| format!("{:x}", fastrand::u8(0..16)))
            .collect()
    };
    let prefix = hex(8);
    Key {
        full: format!("ak_{prefix}_{}", hex(56)),
        prefix,
    }
}

fn record(k: &Key, tenant: &str, scopes: &[&str], expires_at: Option<i64>) -> String {
    serde_json::json!({
        "id": format!("key-{}", k.prefix),
        "tenant": tenant,
        "tenant_id": "00000000-0000-4000-8000-000000000000",
        "key_sha256": hex::encode(Sha256::digest(k.full.as_bytes())),
        "scopes": scopes,
        "expires_at": expires_at,
    })
    .to_string()
}

/// The backend's lookup answers `k` as a key of `tenant` with `scopes`.
pub(crate) fn publish(
    lookup: &DocServer,
    k: &Key,
    tenant: &str,
    scopes: &[&str],
    expires_at: Option<i64>,
) {
    lookup.set(
        &format!("/internal/api-keys/{}", k.prefix),
        200,
        &record(k, tenant, scopes, expires_at),
    );
}

/// Two upstreams (`u`, and `v2` for `X-API-Version: 2`), the backend's key lookup, and a gateway with
/// [`config`] (edited by `tweak`) whose Redis is `redis`.
struct Stack {
    up: TestUpstream,
    v2: TestUpstream,
    lookup: DocServer,
    gw: Gateway,
}

impl Stack {
    async fn start(redis: &str, tweak: impl FnOnce(String) -> String) -> Stack {
        let up = TestUpstream::start("u");
        let v2 = TestUpstream::start("v2");
        let lookup = DocServer::start().await;
        let body = tweak(config(&up, &v2, &lookup));
        let gw =
            Gateway::start_with_env(&body, &[("GW_REDIS", redis), ("GW_SECRET", SECRET)]).await;
        Stack { up, v2, lookup, gw }
    }
}

fn config(up: &TestUpstream, v2: &TestUpstream, lookup: &DocServer) -> String {
    format!(
        r#"[tenancy]
base_domains = ["aggios.app"]

[auth.jwt]
secret_env = "GW_SECRET"

[auth.api_keys]
lookup_url = "http://{}/internal/api-keys/{{prefix}}"
cache_ttl = "3s"

[redis]
url_env = "GW_REDIS"
# Generous for a loaded test machine (the default is 5ms).
timeout = "500ms"

{}
{}
[[routes]]
name = "read"
hosts = ["*.aggios.app"]
path_prefix = "/read"
auth = "api_key"
scopes = ["files:read"]
upstream = "u"

[[routes]]
name = "write"
hosts = ["*.aggios.app"]
path_prefix = "/write"
auth = "api_key"
scopes = ["files:write"]
upstream = "u"

[[routes]]
name = "either"
hosts = ["*.aggios.app"]
path_prefix = "/either"
auth = "jwt_or_api_key"
upstream = "u"

[[routes]]
name = "token"
hosts = ["*.aggios.app"]
path_prefix = "/token"
auth = "jwt_tenant"
upstream = "u"

[[routes]]
name = "platform"
hosts = ["api.aggios.app"]
auth = "jwt"
upstream = "u"

[[routes]]
name = "open"
hosts = ["*.aggios.app"]
path_prefix = "/open"
upstream = "u"

[[routes]]
name = "v2"
hosts = ["*.aggios.app"]
path_prefix = "/read"
headers = {{ "x-api-version" = "2" }}
auth = "api_key"
upstream = "v2"
"#,
        lookup.addr,
        upstream_toml("u", &[up], ""),
        upstream_toml("v2", &[v2], ""),
    )
}

#[tokio::test]
async fn api_keys_are_verified_bound_and_scoped_at_the_edge() {
    let stack = Stack::start(&redis_url(), |c| c).await;
    let (up, v2, lookup, gw) = (&stack.up, &stack.v2, &stack.lookup, &stack.gw);
    let good = new_key();
    let expired = new_key();
    let globex = new_key();
    publish(lookup, &good, "acme", &["files:read"], None);
    publish(lookup, &expired, "acme", &["files:read"], Some(1_000));
    publish(lookup, &globex, "globex", &["files:read"], None);

    // Accepted from either header; identity set from the key, spoofed headers gone.
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/read/a",
            &[("x-api-key", &good.full), ("x-tenant-id", "globex")],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let echo = r.json();
    assert_eq!(echo["headers"]["x-tenant-id"], serde_json::json!(["acme"]));
    assert_eq!(
        echo["headers"]["x-user-role"],
        serde_json::json!(["api_key"])
    );
    let bearer = format!("Bearer {}", good.full);
    let r = gw
        .get_with("acme.aggios.app", "/read/a", &[("authorization", &bearer)])
        .await;
    assert_eq!(r.status, 200);

    // X-API-Version picks the route and reaches the backend unchanged.
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/read/a",
            &[("x-api-key", &good.full), ("x-api-version", "2")],
        )
        .await;
    assert_eq!(r.upstream(), Some("v2"));
    assert_eq!(
        r.json()["headers"]["x-api-version"],
        serde_json::json!(["2"])
    );

    // jwt_or_api_key: either credential, each bound to the host's tenant.
    let r = gw
        .get_with("acme.aggios.app", "/either/a", &[("x-api-key", &good.full)])
        .await;
    assert_eq!(r.status, 200);
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/either/a",
            &[("authorization", &token_of("acme"))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-user-id"], serde_json::json!(["u-1"]));
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/either/a",
            &[("authorization", &token_of("globex"))],
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "tenant_mismatch")
    );
    let r = gw.get_with("acme.aggios.app", "/either/a", &[]).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "missing_token"));

    let hits = up.hits() + v2.hits();
    let mut forged = good.full.clone();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(forged.len() - 1.., last);
    let unknown = new_key();
    let cases: Vec<(&str, String, &str, &str, u16, &str)> = vec![
        (
            "no key",
            String::new(),
            "acme.aggios.app",
            "/read/a",
            401,
            "missing_token",
        ),
        (
            "right prefix, wrong secret",
            forged,
            "acme.aggios.app",
            "/read/a",
            401,
            "invalid_api_key",
        ),
        (
            "unknown prefix",
            unknown.full.clone(),
            "acme.aggios.app",
            "/read/a",
            401,
            "invalid_api_key",
        ),
        (
            "not a key",
            "ak_zz".into(),
            "acme.aggios.app",
            "/read/a",
            401,
            "invalid_api_key",
        ),
        (
            "expired",
            expired.full.clone(),
            "acme.aggios.app",
            "/read/a",
            401,
            "api_key_expired",
        ),
        (
            "another tenant's key",
            globex.full.clone(),
            "acme.aggios.app",
            "/read/a",
            403,
            "tenant_mismatch",
        ),
        (
            "missing scope",
            good.full.clone(),
            "acme.aggios.app",
            "/write/a",
            403,
            "insufficient_scope",
        ),
    ];
    for (what, key, host, path, status, code) in cases {
        let headers: Vec<(&str, &str)> = if key.is_empty() {
            vec![]
        } else {
            vec![("x-api-key", key.as_str())]
        };
        let r = gw.get_with(host, path, &headers).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{what}"
        );
        if status == 401 {
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer")),
                "{what}"
            );
        }
    }
    assert_eq!(
        up.hits() + v2.hits(),
        hits,
        "a refused request reached a backend"
    );
    assert!(
        gw.metric(r#"gateway_auth_rejections_total{reason="insufficient_scope",route="write"}"#)
            .await
            >= 1.0
    );

    // Cached: many calls, few lookups.
    let before = lookup.hits();
    for _ in 0..20 {
        assert_eq!(
            gw.get_with("acme.aggios.app", "/read/a", &[("x-api-key", &good.full)])
                .await
                .status,
            200
        );
    }
    assert!(
        lookup.hits() - before <= 2,
        "lookups: {}",
        lookup.hits() - before
    );

    // Revoked at the backend (and its cache entry dropped, as the backend does): refused within the TTL.
    lookup.remove(&format!("/internal/api-keys/{}", good.prefix));
    let redis = redis::Client::open(redis_url()).expect("redis");
    let mut rc = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("DEL")
        .arg(format!("aggios:apikey:{}", good.prefix))
        .query_async(&mut rc)
        .await
        .expect("del");
    let revoked_at = std::time::Instant::now();
    eventually("revoked key refused", || async {
        let r = gw
            .get_with("acme.aggios.app", "/read/a", &[("x-api-key", &good.full)])
            .await;
        r.status == 401 && r.error_code() == "invalid_api_key"
    })
    .await;
    assert!(
        revoked_at.elapsed()
            < std::time::Duration::from_secs(3) + std::time::Duration::from_millis(1500),
        "took {:?}, cache_ttl is 3s",
        revoked_at.elapsed()
    );
    let hits = up.hits();
    assert_eq!(
        gw.get_with("acme.aggios.app", "/read/a", &[("x-api-key", &good.full)])
            .await
            .status,
        401
    );
    assert_eq!(up.hits(), hits, "the revoked key reached the backend");
}

#[tokio::test]
async fn a_key_that_cannot_be_checked_is_refused_with_503() {
    let dead_port = dead_port();
    let dead_redis = format!("redis://127.0.0.1:{}", dead_port.port);
    let stack = Stack::start(&dead_redis, |c| c).await;
    let (up, lookup, gw) = (&stack.up, &stack.lookup, &stack.gw);
    let k = new_key();
    publish(lookup, &k, "acme", &["files:read"], None);
    // Redis down: the lookup still answers, so the key works.
    let r = gw
        .get_with("acme.aggios.app", "/read/a", &[("x-api-key", &k.full)])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The lookup fails too: never let an unchecked key through.
    let k2 = new_key();
    lookup.set(&format!("/internal/api-keys/{}", k2.prefix), 500, "oops");
    let hits = up.hits();
    let r = gw
        .get_with("acme.aggios.app", "/read/a", &[("x-api-key", &k2.full)])
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "store_unavailable")
    );
    assert_eq!(up.hits(), hits);
}

/// (why, host, path, credentials sent, Authorization forwarded, X-API-Key forwarded)
type Forwarded<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    bool,
    bool,
);

/// Only the credential the edge verified reaches the backend, on every auth policy; a `Connection`
/// header naming a credential or identity header is refused.
#[tokio::test]
async fn only_the_verified_credential_is_forwarded() {
    let stack = Stack::start(&redis_url(), |c| c).await;
    let (up, lookup, gw) = (&stack.up, &stack.lookup, &stack.gw);
    let key = new_key();
    publish(lookup, &key, "acme", &["files:read"], None);
    let token = token_of("acme");
    let bearer_key = format!("Bearer {}", key.full);
    let seen = |r: &Resp, h: &str| r.json()["headers"].get(h).is_some();
    let (tok, api) = (
        ("authorization", token.as_str()),
        ("x-api-key", key.full.as_str()),
    );
    let bearer = ("authorization", bearer_key.as_str());
    // (why, host, path, credentials sent, Authorization forwarded, X-API-Key forwarded)
    let cases: [Forwarded<'_>; 7] = [
        (
            "jwt_tenant: the token goes on, a key beside it does not",
            "acme.aggios.app",
            "/token/x",
            vec![tok, api],
            true,
            false,
        ),
        (
            "jwt (no tenant in the host): the same",
            "api.aggios.app",
            "/p",
            vec![tok, api],
            true,
            false,
        ),
        (
            "none: nothing was checked, so the request goes on as sent",
            "acme.aggios.app",
            "/open/x",
            vec![tok, api],
            true,
            true,
        ),
        (
            "api_key in X-API-Key: a token beside it does not go on",
            "acme.aggios.app",
            "/read/x",
            vec![api, tok],
            false,
            true,
        ),
        (
            "api_key as a bearer: forwarded as such",
            "acme.aggios.app",
            "/read/x",
            vec![bearer],
            true,
            false,
        ),
        (
            "jwt_or_api_key with both: the key (X-API-Key first) goes on alone",
            "acme.aggios.app",
            "/either/x",
            vec![api, tok],
            false,
            true,
        ),
        (
            "jwt_or_api_key with a token alone: the token",
            "acme.aggios.app",
            "/either/x",
            vec![tok],
            true,
            false,
        ),
    ];
    for (why, host, path, sent, authorization, api_key) in cases {
        let r = gw.get_with(host, path, &sent).await;
        assert_eq!(r.status, 200, "{why}: {:?}", r.body);
        assert_eq!(
            (seen(&r, "authorization"), seen(&r, "x-api-key")),
            (authorization, api_key),
            "{why}: {:?}",
            r.json()
        );
    }

    // `Connection` naming what the edge verified or sets: refused before any upstream.
    let hits = up.hits();
    for named in [
        "authorization",
        "x-api-key",
        "x-tenant-id",
        "keep-alive, X-User-Id",
    ] {
        let r = gw
            .get_with(
                "acme.aggios.app",
                "/token/x",
                &[("authorization", &token), ("connection", named)],
            )
            .await;
        assert_eq!(r.status, 400, "Connection: {named}");
        assert_eq!(r.error_code(), "malformed_request");
    }
    assert_eq!(up.hits(), hits);
}

/// The statuses of `n` requests to `path` from client `ip`, each with a new made-up key.
async fn made_up_keys(gw: &Gateway, path: &str, ip: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let k = new_key();
        let r = gw
            .get_with(
                "acme.aggios.app",
                path,
                &[("x-api-key", &k.full), ("x-forwarded-for", ip)],
            )
            .await;
        statuses.push(r.status);
    }
    statuses
}

/// A flood of made-up keys: the route's client-address limit applies before any lookup, a client's
/// refused keys are budgeted, concurrent lookups of one prefix are one backend request; valid keys and
/// the public API keep working meanwhile.
#[tokio::test]
async fn a_flood_of_made_up_keys_never_reaches_the_backend() {
    let up = TestUpstream::start("u");
    let lookup = DocServer::start().await;
    let body = format!(
        r#"[tenancy]
base_domains = ["aggios.app"]

# The test client plays a load balancer: X-Forwarded-For names the client.
[forwarding]
trusted_proxies = ["127.0.0.1/32"]

[auth.jwt]
secret_env = "GW_SECRET"

[auth.api_keys]
lookup_url = "http://{}/internal/api-keys/{{prefix}}"
cache_ttl = "30s"
failures_per_minute = 10

[rate_limits.per_ip]
key = "client_ip"
limit = 3
period = "1m"
scope = "local"

{}
[[routes]]
name = "read"
hosts = ["*.aggios.app"]
path_prefix = "/read"
auth = "api_key"
upstream = "u"

[[routes]]
name = "limited"
hosts = ["*.aggios.app"]
path_prefix = "/limited"
auth = "api_key"
rate_limits = ["per_ip"]
upstream = "u"

[[routes]]
name = "token"
hosts = ["*.aggios.app"]
path_prefix = "/token"
auth = "jwt_tenant"
upstream = "u"
"#,
        lookup.addr,
        upstream_toml("u", &[&up], ""),
    );
    let gw = Gateway::start_with_env(&body, &[("GW_SECRET", SECRET)]).await;
    let good = new_key();
    publish(&lookup, &good, "acme", &[], None);
    let from = |ip: &'static str| ("x-forwarded-for", ip);

    // The failure budget: 10 refused keys from one client, then 429 without a lookup.
    let before = lookup.hits();
    let statuses = made_up_keys(&gw, "/read/x", "203.0.113.50", 25).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(
        lookup.hits() - before,
        10,
        "refused clients still cost lookups"
    );
    // That client's JWT calls and another client's valid key still work.
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/token/x",
            &[("authorization", &token_of("acme")), from("203.0.113.50")],
        )
        .await;
    assert_eq!(r.status, 200);
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/read/x",
            &[("x-api-key", &good.full), from("203.0.113.51")],
        )
        .await;
    assert_eq!(r.status, 200);

    // The route's client-address limit comes before the lookup.
    let before = lookup.hits();
    let statuses = made_up_keys(&gw, "/limited/x", "203.0.113.52", 8).await;
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429, 429, 429]);
    assert_eq!(lookup.hits() - before, 3);

    // Concurrent requests with one unknown prefix from many clients, while the backend is slow: one
    // backend lookup.
    lookup
        .delay_ms
        .store(500, std::sync::atomic::Ordering::SeqCst);
    let same = new_key();
    let before = lookup.hits();
    let ips: Vec<String> = (0..30).map(|i| format!("198.51.100.{i}")).collect();
    let calls = ips.iter().map(|ip| {
        let key = same.full.clone();
        let gw = &gw;
        async move {
            gw.get_with(
                "acme.aggios.app",
                "/read/x",
                &[("x-api-key", &key), ("x-forwarded-for", ip)],
            )
            .await
            .status
        }
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|s| *s == 401), "{results:?}");
    assert_eq!(
        lookup.hits() - before,
        1,
        "concurrent lookups of one prefix were not shared"
    );
    lookup
        .delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);

    // #23 point 10: an IPv6 client holds its whole /64; a new address per request does not buy a new
    // budget, neither of refused keys nor of the route's client-address limit (before the fix each
    // address had its own, and all 14 were looked up). Another /64 is another client.
    let rotating = |net: &'static str, path: &'static str, n: usize| {
        let gw = &gw;
        async move {
            let mut statuses = Vec::new();
            for i in 0..n {
                let ip = format!("{net}:{:x}:{:x}", fastrand::u16(1..), i + 1);
                let r = gw
                    .get_with(
                        "acme.aggios.app",
                        path,
                        &[("x-api-key", &new_key().full), ("x-forwarded-for", &ip)],
                    )
                    .await;
                statuses.push(r.status);
            }
            statuses
        }
    };
    let before = lookup.hits();
    let statuses = rotating("2001:db8:1:2:0:0", "/read/x", 14).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(lookup.hits() - before, 10, "{statuses:?}");
    let statuses = rotating("2001:db8:1:3:0:0", "/limited/x", 5).await;
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    let r = gw
        .get_with(
            "acme.aggios.app",
            "/read/x",
            &[("x-api-key", &good.full), from("2001:db8:1:4::1")],
        )
        .await;
    assert_eq!(r.status, 200, "another /64 is another client");
}

/// On a host without a tenant (`api.…`, reserved), `jwt_tenant` and `jwt_or_api_key` still need a valid
/// credential, and the tenant then comes from it (config/README.md, `auth`); on a tenant's host the same
/// credential of another tenant is refused.
#[tokio::test]
async fn tenant_policies_on_a_host_without_a_tenant_take_the_credentials_tenant() {
    let stack = Stack::start(&redis_url(), |c| {
        c.replacen(
            "[tenancy]\nbase_domains = [\"aggios.app\"]\n",
            "[tenancy]\nbase_domains = [\"aggios.app\"]\nreserved = [\"api\"]\n",
            1,
        ) + r#"
[[routes]]
name = "platform-tenant"
hosts = ["api.aggios.app"]
path_prefix = "/tenant"
auth = "jwt_tenant"
upstream = "u"

[[routes]]
name = "platform-either"
hosts = ["api.aggios.app"]
path_prefix = "/either"
auth = "jwt_or_api_key"
upstream = "u"
"#
    })
    .await;
    let (up, lookup, gw) = (&stack.up, &stack.lookup, &stack.gw);
    let key = new_key();
    publish(lookup, &key, "globex", &[], None);
    let tenant_seen = |r: &Resp| r.json()["headers"]["x-tenant-id"].clone();

    let acme = Token::new(SECRET, "acme").user("u-acme").bearer();
    let r = gw
        .get_with("api.aggios.app", "/tenant/x", &[("authorization", &acme)])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(tenant_seen(&r), serde_json::json!(["acme"]));
    let r = gw
        .get_with("api.aggios.app", "/either/x", &[("x-api-key", &key.full)])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(tenant_seen(&r), serde_json::json!(["globex"]));
    let r = gw
        .get_with("api.aggios.app", "/either/x", &[("authorization", &acme)])
        .await;
    assert_eq!(tenant_seen(&r), serde_json::json!(["acme"]));
    let hits = up.hits();

    // Without a credential, or with a bad one, nothing passes on the tenant-less host either.
    for (path, headers) in [
        ("/tenant/x", vec![]),
        ("/either/x", vec![]),
        ("/tenant/x", vec![("authorization", "Bearer not.a.token")]),
        ("/either/x", vec![("x-api-key", "ak_00000000_nope")]),
    ] {
        let r = gw.get_with("api.aggios.app", path, &headers).await;
        assert_eq!(r.status, 401, "{path} {headers:?}: {:?}", r.body);
    }
    // On a tenant's host the same credentials of another tenant are refused.
    let r = gw
        .get_with("acme.aggios.app", "/either/x", &[("x-api-key", &key.full)])
        .await;
    assert_eq!(
        (r.status, r.error_code()),
        (403, "tenant_mismatch".to_string())
    );
    let r = gw
        .get_with("globex.aggios.app", "/token/x", &[("authorization", &acme)])
        .await;
    assert_eq!(
        (r.status, r.error_code()),
        (403, "tenant_mismatch".to_string())
    );
    assert_eq!(up.hits(), hits, "a refused request reached the upstream");
}

/// Rate limits keyed by `user` and by `api_key`, end to end: each user and each key has its own counter in
/// Redis (under the user id and the key id, not the client address), and one's refusal leaves the others.
#[tokio::test]
async fn user_and_api_key_limit_keys_count_per_user_and_per_key_in_redis() {
    let run = fastrand::u32(..);
    let (per_user, per_key) = (format!("per_user_{run}"), format!("per_key_{run}"));
    let stack = Stack::start(&redis_url(), |c| {
        let cfg = c
        .replace(
            "name = \"token\"\nhosts = [\"*.aggios.app\"]\npath_prefix = \"/token\"\n",
            &format!("name = \"token\"\nhosts = [\"*.aggios.app\"]\npath_prefix = \"/token\"\nrate_limits = [\"{per_user}\"]\n"),
        )
        .replace(
            "name = \"read\"\nhosts = [\"*.aggios.app\"]\npath_prefix = \"/read\"\n",
            &format!("name = \"read\"\nhosts = [\"*.aggios.app\"]\npath_prefix = \"/read\"\nrate_limits = [\"{per_key}\"]\n"),
        )
        + &format!(
            "\n[rate_limits.{per_user}]\nkey = \"user\"\nlimit = 3\nperiod = \"60s\"\n\n[rate_limits.{per_key}]\nkey = \"api_key\"\nlimit = 2\nperiod = \"60s\"\n"
        );
        assert!(
            cfg.contains(&format!("rate_limits = [\"{per_user}\"]"))
                && cfg.contains(&format!("rate_limits = [\"{per_key}\"]"))
        );
        cfg
    })
    .await;
    let (lookup, gw) = (&stack.lookup, &stack.gw);
    let (k1, k2) = (new_key(), new_key());
    for k in [&k1, &k2] {
        publish(lookup, k, "acme", &["files:read"], None);
    }
    let statuses = |n: usize, path: &'static str, h: (&'static str, String)| {
        let gw = &gw;
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let r = gw.get_with("acme.aggios.app", path, &[(h.0, &h.1)]).await;
                out.push(r.status);
            }
            out
        }
    };
    let (ann, bob) = (format!("ann-{run}"), format!("bob-{run}"));
    assert_eq!(
        statuses(
            4,
            "/token/a",
            (
                "authorization",
                Token::new(SECRET, "acme").user(&ann).bearer()
            )
        )
        .await,
        vec![200, 200, 200, 429]
    );
    assert_eq!(
        statuses(
            3,
            "/token/a",
            (
                "authorization",
                Token::new(SECRET, "acme").user(&bob).bearer()
            )
        )
        .await,
        vec![200, 200, 200],
        "another user of the same tenant, from the same address, has their own quota"
    );
    assert_eq!(
        statuses(3, "/read/a", ("x-api-key", k1.full.clone())).await,
        vec![200, 200, 429]
    );
    assert_eq!(
        statuses(2, "/read/a", ("x-api-key", k2.full.clone())).await,
        vec![200, 200],
        "another key of the same tenant has its own quota"
    );
    // The counters Redis holds are the user ids' and the key ids'.
    let mut c = redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for counter in [
        format!("{per_user}:{ann}"),
        format!("{per_user}:{bob}"),
        format!("{per_key}:key-{}", k1.prefix),
        format!("{per_key}:key-{}", k2.prefix),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("aggios:rl:{{{counter}}}"))
            .query_async(&mut c)
            .await
            .expect("PTTL");
        assert!(ttl > 0, "no Redis counter for {counter}");
    }
    let fell_back_to_ip: i64 = redis::cmd("EXISTS")
        .arg(format!("aggios:rl:{{{per_user}:ip=127.0.0.1}}"))
        .arg(format!("aggios:rl:{{{per_key}:ip=127.0.0.1}}"))
        .query_async(&mut c)
        .await
        .expect("EXISTS");
    assert_eq!(fell_back_to_ip, 0);
}

/// The shared tier: a record the backend gave one gateway, and an absence, sit in Redis for the cache
/// TTL (less the in-process part), and a second gateway on the same Redis decides from them without
/// asking its own backend lookup (which here knows no key at all).
#[tokio::test]
async fn the_redis_tier_holds_records_and_absences_that_another_gateway_uses_without_the_backend() {
    let long = |c: String| c.replace("cache_ttl = \"3s\"", "cache_ttl = \"60s\"");
    let stack = Stack::start(&redis_url(), long).await;
    let (known, unknown) = (new_key(), new_key());
    publish(&stack.lookup, &known, "acme", &["files:read"], None);
    let host = "acme.aggios.app";
    let r = stack
        .gw
        .get_with(host, "/read/a", &[("x-api-key", &known.full)])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = stack
        .gw
        .get_with(host, "/read/a", &[("x-api-key", &unknown.full)])
        .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(
        stack.lookup.hits.load(std::sync::atomic::Ordering::SeqCst),
        2
    );

    let mut c = redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for (k, present) in [(&known, true), (&unknown, false)] {
        let key = contracts::redis_keys::api_key(&k.prefix);
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .expect("GET");
        let value = value.unwrap_or_else(|| panic!("nothing cached at {key}"));
        let v: serde_json::Value = serde_json::from_str(&value).expect("json");
        if present {
            assert_eq!(
                v["key_sha256"],
                hex::encode(Sha256::digest(known.full.as_bytes())),
                "{value}"
            );
        } else {
            assert_eq!(v["absent"], true, "{value}");
        }
        // cache_ttl 60 s less the in-process 5 s: 55 s.
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .expect("PTTL");
        assert!((30_000..=55_000).contains(&ttl), "{key}: PTTL {ttl}");
    }

    let lookup = DocServer::start().await;
    let gw = Gateway::start_with_env(
        &long(config(&stack.up, &stack.v2, &lookup)),
        &[("GW_REDIS", &redis_url()), ("GW_SECRET", SECRET)],
    )
    .await;
    let r = gw
        .get_with(host, "/read/b", &[("x-api-key", &known.full)])
        .await;
    assert_eq!(
        r.status, 200,
        "the second gateway refused the key: {:?}",
        r.body
    );
    let r = gw
        .get_with(host, "/read/b", &[("x-api-key", &unknown.full)])
        .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(
        lookup.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the second gateway asked its backend"
    );
}
