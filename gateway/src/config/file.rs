//! The configuration file as written: raw TOML shapes, no interpretation.
//!
//! Every struct denies unknown fields; [`super::schema`] reports all unknown keys at once (with the nearest
//! valid key) before serde sees the file, so serde's own one-error-at-a-time answer is a backstop only.
//! The key reference it checks against is generated from these structs (`file_tables!` gives each its
//! [`Shaped::SHAPE`]): a new key is one new field.
//! Values whose errors must point at a `file:line:col` are wrapped in [`Spanned`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::schema::{Shape, Shaped};

file_tables! {
    /// The whole file.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FileConfig {
        #[serde(default)]
        pub server: ServerFile,
        #[serde(default)]
        pub entrypoints: EntrypointsFile,
        #[serde(default)]
        pub tenancy: TenancyFile,
        #[serde(default)]
        pub limits: LimitsFile,
        #[serde(default)]
        pub forwarding: ForwardingFile,
        #[serde(default)]
        pub log: LogFile,
        #[serde(default)]
        pub auth: AuthFile,
        pub redis: Option<RedisFile>,
        pub dns: Option<DiscoveryDnsFile>,
        pub tenant_stats: Option<TenantStatsFile>,
        pub tracing: Option<TracingFile>,
        pub overload: Option<OverloadFile>,
        pub plans: Option<PlansFile>,
        pub tls: Option<TlsFile>,
        pub h3: Option<H3File>,
        #[serde(default)]
        pub admin: AdminFile,
        #[serde(default)]
        pub rate_limits: BTreeMap<String, RateLimitFile>,
        #[serde(default)]
        pub upstreams: Vec<UpstreamFile>,
        #[serde(default)]
        pub routes: Vec<RouteFile>,
    }
}

file_tables! {
    /// `[server]`: process-level settings (need a restart to change).
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServerFile {
        pub threads: Option<Spanned<i64>>,
        pub work_stealing: Option<bool>,
        pub reuseport: Option<Spanned<bool>>,
        pub shutdown_grace: Option<Spanned<String>>,
        pub shutdown_delay: Option<Spanned<String>>,
        pub upgrade_sock: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `[entrypoints]`: listener addresses.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EntrypointsFile {
        pub http: Option<Spanned<String>>,
        pub https: Option<Spanned<String>>,
        pub admin: Option<Spanned<String>>,
        /// UDP: HTTP/3 over QUIC with the https entrypoint's certificates.
        pub h3: Option<Spanned<String>>,
        /// PROXY protocol on the http and https entrypoints, from these balancers only.
        pub proxy_protocol: Option<Spanned<ProxyProtocolFile>>,
    }
}

file_tables! {
    /// `[h3]`: the HTTP/3 entrypoint's limits and discovery (every key optional).
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct H3File {
        /// `Alt-Svc` max-age on HTTPS responses over TCP (`"0s"`: not advertised).
        pub alt_svc_max_age: Option<Spanned<String>>,
        /// A QUIC connection with nothing sent or received for this long is closed.
        pub idle_timeout: Option<Spanned<String>>,
        /// The QUIC handshake must complete within this time.
        pub handshake_timeout: Option<Spanned<String>>,
        /// Request streams a client may have open at once on one connection.
        pub max_streams: Option<Spanned<i64>>,
        /// QUIC connections open at once from one client address.
        pub max_connections_per_ip: Option<Spanned<i64>>,
        /// Handshakes in progress above which a new client must prove its address (a Retry first);
        /// 0: every new client.
        pub retry_above: Option<Spanned<i64>>,
        /// The congestion controller of QUIC connections: `cubic` or `bbr`.
        pub congestion: Option<Spanned<String>>,
        /// 0-RTT: a resumed client's first flight may carry requests (safe methods forwarded with
        /// `Early-Data: 1`, others held until the handshake completes).
        pub zero_rtt: Option<bool>,
        /// How long a session ticket can resume (and carry 0-RTT) after it was issued; each once.
        pub zero_rtt_window: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `[entrypoints] proxy_protocol = { from = [...] }`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProxyProtocolFile {
        pub from: Vec<Spanned<String>>,
    }
}

file_tables! {
    /// `[tenancy]`: which host labels are tenants.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TenancyFile {
        #[serde(default)]
        pub base_domains: Vec<Spanned<String>>,
        #[serde(default)]
        pub reserved: Vec<Spanned<String>>,
    }
}

file_tables! {
    /// `[limits]`: request limits enforced at the edge.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LimitsFile {
        pub max_header_bytes: Option<Spanned<i64>>,
        pub max_headers: Option<Spanned<i64>>,
        pub header_timeout: Option<Spanned<String>>,
        pub body_timeout: Option<Spanned<String>>,
        pub h2_idle_timeout: Option<Spanned<String>>,
        pub max_body_bytes: Option<Spanned<i64>>,
    }
}

