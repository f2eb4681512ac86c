//! Who can take the listening sockets at an upgrade (#23 point 1). The hand-over socket sits in a private
//! directory, is created 0600, and both ends refuse a socket file or a peer of another uid: a stranger
//! (another local user, here `nobody`) that binds the path first, or connects to it, never receives a
//! socket, and a refused hand-over leaves the old process serving.
//!
//! The stranger is a real process of another uid (`setpriv` + Debian's python3), so these tests need
//! root to start it; as another user they say so and return.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::helpers::*;

const NOBODY: &str = "65534";

/// A stranger's program: `bind PATH SECONDS` binds and listens at PATH, then reports whether anyone
/// connected and how many descriptors it received; `connect PATH` reports whether it could connect.
const STRANGER: &str = r#"
import socket, sys
mode, path = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if mode == "connect":
    try:
        s.connect(path)
        print("connected", flush=True)
    except OSError as e:
        print("connect-refused", e.errno, flush=True)
    sys.exit(0)
try:
    s.bind(path)
except OSError as e:
    print("bind-refused", e.errno, flush=True)
    sys.exit(0)
s.listen(8)
print("listening", flush=True)
s.settimeout(float(sys.argv[3]))
try:
    c, _ = s.accept()
except socket.timeout:
    print("no-connection", flush=True)
    sys.exit(0)
print("accepted", flush=True)
c.settimeout(5)
n = 0
try:
    msg, anc, flags, addr = c.recvmsg(4096, socket.CMSG_LEN(64 * 4))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n += len(data) // 4
except OSError:
    pass
print("received-fds", n, flush=True)
"#;

/// A process of uid/gid `nobody` running [`STRANGER`]; its output lines are collected as they come.
struct Stranger {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
}

impl Stranger {
    fn run(args: &[&str]) -> Stranger {
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                STRANGER,
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("setpriv python3 (util-linux, python3)");
        let out = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::clone(&out);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Stranger { child, out }
    }

