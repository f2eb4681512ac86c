//! A private PostgreSQL cluster on a free port, for tests that stop, configure or restore a server: the
//! machine's shared server is never touched.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PrivatePg {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

pub fn as_postgres(cmd: &Path, args: &[&str]) -> std::process::Output {
    // initdb and postgres refuse to run as root; run them as the `postgres` system user then.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let out = if root {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(cmd)
            .args(args)
            .output()
    } else {
        Command::new(cmd).args(args).output()
    };
    out.unwrap_or_else(|e| panic!("{}: {e}", cmd.display()))
}

impl PrivatePg {
    /// A new cluster (initdb, trust auth), started.
    pub fn start() -> PrivatePg {
        let pg = Self::init();
        pg.pg_ctl_start();
        pg
    }

    /// The PostgreSQL server binaries (`PG_BIN_DIR`, else the newest under /usr/lib/postgresql).
    pub fn bin_dir() -> PathBuf {
        std::env::var("PG_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                    .expect("PostgreSQL server binaries in /usr/lib/postgresql")
                    .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .collect();
                dirs.sort();
                dirs.pop().expect("a PostgreSQL version")
            })
    }

    /// A new cluster (initdb, trust auth), not started: [`PrivatePg::configure`] it, then start it.
    pub fn init() -> PrivatePg {
        let bin = Self::bin_dir();
        let dir = Self::postgres_dir();
        let data = dir.path().join("data");
        let out = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().expect("utf8"),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        PrivatePg { bin, dir, port }
    }

    /// A cluster on an existing data directory (a restored backup, say) on a new port, not started.
    pub fn on(dir: tempfile::TempDir) -> PrivatePg {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        PrivatePg {
            bin: Self::bin_dir(),
            dir,
            port,
        }
    }

    /// A temporary directory the `postgres` user owns (when running as root).
    pub fn postgres_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status();
        dir
    }

    /// Appends `settings` to the cluster's postgresql.conf (before it starts).
    pub fn configure(&self, settings: &[(&str, &str)]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("data/postgresql.conf"))
            .expect("postgresql.conf");
        for (k, v) in settings {
            writeln!(f, "{k} = '{}'", v.replace('\'', "''")).expect("write");
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    pub fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    pub fn stop(&self) {
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "fast", "-w", "-t", "60", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "immediate", "stop"],
        );
    }
}
