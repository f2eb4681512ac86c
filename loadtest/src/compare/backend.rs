//! The `login` scenario's upstream: the real backend on a throw-away database of the real Postgres, with
//! one tenant and a user per connection, dropped again at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::process::{free_addr, Launch, Running};
use crate::scenario::{login_email, LOGIN_PASSWORD, LOGIN_TENANT};

pub struct Backend {
    pub addr: SocketAddr,
    running: Running,
    admin_url: String,
    database: String,
    stopped: bool,
}

#[derive(Debug, Clone)]
pub struct BackendArgs {
    pub bin: PathBuf,
    /// A superuser connection (the tables' owner; creates the database).
    pub pg_admin_url: String,
    pub redis: SocketAddr,
    pub users: usize,
}

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args([url, "-Atqc", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!(
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `postgres://user@host:port/db` with another database name.
fn with_database(url: &str, db: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/{db}")
}

impl Backend {
    pub fn start(args: &BackendArgs, dir: &Path, core: Option<usize>) -> anyhow::Result<Backend> {
        if !args.bin.exists() {
            bail!(
                "no backend binary at {} (cargo build --release -p backend)",
                args.bin.display()
            );
        }
        let database = format!("aggios_loadtest_{}", std::process::id());
        psql(
            &args.pg_admin_url,
            &format!("drop database if exists {database} with (force)"),
        )?;
        psql(&args.pg_admin_url, &format!("create database {database}"))?;
        let owner_url = with_database(&args.pg_admin_url, &database);
        let host = args
            .pg_admin_url
            .split('@')
            .nth(1)
            .and_then(|h| h.split('/').next())
            .unwrap_or("127.0.0.1:5432");
        let env = vec![
            (
                "DATABASE_URL".to_string(),
                format!("postgres://aggios_loadtest:loadtest-pw@{host}/{database}"),
            ),
            ("DATABASE_OWNER_URL".to_string(), owner_url),
            ("REDIS_URL".to_string(), format!("redis://{}", args.redis)),
            (
                "JWT_SECRET".to_string(),
                crate::scenario::JWT_SECRET.to_string(),
            ),
            ("BACKEND_LISTEN".to_string(), free_addr()?.to_string()),
            (
                "BACKEND_INTERNAL_LISTEN".to_string(),
                free_addr()?.to_string(),
            ),
            (
                "STORAGE_DIR".to_string(),
                dir.join("backend-files").display().to_string(),
            ),
            (
                "TENANT_BASE_DOMAINS".to_string(),
                crate::scenario::BASE_DOMAIN.to_string(),
            ),
            ("MIGRATE_ON_START".to_string(), "0".to_string()),
            ("RUST_LOG".to_string(), "warn".to_string()),
        ];
        let run = |args_: &[&str], stdin: Option<&str>| -> anyhow::Result<()> {
            let mut cmd = Command::new(&args.bin);
            cmd.args(args_)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            cmd.stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            let mut child = cmd
                .spawn()
                .with_context(|| format!("backend {}", args_.join(" ")))?;
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                use std::io::Write;
                pipe.write_all(text.as_bytes())?;
            }
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "backend {}: {}",
                    args_.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        };
        run(&["migrate"], None)?;
        run(
            &[
                "tenant",
                "create",
                "--subdomain",
                LOGIN_TENANT,
                "--name",
                "Loadtest",
            ],
            None,
        )?;
        for i in 0..args.users {
            let email = login_email(i);
            run(
                &[
                    "user",
                    "create",
                    "--tenant",
                    LOGIN_TENANT,
                    "--email",
                    &email,
                    "--password-stdin",
                ],
                Some(LOGIN_PASSWORD),
            )?;
        }
        let addr: SocketAddr = env
            .iter()
            .find(|(k, _)| k == "BACKEND_LISTEN")
            .map(|(_, v)| v.parse())
            .transpose()?
            .context("listen")?;
        let launch = Launch {
            name: "backend".into(),
            program: args.bin.clone(),
            args: vec!["serve".into()],
            env,
            addr,
        };
        let running = launch.start(dir, core, &[], Duration::from_secs(60))?;
        Ok(Backend {
            addr,
            running,
            admin_url: args.pg_admin_url.clone(),
            database,
            stopped: false,
        })
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.running.stop();
        let _ = psql(
            &self.admin_url,
            &format!("drop database if exists {} with (force)", self.database),
        );
        let _ = psql(&self.admin_url, "drop role if exists aggios_loadtest");
    }
}

/// A comparison that fails part-way still drops its database.
impl Drop for Backend {
    fn drop(&mut self) {
        self.halt();
    }
}