    fn lines(&self) -> Vec<String> {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn wait_for(&self, line: &str) {
        eventually(&format!("the stranger says `{line}`"), || async {
            self.lines().iter().any(|l| l.starts_with(line))
        })
        .await;
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok()
        == Some(0)
}

/// Waits (up to the tests' deadline) for `gw` to exit.
async fn exit_of(gw: &mut Gateway, what: &str) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = gw.exited() {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "{what}:\n{}", gw.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn body(up: &TestUpstream, sock: &Path) -> String {
    format!(
        "[server]\nshutdown_grace = \"10s\"\nupgrade_sock = \"{}\"\n\n{}[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        sock.display(),
        upstream_toml("u", &[up], "")
    )
}

/// A stranger binds the hand-over path before the new process (possible only once the directory is
/// opened up to others) and waits for SIGQUIT's hand-over: it gets nothing, the old gateway keeps the
/// port and keeps it alive, and a new process refuses to start on that directory. Once the directory
/// is private again, the documented upgrade hands the port over. Before the fix the old process sent
/// its listening sockets to the stranger (`received-fds 3`) and shut down.
#[tokio::test]
async fn a_stranger_who_binds_the_upgrade_socket_first_receives_no_listening_socket() {
    if !is_root() {
        eprintln!("skipped: starting a process of another uid needs root");
        return;
    }
    let up = TestUpstream::start("u");
    let socks = tempfile::tempdir().expect("tempdir");
    let sock = socks.path().join("upgrade.sock");
    let mut old = Gateway::start(&body(&up, &sock)).await;
    let sock_arg = sock.to_str().expect("utf-8 path");

    // The private directory (0700) keeps the stranger from binding at all.
    let s = Stranger::run(&["bind", sock_arg, "0"]);
    s.wait_for("bind-refused 13").await;

    // Opened up to others (a mistake after start), the stranger binds first.
    chmod(socks.path(), 0o777);
    let stranger = Stranger::run(&["bind", sock_arg, "60"]);
    stranger.wait_for("listening").await;

    // A new process refuses that directory with a clear error instead of taking part.
    let mut refused = old.successor();
    let status = exit_of(&mut refused, "the new process refuses the directory").await;
    assert_eq!(status.code(), Some(1));
    assert!(
        refused.stderr().contains("writable by others"),
        "{}",
        refused.stderr()
    );

    old.signal("QUIT");
    eventually("the hand-over is counted as failed", || async {
        old.metric("gateway_upgrade_handovers_total{result=\"failed\"}")
            .await
            == 1.0
    })
    .await;
    let r = old.get("x.test", "/").await;
    assert_eq!(r.status, 200, "the old gateway still serves");
    assert_eq!(r.upstream(), Some("u"));
    // Keep-alive is back once the hand-over failed (during it, every response closed its connection).
    let mut kept = KeepAlive::connect(old.http).await;
    for _ in 0..3 {
        assert_eq!(
            kept.get("x.test", "/").await,
            Some(200),
            "a kept-alive connection after the failed hand-over"
        );
    }
    assert!(old.exited().is_none(), "{}", old.stderr());
    assert_eq!(
        old.metric("gateway_upgrade_handovers_total{result=\"sent\"}")
            .await,
        0.0
    );
    let seen = stranger.lines();
    assert!(
        !seen
            .iter()
            .any(|l| l == "accepted" || l.starts_with("received-fds")),
        "the stranger got a connection from the gateway: {seen:?}"
    );

    // The documented upgrade, once the directory is private again.
    drop(stranger);
    chmod(socks.path(), 0o700);
    let new = old.successor();
    eventually("the new process listens for the sockets", || async {
        std::fs::symlink_metadata(&sock)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
    })
    .await;
    old.signal("QUIT");
    exit_of(&mut old, "the old process leaves").await;
    let r = new.get("x.test", "/").await;
    assert_eq!(r.status, 200, "{}", new.stderr());
    assert_eq!(
        new.metric("gateway_upgrade_handovers_total{result=\"failed\"}")
            .await,
        0.0
    );
}

/// The new process's socket is 0600: a stranger who can reach the directory (0711 here: traversable,
/// not writable) still cannot connect to hand it sockets of its own.
#[tokio::test]
async fn the_new_process_socket_admits_no_other_user() {
    if !is_root() {
        eprintln!("skipped: starting a process of another uid needs root");
        return;
    }
    let up = TestUpstream::start("u");
    let socks = tempfile::tempdir().expect("tempdir");
    chmod(socks.path(), 0o711);
    let sock = socks.path().join("upgrade.sock");
    let mut old = Gateway::start(&body(&up, &sock)).await;
    let new = old.successor();
    eventually("the new process listens for the sockets", || async {
        sock.exists()
    })
    .await;
    let mode = std::fs::symlink_metadata(&sock)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the hand-over socket's mode");
    let s = Stranger::run(&["connect", sock.to_str().expect("utf-8")]);
    s.wait_for("connect-refused 13").await;

    old.signal("QUIT");
    exit_of(&mut old, "the old process leaves").await;
    assert_eq!(new.get("x.test", "/").await.status, 200, "{}", new.stderr());
}

/// The shape of the compose stack's tmpfs and Kubernetes' emptyDir at `/run/aggios-edge`: a world-writable
/// (sticky) directory. A socket directly in it is refused by `validate`; the stack's configs name a
/// `private/` directory inside it, which the gateway makes 0700 at start. (The configs named the tmpfs
/// itself before: the gateway would have refused to start in its container.)
#[tokio::test]
async fn a_world_writable_runtime_dir_is_refused_and_a_private_subdir_is_made() {
    let up = TestUpstream::start("u");
    let run = tempfile::tempdir().expect("tempdir");
    chmod(run.path(), 0o1777);
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = cfg_dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[entrypoints]\nhttp = \"127.0.0.1:{}\"\n\n{}",
            free_port(),
            body(&up, &run.path().join("upgrade.sock"))
        ),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("writable by others"), "{stderr}");

    let private = run.path().join("private");
    let gw = Gateway::start(&body(&up, &private.join("upgrade.sock"))).await;
    let mode = std::fs::metadata(&private)
        .expect("made")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o700, "the private directory's mode");
    assert_eq!(gw.get("x.test", "/").await.status, 200);
}
