//! One JSON access-log line per request on stdout, written by a dedicated thread so that no request
//! waits on stdout or takes its lock.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::SystemTime;

use serde::Serialize;

/// An access-log entry; borrowed fields, serialised once.
#[derive(Serialize)]
pub struct Entry<'a> {
    pub time: &'a str,
    pub request_id: &'a str,
    pub client_ip: Option<String>,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub duration_ms: f64,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub server: Option<&'a str>,
    pub tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// Lines queued beyond this are dropped (and counted) rather than making a request wait on stdout.
pub const QUEUE_LINES: usize = 65_536;
/// How often the writer thread drains the queue. Senders never wake it: a wake-up per request would
/// cost a context switch per request on a busy core.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// The access-log sink.
pub struct AccessLog {
    enabled: AtomicBool,
    tx: mpsc::SyncSender<Msg>,
}

/// What the writer thread is sent.
enum Msg {
    Line(Vec<u8>),
    /// Every line queued before this one is written out and flushed: say so.
    Flush(mpsc::Sender<()>),
}

impl AccessLog {
    /// Starts the writer thread.
    pub fn new(enabled: bool) -> AccessLog {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE_LINES);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
                loop {
                    std::thread::sleep(DRAIN_INTERVAL);
                    loop {
                        match rx.try_recv() {
                            Ok(Msg::Line(line)) => {
                                let _ = out.write_all(&line);
                            }
                            Ok(Msg::Flush(done)) => {
                                let _ = out.flush();
                                let _ = done.send(());
                            }
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => {
                                let _ = out.flush();
                                return;
                            }
                        }
                    }
                    let _ = out.flush();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access-log thread; access log disabled");
        }
        AccessLog {
            enabled: AtomicBool::new(enabled),
            tx,
        }
    }

    /// Switches the log on or off (config reload).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether lines are written.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Waits (up to `within`) until every line queued so far is written out: before the process exits.
    pub fn flush(&self, within: std::time::Duration) -> bool {
        let (done, wait) = mpsc::channel();
        let deadline = std::time::Instant::now() + within;
        let mut msg = Msg::Flush(done);
        // The queue may be full: retry until the writer makes room or time is up.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(DRAIN_INTERVAL / 4);
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }

    /// Queues one line; never blocks.
    pub fn write(&self, entry: &Entry<'_>) {
        let mut buf = Vec::with_capacity(320);
        if serde_json::to_writer(&mut buf, entry).is_ok() {
            buf.push(b'\n');
            if self.tx.try_send(Msg::Line(buf)).is_err() {
                crate::metrics::metrics().access_log_dropped.inc();
            }
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-28T12:00:00.123Z`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn cached_now_has_the_full_shape() {
        let s = super::rfc3339_now();
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[19] == b'.', "{s}");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_795_867_200, 5), "2026-11-28T12:00:00.005Z");
        assert_eq!(super::rfc3339(951_782_400, 999), "2000-02-29T00:00:00.999Z");
    }
}
