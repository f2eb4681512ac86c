//! `loadtest scale`: the figures that only show at scale.
//! - memory with 10 000 idle keep-alive client connections, the gateway against its peers (`--peers`);
//! - throughput with 10 000 tenant routes against 10;
//! - the time a reload of 10 000 routes takes, from SIGHUP until a new route serves;
//! - past saturation: an open loop at 1.5× the measured maximum, where errors and latency must degrade
//!   gracefully, the process must live, and its memory must stay bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::peers::{self, Peer, Setup};
use super::process::{self, free_addr, Launch, Running};
use super::{measure, work_dir, Target};
use crate::cli::parse_duration;
use crate::generator::{self, h1, Load, Plan, RequestSpec};
use crate::report::{self, Work};
use crate::scenario::{Scenario, BASE_DOMAIN};
use crate::upstream::Upstream;

#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Each measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Idle client connections held open.
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Routes of the large configuration.
    #[arg(long, default_value_t = 10_000)]
    pub routes: usize,
    /// Rounds of the routes comparison.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Which figures (comma-separated): idle, routes, reload, saturation.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,routes,reload,saturation"
    )]
    pub parts: Vec<String>,
    /// Peers measured beside the gateway in the idle part (comma-separated): nginx, haproxy, traefik,
    /// caddy, envoy; `none` for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nginx,haproxy,traefik,caddy,envoy"
    )]
    pub peers: Vec<String>,
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    #[arg(long, default_value = "loadtest/results")]
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct IdleFigure {
    pub target: String,
    pub connections: usize,
    pub rss_before_mib: f64,
    pub rss_with_idle_mib: f64,
    pub kib_per_connection: f64,
}

