//! Aggios Edge gateway: a Pingora edge proxy for multi-tenant SaaS.
//!
//! The folders, bottom up (`scripts/module-layers` holds the order and CI checks it): [`config`] (the
//! file, validated), [`support`] (helpers with no policy), [`telemetry`] (metrics, traces, the access
//! log, tenant figures), [`tls`] (termination and the certificate store), [`acme`] and [`upstream`]
//! (the systems beside the request path: certificates, servers), [`edge`] (the request's way, one
//! module per stage), [`runtime`] (state, reload, drain) and [`admin`] (the admin listener).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod acme;
pub mod admin;
pub mod config;
pub mod edge;
#[doc(hidden)]
pub mod fuzz;
pub mod h3;
pub mod runtime;
pub mod support;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use config::Config;
use runtime::reload::Reloader;
use runtime::state::GatewayState;

/// Builds the Pingora server for `config` (read from `path`, which is then watched for changes).
/// L4 write buffer of the https entrypoint: one full TLS record (16 KiB of plaintext) and its overhead.
const TLS_WRITE_BUFFER: usize = 16 * 1024 + 256;
/// L4 write buffer of the http entrypoint: a response head and a small body in one write.
const HTTP_WRITE_BUFFER: usize = 4 * 1024;
/// L4 read buffer of both entrypoints: none. Pingora's default (64 KiB, zero-filled when the connection
/// is set up) stays resident for every kept-alive connection, ~114 KiB of RSS per idle client with it
/// against ~0.6 KiB in nginx (`loadtest scale`); Pingora reads a request head into its own buffer, and
/// reads through the L4 buffer only copied it once more.
const L4_READ_BUFFER: usize = 0;
/// How long `gateway run --upgrade` waits for the running gateway's sockets (it gets them when the old
/// process receives SIGQUIT).
const UPGRADE_WAIT_SECS: usize = 60;

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("ACME storage: {0}")]
    AcmeStorage(#[from] acme::storage::dir::StorageError),
    #[error("{0}")]
    H3(#[from] h3::H3Error),
}

/// Creates the hand-over socket's directory (mode 0700) when it is missing; `Config::load` refused one
/// that exists and is not private. Without it the gateway still serves; only an upgrade would fail.
fn ensure_upgrade_dir(sock: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = sock.parent() else { return };
    if dir.exists() {
        return;
    }
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        tracing::warn!(
            dir = %dir.display(),
            error = %e,
            "cannot create the upgrade socket's directory: `gateway run --upgrade` will not work \
             (set [server] upgrade_sock to a private directory of this user)"
        );
    }
}

/// A built gateway: the Pingora server and the stop signals it runs with.
pub struct Gateway {
    pub server: Server,
    signals: runtime::drain::StopSignals,
}

impl Gateway {
    /// Runs until stopped (SIGTERM, SIGQUIT for an upgrade, SIGINT), then exits the process.
    pub fn run_forever(self) -> ! {
        self.server.run(pingora::server::RunArgs {
            shutdown_signal: Box::new(self.signals),
        });
        std::process::exit(0)
    }
}

