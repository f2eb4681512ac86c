//! `loadtest compare --scenario overload | noisy_neighbor` (#25): every proxy past its own saturation,
//! one after the other in one run, each pinned to its own core as in the closed-loop comparison.
//!
//! - `overload`: the target's closed-loop maximum over 512 connections on the plain route, then an open
//!   loop at 1.5× and 3× that maximum over the same 512 connections. Goodput (2xx within the window) as a
//!   fraction of the maximum, answered (2xx) and refused (non-2xx) latencies, and what the proxy's core
//!   spent per answer and per refusal (derived from its CPU time and the maximum's cost per answer).
//! - `noisy_neighbor`: a victim tenant at 5 % of capacity on 8 connections of its own host, alone and
//!   then while a noisy tenant floods on 256 connections (closed loop), both with their own tokens on a
//!   `jwt_tenant` route. Twice: with a slow upstream of fixed capacity as the bottleneck, and with the
//!   proxy's own core as the bottleneck (a fast upstream). The figure is the victim's p99 with the flood
//!   over its p99 alone.
//!
//! Peers are configured with the shedding their users would write (`peers::Peer::setup`); each row says
//! what it is. One round: these runs are long, and the figures differ by far more than the rounds would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use plotters::style::RGBColor;
use serde::Serialize;

use super::peers::{self, Claims, Peer, Setup};
use super::process::{self, free_addr, Launch, Running};
use crate::cli::CompareArgs;
use crate::generator::{self, Load, Plan, Progress, RequestSpec};
use crate::report::{Kind, Work};
use crate::scenario::{mint, Scenario, BASE_DOMAIN, JWT_SECRET};
use crate::upstream::{Capacity, Upstream};

/// `overload`: connections of every run.
const CONNECTIONS: usize = 512;
/// `overload`: offered load, in multiples of the target's own maximum.
const FACTORS: [f64; 2] = [1.5, 3.0];
/// `overload`: the unloaded reference latency, at this fraction of the maximum over 64 connections.
const UNLOADED_SHARE: f64 = 0.1;
/// `noisy_neighbor`: the flood's connections (closed loop).
const NOISY_CONNECTIONS: usize = 256;
/// `noisy_neighbor`: the victim's connections and its share of capacity (open loop).
const VICTIM_CONNECTIONS: usize = 8;
const VICTIM_SHARE: f64 = 0.05;
/// `noisy_neighbor`'s bottleneck upstream: 8 workers × 2 ms (≈ 3 000–4 000 requests/s with tokio's
/// millisecond timer), far below what any proxy here forwards on one core.
const SLOW_UPSTREAM: Capacity = Capacity {
    concurrency: 8,
    service: Duration::from_millis(2),
};
/// The victim's and the flood's tenants (their hosts are `<tenant>.bench.test`).
const VICTIM: &str = "victim";
const NOISY: &str = "noisy";

/// The whole run's report: `<out>/<scenario>.json`, `.md` and `.svg`.
#[derive(Debug, Serialize)]
pub struct OverloadReport {
    pub scenario: Scenario,
    pub command: String,
    pub pinned: bool,
    pub duration_s: f64,
    pub targets: Vec<TargetFigures>,
}

#[derive(Debug, Serialize)]
pub struct TargetFigures {
    pub name: String,
    pub kind: Kind,
    pub version: String,
    pub work: Work,
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overload: Option<OverloadFigures>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub noisy: Vec<NoisyCase>,
    /// Why it was not measured (it failed to start, or to do the work it claims).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct OverloadFigures {
    /// 2xx per second, closed loop over 512 connections (a peer's own shedding may refuse some there).
    pub max_rps: f64,
    /// CPU per answer at that maximum, when it refused nothing.
    pub cpu_us_per_answer: Option<f64>,
    /// Non-2xx per second at that maximum (the peer's shedding refusing in a closed loop).
    pub max_refused_rps: f64,
    /// p99 of an open loop at a tenth of the maximum (64 connections).
    pub unloaded_p99_ms: f64,
    pub levels: Vec<Level>,
}