file_tables! {
    /// `[forwarding]`: whose `X-Forwarded-*` headers are believed.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ForwardingFile {
        #[serde(default)]
        pub trusted_proxies: Vec<Spanned<String>>,
        /// Forward request fields whose name contains `_` (default false: dropped, as nginx does).
        pub underscores_in_headers: Option<Spanned<bool>>,
    }
}

file_tables! {
    /// `[log]`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LogFile {
        pub access_log: Option<bool>,
        pub format: Option<Spanned<String>>,
        pub level: Option<Spanned<String>>,
    }
}

file_tables! {
    /// One `[[upstreams]]` entry.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct UpstreamFile {
        pub name: Spanned<String>,
        pub servers: Spanned<Vec<Spanned<ServerEntry>>>,
        pub balance: Option<Spanned<String>>,
        pub protocol: Option<Spanned<String>>,
        pub health: Option<HealthFile>,
        #[serde(default)]
        pub timeouts: TimeoutsFile,
        pub max_tries: Option<Spanned<i64>>,
        pub concurrency: Option<Spanned<ConcurrencyFile>>,
        /// TLS towards the upstream (`protocol = "https"` or `"h2"`).
        pub tls: Option<Spanned<UpstreamTlsFile>>,
        /// A PROXY protocol header (`"v2"`) at the start of every connection to the servers.
        pub proxy_protocol: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `tls = { … }` of an upstream.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct UpstreamTlsFile {
        pub ca: Option<Spanned<String>>,
        pub sni: Option<Spanned<String>>,
        pub cert: Option<Spanned<String>>,
        pub key: Option<Spanned<String>>,
        pub verify: Option<Spanned<bool>>,
    }
}

file_tables! {
    /// `concurrency = { … }` of an upstream: how many requests it may have in flight.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ConcurrencyFile {
        pub min: Option<Spanned<i64>>,
        pub max: Option<Spanned<i64>>,
        pub adaptive: Option<bool>,
    }

    /// `[overload]`: admission to upstreams under load.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OverloadFile {
        pub queue_timeout: Option<Spanned<String>>,
        pub queue_size: Option<Spanned<i64>>,
        pub max_connections: Option<Spanned<i64>>,
        pub per_client_connections: Option<Spanned<i64>>,
        pub h2_streams_per_connection: Option<Spanned<i64>>,
        pub core_backpressure: Option<bool>,
        pub core_delay_target: Option<Spanned<String>>,
    }
}

/// A server: `"127.0.0.1:8081"` or `{ addr = "127.0.0.1:8081", weight = 3 }`.
#[derive(Debug)]
pub enum ServerEntry {
    Addr(String),
    Weighted(WeightedServer),
}

impl Shaped for ServerEntry {
    const SHAPE: Shape = Shape::StringOrTable(match WeightedServer::SHAPE {
        Shape::Table(keys) => keys,
        _ => &[],
    });
}

file_tables! {
    /// The table form of a server.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct WeightedServer {
        pub addr: String,
        pub weight: Option<i64>,
    }
}

// Hand-written rather than `#[serde(untagged)]`: untagged enums buffer their input, which loses the
// spans that errors need.
impl<'de> Deserialize<'de> for ServerEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ServerEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"host:port\" or { addr = \"host:port\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ServerEntry, E> {
                Ok(ServerEntry::Addr(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ServerEntry, A::Error> {
                WeightedServer::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ServerEntry::Weighted)
            }
        }
        d.deserialize_any(V)
    }
}

file_tables! {
    /// `health = { … }` of an upstream.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HealthFile {
        pub path: Option<Spanned<String>>,
        pub interval: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
        pub healthy_threshold: Option<Spanned<i64>>,
        pub unhealthy_threshold: Option<Spanned<i64>>,
        pub host: Option<Spanned<String>>,
        /// gRPC's health protocol (`grpc.health.v1.Health/Check`) instead of `GET path`.
        pub grpc: Option<Spanned<bool>>,
        /// The service `grpc.health.v1` is asked about (default `""`: the whole server).
        pub grpc_service: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `timeouts = { … }` of an upstream or a route.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TimeoutsFile {
        pub connect: Option<Spanned<String>>,
        pub read: Option<Spanned<String>>,
        pub write: Option<Spanned<String>>,
        pub idle: Option<Spanned<String>>,
    }
}

