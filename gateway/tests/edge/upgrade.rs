//! Zero-downtime upgrade: `gateway run --upgrade` takes the listening sockets of the running gateway
//! when that one gets SIGQUIT; the old process finishes what it has in flight and leaves. Under constant
//! load (keep-alive clients and a client opening a new connection per request), no request is refused
//! and none fails.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::helpers::*;

/// One client's requests, back to back: over a kept-alive connection (opening a new one when the
/// server closed the last after a response), or over a new connection each time.
async fn client(
    port: u16,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let fail = |what: String| {
        failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what)
    };
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let mut n_on_conn = 0u32;
    let mut last_conn: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        // A connection the server closed after its last response (Connection: close) is not reused:
        // the client knows before sending, as every HTTP client does.
        if let Some(s) = sender.as_mut() {
            if s.ready().await.is_err() {
                sender = None;
            }
        }
        let fresh = sender.is_none();
        let s = match sender.as_mut() {
            Some(s) => s,
            None => {
                let stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(s) => s,
                    Err(e) => {
                        fail(format!("connect: {e}"));
                        continue;
                    }
                };
                let (s, conn) =
                    match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                        Ok(pair) => pair,
                        Err(e) => {
                            fail(format!("handshake: {e}"));
                            continue;
                        }
                    };
                tokio::spawn(conn);
                n_on_conn = 0;
                sender.insert(s)
            }
        };
        let mut req = hyper::Request::builder().uri("/").header("host", "x.test");
        if !keep_alive {
            req = req.header("connection", "close");
        }
        let req = req.body(Full::new(Bytes::new())).expect("request");
        match s.send_request(req).await {
            Ok(resp) => {
                n_on_conn += 1;
                last_conn = resp
                    .headers()
                    .get("connection")
                    .map(|v| v.to_str().unwrap_or("").to_string());
                let status = resp.status().as_u16();
                match resp.into_body().collect().await {
                    Ok(_) if status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => fail(format!("status {status}")),
                    Err(e) => fail(format!("body: {e}")),
                }
            }
            Err(e) => {
                fail(format!("no response: {e} (keep_alive {keep_alive}, fresh {fresh}, at {:?}, n {n_on_conn}, last {last_conn:?})", std::time::SystemTime::now()));
                sender = None;
            }
        }
        if !keep_alive {
            sender = None;
        }
    }
}

/// Also compose/README's "`--upgrade` waits up to 60 s for the sockets": the new process is started 8 s
/// before the old one gets SIGQUIT (Pingora's own wait is 5 tries a second apart) and still takes them.
#[tokio::test]
async fn sigquit_hands_the_sockets_to_the_new_binary_with_no_refused_or_failed_request() {
    upgrade_under_load("", 1, None, Duration::from_secs(8)).await;
}

/// With one service per thread, each thread's `SO_REUSEPORT` socket is handed over under its own key:
/// the new process serves from the very sockets the old one listened on, none bound anew.
#[tokio::test]
async fn with_one_socket_per_thread_each_socket_is_handed_over() {
    upgrade_under_load("threads = 2\nreuseport = true\n", 2, None, Duration::ZERO).await;
}

/// The running gateway shares one socket between its threads; the new one's file asks for one socket per
/// thread (the default). It takes the shared socket over and keeps that layout, with a warning, instead
/// of listening on new sockets of its own while the handed-over one closes with the old process (the
/// connections in its queue reset). Without the check, the sockets after the upgrade are new ones.
#[tokio::test]
async fn an_upgrade_keeps_the_running_socket_layout_whatever_the_new_file_says() {
    let new = upgrade_under_load(
        "threads = 2\nreuseport = false\n",
        1,
        Some("threads = 2\n"),
        Duration::ZERO,
    )
    .await;
    assert!(
        new.stderr().contains("keeping its layout for this upgrade"),
        "{}",
        new.stderr()
    );
}

/// An access-log `time` (`2026-11-28T12:00:00.123Z`) in milliseconds since the epoch.
fn log_ms(t: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| -> i64 {
        t.get(r)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("access-log time {t:?}"))
    };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from the civil date (proleptic Gregorian; March-based year).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + d - 719_469;
    days * 86_400_000 + n(11..13) * 3_600_000 + n(14..16) * 60_000 + n(17..19) * 1_000 + n(20..23)
}