#[derive(Debug, Serialize)]
pub struct Level {
    pub factor: f64,
    pub offered_rps: f64,
    pub goodput_rps: f64,
    /// Goodput over the target's own maximum.
    pub goodput_ratio: f64,
    pub answered_p50_ms: f64,
    pub answered_p99_ms: f64,
    pub answered_max_ms: f64,
    /// Non-2xx answers per second, and their p99 (the time to refuse).
    pub refused_rps: f64,
    pub refused_p99_ms: f64,
    /// Requests that got no answer at all (timeouts, resets), and intended requests never sent.
    pub failed: u64,
    pub missed: u64,
    /// The proxy's CPU per 2xx in this run, and per refusal: (CPU − answers × the maximum's cost per
    /// answer) ÷ refusals.
    pub cpu_us_per_answer: Option<f64>,
    pub cpu_us_per_refusal: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct NoisyCase {
    /// `upstream` (a slow upstream of fixed capacity) or `core` (the proxy's own core).
    pub bottleneck: &'static str,
    /// 2xx per second of the bottleneck, closed loop over 64 connections.
    pub capacity_rps: f64,
    pub victim_rps: f64,
    pub alone: Victim,
    pub flood: Victim,
    /// The flood's own 2xx and non-2xx per second.
    pub noisy_goodput_rps: f64,
    pub noisy_refused_rps: f64,
    /// The victim's p99 with the flood over its p99 alone (target: ≤ 2).
    pub p99_ratio: f64,
    /// `core`: the proxy's CPU per answer at its own maximum (64 connections, closed loop) and during
    /// the flood (all answers, victim's and flood's), and the gateway's deferrals during the flood: what
    /// backpressure costs is the difference per deferral.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_answer_max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_answer_flood: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferrals: Option<f64>,
    /// The gateway's overload series right after the flood (what its limits and gate did).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateway_metrics: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Victim {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub answered: u64,
    /// Answered with a non-2xx status (refused), or not at all.
    pub refused: u64,
    pub failed: u64,
}

/// One proxy under test.
struct Subject {
    name: String,
    kind: Kind,
    version: String,
    work: Work,
    note: Option<String>,
    /// None: it cannot do the work (the note says why).
    launch: Option<Launch>,
    claims: Claims,
    /// The gateway's admin listener: its overload metrics are read after each flood.
    admin: Option<SocketAddr>,
}

pub fn main(args: &CompareArgs) -> anyhow::Result<()> {
    let report = run(args)?;
    let written = write(&report, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", markdown(&report));
    }
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Runs the scenario against the gateway and each peer.
pub fn run(args: &CompareArgs) -> anyhow::Result<OverloadReport> {
    let gateway_bin = args
        .gateway_bin
        .clone()
        .unwrap_or_else(super::default_gateway_bin);
    if !gateway_bin.exists() {
        bail!(
            "no gateway binary at {} (cargo build --release -p gateway, or --gateway-bin)",
            gateway_bin.display()
        );
    }
    let peer_list = super::peer_list(args)?;
    for p in &peer_list {
        p.ensure_installed()?;
    }
    let dir = super::work_dir()?;
    process::stop_children_on_signal();
    let core = super::pin_generator(args)?.map(|(p, _)| p);
    let env = Env {
        args,
        dir: &dir,
        core,
        gateway_bin: &gateway_bin,
        peers: &peer_list,
    };
    let targets = match args.scenario {
        Scenario::Overload => overload(&env)?,
        Scenario::NoisyNeighbor => noisy_neighbor(&env)?,
        other => bail!("{} is not an overload scenario", other.name()),
    };
    if args.keep_files {
        eprintln!("work files kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(OverloadReport {
        scenario: args.scenario,
        command: format!(
            "loadtest compare --scenario {} --duration {}s --peers {}",
            args.scenario.name(),
            args.duration.as_secs_f64(),
            if args.peers.is_empty() {
                "none".into()
            } else {
                args.peers.join(",")
            }
        ),
        pinned: core.is_some(),
        duration_s: args.duration.as_secs_f64(),
        targets,
    })
}

struct Env<'a> {
    args: &'a CompareArgs,
    dir: &'a Path,
    core: Option<usize>,
    gateway_bin: &'a Path,
    peers: &'a [Peer],
}

/// The gateway and each peer, configured for the scenario in front of `upstream`; `tag` keeps the
/// configuration files of several upstreams apart.
fn subjects(env: &Env<'_>, upstream: SocketAddr, tag: &str) -> anyhow::Result<Vec<Subject>> {
    let scenario = env.args.scenario;
    let tenants = scenario.tenants();
    let ours = Claims {
        jwt: tenants,
        binding: tenants,
    };
    let listen = free_addr()?;
    let admin = free_addr()?;
    let toml = scenario.gateway_toml(listen, admin, free_addr()?, upstream, None);
    let conf = env.dir.join(format!("gateway-{tag}.toml"));
    std::fs::write(&conf, toml)?;
    let mut out = vec![Subject {
        name: "gateway".into(),
        kind: Kind::Ours,
        version: super::version_line(env.gateway_bin, &["--version"]),
        work: Work::Same,
        note: Some("defaults: adaptive concurrency per upstream, a fair queue by tenant (else client), queue_timeout 100 ms".into()),
        launch: Some(Launch {
            name: format!("gateway-{tag}"),
            program: env.gateway_bin.to_path_buf(),
            args: vec!["run".into(), "--config".into(), conf.display().to_string()],
            env: vec![("BENCH_JWT_SECRET".into(), JWT_SECRET.into())],
            addr: listen,
        }),
        claims: ours,
        admin: Some(admin),
    }];
    for peer in env.peers {
        let pdir = env.dir.join(format!("{}-{tag}", peer.name()));
        std::fs::create_dir_all(&pdir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pdir, std::fs::Permissions::from_mode(0o755))?;
        }
        let ctx = peers::Context {
            dir: &pdir,
            listen: free_addr()?,
            upstream,
            cert: None,
            // Not used by the overload configurations.
            redis: upstream,
            threads: 1,
        };
        let (work, note, launch, claims) = match peer.setup(scenario, &ctx)? {
            Setup::Same(l) => (Work::Same, None, Some(l), ours),
            Setup::Closest(l, note, claims) => (Work::Closest, Some(note), Some(l), claims),
            Setup::Cannot(why) => (Work::Cannot, Some(why), None, ours),
        };
        out.push(Subject {
            name: peer.name().into(),
            kind: Kind::Peer,
            version: peer.version(),
            work,
            note,
            launch: launch.map(|mut l| {
                l.name = format!("{}-{tag}", l.name);
                l
            }),
            claims,
            admin: None,
        });
    }
    Ok(out)
}

