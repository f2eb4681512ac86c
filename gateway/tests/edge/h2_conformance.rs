//! HTTP/2 frame-level conformance (RFC 9113) of both HTTP/2 entrypoints — h2c with prior knowledge
//! on the plain port, h2 over TLS (ALPN) on the https one — with the cases h2spec would run, written
//! on raw sockets in `tests/h2/conformance.py` (Python hpack): bad prefaces, frames on stream 0 and
//! of the wrong length, SETTINGS limits, flow-control violations, CONTINUATION rules and floods,
//! Rapid Reset and MadeYouReset floods, header-list limits and the pseudo-header rules. Each case
//! states the RFC's outcome; where the h2 crate does otherwise, the case records that deviation and
//! why it is harmless, and both are checked. Malformed requests must not reach the upstream.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::helpers::*;
use crate::tls_helpers::dev_certs;

/// Cases whose request may reach the upstream before the error that settles them (a head or a body
/// streamed upstream as it arrives), or which send valid requests on purpose.
const MAY_REACH_UPSTREAM: &[&str] = &[
    "valid_request",
    "decreasing_stream_id-ok",
    "rst_stream_bad_length",
    "window_update_zero_on_a_stream",
    "frame_above_max_frame_size",
    "data_after_end_stream",
    "second_headers_without_end_stream",
    "content_length_mismatch",
    "pseudo_header_in_trailers",
    "rapid_reset",
];

/// A TCP address whose accept queue is full (listen backlog 0, one connection waiting): a connection
/// to it hangs in SYN retries, so a request routed there waits in the gateway with its body unread —
/// the flow-control case's window cannot be freed by the proxy consuming it. Keep the values alive.
fn hanging_address() -> (
    std::net::SocketAddr,
    std::os::fd::OwnedFd,
    Vec<std::net::TcpStream>,
) {
    use nix::sys::socket::{
        bind, getsockname, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .expect("socket");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .expect("bind");
    listen(&fd, Backlog::new(0).expect("backlog")).expect("listen");
    let local: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).expect("getsockname");
    let addr = std::net::SocketAddr::from((local.ip(), local.port()));
    // Fill the queue: later connections are not completed.
    let fillers = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).ok()
        })
        .collect();
    (addr, fd, fillers)
}

async fn run_suite(args: &[String]) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h2/conformance.py");
    let python = std::env::var("H2_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::time::timeout(
        DEADLINE * 10,
        tokio::process::Command::new(python)
            .arg(script)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the conformance suite did not end")
    .expect("run the conformance suite (H2_PYTHON with hpack; scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "conformance suite: {e}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["cases"].as_array().expect("cases").clone()
}

#[tokio::test]
async fn http2_frame_level_conformance_over_h2c_and_tls() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["*.aggios.test"]);
    let ca_file = certs.path().join("dev-ca.crt");
    let up = TestUpstream::start("u");
    let (hanging, _listener, _fillers) = hanging_address();
    let gw = Gateway::start(&format!(
        "[tls]\n[[tls.certificates]]\ncert = \"{dir}/dev.crt\"\nkey = \"{dir}/dev.key\"\n\n{u}\
         [[upstreams]]\nname = \"hanging\"\nservers = [\"{hanging}\"]\ntimeouts = {{ connect = \"60s\" }}\n\n\
         [[routes]]\nname = \"stall\"\npath_prefix = \"/c/data_beyond_the_window\"\nupstream = \"hanging\"\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        dir = certs.path().display(),
        u = upstream_toml("u", &[&up], ""),
    ))
    .await;
    let entrypoints = [
        ("h2c", vec!["--port".to_string(), gw.http.to_string()]),
        (
            "h2 over TLS",
            vec![
                "--port".to_string(),
                gw.https.to_string(),
                "--tls".to_string(),
                "h2.aggios.test".to_string(),
                ca_file.display().to_string(),
            ],
        ),
    ];
    let mut failures = Vec::new();
    let mut deviations = BTreeMap::new();
    for (entrypoint, args) in &entrypoints {
        let cases = run_suite(args).await;
        assert!(cases.len() >= 50, "{entrypoint}: {} cases", cases.len());
        for c in &cases {
            match c["verdict"].as_str() {
                Some("pass") => {}
                Some("deviation") => {
                    *deviations.entry(c["name"].to_string()).or_insert(0) += 1;
                }
                _ => failures.push(format!("{entrypoint}: {c}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The gateway survived every case and still serves HTTP/2.
    let log = up.seen.log();
    for (_, _, path) in &log {
        let case = path.trim_start_matches("/c/");
        assert!(
            MAY_REACH_UPSTREAM.contains(&case),
            "a malformed or refused request reached the upstream: {path}\n{log:?}"
        );
    }
    let valid = log
        .iter()
        .filter(|(_, _, p)| p == "/c/valid_request")
        .count();
    assert_eq!(valid, 2, "the control request, once per entrypoint");
    let reset = log.iter().filter(|(_, _, p)| p == "/c/rapid_reset").count();
    assert!(
        reset <= 200,
        "Rapid Reset: {reset} of 2 000 reset requests reached the upstream"
    );
    eprintln!("known deviations (both entrypoints): {deviations:?}");
}