#[derive(Debug, Serialize)]
pub struct RoutesFigure {
    pub routes: usize,
    pub rps: f64,
    pub cpu_us_per_request: f64,
    pub p99_ms: f64,
    pub rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct ReloadFigure {
    pub routes: usize,
    /// `gateway validate` of the file, wall time (parse and checks alone).
    pub validate_ms: f64,
    /// From SIGHUP until the route that the new file adds answers.
    pub sighup_to_served_ms: f64,
    /// Requests on an existing route, all through the reload: every one answered 2xx.
    pub requests_during_reload: u64,
    pub failed_during_reload: u64,
}

#[derive(Debug, Serialize)]
pub struct SaturationFigure {
    pub max_rps: f64,
    pub offered_rps: f64,
    pub answered_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub intended: u64,
    pub missed: u64,
    pub failures: crate::generator::stats::Failures,
    pub non_2xx: u64,
    pub rss_before_mib: f64,
    pub rss_peak_mib: f64,
    pub alive_after: bool,
    /// A closed-loop run right after: the throughput is back.
    pub rps_after: f64,
}

#[derive(Debug, Serialize)]
pub struct ScaleReport {
    pub command: String,
    pub idle: Vec<IdleFigure>,
    /// Peers of the idle part that could not be measured, with the reason.
    pub idle_skipped: Vec<(String, String)>,
    pub routes: Vec<RoutesFigure>,
    pub reload: Option<ReloadFigure>,
    pub saturation: Option<SaturationFigure>,
}

/// The gateway's configuration with `n` exact tenant routes (t1 … tn) beside the wildcard one.
fn gateway_toml(
    n: usize,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    extra: &str,
) -> String {
    let mut t =
        Scenario::Plain.gateway_toml(listen, admin, free_addr().unwrap_or(listen), upstream, None);
    t.push_str(extra);
    for i in 1..=n {
        t.push_str(&format!("[[routes]]\nname = \"t{i}\"\nhosts = [\"t{i}.{BASE_DOMAIN}\"]\nupstream = \"origin\"\n"));
    }
    t
}

fn gateway_launch(bin: &Path, conf: &Path, listen: SocketAddr) -> Launch {
    Launch {
        name: "gateway".into(),
        program: bin.to_path_buf(),
        args: vec!["run".into(), "--config".into(), conf.display().to_string()],
        env: vec![],
        addr: listen,
    }
}

fn rss_mib(r: &Running) -> f64 {
    r.tree()
        .iter()
        .map(|p| process::status_kib(*p, "VmRSS:"))
        .sum::<u64>() as f64
        / 1024.0
}

pub fn main(args: ScaleArgs) -> anyhow::Result<()> {
    let bin = args
        .gateway_bin
        .clone()
        .unwrap_or_else(super::default_gateway_bin);
    if !bin.exists() {
        bail!("no gateway binary at {}", bin.display());
    }
    let dir = work_dir()?;
    process::stop_children_on_signal();
    let cores = process::cores();
    if let Some((_, load)) = cores {
        process::pin_self(load)?;
    }
    let core = cores.map(|(p, _)| p);
    let up = Upstream::start("127.0.0.1:0".parse()?)?;

    let part = |p: &str| args.parts.iter().any(|x| x == p);
    // 1. Idle keep-alive connections.
    let mut idle = Vec::new();
    let mut idle_skipped = Vec::new();
    if part("idle") {
        let listen = free_addr()?;
        let conf = dir.join("gw-idle.toml");
        std::fs::write(&conf, gateway_toml(0, listen, free_addr()?, up.addr, ""))?;
        idle.push(idle_figure(
            "gateway",
            &gateway_launch(&bin, &conf, listen),
            &dir,
            core,
            args.idle,
        )?);
        for name in args.peers.iter().filter(|p| p.as_str() != "none") {
            let peer: Peer = name.parse()?;
            // One peer that cannot be installed or started is a row saying so, not a lost run.
            let figure = peer
                .ensure_installed()
                .map_err(anyhow::Error::from)
                .and_then(|_| {
                    let ctx = peers::Context {
                        dir: &dir,
                        listen: free_addr()?,
                        upstream: up.addr,
                        cert: None,
                        redis: "127.0.0.1:6379".parse()?,
                        threads: 1,
                    };
                    match peer.setup(Scenario::Plain, &ctx)? {
                        Setup::Same(l) => idle_figure(peer.name(), &l, &dir, core, args.idle),
                        Setup::Closest(_, note, _) => bail!("no identical set-up: {note}"),
                        Setup::Cannot(why) => bail!("{why}"),
                    }
                });
            match figure {
                Ok(f) => idle.push(f),
                Err(e) => {
                    eprintln!("  idle: {name} not measured: {e:#}");
                    idle_skipped.push((name.clone(), format!("{e:#}")));
                }
            }
        }
        for f in &idle {
            eprintln!("  idle: {f:?}");
        }
    }

    // 2. 10 routes against 10 000: requests rotate over 1 000 of the exact hosts.
    let mut routes = Vec::new();
    let mut samples: Vec<Vec<report::Sample>> = vec![Vec::new(), Vec::new()];
    let sizes = [10, args.routes];
    let mut targets = Vec::new();
    for n in sizes {
        let listen = free_addr()?;
        let conf = dir.join(format!("gw-{n}.toml"));
        std::fs::write(&conf, gateway_toml(n, listen, free_addr()?, up.addr, ""))?;
        targets.push(Target {
            name: format!("gateway-{n}-routes"),
            kind: report::Kind::Ours,
            version: String::new(),
            work: Work::Same,
            note: None,
            launch: Some(gateway_launch(&bin, &conf, listen)),
            claims: peers::Claims {
                jwt: false,
                binding: false,
            },
        });
    }
    for round in 1..=args.rounds {
        if !part("routes") {
            break;
        }
        for (i, (t, n)) in targets.iter().zip(sizes).enumerate() {
            let hosts = n.min(1000);
            let requests = (0..hosts)
                .map(|h| RequestSpec::get(format!("t{}.{BASE_DOMAIN}", 1 + h * n / hosts), "/"))
                .collect();
            let plan = closed_plan(up.addr, requests, args.duration);
            let (s, _) = measure(
                t,
                &plan,
                &dir,
                core,
                Duration::from_secs(2),
                &format!("{} {round}", t.name),
                None,
                false,
            )?;
            eprintln!(
                "  {} round {round}: {:.0} req/s, {:?} CPU-µs/request",
                t.name, s.rps, s.cpu_us_per_request
            );
            samples[i].push(s);
        }
    }
    for (s, n) in samples.into_iter().zip(sizes) {
        let t = report::TargetReport::new(
            String::new(),
            report::Kind::Ours,
            String::new(),
            Work::Same,
            None,
            s,
            None,
        );
        if let Some(m) = t.median {
            routes.push(RoutesFigure {
                routes: n,
                rps: m.rps,
                cpu_us_per_request: m.cpu_us_per_request.unwrap_or(0.0),
                p99_ms: m.p99_ms,
                rss_mib: m.peak_rss_mib.unwrap_or(0.0),
            });
        }
    }

    // 3. Reload of 10 000 routes.
    let reload = part("reload")
        .then(|| reload_figure(&bin, &dir, core, up.addr, args.routes))
        .transpose()?;
    eprintln!("  reload: {reload:?}");

    // 4. Past saturation.
    let saturation = part("saturation")
        .then(|| saturation_figure(&bin, &dir, core, up.addr, args.duration))
        .transpose()?;
    eprintln!("  saturation: {saturation:?}");
    up.stop();

    let report = ScaleReport {
        command: format!(
            "loadtest scale --duration {}s --idle {} --routes {} --rounds {} --peers {}",
            args.duration.as_secs_f64(),
            args.idle,
            args.routes,
            args.rounds,
            args.peers.join(",")
        ),
        idle,
        idle_skipped,
        routes,
        reload,
        saturation,
    };
    let _ = std::fs::remove_dir_all(&dir);
    let md = markdown(&report);
    println!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("scale.md"), &md)?;
    std::fs::write(
        args.out.join("scale.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}

fn closed_plan(addr: SocketAddr, requests: Vec<RequestSpec>, duration: Duration) -> Plan {
    Plan {
        timeout: Duration::from_secs(5),
        ..Plan::h1(addr, requests, Load::Closed, 64, duration)
    }
}

/// Opens `n` keep-alive connections to the proxy, one answered request each, and holds them idle.
fn idle_figure(
    name: &str,
    launch: &Launch,
    dir: &Path,
    core: Option<usize>,
    n: usize,
) -> anyhow::Result<IdleFigure> {
    let mut running = launch.start(dir, core, &[], Duration::from_secs(30))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let addr = launch.addr;
    let request = format!("GET / HTTP/1.1\r\nHost: plain.{BASE_DOMAIN}\r\n\r\n").into_bytes();
    // Warm: a few requests so that buffers and the upstream connection exist before the baseline.
    rt.block_on(async {
        for _ in 0..100 {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                let _ = h1::Conn::new(s).exchange(&request, false).await;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_mib(&running);
    let conns = rt.block_on(async {
        let mut conns = Vec::with_capacity(n);
        let mut failed = 0usize;
        // In batches, so the proxy's accept backlog is never the limit.
        for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
            // A connection whose request was shed (the gateway's overload admission answers 503 when
            // the upstream lags on a busy machine) is opened again: what is measured is holding them.
            let batch = futures_util::future::join_all(chunk.iter().map(|_| async {
                for _ in 0..5 {
                    let s = tokio::net::TcpStream::connect(addr).await.ok()?;
                    let mut c = h1::Conn::new(s);
                    let r = c.exchange(&request, false).await.ok()?;
                    if r.status == 200 && !r.close {
                        return Some(c);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None
            }))
            .await;
            for c in batch {
                match c {
                    Some(c) => conns.push(c),
                    None => failed += 1,
                }
            }
        }
        (conns, failed)
    });
    let (conns, failed) = conns;
    if failed > 0 {
        bail!("{name}: {failed} of {n} idle connections failed");
    }
    // Let the proxy settle (idle buffers released or not), then read its memory.
    std::thread::sleep(Duration::from_secs(2));
    let with = rss_mib(&running);
    drop(conns);
    running.stop();
    Ok(IdleFigure {
        target: name.into(),
        connections: n,
        rss_before_mib: before,
        rss_with_idle_mib: with,
        kib_per_connection: (with - before) * 1024.0 / n as f64,
    })
}

fn reload_figure(
    bin: &Path,
    dir: &Path,
    core: Option<usize>,
    upstream: SocketAddr,
    n: usize,
) -> anyhow::Result<ReloadFigure> {
    let listen = free_addr()?;
    let admin = free_addr()?;
    let conf = dir.join("gw-reload.toml");
    std::fs::write(&conf, gateway_toml(n, listen, admin, upstream, ""))?;
    let started = Instant::now();
    let ok = std::process::Command::new(bin)
        .args(["validate", "--config"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?
        .success();
    let validate_ms = started.elapsed().as_secs_f64() * 1000.0;
    if !ok {
        bail!("gateway validate refused {}", conf.display());
    }
    let mut running =
        gateway_launch(bin, &conf, listen).start(dir, core, &[], Duration::from_secs(60))?;
    // A host outside the base domain: no route answers it until the new file adds one.
    let new_host = "reloaded.example.test";
    let probe =
        format!("GET / HTTP/1.1\r\nHost: {new_host}\r\nConnection: close\r\n\r\n").into_bytes();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let s = tokio::net::TcpStream::connect(listen).await.ok()?;
            h1::Conn::new(s)
                .exchange(&probe, false)
                .await
                .ok()
                .map(|r| r.status)
        })
    };
    if status(&rt) == Some(200) {
        bail!("{new_host} answered 200 before the reload");
    }
    // Load on an existing route through the reload (closed loop, in its own thread).
    let plan = closed_plan(
        listen,
        vec![RequestSpec::get(format!("t{}.{BASE_DOMAIN}", n / 2), "/")],
        Duration::from_secs(6),
    );
    let load = std::thread::spawn(move || generator::run(plan, Arc::default()));
    std::thread::sleep(Duration::from_secs(1));
    let extra = format!(
        "[[routes]]\nname = \"reloaded\"\nhosts = [\"{new_host}\"]\nupstream = \"origin\"\n"
    );
    let mut text = std::fs::read_to_string(&conf)?;
    text.push_str(&extra);
    // Written whole then renamed, as an editor or a ConfigMap swap does.
    let tmp = dir.join("gw-reload.toml.new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &conf)?;
    let t0 = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &running.pid().to_string()])
        .status();
    let deadline = t0 + Duration::from_secs(60);
    let served = loop {
        if status(&rt) == Some(200) {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            bail!("the new route was not served 60 s after SIGHUP");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let outcome = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let s = outcome.stats.summary(outcome.elapsed.as_secs_f64());
    running.stop();
    Ok(ReloadFigure {
        routes: n,
        validate_ms,
        sighup_to_served_ms: served.as_secs_f64() * 1000.0,
        requests_during_reload: s.requests,
        failed_during_reload: s.failures.total() + (s.responses - s.status.s2xx),
    })
}

fn saturation_figure(
    bin: &Path,
    dir: &Path,
    core: Option<usize>,
    upstream: SocketAddr,
    duration: Duration,
) -> anyhow::Result<SaturationFigure> {
    let listen = free_addr()?;
    let conf = dir.join("gw-saturation.toml");
    std::fs::write(&conf, gateway_toml(0, listen, free_addr()?, upstream, ""))?;
    let mut running =
        gateway_launch(bin, &conf, listen).start(dir, core, &[], Duration::from_secs(30))?;
    let req = vec![RequestSpec::get(format!("plain.{BASE_DOMAIN}"), "/")];
    let max = generator::run(closed_plan(listen, req.clone(), duration), Arc::default())?;
    let max_rps = max.stats.summary(max.elapsed.as_secs_f64()).rps;
    let rss_before = rss_mib(&running);
    let offered = max_rps * 1.5;
    let mut plan = closed_plan(listen, req.clone(), duration);
    plan.load = Load::Open { rate: offered };
    plan.connections = 512;
    plan.timeout = Duration::from_secs(2);
    // Memory sampled while the overload runs.
    let pid_tree = running.tree();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut peak = 0f64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rss = pid_tree
                    .iter()
                    .map(|p| process::status_kib(*p, "VmRSS:"))
                    .sum::<u64>() as f64
                    / 1024.0;
                peak = peak.max(rss);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let over = generator::run(plan, Arc::default())?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rss_peak = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let alive_after = running.alive()
        && std::net::TcpStream::connect_timeout(&listen, Duration::from_secs(2)).is_ok();
    let after = generator::run(
        closed_plan(listen, req, Duration::from_secs(3)),
        Arc::default(),
    )?;
    let rps_after = after.stats.summary(after.elapsed.as_secs_f64()).rps;
    running.stop();
    let r = over.summary();
    Ok(SaturationFigure {
        max_rps,
        offered_rps: offered,
        answered_rps: r.summary.rps,
        p50_ms: r.summary.latency_ms.p50,
        p99_ms: r.summary.latency_ms.p99,
        max_ms: r.summary.latency_ms.max,
        intended: r.intended.unwrap_or(0),
        missed: r.missed.unwrap_or(0),
        failures: r.summary.failures,
        non_2xx: r.summary.responses - r.summary.status.s2xx,
        rss_before_mib: rss_before,
        rss_peak_mib: rss_peak,
        alive_after,
        rps_after,
    })
}

fn markdown(r: &ScaleReport) -> String {
    let mut md = format!(
        "`{}` — the gateway on CPU 0, the generator and the upstream on CPU 1.\n\n",
        r.command
    );
    md.push_str("**Idle keep-alive connections** (each answered one request, then held open):\n\n| proxy | connections | RSS before | RSS with them | per connection |\n|---|---|---|---|---|\n");
    for f in &r.idle {
        md.push_str(&format!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} KiB |\n",
            f.target, f.connections, f.rss_before_mib, f.rss_with_idle_mib, f.kib_per_connection
        ));
    }
    for (peer, why) in &r.idle_skipped {
        md.push_str(&format!("| {peer} | not measured: {why} | | | |\n"));
    }
    md.push_str("\n**Routes** (requests rotate over 1 000 exact tenant hosts; medians):\n\n| routes | req/s | CPU-µs / request | p99 | RSS |\n|---|---|---|---|---|\n");
    for f in &r.routes {
        md.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.2} ms | {:.1} MiB |\n",
            f.routes, f.rps, f.cpu_us_per_request, f.p99_ms, f.rss_mib
        ));
    }
    if let [small, large] = &r.routes[..] {
        md.push_str(&format!(
            "\n{} routes / {} routes: {:.2}× req/s, {:.2}× CPU per request.\n",
            large.routes,
            small.routes,
            large.rps / small.rps,
            large.cpu_us_per_request / small.cpu_us_per_request
        ));
    }
    if let Some(l) = &r.reload {
        md.push_str(&format!(
        "\n**Reload of {} routes**: `gateway validate` {:.0} ms; SIGHUP → the added route serves in {:.0} ms; {} requests on an existing route through it, {} failed.\n",
        l.routes, l.validate_ms, l.sighup_to_served_ms, l.requests_during_reload, l.failed_during_reload
    ));
    }
    if let Some(s) = &r.saturation {
        md.push_str(&format!(
        "\n**Past saturation**: closed-loop maximum {:.0} req/s; an open loop offering {:.0} req/s (1.5×) over 512 connections answered {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms; {} of {} intended requests never sent, failures: connect {}, timeout {}, io {}, protocol {}; {} non-2xx; RSS {:.1} MiB before, {:.1} MiB at peak; alive after: {}; closed-loop right after: {:.0} req/s.\n",
        s.max_rps, s.offered_rps, s.answered_rps, s.p50_ms, s.p99_ms, s.max_ms, s.missed, s.intended, s.failures.connect, s.failures.timeout, s.failures.io, s.failures.protocol, s.non_2xx,
        s.rss_before_mib, s.rss_peak_mib, s.alive_after, s.rps_after
    ));
    }
    md
}