fn figures(s: &Subject) -> TargetFigures {
    TargetFigures {
        name: s.name.clone(),
        kind: s.kind,
        version: s.version.clone(),
        work: s.work,
        note: s.note.clone(),
        overload: None,
        noisy: Vec::new(),
        error: None,
    }
}

fn start(env: &Env<'_>, launch: &Launch) -> anyhow::Result<Running> {
    Ok(launch.start(env.dir, env.core, &[], Duration::from_secs(30))?)
}

/// Waits (up to 60 s) until the target answers one request with a 2xx within a second: a run past
/// saturation leaves a backlog behind, which must not count against the next run.
fn settle(addr: SocketAddr, req: &RequestSpec) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t0 = Instant::now();
        let ok = matches!(
            rt.block_on(super::probe::status_within(
                addr,
                req,
                Duration::from_secs(1)
            )),
            Ok(200..=299)
        );
        if ok && t0.elapsed() < Duration::from_millis(50) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not answer promptly within 60 s of the last run");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- overload ----

fn overload(env: &Env<'_>) -> anyhow::Result<Vec<TargetFigures>> {
    let upstream = Upstream::start("127.0.0.1:0".parse()?)?;
    let subjects = subjects(env, upstream.addr, "fast")?;
    let mut out = Vec::new();
    for s in &subjects {
        let mut f = figures(s);
        if let Some(l) = &s.launch {
            match overload_one(env, l) {
                Ok(o) => f.overload = Some(o),
                Err(e) => {
                    eprintln!("  {}: {e:#}", s.name);
                    f.error = Some(format!("{e:#}"));
                }
            }
        }
        out.push(f);
    }
    upstream.stop();
    Ok(out)
}

