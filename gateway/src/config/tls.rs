//! `[tls]`, validated: the handshake deadline, static certificate files (parsed here, so a bad file is
//! reported at its `file:line:col` and never reaches a handshake), and `[tls.acme]`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use toml::Spanned;

use super::dns01::{validate_dns, DnsProvider};
use super::file::{AcmeFile, OnDemandFile, TlsFile};
use super::{duration_or, is_hostname, Diagnostic};
use crate::support::cert::{Certificate, Source};

/// A client must finish its TLS handshake within this time of the accept.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Where ACME state lives unless `storage` says otherwise (relative to the working directory).
pub const DEFAULT_ACME_STORAGE: &str = "certs/acme";
/// First wait after a failed order; it doubles with every failure in a row…
pub const DEFAULT_ACME_RETRY_INITIAL: Duration = Duration::from_secs(60);
/// …up to this.
pub const DEFAULT_ACME_RETRY_MAX: Duration = Duration::from_secs(6 * 3600);
/// A replica ordering a name holds its lock this long past its last heartbeat.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(30);
/// One order (challenges, validation, finalisation, download) must finish within this time.
pub const DEFAULT_ACME_ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the ask endpoint may take to answer.
pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an answer of the ask endpoint (yes or no) is reused.
pub const DEFAULT_ASK_CACHE_TTL: Duration = Duration::from_secs(300);
/// How long the first handshake for a tenant's domain waits for its certificate.
pub const DEFAULT_ON_DEMAND_WAIT: Duration = Duration::from_secs(8);
/// Orders for tenants' domains running at once.
pub const DEFAULT_MAX_CONCURRENT_ORDERS: usize = 4;
/// Orders for tenants' domains started per minute (a burst of this many, refilled over a minute).
pub const DEFAULT_ORDERS_PER_MINUTE: u32 = 10;
pub const DEFAULT_ON_DEMAND_ORDERS_PER_HOUR: u32 = 50;
pub const DEFAULT_TENANT_ORDERS_PER_HOUR: u32 = 5;
pub const DEFAULT_ASK_CACHE_SIZE: u64 = 10_000;
pub const DEFAULT_ASKS_PER_SECOND: u32 = 20;
pub const DEFAULT_CLIENT_ASKS_PER_MINUTE: u32 = 30;

/// `[tls.on_demand]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OnDemandSettings {
    /// An http(s) URL with `{host}`: 200 with `{"tenant": "…"}` when an active tenant owns the host.
    pub ask: String,
    /// How tenants' domains are validated (never DNS-01: their DNS is not ours).
    pub challenge: ChallengeKind,
    pub ask_timeout: Duration,
    pub cache_ttl: Duration,
    pub wait: Duration,
    pub max_concurrent_orders: usize,
    pub orders_per_minute: u32,
    /// All on-demand orders in an hour: the share of the ACME account's budget at the CA that tenants'
    /// domains may use; the rest stays for the configured domains' renewals.
    pub orders_per_hour: u32,
    /// Orders one tenant's domains may start in an hour.
    pub tenant_orders_per_hour: u32,
    /// Names whose answer is kept (the least recently used leave first).
    pub cache_size: usize,
    /// Asks for names not in the cache, all clients together.
    pub asks_per_second: u32,
    /// Asks for names not in the cache per client address (per /64 for IPv6).
    pub client_asks_per_minute: u32,
}

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub handshake_timeout: Duration,
    /// `ocsp_stapling`: OCSP responses fetched and stapled for certificates that name a responder.
    pub ocsp_stapling: bool,
    /// `[[tls.certificates]]`, parsed.
    pub certificates: Vec<Arc<Certificate>>,
    /// The index in `certificates` of the one marked `default = true`.
    pub default_certificate: Option<usize>,
    pub acme: Option<AcmeSettings>,
    pub on_demand: Option<OnDemandSettings>,
}

/// The challenge an ACME order answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A token served on the HTTP entrypoint (port 80 in production).
    Http01,
    /// A certificate served to an `acme-tls/1` handshake on the HTTPS entrypoint (port 443).
    TlsAlpn01,
    /// A TXT record under `_acme-challenge.`, published through `[tls.acme] dns` (wildcards).
    Dns01,
}

impl ChallengeKind {
    /// As written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }
}

/// `[tls.acme]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    pub directory: String,
    /// `mailto:` URLs.
    pub contact: Vec<String>,
    /// PEM roots trusted for the directory (a private ACME server); system roots otherwise.
    pub ca_root: Option<PathBuf>,
    /// One certificate is ordered per name.
    pub domains: Vec<String>,
    pub challenge: ChallengeKind,
    /// Where DNS-01 records go (set when `challenge = "dns-01"`).
    pub dns: Option<DnsProvider>,
    pub storage: StorageKind,
    pub eab: Option<Eab>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub order_timeout: Duration,
}

