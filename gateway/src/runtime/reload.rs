//! Live reload: the config file is watched (and re-read on SIGHUP); a new file is fully validated, then
//! swapped in atomically. An invalid file is logged and counted, and the old config keeps serving.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::Config;
use crate::runtime::state::GatewayState;
use crate::telemetry::metrics::metrics;

/// How often the file is looked at when its folder cannot be watched (inotify refused: no instances
/// left, an unusual file system). Reading a small file this often costs little, but it is work an
/// idle gateway would do four times a second.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the file is looked at besides inotify's wakes: a change inotify cannot see (a file on a
/// network file system edited elsewhere) is picked up within this.
pub const SLOW_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// How often idle rate-limit keys are forgotten. The upkeep otherwise sleeps until the next JWKS
/// refresh is due (`jwks_refresh` may be as short as a second: a key published a few seconds before
/// it signs must be known by then — CI caught a 5 s tick refusing the first tokens of a rotated key).
pub const FORGET_IDLE_INTERVAL: Duration = Duration::from_secs(10);
/// The upkeep never wakes sooner than this after its last run (a refresh that keeps failing at once
/// is retried on its own schedule, not in a loop).
const UPKEEP_MIN_GAP: Duration = Duration::from_millis(100);

/// The background service that watches the config file and starts health checks.
pub struct Reloader {
    pub path: PathBuf,
    pub state: Arc<GatewayState>,
}

/// The result of one reload attempt.
#[derive(Debug)]
pub enum ReloadOutcome {
    Unchanged,
    Applied,
    Rejected(Vec<String>),
}

impl Reloader {
    /// Re-reads the file; applies it when its bytes changed (or when `force`) and it validates.
    pub fn reload(&self, last: &mut Option<Vec<u8>>, force: bool) -> ReloadOutcome {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("{}: cannot read: {e}", self.path.display());
                if last.is_some() {
                    // Count a vanished or unreadable file once, not every poll.
                    *last = None;
                    metrics().reloads.with_label_values(&["failure"]).inc();
                    tracing::error!(error = %msg, "config reload failed; keeping the running config");
                }
                return ReloadOutcome::Rejected(vec![msg]);
            }
        };
        if !force && last.as_deref() == Some(&bytes[..]) {
            return ReloadOutcome::Unchanged;
        }
        *last = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        match Config::parse(&self.path, &text) {
            Ok(new) => {
                let old = self.state.current();
                for note in old.config.restart_needed(&new) {
                    tracing::warn!("{note}");
                }
                let summary = new.summary();
                self.state.apply(new);
                metrics().reloads.with_label_values(&["success"]).inc();
                tracing::info!(%summary, "config reloaded");
                ReloadOutcome::Applied
            }
            Err(e) => {
                let lines = e.lines();
                metrics().reloads.with_label_values(&["failure"]).inc();
                for l in &lines {
                    tracing::error!(error = %l, "config reload rejected; keeping the running config");
                }
                ReloadOutcome::Rejected(lines)
            }
        }
    }

    /// The upkeep: JWKS refreshes that are due (each on its own task, so a slow identity provider never
    /// delays a reload), and idle rate-limit keys forgotten every [`FORGET_IDLE_INTERVAL`]. Returns when
    /// it is next due: the earliest refresh, or the next forgetting — nothing wakes an idle gateway
    /// before then.
    fn housekeeping(
        &self,
        forget_at: &mut tokio::time::Instant,
        refreshed: &Arc<tokio::sync::Notify>,
    ) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let mut next = None::<tokio::time::Instant>;
        for src in self.state.jwks.all() {
            if src.claim_due() {
                let refreshed = Arc::clone(refreshed);
                let src = Arc::clone(&src);
                tokio::spawn(async move {
                    let _ = src.refresh().await;
                    // It set its next refresh: the upkeep sleeps until then.
                    refreshed.notify_one();
                });
            }
            // A refresh in progress holds its source for twice its timeout; the upkeep is told when
            // it ends, with its real next refresh.
            let due = tokio::time::Instant::from_std(src.next_due());
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        if now >= *forget_at {
            self.state.current().limiters.forget_idle();
            *forget_at = now + FORGET_IDLE_INTERVAL;
        }
        next.map_or(*forget_at, |n| n.min(*forget_at))
            .max(now + UPKEEP_MIN_GAP)
    }

    async fn wait_for_listeners(&self) {
        let rt = self.state.current();
        let Some(addr) = rt.config.entrypoints.http else {
            return;
        };
        let addr = if addr.ip().is_unspecified() {
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        } else {
            addr
        };
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                self.state.listeners_up.store(true, Ordering::Release);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.state.start_health_checks();
        self.state.start_background();
        // Changes are noticed by inotify on the file's folder; polling only as a slow safety net, or
        // fast where inotify is refused. The watch is in place before the file is read for the
        // comparison below: a change written while the listeners come up was missed until the slow
        // poll (30 s) when the watch came after that wait.
        let watch = match crate::support::file_watch::FileWatch::new(&self.path) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot watch the config's folder; polling it every 250 ms");
                None
            }
        };
        let mut last = std::fs::read(&self.path).ok();
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; file watching still reloads");
                None
            }
        };
        tokio::select! {
            _ = self.wait_for_listeners() => {}
            _ = shutdown.changed() => return,
        }
        let poll = if watch.is_some() {
            SLOW_POLL_INTERVAL
        } else {
            POLL_INTERVAL
        };
        let mut forget_at = tokio::time::Instant::now() + FORGET_IDLE_INTERVAL;
        let refreshed = Arc::new(tokio::sync::Notify::new());
        let upkeep = tokio::time::sleep_until(self.housekeeping(&mut forget_at, &refreshed));
        tokio::pin!(upkeep);
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watching = watch.is_some();
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                changed = async { match (&watch, watching) { (Some(w), true) => w.changed().await, _ => std::future::pending().await } } => {
                    if let Err(e) = changed {
                        // Polling takes over (the slow interval: a failing watch is rare enough).
                        tracing::warn!(error = %e, "config folder watch failed; polling");
                        watching = false;
                    }
                    false
                }
                _ = refreshed.notified() => {
                    let next = self.housekeeping(&mut forget_at, &refreshed);
                    upkeep.as_mut().reset(next);
                    continue;
                }
                _ = &mut upkeep => {
                    let next = self.housekeeping(&mut forget_at, &refreshed);
                    upkeep.as_mut().reset(next);
                    continue;
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: re-reading the config");
                    true
                }
                _ = shutdown.changed() => return,
            };
            if let ReloadOutcome::Applied = self.reload(&mut last, force) {
                // A new key-set source is due at once; a changed interval from its next refresh.
                let next = self.housekeeping(&mut forget_at, &refreshed);
                upkeep.as_mut().reset(next);
            }
        }
    }
}