fn overload_one(env: &Env<'_>, launch: &Launch) -> anyhow::Result<OverloadFigures> {
    let args = env.args;
    let req = RequestSpec::get(format!("plain.{BASE_DOMAIN}"), "/");
    let reqs = vec![req.clone()];
    let mut running = start(env, launch)?;
    let addr = launch.addr;
    let result = (|| -> anyhow::Result<OverloadFigures> {
        if !args.warmup.is_zero() {
            generator::run(
                Plan::h1(addr, reqs.clone(), Load::Closed, CONNECTIONS, args.warmup),
                Arc::default(),
            )?;
        }
        let cpu0 = running.cpu_seconds();
        let max = generator::run(
            Plan::h1(addr, reqs.clone(), Load::Closed, CONNECTIONS, args.duration),
            Arc::default(),
        )?;
        let cpu_max = running.cpu_seconds() - cpu0;
        let m = max.stats.summary(max.elapsed.as_secs_f64());
        if m.goodput <= 0.0 {
            bail!("no 2xx at all in the closed loop ({:?})", m.status);
        }
        // The cost of an answer, from a run with nothing else in it (a peer whose shedding refuses in
        // the closed loop already has no clean figure: no per-refusal cost is derived for it).
        let per_answer = (m.status.s2xx > 0 && m.responses == m.status.s2xx)
            .then(|| cpu_max / m.status.s2xx as f64 * 1e6);
        eprintln!(
            "  {}: maximum {:.0}/s over {CONNECTIONS} connections",
            launch.name, m.goodput
        );
        settle(addr, &req)?;
        let unloaded = generator::run(
            Plan::h1(
                addr,
                reqs.clone(),
                Load::Open {
                    rate: m.goodput * UNLOADED_SHARE,
                },
                64,
                args.duration,
            ),
            Arc::default(),
        )?;
        let unloaded_p99 = unloaded
            .stats
            .summary(unloaded.elapsed.as_secs_f64())
            .answered_ms
            .p99;
        let mut levels = Vec::new();
        for factor in FACTORS {
            settle(addr, &req)?;
            let rate = m.goodput * factor;
            let cpu0 = running.cpu_seconds();
            let o = generator::run(
                Plan::h1(
                    addr,
                    reqs.clone(),
                    Load::Open { rate },
                    CONNECTIONS,
                    args.duration,
                ),
                Arc::default(),
            )?;
            let cpu = running.cpu_seconds() - cpu0;
            let r = o.summary();
            let s = &r.summary;
            let refused = s.responses - s.status.s2xx;
            let level = Level {
                factor,
                offered_rps: rate,
                goodput_rps: s.goodput,
                goodput_ratio: s.goodput / m.goodput,
                answered_p50_ms: s.answered_ms.p50,
                answered_p99_ms: s.answered_ms.p99,
                answered_max_ms: s.answered_ms.max,
                refused_rps: refused as f64 / s.seconds.max(1e-9),
                refused_p99_ms: s.refused_ms.p99,
                failed: s.failures.total(),
                missed: r.missed.unwrap_or(0),
                cpu_us_per_answer: (s.status.s2xx > 0).then(|| cpu / s.status.s2xx as f64 * 1e6),
                cpu_us_per_refusal: per_answer
                    .filter(|_| refused > 0)
                    .map(|a| (cpu * 1e6 - a * s.status.s2xx as f64) / refused as f64),
            };
            eprintln!(
                "  {} at {factor}×: goodput {:.2}× ({:.0}/s), answered p99 {:.1} ms, refused {:.0}/s p99 {:.1} ms, {} failed",
                launch.name,
                level.goodput_ratio,
                level.goodput_rps,
                level.answered_p99_ms,
                level.refused_rps,
                level.refused_p99_ms,
                level.failed
            );
            levels.push(level);
        }
        Ok(OverloadFigures {
            max_rps: m.goodput,
            max_refused_rps: (m.responses - m.status.s2xx) as f64 / m.seconds.max(1e-9),
            cpu_us_per_answer: per_answer,
            unloaded_p99_ms: unloaded_p99,
            levels,
        })
    })();
    running.stop();
    result
}

// ---- noisy_neighbor ----

fn tenant_request(tenant: &str) -> anyhow::Result<RequestSpec> {
    let token = mint(
        JWT_SECRET,
        tenant,
        "member",
        &uuid::Uuid::new_v4().to_string(),
    )?;
    Ok(RequestSpec::get(format!("{tenant}.{BASE_DOMAIN}"), "/")
        .header("Authorization", format!("Bearer {token}")))
}

