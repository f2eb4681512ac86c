//! The primary among several Postgres servers. `DATABASE_URL` may name several hosts in libpq's form,
//! `postgres://user:pw@pg-a:5432,pg-b:5432/aggios`: the pools connect to the one that accepts writes.
//! A watcher keeps one connection to it and asks it every [`CHECK_EVERY`] whether it still does; when
//! it fails or turns read-only (stopped, or demoted), the watcher asks each host in turn every
//! [`RETRY_EVERY`] and moves the pools to the first that accepts writes (a promoted replica), without a
//! restart. Pooled connections opened before the move are dropped as they come out of the pool.
//!
//! The watcher stays with a writable server while it stays writable, even when a host listed before it
//! comes back writable too: two writable servers is a split brain for the operator to end (the old
//! primary must come back as a replica of the new one), not something to follow.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection, PgConnection};

/// How often the watcher asks the current primary whether it still accepts writes.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often the hosts are asked while none accepts writes.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How long one host may take to connect and answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A `DATABASE_URL` that cannot be split into its hosts.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("must be a postgres:// URL")]
    Scheme,
    #[error("an empty host in the host list `{0}`")]
    EmptyHost(String),
}

/// One URL per host of `url` (libpq's `host1:port1,host2:port2` form), each with the same user, password,
/// database and parameters. A URL with one host comes back unchanged.
pub fn split_hosts(url: &str) -> Result<Vec<String>, HostsError> {
    let (scheme, rest) = url.split_once("://").ok_or(HostsError::Scheme)?;
    if !matches!(scheme, "postgres" | "postgresql") {
        return Err(HostsError::Scheme);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return Ok(vec![url.to_string()]);
    }
    hosts
        .split(',')
        .map(|h| {
            if h.trim().is_empty() {
                Err(HostsError::EmptyHost(hosts.to_string()))
            } else {
                Ok(format!("{scheme}://{userinfo}{}{tail}", h.trim()))
            }
        })
        .collect()
}

/// The hosts of a multi-host `DATABASE_URL` and which of them the pools use.
pub struct Primary {
    hosts: Vec<PgConnectOptions>,
    names: Vec<String>,
    current: AtomicUsize,
    /// Milliseconds since `epoch` of the last move; connections older than that are not handed out.
    moved_at_ms: AtomicU64,
    epoch: Instant,
    moves: AtomicU64,
    /// Whether the watcher found no host that accepts writes at its last look.
    away: std::sync::atomic::AtomicBool,
}