/// Runs the hand-over under load with `server` added to `[server]` (with which the old process listens on
/// `sockets` sockets; `new_server` instead for the new process, when given); the new process is started `quit_after` before the old one gets SIGQUIT. Checks
/// that the listening sockets after it are the ones before it, and that the old process kept accepting
/// for its 5 s pause after handing them over (it answers new connections 3 s after the new process's
/// first answer, and leaves no sooner than 4.5 s after SIGQUIT). Returns the new process.
async fn upgrade_under_load(
    server: &str,
    sockets: usize,
    new_server: Option<&str>,
    quit_after: Duration,
) -> Gateway {
    let up = TestUpstream::start("u");
    let slow = TestUpstream::start("slow");
    slow.behaviour.delay_ms.store(2_000, Ordering::SeqCst);
    let socks = tempfile::tempdir().expect("tempdir");
    let body = |server: &str| {
        format!(
            "[server]\n{server}shutdown_grace = \"20s\"\nupgrade_sock = \"{}\"\n\n{}{}\
             [[routes]]\nname = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"slow\"\n\n\
             [[routes]]\nname = \"r\"\nupstream = \"u\"\n",
            socks.path().join("upgrade.sock").display(),
            upstream_toml("u", &[&up], ""),
            upstream_toml("slow", &[&slow], ""),
        )
    };
    let mut old = Gateway::start(&body(server)).await;
    let port = old.http;
    let sockets = listening_sockets_once(port, sockets).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = [true, true, false]
        .into_iter()
        .map(|keep_alive| {
            tokio::spawn(client(
                port,
                keep_alive,
                stop.clone(),
                ok.clone(),
                failures.clone(),
            ))
        })
        .collect();
    eventually("load before the upgrade", || async {
        ok.load(Ordering::SeqCst) > 100
    })
    .await;

    // A slow request in flight at the old process when the hand-over starts.
    let in_flight =
        tokio::spawn(async move { send(port, "GET", "x.test", "/slow", &[], Bytes::new()).await });
    eventually("the slow request reached its upstream", || async {
        slow.seen.heads() >= 1
    })
    .await;

    if let Some(new_server) = new_server {
        // The new process reads this file; the old one only notes that [server] needs a restart.
        old.rewrite(&body(new_server));
    }
    let mut new = old.successor();
    if !quit_after.is_zero() {
        // Deliberately longer than Pingora's default wait for the sockets.
        tokio::time::sleep(quit_after).await;
        assert!(
            new.exited().is_none(),
            "the new process gave up waiting for the sockets within {quit_after:?}: {}",
            new.stderr()
        );
    }
    old.signal("QUIT");
    let t0 = Instant::now();
    eventually("the new process serves", || async {
        !new.access_log().is_empty()
    })
    .await;
    let new_first = log_ms(new.access_log()[0]["time"].as_str().expect("time"));
    assert!(
        new.exited().is_none(),
        "the new process exited: {}",
        new.stderr()
    );
    let r = in_flight.await.expect("task");
    assert_eq!(r.status, 200, "the request in flight was cut: {:?}", r.body);
    assert_eq!(r.upstream(), Some("slow"));
    // The old process leaves once its hand-over pause (5 s) is over and nothing is in flight.
    let exit = loop {
        if let Some(status) = old.exited() {
            break status;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "the old process still runs:\n{}",
            old.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "old process: {exit}\n{}", old.stderr());
    let exit_after = t0.elapsed();
    assert!(
        exit_after >= Duration::from_millis(4_500),
        "the old process left {exit_after:?} after SIGQUIT, before its 5 s of accepting"
    );
    let late: Vec<i64> = old
        .access_log()
        .iter()
        .filter(|l| l["path"] == "/")
        .filter_map(|l| l["time"].as_str().map(log_ms))
        .filter(|t| *t >= new_first + 3_000)
        .collect();
    assert!(
        !late.is_empty(),
        "the old process answered no request 3 s after the hand-over: it stopped accepting"
    );
    assert_eq!(
        listening_sockets(port),
        sockets,
        "the new process listens on the old one's sockets"
    );
    // Load goes on against the new process alone.
    let after = ok.load(Ordering::SeqCst);
    eventually("load after the old process left", || async {
        ok.load(Ordering::SeqCst) > after + 200
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        failures.is_empty(),
        "{} failed of {} requests: {:?}\nold:\n{}\nnew:\n{}",
        failures.len(),
        ok.load(Ordering::SeqCst) + failures.len(),
        &failures[..failures.len().min(10)],
        old.stderr(),
        new.stderr()
    );
    assert!(
        old.stderr()
            .contains("handing the listening sockets to the new process"),
        "{}",
        old.stderr()
    );
    // The new process answers on every listener it took over, the admin one too.
    assert_eq!(new.get("x.test", "/").await.status, 200);
    assert_eq!(new.admin_get("/readyz").await.0, 200);
    assert!(new.exited().is_none());
    new
}
