//! `loadtest compare`: one scenario against the upstream directly (the ceiling), our gateway and each
//! peer, in alternation (A B C … A B C …) over several rounds, each proxy pinned to its own core with the
//! generator and the upstream on the other. Per target: req/s, latency quantiles, the proxy's CPU time
//! per request and peak RSS; with `--instructions`, user-space instructions per request under callgrind.
//! The overload scenarios (`overload`, `noisy_neighbor`) run open loops past saturation: `overload`.

mod backend;
pub mod generators;
pub mod overload;
pub mod peers;
pub mod probe;
pub mod process;
pub mod scale;
pub mod variants;

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::cli::Bar;
use crate::generator::{self, Load, Plan, Progress, Protocol};
use crate::report::{self, Report, Sample, TargetReport, Work};
use crate::scenario::Scenario;
use crate::upstream::Upstream;
use peers::{Peer, Setup};
use process::{free_addr, Launch};

/// `loadtest compare`'s arguments (held in `cli`, which the report reads them from too).
pub use crate::cli::CompareArgs;

/// One target of the comparison.
struct Target {
    name: String,
    kind: report::Kind,
    version: String,
    work: Work,
    note: Option<String>,
    /// None: the upstream itself (in process).
    launch: Option<Launch>,
    /// What it checks of a tenant scenario's requests (checked before it is measured).
    claims: peers::Claims,
}

pub fn main(args: CompareArgs) -> anyhow::Result<()> {
    if args.scenario.overload() {
        return overload::main(&args);
    }
    let report = compare(&args)?;
    let written = report::write(&report, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report::markdown(&report));
    }
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn default_gateway_bin() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("release/gateway")
}