file_tables! {
    /// Header rewrites of a route.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HeaderRulesFile {
        #[serde(default)]
        pub add: BTreeMap<String, Spanned<String>>,
        #[serde(default)]
        pub set: BTreeMap<String, Spanned<String>>,
        #[serde(default)]
        pub remove: Vec<Spanned<String>>,
    }
}

file_tables! {
    /// One `[[routes]]` entry.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RouteFile {
        pub name: Spanned<String>,
        #[serde(default)]
        pub hosts: Vec<Spanned<String>>,
        pub path_prefix: Option<Spanned<String>>,
        pub methods: Option<Vec<Spanned<String>>>,
        #[serde(default)]
        pub headers: BTreeMap<String, Spanned<String>>,
        pub priority: Option<Spanned<i64>>,
        pub upstream: Option<Spanned<String>>,
        #[serde(default)]
        pub strip_prefix: bool,
        #[serde(default)]
        pub redirect_https: bool,
        pub max_body_bytes: Option<Spanned<i64>>,
        #[serde(default)]
        pub timeouts: TimeoutsFile,
        #[serde(default)]
        pub request_headers: HeaderRulesFile,
        #[serde(default)]
        pub response_headers: HeaderRulesFile,
        pub auth: Option<Spanned<String>>,
        pub on_store_error: Option<Spanned<String>>,
        pub rate_limits: Option<Vec<Spanned<String>>>,
        /// Whether the route's requests count against the tenant's monthly quota (with `[plans]`;
        /// default: when the route's auth binds the tenant).
        pub quota: Option<Spanned<bool>>,
        pub scopes: Option<Vec<Spanned<String>>>,
        /// Client addresses (CIDRs or addresses) the route serves / refuses, before auth.
        pub allow_ips: Option<Vec<Spanned<String>>>,
        pub deny_ips: Option<Vec<Spanned<String>>>,
        pub cors: Option<CorsFile>,
        pub compression: Option<Spanned<CompressionFile>>,
        pub security_headers: Option<SecurityHeadersFile>,
        pub canary: Option<Spanned<CanaryFile>>,
        pub client_auth: Option<Spanned<ClientAuthFile>>,
        /// Browsers' gRPC-Web calls bridged to gRPC (an HTTP/2 upstream).
        pub grpc_web: Option<Spanned<bool>>,
    }
}

file_tables! {
    /// `client_auth = { … }` of a route: client certificates at the edge.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ClientAuthFile {
        pub mode: Option<Spanned<String>>,
        pub ca: Spanned<String>,
        /// PEM CRLs of the CA: certificates listed there are refused.
        pub crl: Option<Spanned<String>>,
        /// `spiffe://partners.example/tenant/{tenant}`: the URI SAN that names a certificate's tenant.
        pub tenant_uri: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `canary = { … }` of a route: a share of its traffic to another upstream, rolled back on errors.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CanaryFile {
        pub upstream: Spanned<String>,
        pub weight: Option<Spanned<i64>>,
        pub header: Option<Spanned<String>>,
        pub cookie: Option<Spanned<String>>,
        pub sticky: Option<Spanned<String>>,
        pub window: Option<Spanned<String>>,
        pub min_requests: Option<Spanned<i64>>,
        pub max_error_ratio: Option<Spanned<f64>>,
        pub max_p99_ratio: Option<Spanned<f64>>,
        /// An environment variable holding the secret that lets any client force a side.
        pub override_secret_env: Option<Spanned<String>>,
        /// Whether an override may send requests to a canary at weight 0.
        pub force_at_zero: Option<Spanned<bool>>,
    }
}

file_tables! {
    /// `cors = { … }` of a route.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CorsFile {
        pub origins: Vec<Spanned<String>>,
        pub methods: Option<Vec<Spanned<String>>>,
        pub headers: Option<Vec<Spanned<String>>>,
        pub expose_headers: Option<Vec<Spanned<String>>>,
        #[serde(default)]
        pub credentials: bool,
        pub max_age: Option<Spanned<i64>>,
    }
}

