//! `loadtest generators`: our generator's own CPU cost per request against wrk's, on the same upstream in
//! one run (alternating, several rounds). The upstream runs in this process on one core; each generator
//! runs as a child process on the other, and its CPU time is what the shell's `times` reports for it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::process;
use crate::upstream::Upstream;

#[derive(clap::Args, Debug, Clone)]
pub struct GeneratorArgs {
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[arg(long, default_value = "loadtest/results")]
    pub out: std::path::PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct GeneratorRun {
    pub generator: String,
    pub responses: u64,
    pub rps: f64,
    pub cpu_us_per_request: f64,
}

/// Runs `cmd` under bash on `core` and returns its stdout and its CPU seconds (user + system).
fn timed(cmd: &str, core: Option<usize>) -> anyhow::Result<(String, f64)> {
    let pin = core.map_or(String::new(), |c| format!("taskset -c {c} "));
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{pin}{cmd}; times >&2"))
        .output()
        .context("running bash")?;
    if !out.status.success() {
        bail!("{cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    // `times`: the shell's own user and system times, then its children's.
    let children = err.lines().last().context("no output from times")?;
    let secs = children
        .split_whitespace()
        .map(parse_times)
        .sum::<Option<f64>>()
        .context("unreadable times")?;
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), secs))
}

/// `1m2.345s` → 62.345.
fn parse_times(s: &str) -> Option<f64> {
    let (m, rest) = s.split_once('m')?;
    Some(m.parse::<f64>().ok()? * 60.0 + rest.strip_suffix('s')?.parse::<f64>().ok()?)
}

pub fn main(args: GeneratorArgs) -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!(
            "wrk is not installed (Debian package wrk; loadtest/compare.sh generators installs it)"
        );
    }
    let cores = process::cores();
    if let Some((up_core, _)) = cores {
        process::pin_self(up_core)?;
    }
    let gen_core = cores.map(|(_, g)| g);
    let up = Upstream::start("127.0.0.1:0".parse()?)?;
    let me = std::env::current_exe()?;
    let d = args.duration.as_secs_f64();
    let url = format!("http://{}/", up.addr);
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        let (out, cpu) = timed(
            &format!("wrk -t1 -c{} -d{d}s {url}", args.connections),
            gen_core,
        )?;
        let responses: u64 = out
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .context("no request count in wrk's output")?;
        runs.push(GeneratorRun {
            generator: "wrk".into(),
            responses,
            rps: responses as f64 / d,
            cpu_us_per_request: cpu * 1e6 / responses.max(1) as f64,
        });
        let (out, cpu) = timed(
            &format!(
                "{} run -c{} -d{d}s --json {url}",
                shell_quote(&me),
                args.connections
            ),
            gen_core,
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&out).context("loadtest run --json output")?;
        let responses = v["responses"]
            .as_u64()
            .context("no responses in the JSON")?;
        runs.push(GeneratorRun {
            generator: "loadtest".into(),
            responses,
            rps: v["rps"].as_f64().unwrap_or(0.0),
            cpu_us_per_request: cpu * 1e6 / responses.max(1) as f64,
        });
        for r in &runs[runs.len() - 2..] {
            eprintln!(
                "  round {round}: {} {:.0} req/s, {:.2} CPU-µs/request",
                r.generator, r.rps, r.cpu_us_per_request
            );
        }
    }
    up.stop();
    let med = |g: &str, f: fn(&GeneratorRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().filter(|r| r.generator == g).map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut md = format!(
        "`loadtest generators --duration {d}s --rounds {} --connections {}` — HTTP/1.1 keep-alive to the in-process upstream, the generator on its own core; medians.\n\n| generator | req/s | generator CPU-µs / request |\n|---|---|---|\n",
        args.rounds, args.connections
    );
    for g in ["wrk", "loadtest"] {
        md.push_str(&format!(
            "| {g} | {:.0} | {:.2} |\n",
            med(g, |r| r.rps),
            med(g, |r| r.cpu_us_per_request)
        ));
    }
    md.push_str(&format!(
        "\nloadtest / wrk CPU per request: {:.2}×\n",
        med("loadtest", |r| r.cpu_us_per_request) / med("wrk", |r| r.cpu_us_per_request)
    ));
    println!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("generators.md"), &md)?;
    std::fs::write(
        args.out.join("generators.json"),
        serde_json::to_string_pretty(&runs)?,
    )?;
    Ok(())
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bash_times() {
        assert_eq!(super::parse_times("1m2.500s"), Some(62.5));
        assert_eq!(super::parse_times("0m0.010s"), Some(0.01));
        assert_eq!(super::parse_times("junk"), None);
    }
}