fn work_dir() -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let dir = std::env::temp_dir().join(format!("aggios-compare-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // nginx's workers run unprivileged: they must reach the access log's folder.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// Runs the whole comparison and returns its report (also used by the smoke test).
pub fn compare(args: &CompareArgs) -> anyhow::Result<Report> {
    if args.scenario.overload() {
        bail!(
            "{} is measured by compare::overload::run, not as a closed loop",
            args.scenario.name()
        );
    }
    if args.rounds == 0 || args.connections == 0 || args.threads == 0 {
        bail!("--rounds, --connections and --threads must be at least 1");
    }
    let peer_list = peer_list(args)?;
    let gateway_bin = args.gateway_bin.clone().unwrap_or_else(default_gateway_bin);
    if !gateway_bin.exists() {
        bail!(
            "no gateway binary at {} (cargo build --release -p gateway, or --gateway-bin)",
            gateway_bin.display()
        );
    }
    let redis: SocketAddr = args
        .redis
        .to_socket_addrs()
        .with_context(|| format!("--redis {}", args.redis))?
        .next()
        .with_context(|| format!("--redis {} has no address", args.redis))?;
    // The global limit's store, and the backend's throttle for `login`.
    if matches!(
        args.scenario,
        Scenario::TenantJwtRatelimit | Scenario::TenantJwtPlan | Scenario::Login
    ) && TcpStream::connect_timeout(&redis, Duration::from_secs(2)).is_err()
    {
        bail!(
            "{} needs Redis at {redis} (scripts/lib.sh ensure_redis starts one)",
            args.scenario.name()
        );
    }
    let dir = work_dir()?;
    process::stop_children_on_signal();
    let cores = pin_generator(args)?;
    let proxy_core = cores.map(|(p, _)| p);
    let in_process = Upstream::start("127.0.0.1:0".parse()?)?;
    // `login` goes to the real backend (on the generator's core, as the upstream is).
    let backend = if args.scenario == Scenario::Login {
        let bin = args
            .backend_bin
            .clone()
            .unwrap_or_else(|| gateway_bin.with_file_name("backend"));
        let b = backend::BackendArgs {
            bin,
            pg_admin_url: args.pg_admin_url.clone(),
            redis,
            users: crate::scenario::LOGIN_USERS,
        };
        Some(backend::Backend::start(&b, &dir, cores.map(|(_, l)| l))?)
    } else {
        None
    };
    let upstream_addr = backend.as_ref().map_or(in_process.addr, |b| b.addr);

    // The TLS scenario's certificate, made by the gateway's own dev CA.
    let cert = if args.scenario.tls() {
        let certs = dir.join("certs");
        let ok = std::process::Command::new(&gateway_bin)
            .args(["certs", "dev", "--out"])
            .arg(&certs)
            .args(["--domain", &format!("*.{}", crate::scenario::BASE_DOMAIN)])
            .stdout(std::process::Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("gateway certs dev failed");
        }
        let (c, k) = (certs.join("dev.crt"), certs.join("dev.key"));
        let mut pem = std::fs::read(&c)?;
        pem.extend(std::fs::read(&k)?);
        std::fs::write(dir.join("haproxy.pem"), pem)?;
        Some((
            c.display().to_string(),
            k.display().to_string(),
            certs.join("dev-ca.crt").display().to_string(),
        ))
    } else {
        None
    };

    let mut targets = vec![Target {
        name: "upstream".into(),
        kind: report::Kind::Ceiling,
        version: if backend.is_some() {
            "the backend".into()
        } else {
            "in-process hyper".into()
        },
        work: Work::Same,
        note: Some("the generator straight to the upstream: the ceiling".into()),
        launch: None,
        claims: peers::Claims {
            jwt: false,
            binding: false,
        },
    }];
    // What the gateway checks of this scenario's requests, and so every peer doing the same work.
    let ours = peers::Claims {
        jwt: args.scenario.tenants(),
        binding: args.scenario.tenants(),
    };
    let gw_listen = free_addr()?;
    let gw_admin = free_addr()?;
    let gw_toml = args.scenario.gateway_toml(
        gw_listen,
        gw_admin,
        free_addr()?,
        upstream_addr,
        cert.as_ref().map(|(c, k, _)| (c.as_str(), k.as_str())),
    );
    let gw_toml = gw_toml.replacen("threads = 1", &format!("threads = {}", args.threads), 1);
    let gw_conf = dir.join("gateway.toml");
    std::fs::write(&gw_conf, gw_toml)?;
    let gw_env = vec![
        (
            "BENCH_JWT_SECRET".to_string(),
            crate::scenario::JWT_SECRET.to_string(),
        ),
        ("BENCH_REDIS_URL".to_string(), format!("redis://{redis}")),
    ];
    let validate = |conf: &std::path::Path| -> anyhow::Result<()> {
        let ok = std::process::Command::new(&gateway_bin)
            .args(["validate", "--config"])
            .arg(conf)
            .envs(gw_env.iter().map(|(k, v)| (k, v)))
            .status()?
            .success();
        if !ok {
            bail!("the gateway refused its configuration {}", conf.display());
        }
        Ok(())
    };
    validate(&gw_conf)?;
    targets.push(Target {
        name: "gateway".into(),
        kind: report::Kind::Ours,
        version: version_line(&gateway_bin, &["--version"]),
        work: Work::Same,
        note: None,
        launch: Some(Launch {
            name: "gateway".into(),
            program: gateway_bin.clone(),
            args: vec![
                "run".into(),
                "--config".into(),
                gw_conf.display().to_string(),
            ],
            env: gw_env.clone(),
            addr: gw_listen,
        }),
        claims: ours,
    });
    for v in &args.variants {
        let listen = free_addr()?;
        let toml = v
            .apply(&std::fs::read_to_string(&gw_conf)?, args.threads)?
            .replacen(&gw_listen.to_string(), &listen.to_string(), 1)
            .replacen(&gw_admin.to_string(), &free_addr()?.to_string(), 1);
        let conf = dir.join(format!("{}.toml", v.name()));
        std::fs::write(&conf, toml)?;
        validate(&conf)?;
        let env = gw_env.clone();
        targets.push(Target {
            name: v.name(),
            kind: report::Kind::Variant,
            version: version_line(&gateway_bin, &["--version"]),
            work: Work::Same,
            note: Some(v.note().into()),
            launch: Some(Launch {
                name: v.name(),
                program: gateway_bin.clone(),
                args: vec!["run".into(), "--config".into(), conf.display().to_string()],
                env,
                addr: listen,
            }),
            claims: ours,
        });
    }
    if let (Some(bare), Scenario::Plain) = (&args.bare_pingora, args.scenario) {
        let listen = free_addr()?;
        targets.push(Target {
            name: "bare-pingora".into(),
            kind: report::Kind::Floor,
            version: "the gateway's Pingora, no logic".into(),
            work: Work::Same,
            note: Some(
                "Pingora forwarding with no logic, no access log: the floor under the gateway"
                    .into(),
            ),
            launch: Some(Launch {
                name: "bare-pingora".into(),
                program: bare.clone(),
                args: vec![listen.to_string(), upstream_addr.to_string()],
                env: vec![],
                addr: listen,
            }),
            claims: ours,
        });
    }
    for peer in peer_list {
        peer.ensure_installed()?;
        let ctx = peers::Context {
            dir: &dir,
            listen: free_addr()?,
            upstream: upstream_addr,
            cert: cert.as_ref().map(|(c, k, _)| (c.clone(), k.clone())),
            redis,
            threads: args.threads,
        };
        let (work, note, launch, claims) = match peer.setup(args.scenario, &ctx)? {
            Setup::Same(l) => (Work::Same, None, Some(l), ours),
            Setup::Closest(l, note, claims) => (Work::Closest, Some(note), Some(l), claims),
            Setup::Cannot(why) => (Work::Cannot, Some(why), None, ours),
        };
        targets.push(Target {
            name: peer.name().into(),
            kind: report::Kind::Peer,
            version: peer.version(),
            work,
            note,
            launch,
            claims,
        });
    }

    let requests = args.scenario.requests()?;
    let tls = cert
        .as_ref()
        .map(|(_, _, ca)| crate::tls::trusting(ca))
        .transpose()?;
    let login = args.scenario == Scenario::Login;
    let plan = Plan {
        addr: upstream_addr,
        tls: tls.clone(),
        protocol: if args.scenario.h3() {
            Protocol::H3
        } else {
            Protocol::H1
        },
        keep_alive: args.scenario.keep_alive(),
        load: Load::Closed,
        // One connection per user: a login is ~Argon2id time, not a proxy's.
        connections: if login {
            crate::scenario::LOGIN_USERS
        } else {
            args.connections
        },
        threads: 1,
        duration: args.duration,
        timeout: Duration::from_secs(if login { 30 } else { 5 }),
        requests,
    };

    let mut samples: Vec<Vec<Sample>> = targets.iter().map(|_| Vec::new()).collect();
    let mut sizes: Vec<Option<report::ResponseSize>> = targets.iter().map(|_| None).collect();
    for round in 1..=args.rounds {
        for (i, t) in targets.iter().enumerate() {
            if t.work == Work::Cannot {
                continue;
            }
            // The upstream row is plain HTTP to the upstream, whatever the scenario.
            let mut p = plan.clone();
            if t.launch.is_none() {
                p.tls = None;
                p.keep_alive = true;
                p.protocol = Protocol::H1;
            }
            let label = format!("{} {round}/{}", t.name, args.rounds);
            // The first round checks that a tenant scenario's work is done (forged tokens refused …).
            let check =
                (round == 1 && t.claims.jwt && t.launch.is_some()).then_some(t.claims.binding);
            // `compressed`: what a response weighs, once (the same bytes every time), and a proxy that
            // does not compress is not measured as if it did.
            let weigh = round == 1 && args.scenario == Scenario::Compressed;
            let (s, size) = measure(t, &p, &dir, proxy_core, args.warmup, &label, check, weigh)
                .with_context(|| format!("measuring {} (files in {})", t.name, dir.display()))?;
            if let Some(size) = size {
                eprintln!(
                    "  {}: {} bytes per response ({})",
                    t.name, size.bytes, size.encoding
                );
                sizes[i] = Some(size);
            }
            eprintln!(
                "  {label}: {:.0} req/s, p99 {:.2} ms, {} CPU-µs/request, {} non-2xx, {} failed",
                s.rps,
                s.p99_ms,
                s.cpu_us_per_request
                    .map_or("–".into(), |c| format!("{c:.1}")),
                s.non_2xx,
                s.failed
            );
            samples[i].push(s);
        }
    }
    let mut instructions: Vec<Option<Result<u64, String>>> = targets.iter().map(|_| None).collect();
    if args.instructions {
        for (i, t) in targets.iter().enumerate() {
            if let (Some(launch), false) = (&t.launch, t.work == Work::Cannot) {
                instructions[i] = Some(count_instructions(launch, &plan, &dir, proxy_core));
                if let Some(r) = &instructions[i] {
                    eprintln!("  {} instructions/request: {r:?}", t.name);
                }
            }
        }
    }
    in_process.stop();
    if let Some(b) = backend {
        b.stop();
    }

    let targets = targets
        .into_iter()
        .zip(samples)
        .zip(instructions)
        .zip(sizes)
        .map(|(((t, rounds), instr), size)| {
            let mut r = TargetReport::new(t.name, t.kind, t.version, t.work, t.note, rounds, instr);
            r.response = size;
            r
        })
        .collect();
    let command = format!(
        "loadtest compare --scenario {} --duration {}s --rounds {} --connections {} --threads {}{} --peers {}",
        args.scenario.name(),
        args.duration.as_secs_f64(),
        args.rounds,
        args.connections,
        args.threads,
        if args.instructions { " --instructions" } else { "" },
        if args.peers.is_empty() { "none".into() } else { args.peers.join(",") }
    );
    // The proxies' access logs alone grow by ~100 MB a run.
    if args.keep_files {
        eprintln!("work files kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Report::new(
        args.scenario,
        command,
        args,
        plan.connections,
        proxy_core.is_some(),
        targets,
    ))
}

/// `--peers`, parsed (`none` or empty: none).
fn peer_list(args: &CompareArgs) -> anyhow::Result<Vec<Peer>> {
    Ok(args
        .peers
        .iter()
        .filter(|p| !p.is_empty() && p.as_str() != "none")
        .map(|p| p.parse())
        .collect::<Result<_, _>>()?)
}

/// Proxies on core 0; this process (the generator and the upstream) pinned to core 1. The (proxies',
/// generator's) cores, or None when the proxies run several threads (then nothing is pinned).
fn pin_generator(args: &CompareArgs) -> anyhow::Result<Option<(usize, usize)>> {
    let cores = if args.threads == 1 {
        process::cores()
    } else {
        None
    };
    if let Some((_, load_core)) = cores {
        process::pin_self(load_core).context("pinning the generator with taskset")?;
    }
    Ok(cores)
}

fn version_line(bin: &Path, args: &[&str]) -> String {
    std::process::Command::new(bin)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// One measured run of one target.
/// `check`: Some(binding) to check the tenant work first (see `probe`). `weigh`: first weigh one
/// response (and refuse a proxy that sends it uncompressed).
#[allow(clippy::too_many_arguments)]
fn measure(
    t: &Target,
    plan: &Plan,
    dir: &Path,
    core: Option<usize>,
    warmup: Duration,
    label: &str,
    check: Option<bool>,
    weigh: bool,
) -> anyhow::Result<(Sample, Option<report::ResponseSize>)> {
    let mut plan = plan.clone();
    let running = match &t.launch {
        Some(l) => {
            plan.addr = l.addr;
            Some(l.start(dir, core, &[], Duration::from_secs(30))?)
        }
        None => None,
    };
    if let Some(binding) = check {
        probe::check_tenant_work(plan.addr, &plan.requests, binding)
            .with_context(|| format!("{} does not do the work its row claims", t.name))?;
    }
    let size = match (weigh, plan.requests.first()) {
        (true, Some(req)) => {
            let size = probe::response_size(plan.addr, req)
                .map_err(|e| anyhow::anyhow!("weighing a response of {}: {e}", t.name))?;
            if t.launch.is_some()
                && size.encoding == "identity"
                && t.name != variants::Variant::NoCompression.name()
            {
                bail!(
                    "{} answered uncompressed: not the work its row claims",
                    t.name
                );
            }
            Some(size)
        }
        _ => None,
    };
    if !warmup.is_zero() {
        let mut w = plan.clone();
        w.duration = warmup;
        generator::run(w, Arc::default())?;
    }
    let cpu_before = running.as_ref().map(|r| r.cpu_seconds());
    let progress = Arc::new(Progress::default());
    let outcome = {
        let _bar = Bar::start(label, plan.duration, Arc::clone(&progress));
        generator::run(plan, progress)?
    };
    let cpu = running
        .as_ref()
        .zip(cpu_before)
        .map(|(r, before)| r.cpu_seconds() - before);
    let rss = running.as_ref().map(|r| r.peak_rss_mib());
    if let Some(mut r) = running {
        r.stop();
    }
    Ok((Sample::from_outcome(&outcome, cpu, rss), size))
}

/// User-space instructions per request of one proxy, under callgrind: instrumentation switched on after
/// an uninstrumented warm-up, off after the measured window; the dump's total over the responses.
fn count_instructions(
    launch: &Launch,
    plan: &Plan,
    dir: &Path,
    core: Option<usize>,
) -> Result<u64, String> {
    let out = dir.join(format!("{}.callgrind", launch.name));
    let wrap = vec![
        "valgrind".to_string(),
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let mut launch = launch.clone();
    launch.name = format!("{}-callgrind", launch.name);
    if peers::is_go(&launch.program) {
        // Go preempts goroutines with signals, which callgrind 3.19 asserts on.
        launch
            .env
            .push(("GODEBUG".into(), "asyncpreemptoff=1".into()));
    }
    if launch.program.ends_with("nginx") {
        // One process: valgrind does not follow the master's worker the same way.
        launch
            .args
            .extend(["-g".into(), "master_process off;".into()]);
    }
    let mut running = launch
        .start(dir, core, &wrap, Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    let pid = running.pid().to_string();
    let mut p = plan.clone();
    p.addr = launch.addr;
    p.connections = p.connections.min(16);
    p.timeout = Duration::from_secs(30);
    let mut w = p.clone();
    w.duration = Duration::from_secs(3);
    // The warm-up sends every distinct request at least once (1 000 tenants' first requests fill
    // per-tenant caches: policies, limiter and tenant-figure entries), or the measured window pays for
    // a varying share of first requests (±6 % between runs of tenant_jwt_ratelimit before).
    let mut warmed = 0;
    for _ in 0..20 {
        warmed += generator::run(w.clone(), Arc::default())
            .map_err(|e| e.to_string())?
            .stats
            .responses();
        if warmed >= p.requests.len() as u64 {
            break;
        }
    }
    let control = |arg: &[&str]| {
        std::process::Command::new("callgrind_control")
            .args(arg)
            .arg(&pid)
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !control(&["-i", "on"]) {
        running.stop();
        return Err("callgrind_control -i on failed (is it running under callgrind?)".into());
    }
    let outcome = generator::run(p, Arc::default()).map_err(|e| e.to_string())?;
    control(&["-i", "off"]);
    control(&["-d"]);
    if !running.alive() {
        let why = running.stderr_tail();
        return Err(format!(
            "it died under callgrind: {}",
            why.lines()
                .find(|l| l.contains("Assertion") || l.contains("error"))
                .unwrap_or("see its stderr")
        ));
    }
    running.stop();
    let responses = outcome.stats.responses();
    let s = outcome.stats.summary(outcome.elapsed.as_secs_f64());
    if responses == 0 || s.status.s2xx != responses {
        return Err(format!(
            "{} responses, {} of them 2xx, under callgrind",
            responses, s.status.s2xx
        ));
    }
    // The dump after `-d` is <out>.1 (the final one at exit, <out>, has nothing after -i off).
    let dump = std::fs::read_to_string(format!("{}.1", out.display()))
        .map_err(|e| format!("no callgrind dump: {e}"))?;
    let total: u64 = dump
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .ok_or("no totals line in the callgrind dump")?;
    Ok(total / responses)
}