file_tables! {
    /// `compression = { … }` of a route.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CompressionFile {
        pub algorithms: Option<Vec<Spanned<String>>>,
        pub types: Option<Vec<Spanned<String>>>,
        pub min_bytes: Option<Spanned<i64>>,
        pub levels: Option<CompressionLevelsFile>,
    }
}

file_tables! {
    /// `levels = { gzip = 6, br = 4, zstd = 3 }` of a route's compression.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CompressionLevelsFile {
        pub gzip: Option<Spanned<i64>>,
        pub br: Option<Spanned<i64>>,
        pub zstd: Option<Spanned<i64>>,
    }
}

file_tables! {
    /// `security_headers = { … }` of a route.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SecurityHeadersFile {
        pub hsts: Option<bool>,
        pub hsts_max_age: Option<Spanned<i64>>,
        pub hsts_include_subdomains: Option<bool>,
        pub content_type_options: Option<bool>,
        pub referrer_policy: Option<Spanned<String>>,
        pub frame_options: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `[auth]`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AuthFile {
        pub jwt: Option<JwtFile>,
        pub api_keys: Option<ApiKeysFile>,
    }
}

file_tables! {
    /// `[plans]`: where the gateway learns a tenant's plan, and what it applies when it cannot.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PlansFile {
        pub lookup_url: Spanned<String>,
        pub timeout: Option<Spanned<String>>,
        pub cache_ttl: Option<Spanned<String>>,
        pub on_policy_error: Option<Spanned<String>>,
        pub expected_replicas: Option<Spanned<i64>>,
        pub default: Option<PlanDefaultFile>,
    }
}

file_tables! {
    /// `[plans.default]`: the limits applied while a tenant's own cannot be fetched.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PlanDefaultFile {
        pub plan: Option<Spanned<String>>,
        pub requests_per_second: Option<Spanned<i64>>,
        pub burst: Option<Spanned<i64>>,
        pub monthly_requests: Option<Spanned<i64>>,
    }
}

file_tables! {
    /// `[auth.api_keys]`: where the gateway looks keys up, and how long it may cache them.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ApiKeysFile {
        pub lookup_url: Spanned<String>,
        pub cache_ttl: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
        pub failures_per_minute: Option<Spanned<i64>>,
    }
}

/// `key = "tenant"` or `key = ["tenant", "route"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum KeyFile {
    One(String),
    Many(Vec<String>),
}

impl Shaped for KeyFile {
    const SHAPE: Shape = Shape::Value;
}

file_tables! {
    /// One `[rate_limits.NAME]` policy.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RateLimitFile {
        pub key: Spanned<KeyFile>,
        pub limit: Spanned<i64>,
        pub period: Spanned<String>,
        pub burst: Option<Spanned<i64>>,
        pub scope: Option<Spanned<String>>,
        pub fail: Option<Spanned<String>>,
        pub expected_replicas: Option<Spanned<i64>>,
        pub headers: Option<bool>,
        #[serde(default)]
        pub overrides: BTreeMap<String, Spanned<OverrideFile>>,
    }
}

file_tables! {
    /// A tenant's own limit within a policy.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OverrideFile {
        pub limit: Spanned<i64>,
        pub burst: Option<Spanned<i64>>,
    }
}

file_tables! {
    /// `[auth.jwt]`: HS256 keys (one, or several keyed by `kid` for rotation) and claim checks.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct JwtFile {
        pub secret_env: Option<Spanned<String>>,
        pub secret_file: Option<Spanned<String>>,
        #[serde(default)]
        pub keys: Vec<JwtKeyFile>,
        pub tenant_claim: Option<Spanned<String>>,
        pub leeway: Option<Spanned<String>>,
        pub issuer: Option<Spanned<String>>,
        pub audience: Option<Spanned<String>>,
        pub max_token_bytes: Option<Spanned<i64>>,
        pub jwks_file: Option<Spanned<String>>,
        pub jwks_url: Option<Spanned<String>>,
        pub jwks_refresh: Option<Spanned<String>>,
    }
}

