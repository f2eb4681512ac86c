//! The work a comparison asks of every proxy: the requests the generator sends, and the gateway's
//! configuration for it. Peers get theirs from `compare::peers`.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

use crate::generator::RequestSpec;

/// Every request's host sits under this domain; the label before it is the tenant.
pub const BASE_DOMAIN: &str = "bench.test";
/// The HS256 secret of the benchmark's tokens (the gateway reads it from `BENCH_JWT_SECRET`).
pub const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret-01";
/// Tenants of the tenant scenarios.
pub const TENANTS: usize = 1000;
/// The global limit of `tenant_jwt_ratelimit`: far above what one core serves, so it never trips and
/// every request costs one decision.
pub const LIMIT_PER_SECOND: u64 = 1_000_000;
/// The `compressed` scenario's path: the upstream answers it with [`json_body`] (`application/json`).
pub const JSON_PATH: &str = "/json";
/// Objects in [`json_body`]: ~27 KB, a page of an API listing.
const JSON_ITEMS: usize = 100;

/// A page of an API's user listing, as the backend answers `GET /api/users`: ~27 KB of JSON whose
/// repetitive keys and values compress the way real API JSON does (deterministic: every run compares
/// the same bytes).
pub fn json_body() -> String {
    let items: Vec<serde_json::Value> = (0..JSON_ITEMS as u64)
        .map(|i| {
            serde_json::json!({
                "id": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", i * 2_654_435_761u64 % 0xffff_ffff, i * 7 % 0xffff, i % 0xfff, (i * 13) % 0xfff, i * 40_503),
                "email": format!("user{i}@tenant{}.example.com", i % 7),
                "display_name": format!("User Number {i}"),
                "role": if i % 10 == 0 { "admin" } else { "member" },
                "created_at": format!("2026-{:02}-{:02}T{:02}:{:02}:{:02}Z", 1 + i % 12, 1 + i % 28, i % 24, (i * 7) % 60, (i * 13) % 60),
                "last_login_at": format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + i % 30, (i * 5) % 24, (i * 11) % 60),
                "mfa_enabled": i % 3 == 0,
                "storage_bytes": i * 1_048_576 + 12_345,
                "tenant_id": format!("tenant{}", i % 7),
            })
        })
        .collect();
    serde_json::json!({ "users": items, "next_cursor": "eyJvZmZzZXQiOjEwMH0", "total": 4_213 })
        .to_string()
}

