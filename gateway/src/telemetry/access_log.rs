//! One JSON access-log line per request on stdout, written by a dedicated thread so that no request
//! waits on stdout or takes its lock.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// An access-log entry; borrowed fields, written once as one JSON object (keys in this order, `user` and
/// `error` only when set), stamped with the time it is written.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The client's protocol: `http1`, `h2` or `h3`.
    pub protocol: &'static str,
    pub status: u16,
    pub bytes: usize,
    pub duration: Duration,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub server: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub user: Option<&'a str>,
    pub error: Option<&'a str>,
}

impl Entry<'_> {
    /// Appends the line (with its newline) to `out`, timed `now`.
    fn write_line(&self, now: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        push_time(now, out);
        out.extend_from_slice(b"\",\"request_id\":");
        push_str(out, self.request_id);
        out.extend_from_slice(b",\"client_ip\":");
        match self.client_ip {
            Some(ip) => {
                out.push(b'"');
                // An address's text never needs escaping.
                let _ = write!(out, "{ip}");
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"host\":");
        push_str(out, self.host);
        out.extend_from_slice(b",\"method\":");
        push_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        push_str(out, self.path);
        out.extend_from_slice(b",\"protocol\":\"");
        out.extend_from_slice(self.protocol.as_bytes());
        out.extend_from_slice(b"\",\"status\":");
        push_uint(out, u64::from(self.status));
        out.extend_from_slice(b",\"bytes\":");
        push_uint(out, self.bytes as u64);
        // Milliseconds with microsecond resolution.
        out.extend_from_slice(b",\"duration_ms\":");
        let micros = self.duration.as_micros().min(u128::from(u64::MAX)) as u64;
        push_uint(out, micros / 1000);
        out.push(b'.');
        let frac = micros % 1000;
        out.extend_from_slice(&[
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        for (key, value) in [
            (&b",\"route\":"[..], self.route),
            (b",\"upstream\":", self.upstream),
            (b",\"server\":", self.server),
            (b",\"tenant\":", self.tenant),
        ] {
            out.extend_from_slice(key);
            push_opt(out, value);
        }
        if let Some(user) = self.user {
            out.extend_from_slice(b",\"user\":");
            push_str(out, user);
        }
        if let Some(error) = self.error {
            out.extend_from_slice(b",\"error\":");
            push_str(out, error);
        }
        out.extend_from_slice(b"}\n");
    }
}

fn push_opt(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: quotes, backslashes and control characters escaped (RFC 8259 §7).
fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Decimal digits of `n`, without allocating.
fn push_uint(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `now` as RFC 3339 UTC with milliseconds; the date and time of day are formatted once per second
/// per thread.
fn push_time(now: SystemTime, out: &mut Vec<u8>) {
    let d = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        let full = rfc3339(secs, 0);
        text.copy_from_slice(&full.as_bytes()[..19]);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    let ms = d.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
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
                let write = |msg: Msg, out: &mut std::io::BufWriter<_>| match msg {
                    Msg::Line(line) => {
                        let _ = out.write_all(&line);
                    }
                    Msg::Flush(done) => {
                        let _ = out.flush();
                        let _ = done.send(());
                    }
                };
                loop {
                    // Idle: parked until a line comes (no wake-ups while nothing is logged); the first
                    // line of a burst wakes it, the rest are drained every DRAIN_INTERVAL without
                    // waking it (it is asleep, not waiting on the channel).
                    match rx.recv() {
                        Ok(msg) => write(msg, &mut out),
                        Err(_) => return,
                    }
                    loop {
                        std::thread::sleep(DRAIN_INTERVAL);
                        let mut drained = 0usize;
                        loop {
                            match rx.try_recv() {
                                Ok(msg) => {
                                    drained += 1;
                                    write(msg, &mut out);
                                }
                                Err(mpsc::TryRecvError::Empty) => break,
                                Err(mpsc::TryRecvError::Disconnected) => {
                                    let _ = out.flush();
                                    return;
                                }
                            }
                        }
                        let _ = out.flush();
                        if drained == 0 {
                            break;
                        }
                    }
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
        entry.write_line(SystemTime::now(), &mut buf);
        if self.tx.try_send(Msg::Line(buf)).is_err() {
            crate::telemetry::metrics::metrics()
                .access_log_dropped
                .inc();
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-28T12:00:00.123Z`.
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
    use super::*;

    fn line(e: &Entry<'_>, now: SystemTime) -> serde_json::Value {
        let mut out = Vec::new();
        e.write_line(now, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).expect("valid JSON")
    }

    fn entry<'a>(path: &'a str, host: &'a str) -> Entry<'a> {
        Entry {
            request_id: "r-1",
            client_ip: Some("2001:db8::1".parse().expect("ip")),
            host,
            method: "GET",
            path,
            protocol: "h2",
            status: 200,
            bytes: 1024,
            duration: Duration::from_micros(12_345_678),
            route: Some("r"),
            upstream: None,
            server: Some("127.0.0.1:1"),
            tenant: Some("acme"),
            user: None,
            error: None,
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_867_200_005);
        let v = line(&entry("/a", "acme.aggios.app"), now);
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-11-28T12:00:00.005Z", "request_id": "r-1", "client_ip": "2001:db8::1",
                "host": "acme.aggios.app", "method": "GET", "path": "/a", "protocol": "h2", "status": 200, "bytes": 1024,
                "duration_ms": 12345.678, "route": "r", "upstream": null, "server": "127.0.0.1:1",
                "tenant": "acme"
            })
        );
        let mut e = entry("/", "h");
        e.client_ip = None;
        e.user = Some("u-1");
        e.error = Some("rate_limited");
        e.duration = Duration::from_micros(7);
        let v = line(&e, now);
        assert_eq!(v["client_ip"], serde_json::Value::Null);
        assert_eq!(v["user"], "u-1");
        assert_eq!(v["error"], "rate_limited");
        assert_eq!(v["duration_ms"], 0.007);
    }

    #[test]
    fn strings_are_escaped() {
        let nasty = "q\"b\\n\nr\rt\t\u{1}\u{1f}é\u{7f}";
        let v = line(&entry(nasty, nasty), SystemTime::now());
        assert_eq!(v["path"], nasty);
        assert_eq!(v["host"], nasty);
    }

    #[test]
    fn the_time_is_cached_per_second_but_the_milliseconds_are_not() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(951_868_799_999);
        let mut out = Vec::new();
        push_time(t0, &mut out);
        push_time(t0 + Duration::from_millis(1), &mut out);
        push_time(t0 - Duration::from_millis(1), &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "2000-02-29T23:59:59.999Z2000-03-01T00:00:00.000Z2000-02-29T23:59:59.998Z"
        );
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_795_867_200, 5), "2026-11-28T12:00:00.005Z");
        assert_eq!(super::rfc3339(951_782_400, 999), "2000-02-29T00:00:00.999Z");
    }
}