/// Where the account, the certificates and the pending challenges live.
#[derive(Clone, PartialEq)]
pub enum StorageKind {
    /// A directory: one gateway instance.
    Dir(PathBuf),
    /// `[redis]`, shared by every replica; private keys sealed with AES-256-GCM under `key`.
    Redis { key: [u8; 32], lease: Duration },
}

impl StorageKind {
    /// The directory of a `Dir` storage.
    pub fn dir(&self) -> Option<&std::path::Path> {
        match self {
            StorageKind::Dir(p) => Some(p),
            StorageKind::Redis { .. } => None,
        }
    }
}

impl std::fmt::Debug for StorageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageKind::Dir(p) => f.debug_tuple("Dir").field(p).finish(),
            StorageKind::Redis { lease, .. } => f
                .debug_struct("Redis")
                .field("key", &"<redacted>")
                .field("lease", lease)
                .finish(),
        }
    }
}

/// External Account Binding. The HMAC key never appears in `Debug` output.
#[derive(Clone, PartialEq)]
pub struct Eab {
    pub kid: String,
    pub hmac: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac", &"<redacted>")
            .finish()
    }
}

/// Validates `[tls]`; `https` tells whether `entrypoints.https` is set.
pub(super) fn validate(
    t: &TlsFile,
    https: Option<&Spanned<String>>,
    redis_configured: bool,
    diags: &mut Vec<Diagnostic>,
) -> TlsSettings {
    let handshake_timeout = duration_or(&t.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT, diags);
    let mut certificates = Vec::new();
    let mut default_certificate = None;
    for c in &t.certificates {
        let spec = c.get_ref();
        let read =
            |p: &Spanned<String>, diags: &mut Vec<Diagnostic>| match std::fs::read(p.get_ref()) {
                Ok(b) => Some(b),
                Err(e) => {
                    diags.push(Diagnostic::at(
                        p,
                        format!("cannot read `{}`: {e}", p.get_ref()),
                    ));
                    None
                }
            };
        let (Some(chain), Some(key)) = (read(&spec.cert, diags), read(&spec.key, diags)) else {
            continue;
        };
        match Certificate::from_pem(
            &chain,
            &key,
            Source::File(PathBuf::from(spec.cert.get_ref())),
        ) {
            Ok(cert) => {
                if spec.default {
                    if default_certificate.is_some() {
                        diags.push(Diagnostic::at(
                            c,
                            "only one certificate can be `default = true`",
                        ));
                    }
                    default_certificate = Some(certificates.len());
                }
                certificates.push(Arc::new(cert));
            }
            Err(e) => diags.push(Diagnostic::at(
                &spec.cert,
                format!(
                    "certificate `{}` with key `{}`: {e}",
                    spec.cert.get_ref(),
                    spec.key.get_ref()
                ),
            )),
        }
    }
    let acme = t
        .acme
        .as_ref()
        .map(|a| validate_acme(a, t.on_demand.is_some(), redis_configured, diags));
    let on_demand = t.on_demand.as_ref().map(|o| {
        if t.acme.is_none() {
            diags.push(Diagnostic::at(
                o,
                "[tls.on_demand] orders certificates over ACME: it needs [tls.acme]",
            ));
        }
        let od = validate_on_demand(o.get_ref(), diags);
        if od.wait >= handshake_timeout {
            let at = o.get_ref().wait.as_ref().map(|w| w.span()).or(Some(o.span()));
            diags.push(Diagnostic::new(
                at,
                "[tls.on_demand] wait must be shorter than [tls] handshake_timeout (the first handshake waits within it)",
            ));
        }
        od
    });
    if https.is_none() {
        diags.push(Diagnostic::new(
            None,
            "[tls] is set but entrypoints.https is not (e.g. https = \"0.0.0.0:443\")",
        ));
    } else if t.certificates.is_empty() && t.acme.is_none() {
        diags.push(Diagnostic::new(
            None,
            "[tls] needs a certificate source: [[tls.certificates]] files or [tls.acme]",
        ));
    }
    TlsSettings {
        handshake_timeout,
        ocsp_stapling: t.ocsp_stapling.unwrap_or(true),
        certificates,
        default_certificate,
        acme,
        on_demand,
    }
}