/// Where the gateway of `tenant_jwt_plan` asks for a tenant's plan (`[plans] lookup_url`): the harness's
/// upstream answers it (`upstream.rs`) with a plan of [`LIMIT_PER_SECOND`].
pub const POLICY_PATH: &str = "/internal/tenant-policy/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Scenario {
    /// A GET through a route to a small fixed response.
    Plain,
    /// Tokens of 1 000 tenants, each request on its own tenant's host, on a `jwt_tenant` route.
    TenantJwt,
    /// `tenant_jwt` plus a global (Redis) per-tenant limit that never trips.
    TenantJwtRatelimit,
    /// `tenant_jwt` with the built-in `plan` limit instead: each tenant's plan (looked up once, then
    /// cached) sets its rate, and its monthly quota is counted in the same Redis call (#26).
    TenantJwtPlan,
    /// A new TLS connection (full handshake) per request, on a plain route.
    TlsHandshake,
    /// HTTPS over kept-alive connections (TLS 1.3, one handshake per connection), on a plain route.
    TlsKeepalive,
    /// HTTP/3 over kept-alive QUIC connections (one handshake per connection), on a plain route (#29).
    H3,
    /// A new QUIC connection (full handshake) per request over HTTP/3, on a plain route.
    H3Handshake,
    /// A real login (`POST /api/auth/login`) through the proxy to the backend, against the real Postgres:
    /// one user per connection.
    Login,
    /// A GET of ~27 KB of API JSON with a browser's `Accept-Encoding` (gzip, deflate, br, zstd),
    /// compressed at the proxy — the gateway's route compression pinned to gzip level 1 (the variants
    /// `compression_defaults` and `no_compression` change that), nginx's `gzip on` at its default level
    /// 1, HAProxy's libslz gzip: CPU per request and bytes per response (#28 point 1).
    Compressed,
    /// Past saturation: open loop at 1.5× and 3× each target's own closed-loop maximum over 512
    /// connections, on the plain route; goodput, answered and refused latencies (`compare::overload`).
    Overload,
    /// A victim tenant at ~5 % of capacity on its own host while a noisy tenant floods on 256
    /// connections, both with their own tokens on a `jwt_tenant` route: the victim's p99 with the flood
    /// over its p99 alone, with the upstream and then the proxy's own core as the bottleneck.
    NoisyNeighbor,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::TenantJwt => "tenant_jwt",
            Scenario::TenantJwtRatelimit => "tenant_jwt_ratelimit",
            Scenario::TenantJwtPlan => "tenant_jwt_plan",
            Scenario::TlsHandshake => "tls_handshake",
            Scenario::TlsKeepalive => "tls_keepalive",
            Scenario::H3 => "h3",
            Scenario::H3Handshake => "h3_handshake",
            Scenario::Login => "login",
            Scenario::Compressed => "compressed",
            Scenario::Overload => "overload",
            Scenario::NoisyNeighbor => "noisy_neighbor",
        }
    }

    pub fn tenants(self) -> bool {
        matches!(
            self,
            Scenario::TenantJwt
                | Scenario::TenantJwtRatelimit
                | Scenario::TenantJwtPlan
                | Scenario::NoisyNeighbor
        )
    }

    /// The overload scenarios: measured by `compare::overload`, with the peers' shedding configured.
    pub fn overload(self) -> bool {
        matches!(self, Scenario::Overload | Scenario::NoisyNeighbor)
    }

    pub fn tls(self) -> bool {
        matches!(
            self,
            Scenario::TlsHandshake | Scenario::TlsKeepalive | Scenario::H3 | Scenario::H3Handshake
        )
    }

    /// HTTP/3: the generator speaks QUIC to the proxy (the same port number, UDP).
    pub fn h3(self) -> bool {
        matches!(self, Scenario::H3 | Scenario::H3Handshake)
    }

    /// Whether the generator keeps its connections (all but the handshake scenarios).
    pub fn keep_alive(self) -> bool {
        !matches!(self, Scenario::TlsHandshake | Scenario::H3Handshake)
    }

    /// The requests of one run, rotated over by the generator.
    pub fn requests(self) -> Result<Vec<RequestSpec>, jsonwebtoken::errors::Error> {
        if self == Scenario::Login {
            return Ok((0..LOGIN_USERS)
                .map(|i| {
                    let mut r = RequestSpec::get(
                        format!("{LOGIN_TENANT}.{BASE_DOMAIN}"),
                        "/api/auth/login",
                    )
                    .header("Content-Type", "application/json");
                    r.method = http::Method::POST;
                    r.body = bytes::Bytes::from(
                        serde_json::json!({ "email": login_email(i), "password": LOGIN_PASSWORD })
                            .to_string(),
                    );
                    r
                })
                .collect());
        }
        if self == Scenario::Compressed {
            return Ok(vec![RequestSpec::get(
                format!("plain.{BASE_DOMAIN}"),
                JSON_PATH,
            )
            // A current browser's list: each proxy picks what it has.
            .header("Accept-Encoding", "gzip, deflate, br, zstd")]);
        }
        if !self.tenants() {
            return Ok(vec![RequestSpec::get(format!("plain.{BASE_DOMAIN}"), "/")]);
        }
        (0..TENANTS)
            .map(|i| {
                let tenant = tenant(i);
                let token = mint(
                    JWT_SECRET,
                    &tenant,
                    "member",
                    &uuid::Uuid::new_v4().to_string(),
                )?;
                Ok(RequestSpec::get(format!("{tenant}.{BASE_DOMAIN}"), "/")
                    .header("Authorization", format!("Bearer {token}")))
            })
            .collect()
    }

    /// The gateway's configuration: the scenario's entrypoint (`listen`), the upstream, and the
    /// scenario's route. `tls`: the certificate and key files of the TLS scenario, whose plain HTTP
    /// entrypoint (required; it redirects) listens on `spare`.
    pub fn gateway_toml(
        self,
        listen: SocketAddr,
        admin: SocketAddr,
        spare: SocketAddr,
        upstream: SocketAddr,
        tls: Option<(&str, &str)>,
    ) -> String {
        let entries = if self.h3() {
            format!("http = \"{spare}\"\nhttps = \"{listen}\"\nh3 = \"{listen}\"")
        } else if self.tls() {
            format!("http = \"{spare}\"\nhttps = \"{listen}\"")
        } else {
            format!("http = \"{listen}\"")
        };
        let health = if self == Scenario::Login {
            "/healthz"
        } else {
            "/"
        };
        let mut toml = format!(
            r#"[server]
threads = 1
[entrypoints]
{entries}
admin = "{admin}"
[tenancy]
base_domains = ["{BASE_DOMAIN}"]
[log]
access_log = true
format = "json"
level = "warn"
# Every benchmark client comes from 127.0.0.1: it stands for many clients, not one.
[overload]
max_connections = 1000000
per_client_connections = 1000000
[[upstreams]]
name = "origin"
servers = ["{upstream}"]
health = {{ path = "{health}", interval = "2s", timeout = "1s" }}
[[routes]]
name = "bench"
hosts = ["*.{BASE_DOMAIN}"]
upstream = "origin"
"#
        );
        match self {
            Scenario::Plain
            | Scenario::TlsHandshake
            | Scenario::TlsKeepalive
            | Scenario::H3
            | Scenario::H3Handshake
            | Scenario::Login
            | Scenario::Overload => {}
            Scenario::Compressed => {
                toml.push_str("compression = { algorithms = [\"gzip\"], levels = { gzip = 1 } }\n")
            }
            Scenario::TenantJwt | Scenario::NoisyNeighbor => {
                toml.push_str("auth = \"jwt_tenant\"\n")
            }
            Scenario::TenantJwtRatelimit => {
                toml.push_str("auth = \"jwt_tenant\"\nrate_limits = [\"per_tenant\"]\n")
            }
            Scenario::TenantJwtPlan => {
                toml.push_str("auth = \"jwt_tenant\"\nrate_limits = [\"plan\"]\n")
            }
        }
        if self.tenants() {
            toml.push_str("[auth.jwt]\nsecret_env = \"BENCH_JWT_SECRET\"\n");
        }
        if self == Scenario::TenantJwtRatelimit {
            toml.push_str(&format!(
                "[redis]\nurl_env = \"BENCH_REDIS_URL\"\n[rate_limits.per_tenant]\nkey = \"tenant\"\nlimit = {LIMIT_PER_SECOND}\nperiod = \"1s\"\nscope = \"global\"\n"
            ));
        }
        if self == Scenario::TenantJwtPlan {
            toml.push_str(&format!(
                "[redis]\nurl_env = \"BENCH_REDIS_URL\"\n[plans]\nlookup_url = \"http://{upstream}{}{{tenant}}\"\ncache_ttl = \"300s\"\n",
                POLICY_PATH
            ));
        }
        if self.h3() {
            // Every benchmark client comes from 127.0.0.1 (as above); no Retry, as the peers send none
            // unless configured to (each new client would pay one more round trip).
            toml.push_str("[h3]\nmax_connections_per_ip = 1000000\nretry_above = 1000000\n");
        }
        if let Some((cert, key)) = tls {
            toml.push_str(&format!(
                "[tls]\ncertificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n"
            ));
        }
        toml
    }
}

