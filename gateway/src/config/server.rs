//! `[server]` (process settings, a restart to change) and `[entrypoints]` (the listeners).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::file::{EntrypointsFile, ServerFile};
use super::{duration_or, positive, socket_addr, Diagnostic};

/// Time given to in-flight requests on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub threads: usize,
    /// One work-stealing runtime for all threads instead of one single-threaded runtime per thread.
    pub work_stealing: bool,
    /// One service per thread, each with its own `SO_REUSEPORT` listening sockets, runtime and upstream
    /// connection pool: a connection and its upstream connections stay on the thread that accepted it.
    pub reuseport: bool,
    pub shutdown_grace: Duration,
    /// How long a SIGTERM'd gateway keeps serving, not ready, before it closes its listeners: a load
    /// balancer's health check takes it out meanwhile, and keep-alive clients are told to close.
    pub shutdown_delay: Duration,
    /// The Unix socket over which a running gateway hands its listening sockets to its successor.
    pub upgrade_sock: std::path::PathBuf,
}

/// `[server] reuseport` when the file does not say (README, Multi-core: the figures behind it).
pub const DEFAULT_REUSEPORT: bool = true;

/// The directory of the hand-over socket when neither `[server] upgrade_sock` nor `$RUNTIME_DIRECTORY`
/// (systemd's `RuntimeDirectory=`) says otherwise. Never a directory others can write to: whoever can
/// bind the socket's path first receives the listening sockets at the next upgrade.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/aggios-edge";

/// Where the listening sockets are handed over on a zero-downtime upgrade, unless `[server] upgrade_sock`
/// says otherwise: `upgrade.sock` in `$RUNTIME_DIRECTORY` (its first entry), else in
/// [`DEFAULT_RUNTIME_DIR`].
pub fn default_upgrade_sock() -> std::path::PathBuf {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .filter(|s| s.starts_with('/'))
                .map(std::path::PathBuf::from)
        })
        .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into());
    dir.join("upgrade.sock")
}

/// Why the hand-over socket's directory cannot be trusted, if it exists: another user could bind the
/// socket's path before the new process, or replace it. `None` when it is ours and private (or absent:
/// `gateway run` creates it, mode 0700).
pub fn upgrade_dir_problem(sock: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = sock.parent().filter(|_| sock.is_absolute()) else {
        return Some(format!(
            "server.upgrade_sock {} must be an absolute path in a private directory",
            sock.display()
        ));
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            return Some(format!(
                "server.upgrade_sock: cannot check {}: {e}",
                dir.display()
            ))
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        Some(format!(
            "server.upgrade_sock: {} is not a directory (a link is refused too)",
            dir.display()
        ))
    } else if meta.uid() != me {
        Some(format!(
            "server.upgrade_sock: the directory {} belongs to uid {}, not to this user (uid {me}): \
             its owner could take the listening sockets at the next upgrade",
            dir.display(),
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "server.upgrade_sock: the directory {} is writable by others (mode {:o}): another user \
             could bind the socket first and take the listening sockets; use a private directory \
             (mode 0700), e.g. {DEFAULT_RUNTIME_DIR}",
            dir.display(),
            meta.mode() & 0o7777
        ))
    } else {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoints {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// UDP address of the HTTP/3 (QUIC) entrypoint.
    pub h3: Option<SocketAddr>,
}

/// `[server] reuseport`: on unless set to false; it cannot go with one work-stealing pool (that pool is
/// one runtime, where `reuseport` makes one per thread).
fn reuseport(server: &ServerFile, diags: &mut Vec<Diagnostic>) -> bool {
    match &server.reuseport {
        Some(r) if *r.get_ref() && server.work_stealing == Some(true) => {
            diags.push(Diagnostic::at(
                r,
                "server.reuseport = true gives each thread its own runtime; it cannot go with \
                 server.work_stealing = true (set one of them to false)",
            ));
            false
        }
        Some(r) => *r.get_ref(),
        None => DEFAULT_REUSEPORT && server.work_stealing != Some(true),
    }
}

/// `[server] upgrade_sock`, or the default; refused when its directory is not private.
fn upgrade_sock(server: &ServerFile, diags: &mut Vec<Diagnostic>) -> std::path::PathBuf {
    let sock = server
        .upgrade_sock
        .as_ref()
        .map_or_else(default_upgrade_sock, |s| s.get_ref().into());
    if let Some(problem) = upgrade_dir_problem(&sock) {
        diags.push(Diagnostic::new(
            server.upgrade_sock.as_ref().map(|s| s.span()),
            problem,
        ));
    }
    sock
}

/// The longest `[server] shutdown_delay`: a stop is meant to take seconds, and the delay comes on top of
/// `shutdown_grace` within the orchestrator's stop timeout.
pub const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);

/// `[server] shutdown_delay` (default none; `"0s"` allowed).
fn shutdown_delay(server: &ServerFile, diags: &mut Vec<Diagnostic>) -> Duration {
    let Some(text) = server.shutdown_delay.as_ref() else {
        return Duration::ZERO;
    };
    match super::duration::parse_duration(text.get_ref()) {
        Ok(d) if d > MAX_SHUTDOWN_DELAY => {
            diags.push(Diagnostic::at(
                text,
                format!(
                    "server.shutdown_delay must be at most {}s (it delays every stop)",
                    MAX_SHUTDOWN_DELAY.as_secs()
                ),
            ));
            Duration::ZERO
        }
        Ok(d) => d,
        Err(e) => {
            diags.push(Diagnostic::at(text, e));
            Duration::ZERO
        }
    }
}

/// Validates `[server]`.
pub(super) fn validate_server(server: &ServerFile, diags: &mut Vec<Diagnostic>) -> ServerSettings {
    ServerSettings {
        threads: positive(&server.threads, 1, "server.threads", diags) as usize,
        work_stealing: server.work_stealing.unwrap_or(false),
        reuseport: reuseport(server, diags),
        shutdown_grace: duration_or(&server.shutdown_grace, DEFAULT_SHUTDOWN_GRACE, diags),
        shutdown_delay: shutdown_delay(server, diags),
        upgrade_sock: upgrade_sock(server, diags),
    }
}

/// Validates `[entrypoints]` (`http` is required).
pub(super) fn validate_entrypoints(
    entrypoints: &EntrypointsFile,
    diags: &mut Vec<Diagnostic>,
) -> Entrypoints {
    if entrypoints.http.is_none() {
        diags.push(Diagnostic::new(
            None,
            "entrypoints.http is required (e.g. http = \"0.0.0.0:80\")",
        ));
    }
    Entrypoints {
        http: socket_addr(&entrypoints.http, "entrypoints.http", diags),
        https: socket_addr(&entrypoints.https, "entrypoints.https", diags),
        admin: socket_addr(&entrypoints.admin, "entrypoints.admin", diags),
        h3: match (&entrypoints.h3, &entrypoints.https) {
            (Some(h3), None) => {
                diags.push(Diagnostic::at(
                    h3,
                    "entrypoints.h3 serves the https entrypoint's certificates: set entrypoints.https too",
                ));
                None
            }
            _ => socket_addr(&entrypoints.h3, "entrypoints.h3", diags),
        },
    }
}