fn validate_on_demand(o: &OnDemandFile, diags: &mut Vec<Diagnostic>) -> OnDemandSettings {
    let ask = o.ask.get_ref();
    let ok = (ask.starts_with("http://") || ask.starts_with("https://"))
        && ask.contains("{host}")
        && ask
            .replace("{host}", "example.com")
            .parse::<http::Uri>()
            .is_ok();
    if !ok {
        diags.push(Diagnostic::at(
            &o.ask,
            "ask must be an http(s) URL containing `{host}`",
        ));
    }
    let count =
        |v: &Option<Spanned<i64>>, default: u64, what: &str, diags: &mut Vec<Diagnostic>| match v {
            None => default,
            Some(n) if (1..=10_000).contains(n.get_ref()) => *n.get_ref() as u64,
            Some(n) => {
                diags.push(Diagnostic::at(
                    n,
                    format!("{what} must be between 1 and 10000"),
                ));
                default
            }
        };
    let challenge = super::one_of(
        &o.challenge,
        "on-demand challenge",
        &[
            ("http-01", ChallengeKind::Http01),
            ("tls-alpn-01", ChallengeKind::TlsAlpn01),
        ],
        " (a tenant's own domain is not in our DNS)",
        diags,
    );
    OnDemandSettings {
        ask: ask.clone(),
        challenge,
        ask_timeout: duration_or(&o.ask_timeout, DEFAULT_ASK_TIMEOUT, diags),
        cache_ttl: duration_or(&o.cache_ttl, DEFAULT_ASK_CACHE_TTL, diags),
        wait: duration_or(&o.wait, DEFAULT_ON_DEMAND_WAIT, diags),
        max_concurrent_orders: count(
            &o.max_concurrent_orders,
            DEFAULT_MAX_CONCURRENT_ORDERS as u64,
            "max_concurrent_orders",
            diags,
        ) as usize,
        orders_per_minute: count(
            &o.orders_per_minute,
            u64::from(DEFAULT_ORDERS_PER_MINUTE),
            "orders_per_minute",
            diags,
        ) as u32,
        orders_per_hour: count(
            &o.orders_per_hour,
            u64::from(DEFAULT_ON_DEMAND_ORDERS_PER_HOUR),
            "orders_per_hour",
            diags,
        ) as u32,
        tenant_orders_per_hour: count(
            &o.tenant_orders_per_hour,
            u64::from(DEFAULT_TENANT_ORDERS_PER_HOUR),
            "tenant_orders_per_hour",
            diags,
        ) as u32,
        cache_size: match &o.cache_size {
            None => DEFAULT_ASK_CACHE_SIZE as usize,
            Some(n) if (1..=10_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                diags.push(Diagnostic::at(
                    n,
                    "cache_size must be between 1 and 10000000",
                ));
                DEFAULT_ASK_CACHE_SIZE as usize
            }
        },
        asks_per_second: count(
            &o.asks_per_second,
            u64::from(DEFAULT_ASKS_PER_SECOND),
            "asks_per_second",
            diags,
        ) as u32,
        client_asks_per_minute: count(
            &o.client_asks_per_minute,
            u64::from(DEFAULT_CLIENT_ASKS_PER_MINUTE),
            "client_asks_per_minute",
            diags,
        ) as u32,
    }
}

/// The 32-byte storage key from the environment (base64 or 64 hex digits).
fn storage_key(var: &Spanned<String>, diags: &mut Vec<Diagnostic>) -> Option<[u8; 32]> {
    let name = var.get_ref();
    let Ok(value) = std::env::var(name) else {
        diags.push(Diagnostic::at(
            var,
            format!("environment variable `{name}` is not set"),
        ));
        return None;
    };
    let value = value.trim();
    let bytes = hex::decode(value).ok().or_else(|| {
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .or_else(|_| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value.trim_end_matches('='))
            })
            .ok()
    });
    match bytes.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()) {
        Some(k) => Some(k),
        None => {
            diags.push(Diagnostic::at(
                var,
                format!(
                    "`{name}` must hold 32 bytes, base64 or hex (e.g. `openssl rand -base64 32`)"
                ),
            ));
            None
        }
    }
}

