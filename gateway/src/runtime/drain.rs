//! The end of a graceful stop (SIGTERM) or of a zero-downtime upgrade (SIGQUIT). Pingora closes the
//! listeners and idle keep-alive connections, then keeps the runtimes alive for `[server] shutdown_grace`
//! so that requests in flight can finish, and stops them after it. [`Drain`] ends the process as soon as
//! no request is left in flight, so that a stop takes as long as the slowest request, not always the
//! whole grace.
//!
//! From the moment the stop or the hand-over begins, [`GatewayState::draining`] is set: every HTTP/1
//! response then says `Connection: close`, so that keep-alive clients move to a new connection (the new
//! process's, on an upgrade) after a complete response, instead of meeting a connection closed under
//! their next request. With `[server] shutdown_delay`, [`StopSignals`] puts a phase before all of this:
//! on SIGTERM the gateway first says not ready on `/readyz` and closes each connection after its next
//! response while its listeners still accept, so that a load balancer takes it out of rotation and its
//! keep-alive clients move to another replica before any listener or idle connection is closed. On an upgrade, Pingora keeps accepting for 5 s after handing the sockets over
//! (both processes accept from the same sockets), then closes what is idle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;

use crate::runtime::state::GatewayState;
use crate::telemetry::metrics::metrics;

/// How long "nothing in flight" must hold before the process ends: a connection accepted just before
/// the listener closed gets this long to turn into a request.
const SETTLE: Duration = Duration::from_millis(200);
const POLL: Duration = Duration::from_millis(20);

/// The process's stop signals, as Pingora's own watcher reads them (SIGTERM graceful stop, SIGQUIT
/// hand-over to a new process, SIGINT fast stop), with `[server] shutdown_delay` served out between
/// SIGTERM and the graceful stop. A second SIGTERM ends the delay at once; SIGINT during it stops fast.
pub struct StopSignals {
    pub state: Arc<GatewayState>,
    pub delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for StopSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            // Without signal handlers nothing could stop the gateway gracefully: stop now.
            tracing::error!("cannot install the stop signals' handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {}
        }
        if self.delay.is_zero() {
            return ShutdownSignal::GracefulTerminate;
        }
        self.state
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(
            delay_ms = self.delay.as_millis() as u64,
            "SIGTERM: not ready from now on; serving (each connection closed after its next response) \
             for [server] shutdown_delay before the listeners close"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => {}
            _ = term.recv() => tracing::info!("second SIGTERM: ending shutdown_delay now"),
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        ShutdownSignal::GracefulTerminate
    }
}

pub struct Drain {
    pub state: Arc<GatewayState>,
    pub grace: Duration,
    /// The server's execution phases (taken by the service when it starts).
    pub phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take();
        while !*shutdown.borrow() {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                phase = async { match phases.as_mut() { Some(p) => p.recv().await, None => std::future::pending().await } } => {
                    match phase {
                        Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                            self.state.draining.store(true, std::sync::atomic::Ordering::Release);
                            tracing::info!("upgrade: handing the listening sockets to the new process; responses now close their connections");
                        }
                        Ok(ExecutionPhase::GracefulUpgradeCloseTimeout) => {
                            metrics().upgrade_handovers.with_label_values(&["sent"]).inc();
                        }
                        Ok(ExecutionPhase::GracefulUpgradeFailed) => {
                            // Nobody of our own uid took the sockets: we still hold the ports, so we
                            // keep serving them with keep-alive as before.
                            self.state.draining.store(false, std::sync::atomic::Ordering::Release);
                            metrics().upgrade_handovers.with_label_values(&["failed"]).inc();
                            tracing::error!("upgrade: the listening sockets were not handed over (no new process of this user took them); still serving");
                        }
                        Ok(ExecutionPhase::GracefulTerminate) => {
                            self.state.draining.store(true, std::sync::atomic::Ordering::Release);
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => phases = None,
                    }
                }
            }
        }
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        let start = Instant::now();
        let active = metrics().connections_active.get();
        tracing::info!(
            in_flight = active,
            grace_ms = self.grace.as_millis() as u64,
            "draining"
        );
        let mut idle_since: Option<Instant> = None;
        loop {
            if metrics().connections_active.get() <= 0 {
                if idle_since.get_or_insert_with(Instant::now).elapsed() >= SETTLE {
                    break;
                }
            } else {
                idle_since = None;
            }
            if start.elapsed() >= self.grace {
                // Pingora stops the runtimes now, cutting what is left.
                tracing::warn!(
                    in_flight = metrics().connections_active.get(),
                    "requests still in flight at the end of shutdown_grace"
                );
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        if let Some(otel) = self.state.otel.as_ref() {
            otel.flush();
        }
        let state = Arc::clone(&self.state);
        let flushed =
            tokio::task::spawn_blocking(move || state.access_log.flush(Duration::from_secs(1)))
                .await
                .unwrap_or(false);
        tracing::info!(
            after_ms = start.elapsed().as_millis() as u64,
            access_log_flushed = flushed,
            "drained: no request in flight; exiting"
        );
        std::process::exit(0);
    }
}
