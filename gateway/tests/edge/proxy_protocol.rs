//! PROXY protocol (v1 and v2) on the http entrypoint, believed from the listed balancer only: the
//! client it names is the client everywhere (what the upstream is told, IP lists); a balancer's
//! connection without a valid header in time is closed; anyone else's PROXY header is refused as the
//! bytes it is, and never trusted.

use crate::helpers::*;
use gateway::support::proxy_protocol::v2_header;

/// The balancer's address: connections from it must carry the header.
const BALANCER: [u8; 4] = [127, 0, 0, 2];

fn cfg(up: &TestUpstream) -> String {
    format!(
        r#"[entrypoints.proxy_protocol]
from = ["127.0.0.2/32"]

[limits]
header_timeout = "1s"

{}
[[routes]]
name = "partners"
path_prefix = "/partners"
allow_ips = ["198.51.100.0/24"]
upstream = "u"

[[routes]]
name = "all"
upstream = "u"
"#,
        upstream_toml("u", &[up], "")
    )
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n";

fn client_seen(resp: &str) -> (u16, String, String) {
    let (status, body) = split_response(resp);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let h = |n: &str| {
        echo["headers"][n][0]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    (status, h("x-aggios-client-ip"), h("x-forwarded-for"))
}

#[tokio::test]
async fn the_balancers_header_names_the_client_and_nobody_else_is_believed() {
    let up = TestUpstream::start("u");
    let gw = Gateway::start(&cfg(&up)).await;
    let v1 = [
        b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 80\r\n".as_slice(),
        GET,
    ]
    .concat();
    let (resp, _) = raw_bytes_from(BALANCER, gw.http, &v1).await;
    assert_eq!(
        client_seen(&resp),
        (200, "198.51.100.7".into(), "198.51.100.7".into()),
        "{resp}"
    );
    let v2 = [
        v2_header(
            "[2001:db8::7]:4000".parse().expect("a"),
            "[2001:db8::1]:80".parse().expect("a"),
        )
        .as_slice(),
        GET,
    ]
    .concat();
    let (resp, _) = raw_bytes_from(BALANCER, gw.http, &v2).await;
    assert_eq!(client_seen(&resp).1, "2001:db8::7", "{resp}");
    // LOCAL (the balancer's own health check): the balancer is the client.
    let mut local = v2_header(
        "192.0.2.1:1".parse().expect("a"),
        "192.0.2.2:2".parse().expect("a"),
    );
    local[12] = 0x20;
    let (resp, _) = raw_bytes_from(BALANCER, gw.http, &[local.as_slice(), GET].concat()).await;
    assert_eq!(client_seen(&resp).1, "127.0.0.2", "{resp}");
    // The address it names is the one IP lists decide on.
    let partners = |ip: &str| {
        format!("PROXY TCP4 {ip} 10.0.0.1 5555 80\r\nGET /partners HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n")
    };
    let (resp, _) = raw_bytes_from(BALANCER, gw.http, partners("198.51.100.9").as_bytes()).await;
    assert_eq!(split_response(&resp).0, 200, "{resp}");
    let (resp, _) = raw_bytes_from(BALANCER, gw.http, partners("203.0.113.9").as_bytes()).await;
    assert_eq!(split_response(&resp).0, 403, "{resp}");

    // Anyone else: a PROXY header is not believed (the HTTP parser refuses it), nothing reaches the
    // upstream; a plain request is served with its own address.
    let hits = up.hits();
    let (resp, _) = raw_bytes(gw.http, &v1).await;
    assert_eq!(split_response(&resp).0, 400, "{resp}");
    assert_eq!(
        up.hits(),
        hits,
        "the spoofed header never reached the upstream"
    );
    let (resp, _) = raw_bytes(gw.http, GET).await;
    assert_eq!(client_seen(&resp).1, "127.0.0.1", "{resp}");

    // The balancer without a header, with a broken one, or too slow: closed without an answer.
    for bad in [GET, b"PROXY TCP4 nonsense\r\n\r\n".as_slice()] {
        let (resp, closed) = raw_bytes_from(BALANCER, gw.http, bad).await;
        assert!(closed && resp.is_empty(), "{resp}");
    }
    let started = std::time::Instant::now();
    let (resp, closed) = raw_bytes_from(BALANCER, gw.http, b"PROXY TCP4 198.").await;
    assert!(closed && resp.is_empty(), "{resp}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "closed at the head deadline"
    );
    assert_eq!(up.hits(), hits + 1);
    for (result, n) in [("accepted", 5.0), ("invalid", 2.0), ("timeout", 1.0)] {
        assert_eq!(
            gw.metric(&format!(
                "gateway_proxy_protocol_headers_total{{result=\"{result}\"}}"
            ))
            .await,
            n,
            "{result}"
        );
    }
}

/// What the PROXY-protocol upstream saw per request: its connection, the header's source, the path.
type SeenRequests =
    std::sync::Arc<std::sync::Mutex<Vec<(usize, Option<std::net::SocketAddr>, String)>>>;

/// An upstream that requires a PROXY v2 header at the start of each connection: it records, per request,
/// the connection it came on and the source the header named; a connection without a header is closed.
struct ProxiedUpstream {
    addr: std::net::SocketAddr,
    seen: SeenRequests,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProxiedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ProxiedUpstream {
    async fn start() -> ProxiedUpstream {
        use gateway::support::proxy_protocol::{parse, Parsed};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: SeenRequests = Default::default();
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, r) = (seen.clone(), refused.clone());
        let task = tokio::spawn(async move {
            for conn in 0.. {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let source = loop {
                        match parse(&buf) {
                            Parsed::Header { len, source } => {
                                buf.drain(..len);
                                break source;
                            }
                            Parsed::Incomplete => {}
                            _ => {
                                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                return;
                            }
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let path = head.split(' ').nth(1).unwrap_or("").to_string();
                            s.lock().expect("lock").push((conn, source, path));
                            let body = source.map_or("none".to_string(), |a| a.to_string());
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if tcp.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        ProxiedUpstream {
            addr,
            seen,
            refused,
            task,
        }
    }
}

/// Sends `paths` on one keep-alive connection from the loopback address `source`; returns its local
/// address and the bodies.
async fn keep_alive_from(
    source: [u8; 4],
    port: u16,
    paths: &[&str],
) -> (std::net::SocketAddr, Vec<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .expect("bind");
    let mut tcp = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect");
    let local = tcp.local_addr().expect("local");
    let mut bodies = Vec::new();
    for path in paths {
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x.test\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let body = loop {
            let n = tokio::time::timeout(DEADLINE, tcp.read(&mut chunk))
                .await
                .expect("an answer")
                .expect("read");
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .expect("content-length");
                if body.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
                    break body[..len].to_string();
                }
            }
        };
        bodies.push(body);
    }
    (local, bodies)
}

#[tokio::test]
async fn an_upstream_with_proxy_protocol_gets_each_client_connection_named_on_its_own_connection() {
    let up = ProxiedUpstream::start().await;
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nname = \"pp\"\nservers = [\"{}\"]\nproxy_protocol = \"v2\"\n\n[[routes]]\nname = \"all\"\nupstream = \"pp\"\n",
        up.addr
    ))
    .await;
    // Client A: two requests on one keep-alive connection, named in one header.
    let (a, bodies) = keep_alive_from([127, 0, 0, 2], gw.http, &["/a1", "/a2"]).await;
    assert_eq!(bodies, [a.to_string(), a.to_string()]);
    // Client B from another address, then A again on a new connection: each gets its own upstream
    // connection (a pooled one is never handed to another client connection).
    let (b, bodies) = keep_alive_from([127, 0, 0, 3], gw.http, &["/b1"]).await;
    assert_eq!(bodies, [b.to_string()]);
    let (a2, bodies) = keep_alive_from([127, 0, 0, 2], gw.http, &["/a3"]).await;
    assert_ne!(a2, a);
    assert_eq!(bodies, [a2.to_string()]);
    let seen = up.seen.lock().expect("lock").clone();
    let conn_of = |path: &str| seen.iter().find(|(_, _, p)| p == path).map(|(c, _, _)| *c);
    assert_eq!(conn_of("/a1"), conn_of("/a2"), "{seen:?}");
    let conns: std::collections::HashSet<_> =
        ["/a1", "/b1", "/a3"].iter().map(|p| conn_of(p)).collect();
    assert_eq!(
        conns.len(),
        3,
        "a connection served two client connections: {seen:?}"
    );
    assert_eq!(up.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
}
