//! `backend serve | migrate | tenant create | user create`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use backend::{app, auth, config, db, domain, state};

// Each Argon2id hash (login, user creation) allocates a 19 MiB block. glibc malloc kept them: its mmap
// threshold rises to the first freed block's size, later blocks came from per-thread arenas and stayed,
// and under the compose run's user creations a backend grew past its 512 MB limit and was OOM-killed
// (scripts/compose-test.sh, "postgres failover"). mimalloc returns such blocks to the system.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "backend", version, about = "Aggios Edge backend API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (BACKEND_LISTEN) and, when BACKEND_INTERNAL_LISTEN is set, the internal API.
    Serve,
    /// Apply migrations as the owner and set up the application role.
    Migrate,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The OAuth token-signing keys (shared by every replica through the database).
    OauthKey {
        #[command(subcommand)]
        command: OauthKeyCommand,
    },
}

#[derive(Subcommand)]
enum OauthKeyCommand {
    /// Every key: kid, when it signs from, whether it is retired.
    List,
    /// Add a key: published at once, signing after --publish-ahead seconds (default
    /// OAUTH_KEY_PUBLISH_AHEAD_SECS, else 600: longer than the gateways' JWKS refresh). The key it
    /// replaces stays published until its last token has expired.
    Rotate {
        #[arg(long)]
        publish_ahead: Option<u64>,
    },
    /// Remove a (compromised) key at once: its tokens are refused from the next key-set reload here
    /// and the next JWKS refresh at the edge.
    Retire {
        /// A kid is a base64url thumbprint: it may start with `-`, which is still the kid.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    Create {
        #[arg(long)]
        subdomain: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        domain: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, default_value = "member", value_parser = ["admin", "member", "platform_admin"])]
        role: String,
    },
}