fn noisy_neighbor(env: &Env<'_>) -> anyhow::Result<Vec<TargetFigures>> {
    let victim = tenant_request(VICTIM)?;
    let noisy = tenant_request(NOISY)?;
    let slow = Upstream::start_with("127.0.0.1:0".parse()?, Some(SLOW_UPSTREAM))?;
    let fast = Upstream::start("127.0.0.1:0".parse()?)?;
    // The slow upstream's own capacity, straight to it.
    let cap = generator::run(
        Plan::h1(
            slow.addr,
            vec![noisy.clone()],
            Load::Closed,
            64,
            env.args.duration.min(Duration::from_secs(5)),
        ),
        Arc::default(),
    )?;
    let slow_capacity = cap.stats.summary(cap.elapsed.as_secs_f64()).goodput;
    eprintln!("  the slow upstream serves {slow_capacity:.0}/s");
    let by_slow = subjects(env, slow.addr, "slow")?;
    let by_fast = subjects(env, fast.addr, "fast")?;
    let mut out = Vec::new();
    for (s_slow, s_fast) in by_slow.iter().zip(&by_fast) {
        let mut f = figures(s_slow);
        if let (Some(l_slow), Some(l_fast)) = (&s_slow.launch, &s_fast.launch) {
            let cases = (|| -> anyhow::Result<Vec<NoisyCase>> {
                Ok(vec![
                    noisy_case(
                        env,
                        s_slow,
                        l_slow,
                        "upstream",
                        Some(slow_capacity),
                        &victim,
                        &noisy,
                    )?,
                    noisy_case(env, s_fast, l_fast, "core", None, &victim, &noisy)?,
                ])
            })();
            match cases {
                Ok(c) => f.noisy = c,
                Err(e) => {
                    eprintln!("  {}: {e:#}", s_slow.name);
                    f.error = Some(format!("{e:#}"));
                }
            }
        }
        out.push(f);
    }
    slow.stop();
    fast.stop();
    Ok(out)
}

/// One bottleneck: `capacity` is the slow upstream's, or None to measure the target's own maximum.
fn noisy_case(
    env: &Env<'_>,
    subject: &Subject,
    launch: &Launch,
    bottleneck: &'static str,
    capacity: Option<f64>,
    victim: &RequestSpec,
    noisy: &RequestSpec,
) -> anyhow::Result<NoisyCase> {
    let args = env.args;
    let addr = launch.addr;
    let mut running = start(env, launch)?;
    let result = (|| -> anyhow::Result<NoisyCase> {
        if subject.claims.jwt {
            super::probe::check_tenant_work(
                addr,
                &[victim.clone(), noisy.clone()],
                subject.claims.binding,
            )
            .with_context(|| format!("{} does not do the work its row claims", subject.name))?;
        }
        let both = vec![victim.clone(), noisy.clone()];
        if !args.warmup.is_zero() {
            generator::run(
                Plan::h1(addr, both.clone(), Load::Closed, 64, args.warmup),
                Arc::default(),
            )?;
        }
        // The proxy's own maximum, and its CPU per answer there (the reference for what a deferral or a
        // refusal costs on top).
        let (capacity, per_answer) = match capacity {
            Some(c) => (c, None),
            None => {
                let cpu0 = running.cpu_seconds();
                let m = generator::run(
                    Plan::h1(addr, both.clone(), Load::Closed, 64, args.duration),
                    Arc::default(),
                )?;
                let cpu = running.cpu_seconds() - cpu0;
                let s = m.stats.summary(m.elapsed.as_secs_f64());
                let per = (s.status.s2xx > 0).then(|| cpu / s.status.s2xx as f64 * 1e6);
                (s.goodput, per)
            }
        };
        let rate = capacity * VICTIM_SHARE;
        let victim_plan = Plan::h1(
            addr,
            vec![victim.clone()],
            Load::Open { rate },
            VICTIM_CONNECTIONS,
            args.duration,
        );
        settle(addr, victim)?;
        let alone = generator::run(victim_plan.clone(), Arc::default())?;
        settle(addr, victim)?;
        // The flood starts first and outlasts the victim's window on both sides.
        let flood_plan = Plan::h1(
            addr,
            vec![noisy.clone()],
            Load::Closed,
            NOISY_CONNECTIONS,
            args.duration + Duration::from_secs(4),
        );
        let deferrals0 = subject
            .admin
            .map(|a| series_value(a, "gateway_core_deferrals_total"));
        let cpu0 = running.cpu_seconds();
        let progress = Arc::new(Progress::default());
        let flood = {
            let progress = Arc::clone(&progress);
            std::thread::spawn(move || generator::run(flood_plan, progress))
        };
        let ramp = Instant::now() + Duration::from_secs(10);
        while progress.done.load(std::sync::atomic::Ordering::Relaxed)
            < 2 * NOISY_CONNECTIONS as u64
            && Instant::now() < ramp
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_secs(1));
        let with = generator::run(victim_plan, Arc::default())?;
        let flood = flood
            .join()
            .map_err(|_| anyhow::anyhow!("the flood's thread panicked"))??;
        let cpu = running.cpu_seconds() - cpu0;
        let fs = flood.stats.summary(flood.elapsed.as_secs_f64());
        let deferrals = subject
            .admin
            .map(|a| series_value(a, "gateway_core_deferrals_total"))
            .zip(deferrals0)
            .map(|(after, before)| (after - before).max(0.0));
        let gateway_metrics = subject.admin.map(overload_series).unwrap_or_default();
        let v = |o: &generator::Outcome| {
            let s = o.stats.summary(o.elapsed.as_secs_f64());
            Victim {
                p50_ms: s.answered_ms.p50,
                p99_ms: s.answered_ms.p99,
                answered: s.status.s2xx,
                refused: s.responses - s.status.s2xx,
                failed: s.failures.total(),
            }
        };
        let (alone, with) = (v(&alone), v(&with));
        let answers = fs.status.s2xx + with.answered;
        let case = NoisyCase {
            bottleneck,
            capacity_rps: capacity,
            victim_rps: rate,
            p99_ratio: if alone.p99_ms > 0.0 {
                with.p99_ms / alone.p99_ms
            } else {
                0.0
            },
            alone,
            flood: with,
            noisy_goodput_rps: fs.goodput,
            noisy_refused_rps: (fs.responses - fs.status.s2xx) as f64 / fs.seconds.max(1e-9),
            gateway_metrics,
            cpu_us_per_answer_max: per_answer,
            cpu_us_per_answer_flood: (answers > 0).then(|| cpu / answers as f64 * 1e6),
            deferrals,
        };
        for m in &case.gateway_metrics {
            eprintln!("    {m}");
        }
        eprintln!(
            "  {} ({bottleneck}): victim p99 {:.2} ms alone, {:.2} ms with the flood ({:.1}×), {} refused, {} failed; flood {:.0}/s 2xx, {:.0}/s refused",
            subject.name,
            case.alone.p99_ms,
            case.flood.p99_ms,
            case.p99_ratio,
            case.flood.refused,
            case.flood.failed,
            case.noisy_goodput_rps,
            case.noisy_refused_rps
        );
        Ok(case)
    })();
    running.stop();
    result
}