/// Builds the Pingora server for `config`. With `upgrade`, the listening sockets come from the running
/// gateway (it sends them over `[server] upgrade_sock` when it gets SIGQUIT) instead of new binds.
pub fn build_server(config: Config, path: &Path, upgrade: bool) -> Result<Gateway, BuildError> {
    let mut conf = ServerConf {
        threads: config.server.threads,
        // By default one single-threaded runtime per worker (like nginx workers): cheaper wake-ups than a
        // work-stealing pool, and a connection's tasks stay on one core (see the README's multi-core run).
        work_stealing: config.server.work_stealing,
        // On SIGTERM the listeners close and idle keep-alive connections are closed at once; requests in
        // flight get the grace (the runtimes live on for it), and `drain::Drain` ends the process as soon
        // as none is left. After the grace, the runtimes are stopped, cancelling whatever still runs.
        grace_period_seconds: Some(config.server.shutdown_grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        // The new process waits this many seconds for the old one's sockets after it starts.
        upgrade_sock_connect_accept_max_retries: Some(UPGRADE_WAIT_SECS),
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = 1024;
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    ensure_upgrade_dir(&config.server.upgrade_sock);
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // With `upgrade`, this waits for the old process's sockets (up to UPGRADE_WAIT_SECS).
    let phases = server.watch_execution_phase();
    server.bootstrap();

    let http = config.entrypoints.http;
    let https = config.entrypoints.https;
    let acme = config.tls.as_ref().and_then(|t| t.acme.as_ref());
    // Shared ACME storage: its own Redis connection (ACME calls must never trip the limiter's breaker).
    let shared_acme = match (acme.map(|a| &a.storage), config.redis.as_ref()) {
        (Some(config::StorageKind::Redis { key, .. }), Some(redis)) => Some(Arc::new(
            acme::storage::redis::RedisStorage::new(redis, key)?,
        )),
        _ => None,
    };
    let acme = acme.is_some();
    let admin = config.entrypoints.admin;
    let h2_idle_timeout = config.limits.h2_idle_timeout;
    let h3_entry = config.entrypoints.h3;
    let h3_settings = config.h3.clone();
    let max_header_bytes = config.limits.max_header_bytes;
    let max_connections = config.overload.max_connections;
    // Streams one HTTP/2 client connection may have open at once (h2's own default is no limit).
    let h2_streams = u32::try_from(config.overload.h2_streams_per_connection).unwrap_or(u32::MAX);
    // HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE from `[limits]` (restart needed): twice the limit, so that
    // the request check answers a head over the limit with the usual JSON 431 (`decide`); past twice
    // the limit the decoder keeps nothing and answers a bare 431 itself.
    let h2_header_list =
        u32::try_from(config.limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX);
    let config_threads = config.server.threads;
    let reuseport = config.server.reuseport;
    let shutdown_grace = config.server.shutdown_grace;
    let shutdown_delay = config.server.shutdown_delay;
    let state = GatewayState::new(config);
    // Fault injection for tests (never set in production): the core gate held on at this limit.
    if let Some(limit) = std::env::var("GATEWAY_FAULT_CORE_LIMIT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        tracing::warn!(
            limit,
            "GATEWAY_FAULT_CORE_LIMIT: the core gate is held on (tests only)"
        );
        state.core_gate.pin(limit);
    }

    // ACME orders (configured names and tenants' own domains) share one client and account.
    let acme_client =
        acme.then(|| Arc::new(acme::AcmeClient::new(Arc::clone(&state.certs), shared_acme)));
    let on_demand = acme_client.as_ref().map(|c| {
        Arc::new(acme::on_demand::OnDemand::new(
            state.clone() as Arc<dyn config::Live>,
            Arc::clone(c),
        ))
    });

    // With `[server] reuseport` and several threads: one service per thread, each with its own runtime,
    // its own `SO_REUSEPORT` sockets (the kernel spreads new connections over them) and its own proxy, so
    // its own upstream connection pool. Otherwise one service whose runtimes share one socket and one
    // pool: Pingora hands a connection to a random runtime, and an upstream connection to whichever
    // runtime asks next (README, Multi-core).
    let mut per_thread = config_threads > 1 && reuseport;
    // On `--upgrade` the sockets come from the running gateway: keep its layout (one shared socket per
    // entrypoint, or one per thread) whatever the file says. With the other layout the new process would
    // listen on sockets of its own and leave the handed-over ones to close with the old process, resetting
    // the connections waiting in their queues. A restart applies the file's layout.
    if let (true, Some(addr)) = (upgrade, http.or(https)) {
        let inherited_per_thread = server.has_listen_fd(&format!("{addr}#0"));
        let inherited_shared = server.has_listen_fd(&addr.to_string());
        if (inherited_per_thread && !per_thread) || (inherited_shared && per_thread) {
            tracing::warn!(
                inherited = if inherited_per_thread { "one socket per thread" } else { "one shared socket" },
                "the running gateway listens with another socket layout than [server] threads/reuseport \
                 ask for; keeping its layout for this upgrade (restart to change it)"
            );
            per_thread = inherited_per_thread;
        }
    }
    let copies = if per_thread { config_threads } else { 1 };
    let new_app = || {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        options.h2_idle_timeout = Some(h2_idle_timeout);
        let mut app = HttpProxy::new(
            edge::Gateway {
                state: state.clone(),
                on_demand: on_demand.clone(),
                acme: acme_client.clone(),
                fault_panic_path: std::env::var("GATEWAY_FAULT_PANIC_PATH")
                    .ok()
                    .filter(|p| p.starts_with('/')),
            },
            server.configuration.clone(),
        );
        app.server_options = Some(options);
        let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
        h2.max_header_list_size(h2_header_list);
        h2.max_concurrent_streams(h2_streams);
        app.h2_options = Some(h2);
        app.handle_init_modules();
        Arc::new(app)
    };
    // The https entrypoint's handshakes run in the app, with our deadline and counters.
    let terminator = match https {
        Some(_) => Some(Arc::new(tls::accept::Terminator::new(
            Arc::clone(&state.certs),
            Some(Arc::new(acme::Handshakes {
                on_demand: on_demand.clone(),
                acme: acme_client.clone(),
            })),
            Arc::clone(&state.client_auth),
        )?)),
        None => None,
    };
    // Each entrypoint's open connections, counted across its per-thread services.
    let http_connections = Arc::new(edge::connections::ConnectionLimits::default());
    let https_connections = Arc::new(edge::connections::ConnectionLimits::default());
    let mut services = Vec::new();
    for copy in 0..copies {
        let app = new_app();
        let name = |base: &str| match per_thread {
            true => format!("{base}-{copy}"),
            false => base.to_string(),
        };
        let listener = |addr: SocketAddr, write: usize| {
            let listener = pingora::listeners::ListenerConfig::tcp(addr.to_string()).l4_buffer(
                pingora::protocols::l4::stream::L4BufferSettings {
                    read: Some(L4_READ_BUFFER),
                    write: Some(write),
                },
            );
            match per_thread {
                // Each socket under its own key in the table handed over on upgrade (vendored
                // Pingora patch 0001): the successor takes over socket `copy` of each address.
                true => {
                    let mut options = pingora::listeners::TcpSocketOptions::default();
                    options.so_reuseport = Some(true);
                    listener
                        .tcp_socket_options(options)
                        .fd_key(format!("{addr}#{copy}"))
                }
                false => listener,
            }
        };
        let mut proxy = Service::new(
            name("gateway"),
            edge::head_deadline::HeadDeadlineApp {
                inner: Arc::clone(&app),
                state: state.clone(),
                tls: None,
                connections: Arc::clone(&http_connections),
            },
        );
        if let Some(addr) = http {
            // A response head with the edge's fields (request id, security headers, RateLimit, CORS)
            // and a small body pass Pingora's default 1460-byte L4 write buffer: room for 4 KiB keeps
            // them to one `sendto`.
            proxy.add_listener(listener(addr, HTTP_WRITE_BUFFER));
        }
        if per_thread {
            proxy.threads = Some(1);
        }
        services.push(proxy);

        if let (Some(addr), Some(terminator)) = (https, &terminator) {
            // The listener is plain TCP: the handshake runs in the app.
            let mut secure = Service::new(
                name("gateway-https"),
                edge::head_deadline::HeadDeadlineApp {
                    inner: app,
                    state: state.clone(),
                    tls: Some(Arc::clone(terminator)),
                    connections: Arc::clone(&https_connections),
                },
            );
            // A response's TLS records (head and body, each with its 22-byte overhead) often pass
            // Pingora's default 1460-byte L4 write buffer where the plain response fits: without room
            // for a full record, one response costs two `sendto`s.
            secure.add_listener(listener(addr, TLS_WRITE_BUFFER));
            if per_thread {
                secure.threads = Some(1);
            }
            services.push(secure);
        }
    }
    // The HTTP/3 entrypoint's own proxy instance (its own upstream pool, the same state).
    let h3_app = h3_entry.map(|_| new_app());
    for service in services {
        server.add_service(service);
    }
    if let Some(client) = acme_client {
        server.add_service(background_service(
            "acme",
            acme::AcmeManager {
                config: state.clone(),
                client,
                on_demand: on_demand.map(|od| od as Arc<dyn acme::TenantDomains>),
            },
        ));
    }

    if let (Some(addr), Some(app)) = (h3_entry, h3_app) {
        // On `--upgrade` the running gateway holds the UDP port until it exits (QUIC sockets are not
        // handed over): the new one binds it then, and clients use TCP meanwhile.
        let socket = match upgrade {
            true => None,
            false => Some(h3::bind(addr)?),
        };
        let mut service = background_service(
            "h3",
            h3::H3Service {
                addr,
                settings: h3_settings,
                certs: Arc::clone(&state.certs),
                app,
                max_header_bytes,
                max_connections,
                socket: std::sync::Mutex::new(socket),
                bind_wait: std::time::Duration::from_secs(UPGRADE_WAIT_SECS as u64 + 300),
            },
        );
        service.threads = Some(config_threads);
        server.add_service(service);
    }

    if https.is_some() {
        let live = Arc::clone(&state);
        server.add_service(background_service(
            "ocsp-stapling",
            tls::ocsp::Stapler {
                store: Arc::clone(&state.certs),
                enabled: Box::new(move || {
                    live.current()
                        .config
                        .tls
                        .as_ref()
                        .is_some_and(|t| t.ocsp_stapling)
                }),
            },
        ));
    }

    if let Some(addr) = admin {
        let mut admin_service = Service::new(
            "admin".to_string(),
            admin::AdminApp {
                state: state.clone(),
            },
        );
        admin_service.add_tcp(&addr.to_string());
        server.add_service(admin_service);
    }

    server.add_service(background_service(
        "drain",
        runtime::drain::Drain {
            state: Arc::clone(&state),
            grace: shutdown_grace,
            phases: std::sync::Mutex::new(Some(phases)),
        },
    ));
    server.add_service(background_service(
        "config-reload",
        Reloader {
            path: path.to_path_buf(),
            state: Arc::clone(&state),
        },
    ));
    Ok(Gateway {
        server,
        signals: runtime::drain::StopSignals {
            state,
            delay: shutdown_delay,
        },
    })
}
