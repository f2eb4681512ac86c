//! `loadtest`: drive load at one target (`run`), serve the harness's upstream (`upstream`), or rank the
//! gateway against its peers on one scenario (`compare`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use loadtest::cli::{parse_duration, Bar};
use loadtest::generator::{self, Load, Plan, Progress, Protocol, RequestSpec};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Aggios Edge load generator and peer comparison"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load one target and print its figures.
    Run(RunArgs),
    /// Serve the harness's upstream (a fixed 1 KiB body) until interrupted.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:18081")]
        listen: SocketAddr,
    },
    /// Run one scenario against the upstream, the gateway and each peer, in alternation.
    Compare(loadtest::compare::CompareArgs),
    /// The generator's own CPU per request against wrk's, on one run.
    Generators(loadtest::compare::generators::GeneratorArgs),
    /// Figures at scale: idle connections, 10 000 routes, reload time, past saturation.
    Scale(loadtest::compare::scale::ScaleArgs),
    /// The time to load a page's resources over a new HTTP/2 or HTTP/3 connection (median of loads).
    Page(loadtest::page::PageArgs),
    /// Print an HS256 access token of `tenant` (the claims of `contracts`), valid for a day: for the
    /// benchmark scripts, which mint no token of their own.
    Token {
        #[arg(long)]
        secret: String,
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "member")]
        role: String,
        #[arg(long, default_value = "bench-1")]
        jti: String,
    },
    /// Print the gateway configuration a comparison gives a scenario (the one benchmark config, for
    /// the perf and user-time scripts): listening on `listen`, forwarding to `upstream`.
    GatewayConfig {
        #[arg(long, value_enum)]
        scenario: loadtest::scenario::Scenario,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        admin: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
}

#[derive(Args)]
struct RunArgs {
    /// http://ADDRESS[:PORT]/PATH or https://…; the address is connected to, whatever the Host.
    url: String,
    /// The Host (and TLS server name) of the requests; repeat it to rotate over several hosts.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// A request header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// A request body.
    #[arg(long)]
    body: Option<String>,
    /// Connections.
    #[arg(short = 'c', long, default_value_t = 64)]
    connections: usize,
    /// Generator threads (one single-threaded runtime each).
    #[arg(short = 't', long, default_value_t = 1)]
    threads: usize,
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Open loop: this many requests per second in all (latency from each request's intended send time).
    /// Without it, a closed loop: each connection as fast as it can.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum, default_value = "h1")]
    protocol: Protocol,
    /// A new connection (and TLS handshake) for every request.
    #[arg(long)]
    new_connection: bool,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// HTTPS: trust this PEM CA file.
    #[arg(long)]
    ca: Option<String>,
    /// HTTPS: accept any certificate.
    #[arg(long)]
    insecure: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Upstream { listen } => {
            let up = loadtest::upstream::Upstream::start(listen)
                .with_context(|| format!("binding {listen}"))?;
            eprintln!("upstream on {}", up.addr);
            loop {
                std::thread::park();
            }
        }
        Command::Compare(args) => loadtest::compare::main(args),
        Command::Generators(args) => loadtest::compare::generators::main(args),
        Command::Scale(args) => loadtest::compare::scale::main(args),
        Command::Page(args) => loadtest::page::main(args),
        Command::Token {
            secret,
            tenant,
            role,
            jti,
        } => {
            println!(
                "{}",
                loadtest::scenario::mint(&secret, &tenant, &role, &jti)?
            );
            Ok(())
        }
        Command::GatewayConfig {
            scenario,
            listen,
            admin,
            upstream,
        } => {
            if scenario.tls()
                || scenario.overload()
                || scenario == loadtest::scenario::Scenario::Login
            {
                bail!("gateway-config prints the configurations of the plain HTTP scenarios");
            }
            print!(
                "{}",
                scenario.gateway_toml(listen, admin, listen, upstream, None)
            );
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let uri: http::Uri = args
        .url
        .parse()
        .with_context(|| format!("not a URL: {}", args.url))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("{}: the URL must start with http:// or https://", args.url),
    };
    let authority = uri
        .authority()
        .with_context(|| format!("{}: no address in the URL", args.url))?;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = (authority.host(), port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let hosts = if args.hosts.is_empty() {
        vec![authority.host().to_string()]
    } else {
        args.hosts
    };
    let method: http::Method = args
        .method
        .parse()
        .with_context(|| format!("not a method: {}", args.method))?;
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("not a header (Name: value): {h}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let requests = hosts
        .iter()
        .map(|host| RequestSpec {
            method: method.clone(),
            host: host.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: args
                .body
                .clone()
                .map(bytes::Bytes::from)
                .unwrap_or_default(),
        })
        .collect();
    let tls = match (https, args.ca, args.insecure) {
        (false, _, _) => None,
        (true, Some(ca), _) => Some(loadtest::tls::trusting(&ca)?),
        (true, None, true) => Some(loadtest::tls::insecure()),
        (true, None, false) => bail!("https needs --ca FILE (the CA to trust) or --insecure"),
    };
    let plan = Plan {
        addr,
        tls,
        protocol: args.protocol,
        keep_alive: !args.new_connection,
        load: args.rate.map_or(Load::Closed, |rate| Load::Open { rate }),
        connections: args.connections,
        threads: args.threads,
        duration: args.duration,
        timeout: args.timeout,
        requests,
    };
    let progress = Arc::new(Progress::default());
    let outcome = {
        let _bar = Bar::start("loadtest", args.duration, Arc::clone(&progress));
        generator::run(plan, progress)?
    };
    let report = outcome.summary();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let s = &report.summary;
        let l = &s.latency_ms;
        println!(
            "{} requests in {:.2} s: {:.0} req/s",
            s.requests, s.seconds, s.rps
        );
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let st = &s.status;
        println!(
            "status: 2xx {}  3xx {}  4xx {}  5xx {}",
            st.s2xx, st.s3xx, st.s4xx, st.s5xx
        );
        let f = &s.failures;
        println!(
            "failed: connect {}  timeout {}  io {}  protocol {}",
            f.connect, f.timeout, f.io, f.protocol
        );
        if let (Some(i), Some(m)) = (report.intended, report.missed) {
            println!("open loop: {i} intended, {m} never sent");
        }
    }
    Ok(())
}