impl Primary {
    /// The hosts, the first of them current until the watcher has asked.
    pub fn new(hosts: Vec<PgConnectOptions>) -> Arc<Primary> {
        let names = hosts
            .iter()
            .map(|o| format!("{}:{}", o.get_host(), o.get_port()))
            .collect();
        Arc::new(Primary {
            hosts,
            names,
            current: AtomicUsize::new(0),
            moved_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            moves: AtomicU64::new(0),
            away: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The options of the host the pools connect to now.
    pub fn current(&self) -> PgConnectOptions {
        self.hosts[self.current.load(Ordering::Relaxed)].clone()
    }

    /// `host:port` of the current primary.
    pub fn current_name(&self) -> &str {
        &self.names[self.current.load(Ordering::Relaxed)]
    }

    /// Whether no host accepted writes at the watcher's last look (a failover under way).
    pub fn is_away(&self) -> bool {
        self.away.load(Ordering::Relaxed)
    }

    /// How many times the pools moved to another host.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// Whether a pooled connection of `age` was opened before the last move (and may point at the old
    /// host): such a connection is closed instead of handed out.
    pub fn is_stale(&self, age: Duration) -> bool {
        let moved = self.moved_at_ms.load(Ordering::Relaxed);
        if moved == 0 {
            return false;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        age.as_millis() as u64 > now.saturating_sub(moved)
    }

    /// The first host, in order, that accepts writes, and a connection to it; `None` when none does.
    pub async fn find(&self, first: usize) -> Option<(usize, PgConnection)> {
        let n = self.hosts.len();
        for i in (0..n).map(|k| (first + k) % n) {
            match ask(&self.hosts[i]).await {
                Ok((conn, true)) => return Some((i, conn)),
                Ok((_, false)) => {
                    tracing::debug!(host = %self.names[i], "database host is read-only")
                }
                Err(e) => {
                    tracing::debug!(host = %self.names[i], error = %e, "database host not answering")
                }
            }
        }
        None
    }

    /// Waits up to `wait` for a host that accepts writes, asking every [`RETRY_EVERY`]; its options.
    pub async fn find_patiently(&self, wait: Duration) -> Option<PgConnectOptions> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((i, conn)) = self.find(0).await {
                let _ = conn.close().await;
                return Some(self.hosts[i].clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Follows the writable host for as long as the process lives, moving `pools` when it changes.
    pub fn spawn_watch(self: &Arc<Self>, pools: Vec<PgPool>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.watch(pools).await })
    }

    async fn watch(&self, pools: Vec<PgPool>) {
        let mut held: Option<PgConnection> = None;
        loop {
            let healthy = match held.as_mut() {
                Some(conn) => matches!(
                    tokio::time::timeout(ASK_TIMEOUT, writable(conn)).await,
                    Ok(Ok(true))
                ),
                None => false,
            };
            if !healthy {
                if let Some(conn) = held.take() {
                    tracing::warn!(host = %self.current_name(), "database primary no longer accepts writes; looking for the new one");
                    drop(conn);
                }
                let current = self.current.load(Ordering::Relaxed);
                if let Some((i, conn)) = self.find(current).await {
                    if i != current {
                        self.move_to(i, &pools);
                    }
                    held = Some(conn);
                }
                self.away.store(held.is_none(), Ordering::Relaxed);
            }
            tokio::time::sleep(if held.is_some() {
                CHECK_EVERY
            } else {
                RETRY_EVERY
            })
            .await;
        }
    }

    fn move_to(&self, i: usize, pools: &[PgPool]) {
        let from = self.current_name().to_string();
        self.current.store(i, Ordering::Relaxed);
        self.moved_at_ms.store(
            (self.epoch.elapsed().as_millis() as u64).max(1),
            Ordering::Relaxed,
        );
        self.moves.fetch_add(1, Ordering::Relaxed);
        for pool in pools {
            pool.set_connect_options(self.hosts[i].clone());
        }
        tracing::warn!(from = %from, to = %self.names[i], "database primary moved: the pools now connect to the new host");
    }
}

/// Connects to `opts` and asks whether it accepts writes.
async fn ask(opts: &PgConnectOptions) -> Result<(PgConnection, bool), sqlx::Error> {
    let attempt = async {
        let mut conn = opts.connect().await?;
        let w = writable(&mut conn).await?;
        Ok((conn, w))
    };
    tokio::time::timeout(ASK_TIMEOUT, attempt)
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// Whether the server behind `conn` accepts writes: not in recovery, not read-only by default.
async fn writable(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'",
    )
    .fetch_one(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_comes_back_unchanged() {
        let u = "postgres://app:pw@postgres:5432/aggios?sslmode=disable";
        assert_eq!(split_hosts(u).expect("split"), vec![u.to_string()]);
    }

    #[test]
    fn a_host_list_becomes_one_url_per_host_with_the_same_credentials_and_database() {
        let hosts = split_hosts(
            "postgresql://app:p%40ss@pg-a:5432,pg-b,[::1]:5433/aggios?application_name=x",
        )
        .expect("split");
        assert_eq!(
            hosts,
            vec![
                "postgresql://app:p%40ss@pg-a:5432/aggios?application_name=x",
                "postgresql://app:p%40ss@pg-b/aggios?application_name=x",
                "postgresql://app:p%40ss@[::1]:5433/aggios?application_name=x",
            ]
        );
        for h in &hosts {
            h.parse::<PgConnectOptions>().expect("each parses");
        }
        assert_eq!(
            split_hosts("postgres://a,b").expect("split"),
            vec!["postgres://a", "postgres://b"]
        );
    }

    #[test]
    fn bad_host_lists_are_refused() {
        assert!(matches!(
            split_hosts("postgres://app@a,,b/db"),
            Err(HostsError::EmptyHost(_))
        ));
        assert!(matches!(
            split_hosts("mysql://a,b/db"),
            Err(HostsError::Scheme)
        ));
        assert!(matches!(split_hosts("a,b"), Err(HostsError::Scheme)));
    }

    #[test]
    fn only_connections_opened_before_a_move_are_stale() {
        let p = Primary::new(vec![
            "postgres://a/db".parse().expect("opts"),
            "postgres://b/db".parse().expect("opts"),
        ]);
        assert!(
            !p.is_stale(Duration::from_secs(3600)),
            "nothing is stale before a move"
        );
        p.move_to(1, &[]);
        assert_eq!(p.current_name(), "b:5432");
        assert_eq!(p.moves(), 1);
        assert!(p.is_stale(Duration::from_secs(5)), "opened before the move");
        assert!(!p.is_stale(Duration::ZERO), "opened after the move");
    }
}
