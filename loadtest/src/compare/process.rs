//! A proxy under test as a child process: started pinned to its core, its CPU time and peak memory read
//! from /proc (the whole process tree: nginx's worker does the work), stopped with SIGTERM then SIGKILL.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("{name} did not listen on {addr} within {secs} s; its stderr ends with:\n{tail}")]
    NotListening {
        name: String,
        addr: SocketAddr,
        secs: u64,
        tail: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How to start one proxy.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The address it serves the scenario on.
    pub addr: SocketAddr,
}

pub struct Running {
    pub name: String,
    child: Child,
    stderr: PathBuf,
}

/// The proxies running now, stopped by [`stop_children_on_signal`] if the harness itself is told to stop.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn register(pid: u32, add: bool) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.retain(|p| *p != pid);
        if add {
            c.push(pid);
        }
    }
}

/// On SIGINT or SIGTERM to the harness, stop every proxy it started (their whole trees), then exit: a
/// harness stopped mid-run must not leave proxies holding ports and cores. Idempotent.
pub fn stop_children_on_signal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(|| {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let got = rt.block_on(async {
                    use tokio::signal::unix::{signal, SignalKind};
                    let (Ok(mut int), Ok(mut term)) = (
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::terminate()),
                    ) else {
                        return false;
                    };
                    tokio::select! {
                        _ = int.recv() => true,
                        _ = term.recv() => true,
                    }
                });
                if !got {
                    return;
                }
                let pids: Vec<u32> = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
                let trees: Vec<u32> = pids.iter().flat_map(|p| tree_of(*p)).collect();
                eprintln!("stopping {} proxy process(es) and exiting", trees.len());
                signal(&trees, "TERM");
                std::thread::sleep(Duration::from_secs(2));
                signal(&trees, "KILL");
                std::process::exit(130);
            });
    });
}

/// A process and its descendants.
fn tree_of(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                all.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    all
}

/// CPU cores: the proxy's, and the generator's and upstream's (None: one core, no pinning).
pub fn cores() -> Option<(usize, usize)> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n >= 2).then_some((0, 1))
}

/// Pins every thread of this process (the generator and the upstream) to `core`.
pub fn pin_self(core: usize) -> std::io::Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "taskset exited with {status}"
        )))
    }
}

impl Launch {
    /// Starts it on `core` (`taskset`), with stdout and stderr in `dir`, and waits for its port.
    /// `wrap`: a command put before the program (valgrind).
    pub fn start(
        &self,
        dir: &Path,
        core: Option<usize>,
        wrap: &[String],
        wait: Duration,
    ) -> Result<Running, ProcessError> {
        let stderr = dir.join(format!("{}.stderr", self.name));
        let mut argv: Vec<String> = Vec::new();
        if let Some(core) = core {
            argv.extend(["taskset".into(), "-c".into(), core.to_string()]);
        }
        argv.extend(wrap.iter().cloned());
        argv.push(self.program.display().to_string());
        argv.extend(self.args.iter().cloned());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(File::create(dir.join(format!("{}.stdout", self.name)))?)
            .stderr(File::create(&stderr)?);
        let child = cmd
            .spawn()
            .map_err(|e| ProcessError::Spawn(argv.join(" "), e))?;
        register(child.id(), true);
        let mut running = Running {
            name: self.name.clone(),
            child,
            stderr,
        };
        let deadline = Instant::now() + wait;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(running);
            }
            let exited = matches!(running.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let tail = running.stderr_tail();
                running.stop();
                return Err(ProcessError::NotListening {
                    name: self.name.clone(),
                    addr: self.addr,
                    secs: wait.as_secs(),
                    tail,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Running {
    /// Whether the process is still running (not exited, not a zombie).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process and its descendants.
    pub fn tree(&self) -> Vec<u32> {
        tree_of(self.pid())
    }

    /// User plus system CPU time of the tree so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let hz = clock_ticks();
        self.tree().iter().map(|p| stat_ticks(*p)).sum::<u64>() as f64 / hz
    }

    /// Peak resident memory of the tree (the sum of each process's VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.tree()
            .iter()
            .map(|p| status_kib(*p, "VmHWM:"))
            .sum::<u64>() as f64
            / 1024.0
    }

    pub fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// SIGTERM to the tree, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let tree = self.tree();
        signal(&tree, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(&tree, "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        register(self.child.id(), false);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn signal(pids: &[u32], sig: &str) {
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{sig}"));
    for p in pids {
        cmd.arg(p.to_string());
    }
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

/// utime + stime of one process, in clock ticks (0 once it is gone).
fn stat_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12 here.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

pub fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A free loopback port (bound and released; the proxy binds it next).
pub fn free_addr() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_cpu_and_memory() {
        let me = std::process::id();
        let mut spin = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        assert!(stat_ticks(me) > 0);
        assert!(status_kib(me, "VmHWM:") > 1000);
    }
}