/// Sends the spans still queued when `main` returns.
struct FlushOnExit(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for FlushOnExit {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = p.force_flush();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .json()
        .flatten_event(true)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        );
    // OpenTelemetry spans when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed at exit.
    let (otel, provider) = match backend::otel::layer(config::otel_from_env().as_ref()) {
        Ok(Some((layer, provider))) => (Some(layer), Some(provider)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("OpenTelemetry: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::registry().with(logs).with(otel).init();
    let _flush = FlushOnExit(provider);
    // A panic is logged as one JSON line with where it happened and the backtrace; the request that
    // panicked is answered 500 by the handler's guard (`http::handle`) and the process lives on.
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(
            panic = %info,
            backtrace = %backtrace,
            thread = std::thread::current().name().unwrap_or("?"),
            "panic"
        );
    }));
    // Panics and 5xx answers to a Sentry-protocol endpoint when SENTRY_DSN is set (after the hook above:
    // the panic integration reports, then calls it).
    let _reports = match backend::report::init(
        std::env::var("SENTRY_DSN").ok().as_deref(),
        std::env::var("SENTRY_ENVIRONMENT")
            .ok()
            .filter(|e| !e.is_empty()),
    ) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Serving needs every setting; the command-line tasks need the database only.
    let config = match &cli.command {
        Command::Serve => config::from_env().map(|c| Settings::Serve(Box::new(c))),
        _ => config::db_from_env().map(Settings::Db),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The settings a command reads.
enum Settings {
    Serve(Box<config::Config>),
    Db(config::DbConfig),
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    let config = match settings {
        Settings::Serve(config) => return serve(*config).await,
        Settings::Db(db) => db,
    };
    match command {
        Command::Migrate => {
            db::migrate(&config.database_owner_url, &config.database_url).await?;
            println!("migrations applied");
        }
        Command::Serve => anyhow::bail!("serving needs the whole configuration"),
        Command::Tenant {
            command:
                TenantCommand::Create {
                    subdomain,
                    name,
                    domain,
                },
        } => {
            anyhow::ensure!(
                domain::is_subdomain(&subdomain),
                "--subdomain: `{subdomain}` is not a DNS label (a-z, 0-9, -)"
            );
            if let Some(d) = &domain {
                anyhow::ensure!(domain::is_domain(d), "--domain: `{d}` is not a domain name");
            }
            let pool = db::connect_patient(&config.database_url, config.db_slow_query).await?;
            let t = db::tenants::create(&pool, &name, &subdomain, domain.as_deref())
                .await
                .context("creating the tenant")?;
            println!("{}", serde_json::to_string(&t)?);
        }
        Command::OauthKey { command } => {
            let pool = db::connect_patient(&config.database_url, config.db_slow_query).await?;
            match command {
                OauthKeyCommand::List => {
                    for k in db::oauth::all_keys(&pool).await? {
                        println!(
                            "{}",
                            serde_json::json!({
                                "kid": k.kid,
                                "signs_from": k.signs_from.unix_timestamp(),
                                "retired_at": k.retired_at.map(|t| t.unix_timestamp()),
                            })
                        );
                    }
                }
                OauthKeyCommand::Rotate { publish_ahead } => {
                    let ahead = match publish_ahead {
                        Some(s) => std::time::Duration::from_secs(s),
                        None => {
                            config::oauth_from_env_with(|k| std::env::var(k).ok())
                                .map_err(|e| anyhow::anyhow!("{e}"))?
                                .key_publish_ahead
                        }
                    };
                    let from = time::OffsetDateTime::now_utc() + ahead;
                    let kid = db::oauth::insert_key(&pool, backend::oauth::keys::generate, from)
                        .await
                        .context("adding the key")?;
                    println!(
                        "{}",
                        serde_json::json!({ "kid": kid, "signs_from": from.unix_timestamp() })
                    );
                }
                OauthKeyCommand::Retire { kid } => {
                    anyhow::ensure!(
                        db::oauth::retire_key(&pool, &kid).await?,
                        "no live key `{kid}`"
                    );
                    println!("{}", serde_json::json!({ "retired": kid }));
                }
            }
        }
        Command::User {
            command:
                UserCommand::Create {
                    tenant,
                    email,
                    password_stdin,
                    role,
                },
        } => {
            anyhow::ensure!(password_stdin, "--password-stdin is required: the password is read from standard input, never from arguments");
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            domain::check_password(&password).map_err(|m| anyhow::anyhow!("password {m}"))?;
            let email = email.trim().to_lowercase();
            anyhow::ensure!(
                domain::is_email(&email),
                "--email: `{email}` is not an email address"
            );
            let pool = db::connect_patient(&config.database_url, config.db_slow_query).await?;
            let t = db::tenants::by_subdomain(&pool, &tenant)
                .await?
                .with_context(|| format!("--tenant: no tenant `{tenant}`"))?;
            let hash = auth::hash_password(&password).map_err(|e| anyhow::anyhow!(e))?;
            let mut tx = db::tenant_tx(&pool, t.id).await?;
            let user = db::users::create(
                &mut tx,
                &db::users::NewUser {
                    tenant_id: t.id,
                    email: &email,
                    password_hash: &hash,
                    first_name: "",
                    last_name: "",
                    role: &role,
                },
            )
            .await
            .context("creating the user")?;
            tx.commit().await?;
            println!("{}", serde_json::to_string(&user)?);
        }
    }
    Ok(())
}

/// `backend serve`: the API (and the internal API), until SIGTERM or Ctrl-C; then in-flight requests finish.
async fn serve(config: config::Config) -> anyhow::Result<()> {
    if config.migrate_on_start {
        db::migrate(&config.database_owner_url, &config.database_url)
            .await
            .context("migrations at start (MIGRATE_ON_START=0 to skip)")?;
    }
    let state = state::AppState::new(&config).await?;
    let state_for_drain = state.clone();
    tokio::spawn(backend::usage::run(state.clone(), config.usage_flush));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("BACKEND_LISTEN: cannot bind {}", config.listen))?;
    tracing::info!(listen = %config.listen, "serving");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    if let Some(addr) = config.internal_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("BACKEND_INTERNAL_LISTEN: cannot bind {addr}"))?;
        let mut rx2 = rx.clone();
        servers.push(tokio::spawn(app::serve(
            l,
            state.clone(),
            true,
            async move {
                let _ = rx2.changed().await;
            },
        )));
    }
    let mut rx1 = rx.clone();
    servers.push(tokio::spawn(app::serve(
        listener,
        state,
        false,
        async move {
            let _ = rx1.changed().await;
        },
    )));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if !config.shutdown_drain.is_zero() {
        tracing::info!(
            drain_secs = config.shutdown_drain.as_secs(),
            "draining: /readyz answers 503, requests are still served"
        );
        state_for_drain
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(config.shutdown_drain).await;
    }
    tracing::info!("shutting down; finishing in-flight requests");
    let _ = tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kid starting with `-` (1 in 64 base64url thumbprints) is retired, not refused as an unknown
    /// flag: CI3 of stop 42 failed on `backend oauth-key retire -Y…` ("unexpected argument '-Y'").
    #[test]
    fn a_kid_starting_with_a_hyphen_is_a_kid() {
        let cli = Cli::try_parse_from(["backend", "oauth-key", "retire", "-Yx3_k-AbC"])
            .unwrap_or_else(|e| panic!("{e}"));
        match cli.command {
            Command::OauthKey {
                command: OauthKeyCommand::Retire { kid },
            } => assert_eq!(kid, "-Yx3_k-AbC"),
            _ => panic!("not oauth-key retire"),
        }
    }
}