/// One unlabelled series' value on the gateway's admin listener (0 when absent).
fn series_value(admin: SocketAddr, name: &str) -> f64 {
    metrics_text(admin)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn metrics_text(admin: SocketAddr) -> String {
    (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })()
    .unwrap_or_default()
}

/// The gateway's overload series (`/metrics` on its admin listener), one line each.
fn overload_series(admin: SocketAddr) -> Vec<String> {
    metrics_text(admin)
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("gateway_core_")
                    || l.starts_with("gateway_upstream_concurrency_limit")
                    || l.starts_with("gateway_overload_refusals_total"))
        })
        .map(str::to_string)
        .collect()
}

// ---- report ----

fn write(r: &OverloadReport, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let base = out.join(r.scenario.name());
    let json = base.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(r)?)?;
    let md = base.with_extension("md");
    std::fs::write(&md, markdown(r))?;
    let mut written = vec![json, md];
    let svg = base.with_extension("svg");
    match chart(r, &svg) {
        Ok(()) => written.push(svg),
        Err(e) => eprintln!("no chart: {e}"),
    }
    Ok(written)
}

fn label(t: &TargetFigures) -> String {
    if t.work == Work::Closest {
        format!("{} *", t.name)
    } else {
        t.name.clone()
    }
}

pub fn markdown(r: &OverloadReport) -> String {
    let mut md = format!(
        "# loadtest compare --scenario {}\n\n`{}` — proxies {}; one round; `*`: the closest configuration its users would write (notes below).\n\n",
        r.scenario.name(),
        r.command,
        if r.pinned {
            "pinned to one core, generator and upstream on the other"
        } else {
            "not pinned"
        }
    );
    match r.scenario {
        Scenario::Overload => {
            md.push_str("| target | max 2xx/s (512 conn.) | unloaded p99 ms | offered | goodput ÷ max | answered p50 / p99 ms | refused/s | refusal p99 ms | failed | CPU-µs per answer / per refusal |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for t in &r.targets {
                let Some(o) = &t.overload else { continue };
                for l in &o.levels {
                    md.push_str(&format!(
                        "| {} | {:.0} | {:.2} | {}× | **{:.2}** | {:.1} / {:.1} | {:.0} | {:.1} | {} | {} / {} |\n",
                        label(t),
                        o.max_rps,
                        o.unloaded_p99_ms,
                        l.factor,
                        l.goodput_ratio,
                        l.answered_p50_ms,
                        l.answered_p99_ms,
                        l.refused_rps,
                        l.refused_p99_ms,
                        l.failed,
                        l.cpu_us_per_answer.map_or("–".into(), |c| format!("{c:.1}")),
                        l.cpu_us_per_refusal.map_or("–".into(), |c| format!("{c:.1}")),
                    ));
                }
            }
        }
        _ => {
            md.push_str("| target | bottleneck | capacity/s | victim/s | victim p99 alone ms | with the flood ms | **ratio** | victim refused / failed | flood 2xx/s | flood refused/s | CPU-µs per answer at max / in the flood | deferrals |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for t in &r.targets {
                for c in &t.noisy {
                    md.push_str(&format!(
                        "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | **{:.1}×** | {} / {} | {:.0} | {:.0} | {} / {} | {} |\n",
                        label(t),
                        c.bottleneck,
                        c.capacity_rps,
                        c.victim_rps,
                        c.alone.p99_ms,
                        c.flood.p99_ms,
                        c.p99_ratio,
                        c.flood.refused,
                        c.flood.failed,
                        c.noisy_goodput_rps,
                        c.noisy_refused_rps,
                        c.cpu_us_per_answer_max.map_or("–".into(), |v| format!("{v:.1}")),
                        c.cpu_us_per_answer_flood.map_or("–".into(), |v| format!("{v:.1}")),
                        c.deferrals.map_or("–".into(), |v| format!("{v:.0}")),
                    ));
                }
            }
        }
    }
    md.push('\n');
    for t in &r.targets {
        let mut line = format!("- **{}** {}", t.name, t.version);
        if let Some(n) = &t.note {
            line.push_str(&format!(": {n}"));
        }
        if let Some(e) = &t.error {
            line.push_str(&format!(" — not measured: {e}"));
        }
        md.push_str(&line);
        md.push('\n');
    }
    md
}