file_tables! {
    /// One key of `[auth.jwt] keys`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct JwtKeyFile {
        pub kid: Spanned<String>,
        pub secret_env: Option<Spanned<String>>,
        pub secret_file: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `[redis]`: the store shared by all gateway replicas (token revocation now, rate limits later).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RedisFile {
        pub url_env: Spanned<String>,
        pub cluster: Option<bool>,
        pub ca_file: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
        pub revocation_cache: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `[tracing]`: OpenTelemetry export (off when absent).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TracingFile {
        pub otlp_endpoint: Spanned<String>,
        pub service_name: Option<Spanned<String>>,
        pub sample_ratio: Option<Spanned<f64>>,
    }
}

file_tables! {
    /// `[tenant_stats]`: per-tenant figures and how many tenants Prometheus sees.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TenantStatsFile {
        pub top_k: Option<Spanned<i64>>,
        pub interval: Option<Spanned<String>>,
        pub max_tenants: Option<Spanned<i64>>,
        pub idle_evict: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `[dns]`: how upstream servers given as host names are resolved and re-resolved.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DiscoveryDnsFile {
        pub nameservers: Option<Spanned<Vec<Spanned<String>>>>,
        pub refresh: Option<Spanned<String>>,
        pub timeout: Option<Spanned<String>>,
    }
}

file_tables! {
    /// `[tls]`: termination on `entrypoints.https`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TlsFile {
        pub handshake_timeout: Option<Spanned<String>>,
        /// Staple OCSP responses for certificates that name a responder (default on).
        pub ocsp_stapling: Option<bool>,
        #[serde(default)]
        pub certificates: Vec<Spanned<CertificateFile>>,
        pub acme: Option<AcmeFile>,
        pub on_demand: Option<Spanned<OnDemandFile>>,
    }
}

file_tables! {
    /// `[tls.on_demand]`: certificates for tenants' own domains, ordered at their first handshake.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OnDemandFile {
        pub ask: Spanned<String>,
        pub challenge: Option<Spanned<String>>,
        pub ask_timeout: Option<Spanned<String>>,
        pub cache_ttl: Option<Spanned<String>>,
        pub wait: Option<Spanned<String>>,
        pub max_concurrent_orders: Option<Spanned<i64>>,
        pub orders_per_minute: Option<Spanned<i64>>,
        pub orders_per_hour: Option<Spanned<i64>>,
        pub tenant_orders_per_hour: Option<Spanned<i64>>,
        pub cache_size: Option<Spanned<i64>>,
        pub asks_per_second: Option<Spanned<i64>>,
        pub client_asks_per_minute: Option<Spanned<i64>>,
    }
}

file_tables! {
    /// One static certificate: a PEM chain and its key; the names come from the certificate.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CertificateFile {
        pub cert: Spanned<String>,
        pub key: Spanned<String>,
        /// Served to clients that send no SNI, or a name no certificate covers.
        #[serde(default)]
        pub default: bool,
    }
}

file_tables! {
    /// `[tls.acme]`: certificates ordered and renewed by the gateway itself.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AcmeFile {
        pub directory: Spanned<String>,
        pub email: Option<Spanned<String>>,
        pub ca_root: Option<Spanned<String>>,
        #[serde(default)]
        pub domains: Vec<Spanned<String>>,
        pub challenge: Option<Spanned<String>>,
        pub storage: Option<Spanned<String>>,
        pub storage_key_env: Option<Spanned<String>>,
        pub lock_lease: Option<Spanned<String>>,
        pub eab: Option<Spanned<EabFile>>,
        pub retry_initial: Option<Spanned<String>>,
        pub retry_max: Option<Spanned<String>>,
        pub order_timeout: Option<Spanned<String>>,
        pub dns: Option<Spanned<DnsFile>>,
    }
}

file_tables! {
    /// `[tls.acme] dns`: where DNS-01 TXT records are published.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DnsFile {
        pub provider: Spanned<String>,
        pub server: Option<Spanned<String>>,
        pub zone: Option<Spanned<String>>,
        pub key_name: Option<Spanned<String>>,
        pub algorithm: Option<Spanned<String>>,
        pub secret_env: Option<Spanned<String>>,
        pub command: Option<Spanned<Vec<String>>>,
        pub timeout: Option<Spanned<String>>,
    }
}

file_tables! {
    /// External Account Binding: the CA's key id and its HMAC key (base64url, from the environment).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EabFile {
        pub kid: Spanned<String>,
        pub hmac_env: Spanned<String>,
    }
}

file_tables! {
    /// `[admin]`: who may use the admin listener.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AdminFile {
        #[serde(default)]
        pub names: Vec<Spanned<String>>,
        pub token_env: Option<Spanned<String>>,
    }
}
