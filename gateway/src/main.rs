//! `gateway run | validate | certs dev` — the command line, nothing else.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::config::{Config, LogFormat};

// glibc malloc showed up as ~15 % of a request's CPU under load (Pingora allocates per request);
// mimalloc's thread-local free lists make those allocations cheap. The `system-alloc` feature keeps
// the system allocator, for heap profilers that intercept malloc (heaptrack, massif: #31's attribution
// of memory per idle connection, `loadtest/heap.sh`).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gateway", version, about = "Aggios Edge gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config (watched and reloaded live).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Take over the listening sockets of the running gateway (zero-downtime upgrade): start the
        /// new binary with this flag, then send SIGQUIT to the old process; it hands its sockets over
        /// through `[server] upgrade_sock` and drains.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a config file: exit 0 with a summary, or 1 with `FILE:LINE:COL: message` lines.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
        /// Treat warnings as errors (exit 1).
        #[arg(long)]
        strict: bool,
    },
    /// Certificates for local development.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a local CA (reused when present) and a leaf for the given names into `--out`.
    Dev {
        /// A DNS name (`*.name` for a wildcard) or IP address; repeat for more.
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Where to write `dev-ca.crt`, `dev-ca.key`, `dev.crt` and `dev.key`.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
    // A panic is logged as one line with where it happened and the backtrace; a panic inside a request
    // hook is then answered 500 by the hook's guard (`edge::answer::caught`) and the process lives on.
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(
            panic = %info,
            backtrace = %backtrace,
            thread = std::thread::current().name().unwrap_or("?"),
            "panic"
        );
    }));
}

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process (Pingora, the Redis client and the JWKS client must
    // agree; another crate in the build may enable a second one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config, strict } => match Config::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("{w}");
                }
                if strict && !c.warnings.is_empty() {
                    eprintln!(
                        "{}: {} warning(s), refused with --strict",
                        config.display(),
                        c.warnings.len()
                    );
                    return ExitCode::FAILURE;
                }
                println!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                for line in e.lines() {
                    eprintln!("{line}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Run { config, upgrade } => {
            let loaded = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    for line in e.lines() {
                        eprintln!("{line}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            init_logging(loaded.log.format, &loaded.log.level);
            // 5xx answers and panics to a Sentry-protocol endpoint when SENTRY_DSN is set (after the
            // panic hook: the panic integration reports, then calls it). Held until the process exits.
            let _reports = match gateway::telemetry::reports::init(
                std::env::var("SENTRY_DSN").ok().as_deref(),
                std::env::var("SENTRY_ENVIRONMENT").ok(),
            ) {
                Ok(guard) => guard,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(summary = %loaded.summary(), "starting");
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            let server = match gateway::build_server(loaded, &config, upgrade) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            server.run_forever()
        }
        Command::Certs {
            command: CertsCommand::Dev { domains, out },
        } => match gateway::tls::dev::generate(&out, &domains) {
            Ok(made) => {
                if made.ca_created {
                    println!("created the development CA {}", made.ca_cert.display());
                } else {
                    println!("reused the development CA {}", made.ca_cert.display());
                }
                println!(
                    "wrote {} and {} for {}",
                    made.cert.display(),
                    made.key.display(),
                    made.names.join(", ")
                );
                println!(
                    "trust the CA for one command:  curl --cacert {} https://…",
                    made.ca_cert.display()
                );
                println!(
                    "trust it system-wide (Debian):  sudo cp {} /usr/local/share/ca-certificates/aggios-dev.crt && sudo update-ca-certificates",
                    made.ca_cert.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway certs dev: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
