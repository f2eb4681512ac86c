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