fn chart(r: &OverloadReport, path: &Path) -> Result<(), String> {
    let (names, panels) = match r.scenario {
        Scenario::Overload => {
            let rows: Vec<_> = r
                .targets
                .iter()
                .filter_map(|t| Some((label(t), t.overload.as_ref()?.levels.last()?)))
                .collect();
            (
                rows.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                [
                    (
                        "goodput ÷ own maximum at 3× (higher is better)",
                        rows.iter().map(|(_, l)| l.goodput_ratio).collect(),
                        RGBColor(52, 101, 164),
                    ),
                    (
                        "answered p99 at 3×, ms (lower is better)",
                        rows.iter().map(|(_, l)| l.answered_p99_ms).collect(),
                        RGBColor(204, 0, 0),
                    ),
                ],
            )
        }
        _ => {
            let ratio = |t: &TargetFigures, b: &str| {
                t.noisy
                    .iter()
                    .find(|c| c.bottleneck == b)
                    .map(|c| c.p99_ratio)
            };
            let rows: Vec<_> = r
                .targets
                .iter()
                .filter_map(|t| Some((label(t), ratio(t, "upstream")?, ratio(t, "core")?)))
                .collect();
            (
                rows.iter().map(|(n, _, _)| n.clone()).collect(),
                [
                    (
                        "victim p99 with ÷ without the flood: slow upstream",
                        rows.iter().map(|r| r.1).collect(),
                        RGBColor(52, 101, 164),
                    ),
                    (
                        "… the proxy's own core (lower is better)",
                        rows.iter().map(|r| r.2).collect(),
                        RGBColor(204, 0, 0),
                    ),
                ],
            )
        }
    };
    if names.is_empty() {
        return Err("nothing measured".into());
    }
    crate::report::bars(
        path,
        &format!(
            "loadtest compare --scenario {}   (* closest configuration)",
            r.scenario.name()
        ),
        &names,
        panels,
    )
}
