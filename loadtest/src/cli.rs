//! Command-line helpers shared by the subcommands: durations, the progress bar.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::generator::Progress;
use crate::scenario::Scenario;

/// `10s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (ms, s or m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A progress bar over a run of `duration`, drawn on stderr while `progress` counts requests; nothing
/// when stderr is not a terminal. Stops when the returned guard is dropped.
pub struct Bar {
    bar: ProgressBar,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    pub fn start(label: &str, duration: Duration, progress: Arc<Progress>) -> Bar {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(duration.as_millis() as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{prefix:>12} [{bar:30}] {elapsed:>4} {msg}")
                    .map(|s| s.progress_chars("=> "))
            {
                bar.set_style(style);
            }
            bar.set_prefix(label.to_string());
            bar
        } else {
            ProgressBar::hidden()
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = (!bar.is_hidden()).then(|| {
            let (bar, stop) = (bar.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let done = progress.done.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    bar.set_position(started.elapsed().as_millis() as u64);
                    bar.set_message(format!("{done} requests, {:.0} req/s", done as f64 / secs));
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        });
        Bar { bar, stop, ticker }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}

/// `loadtest compare`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// The measured window of each run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Rounds of alternation; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Peers to compare with (comma-separated): nginx, haproxy, traefik, caddy, envoy; `none` for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nginx,haproxy,traefik,caddy,envoy"
    )]
    pub peers: Vec<String>,
    /// Client connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Workers or threads of every proxy (the gateway's `threads`, nginx's `worker_processes`, …). With
    /// more than one, proxies are not pinned.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Load before each measured window (not counted).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Also count user-space instructions per request of each proxy, once, under valgrind's callgrind.
    #[arg(long)]
    pub instructions: bool,
    /// The gateway binary (default: the release build under CARGO_TARGET_DIR or target/).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Also measure bare Pingora (gateway/examples/bare_pingora: forwarding with no logic at all, the
    /// floor under the gateway) on the plain scenario: this binary.
    #[arg(long)]
    pub bare_pingora: Option<PathBuf>,
    /// Configurations of the gateway measured as rows of their own beside it (comma-separated):
    /// no_access_log, no_security_headers; with --threads 2 or more: reuseport, shared_socket,
    /// work_stealing.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub variants: Vec<crate::compare::variants::Variant>,
    /// Where the report goes: <scenario>.json, .md and .svg.
    #[arg(long, default_value = "loadtest/results")]
    pub out: PathBuf,
    /// Redis, for the scenarios with a global limit.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub redis: String,
    /// `login`: the backend binary (default: the release build next to the gateway's).
    #[arg(long)]
    pub backend_bin: Option<PathBuf>,
    /// `login`: a Postgres superuser URL; the harness creates and drops a database of its own.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub pg_admin_url: String,
    /// Keep the work folder (configurations, access logs, callgrind dumps) after a successful run; a failed
    /// run always keeps it and names it.
    #[arg(long)]
    pub keep_files: bool,
    /// Print the report as JSON on stdout (the Markdown table otherwise).
    #[arg(long)]
    pub json: bool,
}