fn validate_acme(
    a: &AcmeFile,
    on_demand: bool,
    redis_configured: bool,
    diags: &mut Vec<Diagnostic>,
) -> AcmeSettings {
    let directory = a.directory.get_ref();
    if !directory.starts_with("https://") || directory.parse::<http::Uri>().is_err() {
        diags.push(Diagnostic::at(
            &a.directory,
            "directory must be an https:// URL (ACME runs over HTTPS only)",
        ));
    }
    let challenge = super::one_of(
        &a.challenge,
        "challenge",
        &[
            ("http-01", ChallengeKind::Http01),
            ("tls-alpn-01", ChallengeKind::TlsAlpn01),
            ("dns-01", ChallengeKind::Dns01),
        ],
        "",
        diags,
    );
    let dns = match (&a.dns, challenge) {
        (Some(d), ChallengeKind::Dns01) => validate_dns(d.get_ref(), diags),
        (Some(d), _) => {
            diags.push(Diagnostic::at(
                d,
                "dns is used by challenge = \"dns-01\" only",
            ));
            None
        }
        (None, ChallengeKind::Dns01) => {
            let at = a.challenge.as_ref().map(|c| c.span());
            diags.push(Diagnostic::new(
                at,
                "challenge = \"dns-01\" needs dns = { provider = \"rfc2136\", … } or { provider = \"exec\", command = [...] }",
            ));
            None
        }
        (None, _) => None,
    };
    let mut domains = Vec::new();
    if a.domains.is_empty() && !on_demand {
        diags.push(Diagnostic::new(
            None,
            "[tls.acme] domains must list at least one name (or [tls.on_demand] be set)",
        ));
    }
    for d in &a.domains {
        let name = d.get_ref().trim_end_matches('.').to_ascii_lowercase();
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        if !is_hostname(bare) || bare.parse::<std::net::IpAddr>().is_ok() {
            diags.push(Diagnostic::at(
                d,
                format!("`{}` is not a DNS name", d.get_ref()),
            ));
        } else if name.starts_with("*.") && challenge != ChallengeKind::Dns01 {
            diags.push(Diagnostic::at(
                d,
                format!("`{name}`: a wildcard can only be validated with challenge = \"dns-01\""),
            ));
        } else if domains.contains(&name) {
            diags.push(Diagnostic::at(d, format!("`{name}` is listed twice")));
        } else {
            domains.push(name);
        }
    }
    let lease = duration_or(&a.lock_lease, DEFAULT_LOCK_LEASE, diags);
    let storage = match a.storage.as_ref() {
        Some(s) if s.get_ref() == "redis" => {
            if !redis_configured {
                diags.push(Diagnostic::at(s, "storage = \"redis\" needs [redis]"));
            }
            let key = match &a.storage_key_env {
                None => {
                    diags.push(Diagnostic::at(
                        s,
                        "storage = \"redis\" needs storage_key_env: private keys are sealed before they leave the gateway",
                    ));
                    None
                }
                Some(k) => storage_key(k, diags),
            };
            StorageKind::Redis {
                key: key.unwrap_or([0; 32]),
                lease,
            }
        }
        Some(s) => StorageKind::Dir(PathBuf::from(s.get_ref())),
        None => StorageKind::Dir(PathBuf::from(DEFAULT_ACME_STORAGE)),
    };
    if let (Some(k), StorageKind::Dir(_)) = (&a.storage_key_env, &storage) {
        diags.push(Diagnostic::at(
            k,
            "storage_key_env applies to storage = \"redis\" only",
        ));
    }
    let contact = a
        .email
        .iter()
        .filter_map(|e| {
            let v = e.get_ref();
            if v.contains('@') && !v.contains(char::is_whitespace) {
                Some(format!("mailto:{v}"))
            } else {
                diags.push(Diagnostic::at(e, format!("`{v}` is not an e-mail address")));
                None
            }
        })
        .collect();
    let ca_root = a
        .ca_root
        .as_ref()
        .and_then(|p| match std::fs::read(p.get_ref()) {
            Ok(pem) if pem.starts_with(b"-----BEGIN") => Some(PathBuf::from(p.get_ref())),
            Ok(_) => {
                diags.push(Diagnostic::at(
                    p,
                    format!("ca_root `{}` is not a PEM file", p.get_ref()),
                ));
                None
            }
            Err(e) => {
                diags.push(Diagnostic::at(
                    p,
                    format!("cannot read ca_root `{}`: {e}", p.get_ref()),
                ));
                None
            }
        });
    let eab = a.eab.as_ref().and_then(|e| {
        let spec = e.get_ref();
        let var = spec.hmac_env.get_ref();
        let Ok(value) = std::env::var(var) else {
            diags.push(Diagnostic::at(
                &spec.hmac_env,
                format!("environment variable `{var}` is not set"),
            ));
            return None;
        };
        match base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.trim().trim_end_matches('='))
        {
            Ok(hmac) if !hmac.is_empty() => Some(Eab {
                kid: spec.kid.get_ref().clone(),
                hmac,
            }),
            _ => {
                diags.push(Diagnostic::at(
                    &spec.hmac_env,
                    format!("`{var}` must hold the CA's HMAC key, base64url-encoded"),
                ));
                None
            }
        }
    });
    let retry_initial = duration_or(&a.retry_initial, DEFAULT_ACME_RETRY_INITIAL, diags);
    let retry_max = duration_or(&a.retry_max, DEFAULT_ACME_RETRY_MAX, diags);
    if retry_max < retry_initial {
        if let Some(m) = &a.retry_max {
            diags.push(Diagnostic::at(
                m,
                "retry_max must not be below retry_initial",
            ));
        }
    }
    AcmeSettings {
        directory: directory.clone(),
        contact,
        ca_root,
        domains,
        challenge,
        dns,
        storage,
        eab,
        retry_initial,
        retry_max,
        order_timeout: duration_or(&a.order_timeout, DEFAULT_ACME_ORDER_TIMEOUT, diags),
    }
}