/// The `login` scenario's tenant, users (one per connection) and their password (a throw-away database).
pub const LOGIN_TENANT: &str = "login";
pub const LOGIN_USERS: usize = 16;
pub const LOGIN_PASSWORD: &str = "loadtest-password-0123";

pub fn login_email(i: usize) -> String {
    format!("user{i}@login.test")
}

/// The tenant label of tenant `i`.
pub fn tenant(i: usize) -> String {
    format!("t{i:04}")
}

/// An HS256 access token for `tenant` as the backend mints them (`contracts::claims::AccessClaims`),
/// valid for a day: the one token minter of the benchmarks (`loadtest token` prints one for scripts).
pub fn mint(
    secret: &str,
    tenant: &str,
    role: &str,
    jti: &str,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = contracts::claims::AccessClaims {
        user_id: uuid::Uuid::new_v4(),
        email: format!("bench@{tenant}.test"),
        tenant_id: tenant.to_string(),
        role: role.to_string(),
        iat: now,
        exp: now + 86_400,
        jti: jti.to_string(),
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_requests_carry_their_own_tenants_token() {
        let reqs = Scenario::TenantJwt.requests().unwrap();
        assert_eq!(reqs.len(), TENANTS);
        let key = jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes());
        for r in [&reqs[0], &reqs[999]] {
            let token = r.headers[0].1.strip_prefix("Bearer ").unwrap();
            let claims = jsonwebtoken::decode::<contracts::claims::AccessClaims>(
                token,
                &key,
                &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
            )
            .unwrap()
            .claims;
            assert_eq!(format!("{}.{BASE_DOMAIN}", claims.tenant_id), r.host);
        }
        assert_eq!(Scenario::Plain.requests().unwrap().len(), 1);
    }

    /// `loadtest token`'s minter: the claims of `contracts`, signed with the secret, a day long.
    #[test]
    fn minted_tokens_carry_the_contract_claims() {
        let token = mint(
            "s3cret-s3cret-s3cret-s3cret-s3cret",
            "acme",
            "admin",
            "bench-1",
        )
        .unwrap();
        let claims = jsonwebtoken::decode::<contracts::claims::AccessClaims>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret"),
            &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .unwrap()
        .claims;
        assert_eq!(
            (
                claims.tenant_id.as_str(),
                claims.role.as_str(),
                claims.jti.as_str()
            ),
            ("acme", "admin", "bench-1")
        );
        assert_eq!(claims.exp - claims.iat, 86_400);
    }
}
