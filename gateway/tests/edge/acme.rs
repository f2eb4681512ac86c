//! ACME end to end against a real CA (Debian's pebble, resolving every name to 127.0.0.1 through
//! pebble-challtestsrv): HTTP-01 and TLS-ALPN-01 issuance followed by HTTPS requests verified against
//! pebble's root, an account and certificates kept across restarts, renewal of short-lived
//! certificates under load, and a CA outage (old certificate kept, retries backing off).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::tls_helpers::*;

/// The route most tests serve: every tenant's host, no auth, to upstream `u`.
const PUBLIC_ROUTE: &str = r#"[[routes]]
name = "public"
hosts = ["*.aggios.test"]
upstream = "u"
"#;

/// A gateway config against `pebble`: `before` (sections ahead of TLS), then `[tls.acme]` with the
/// directory and CA root filled in and the keys a test sets in `acme` (domains, challenge, storage,
/// timers; further `[tls.*]` tables may follow them), then the upstream `u` and `routes`.
fn acme_toml(pebble: &Pebble, up: &TestUpstream, before: &str, acme: &str, routes: &str) -> String {
    format!(
        "[tenancy]\nbase_domains = [\"aggios.test\"]\n\n{before}\n[tls.acme]\ndirectory = \"{dir}\"\nca_root = \"{ca}\"\n{acme}\n\n{up}\n{routes}",
        dir = pebble.directory(),
        ca = pebble.endpoint_ca.display(),
        up = upstream_toml("u", &[up], "")
    )
}

/// The single-name config of the issuance tests: `name` by `challenge`, stored under `storage`.
fn config(
    up: &TestUpstream,
    pebble: &Pebble,
    storage: &Path,
    name: &str,
    challenge: &str,
) -> String {
    acme_toml(
        pebble,
        up,
        "",
        &format!(
            r#"email = "ops@aggios.test"
domains = ["{name}"]
challenge = "{challenge}"
storage = "{storage}"
retry_initial = "1s"
retry_max = "4s"
order_timeout = "20s""#,
            storage = storage.display()
        ),
        PUBLIC_ROUTE,
    )
}

/// Replicas sharing ACME state through the Redis named by `GW_REDIS`.
const SHARED_STORE: &str = "[redis]\nurl_env = \"GW_REDIS\"";

/// A replica on `ports` sharing ACME state in `redis`, private keys sealed with `key` (32 bytes, as
/// base64 or hex).
async fn replica(ports: (u16, u16, u16), body: &str, redis: &RedisServer, key: &str) -> Gateway {
    let url = redis.url();
    let env = [("GW_REDIS", url.as_str()), ("GW_ACME_KEY", key)];
    Gateway::start_on(ports, tempfile::tempdir().expect("tempdir"), body, &env).await
}

/// An HTTP/1.1 GET over TLS to `host` on `port`, the certificate verified against `root` only;
/// panics with `what` if the handshake or the request fails.
async fn https_get(port: u16, host: &str, path: &str, root: &[u8], what: &str) -> TlsResp {
    get(port, host, path, &[], client_config(root, &[b"http/1.1"]))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Waits up to `limit` for `f`; on failure, shows what the gateway and pebble said.
async fn within<F, Fut>(limit: Duration, what: &str, gw: &Gateway, pebble: &Pebble, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out after {limit:?} waiting for: {what}\n--- gateway:\n{}\n--- pebble:\n{}",
        gw.stderr(),
        pebble.log()
    );
}

/// Waits up to `secs` seconds until the gateway serves ACME certificates for exactly `names`.
async fn until_served(gw: &Gateway, pebble: &Pebble, names: &[&str], secs: u64, what: &str) {
    within(Duration::from_secs(secs), what, gw, pebble, || async {
        served_names(gw).await == names
    })
    .await;
}

/// The names of the ACME certificates the gateway serves. An answer that is not the listing fails the
/// test: an empty list must mean "none served", never "could not ask" (negative assertions use it).
async fn served_names(gw: &Gateway) -> Vec<String> {
    let (status, body) = gw.admin_get("/api/certificates").await;
    assert_eq!(status, 200, "/api/certificates: {body}");
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/api/certificates is not JSON ({e}): {body}"));
    let list = v["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("/api/certificates has no list: {body}"));
    list.iter()
        .filter(|c| c["source"] == "acme")
        .flat_map(|c| c["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

async fn issue_and_serve(challenge: &str) {
    let ports = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(ports.0, ports.1, 3600).await;
    let up = TestUpstream::start("u");
    let storage = tempfile::tempdir().expect("tempdir");
    let name = "shop.aggios.test";
    let body = config(&up, &pebble, storage.path(), name, challenge);
    let gw = Gateway::start_on(ports, tempfile::tempdir().expect("tempdir"), &body, &[]).await;
    until_served(&gw, &pebble, &[name], 60, "the certificate issued").await;
    assert_eq!(
        gw.metric("gateway_acme_orders_total{result=\"success\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("gateway_acme_orders_total{result=\"failure\"}")
            .await,
        0.0
    );

    // A real HTTPS request, verified against pebble's issuing root only.
    let root = pebble.issuing_root().await;
    let r = get(
        gw.https,
        name,
        "/hello",
        &[],
        client_config(&root, &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap_or_else(|e| panic!("HTTPS with the issued certificate: {e}\n{}", gw.stderr()));
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"][0], "https");
    let serial = r.serial.clone();

    // Restart: the account and the certificate come from storage; no new order, no new account.
    let orders = pebble.orders();
    assert_eq!(orders, 1, "{}", pebble.log());
    let (ports, dir) = gw.stop();
    let gw = Gateway::start_on(ports, dir, &body, &[]).await;
    until_served(&gw, &pebble, &[name], 30, "the stored certificate served").await;
    let r = https_get(gw.https, name, "/again", &root, "HTTPS after restart").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.serial, serial, "a new certificate after restart");
    assert_eq!(pebble.orders(), 1, "ordered again after restart");
    assert_eq!(
        pebble.log().matches("POST /sign-me-up").count(),
        1,
        "a second account"
    );
}

#[tokio::test]
async fn http01_issues_and_the_certificate_survives_a_restart() {
    issue_and_serve("http-01").await;
}

#[tokio::test]
async fn tls_alpn01_issues_and_the_certificate_survives_a_restart() {
    issue_and_serve("tls-alpn-01").await;
}

#[tokio::test]
async fn renewal_under_load_then_a_ca_outage_keeps_the_old_certificate() {
    let ports = (free_port(), free_port(), free_port());
    // 36 s certificates: renewal falls due about 24 s after issuance.
    let mut pebble = Pebble::start(ports.0, ports.1, 36).await;
    let up = TestUpstream::start("u");
    let storage = tempfile::tempdir().expect("tempdir");
    let name = "live.aggios.test";
    let body = config(&up, &pebble, storage.path(), name, "http-01");
    let gw = Gateway::start_on(ports, tempfile::tempdir().expect("tempdir"), &body, &[]).await;
    until_served(&gw, &pebble, &[name], 60, "the first certificate").await;
    let root = pebble.issuing_root().await;
    let client = client_config(&root, &[b"http/1.1"]);
    // The first certificate's validity, as the gateway holds it.
    let (_, listing) = gw.admin_get("/api/certificates").await;
    let listing: serde_json::Value = serde_json::from_str(&listing).expect("json");
    let first = listing["certificates"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["names"][0] == name))
        .unwrap_or_else(|| panic!("{name} not listed: {listing}"))
        .clone();
    let (not_before, not_after) = (
        first["not_before"].as_i64().expect("not_before"),
        first["not_after"].as_i64().expect("not_after"),
    );
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let renewed_seen_at: Arc<Mutex<Option<f64>>> = Arc::default();

    // Load: a new TLS connection per request, recording serials and failures.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let serials: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = {
        let (stop, failures, served, serials, client, renewed_seen_at) = (
            stop.clone(),
            failures.clone(),
            served.clone(),
            serials.clone(),
            client.clone(),
            renewed_seen_at.clone(),
        );
        let port = gw.https;
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match get(port, name, "/load", &[], client.clone()).await {
                    Ok(r) if r.status == 200 => {
                        served.fetch_add(1, Ordering::SeqCst);
                        let mut s = serials.lock().expect("lock");
                        if s.last() != Some(&r.serial) {
                            s.push(r.serial);
                            if s.len() == 2 {
                                *renewed_seen_at.lock().expect("lock") = Some(unix_now());
                            }
                        }
                    }
                    Ok(r) => {
                        eprintln!("load: status {}", r.status);
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        eprintln!("load: {e}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    within(
        Duration::from_secs(60),
        "a renewal seen by clients",
        &gw,
        &pebble,
        || async { serials.lock().expect("lock").len() >= 2 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load task");
    // Not renewed before two thirds of the lifetime less the largest jitter (1/20), with a second of
    // slack for the clocks' whole seconds.
    let lifetime = (not_after - not_before) as f64;
    let earliest = not_before as f64 + lifetime * (2.0 / 3.0 - 1.0 / 20.0) - 1.0;
    let seen = renewed_seen_at.lock().expect("lock").expect("renewal time");
    assert!(
        seen >= earliest,
        "renewed {:.1} s into a {lifetime} s lifetime (earliest allowed {:.1} s)",
        seen - not_before as f64,
        earliest - not_before as f64
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during renewal"
    );
    assert!(served.load(Ordering::SeqCst) > 20);
    assert_eq!(
        gw.metric("gateway_acme_orders_total{result=\"failure\"}")
            .await,
        0.0
    );
    let renewed = serials
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("serial");

    // The CA goes away: the next renewal fails, retries back off, the renewed certificate stays served.
    pebble.stop();
    let failed = "gateway_acme_consecutive_failures{domain=\"live.aggios.test\"}";
    within(
        Duration::from_secs(60),
        "three failed renewals",
        &gw,
        &pebble,
        || async { gw.metric(failed).await >= 3.0 },
    )
    .await;
    let r = get(gw.https, name, "/during-outage", &[], client.clone())
        .await
        .expect("served during the CA outage");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.serial, renewed,
        "the served certificate changed during the outage"
    );
    assert!(
        gw.metric("gateway_acme_orders_total{result=\"failure\"}")
            .await
            >= 3.0
    );
    // Each retry waits longer than the one before, up to retry_max (4 s, +10 % jitter).
    let waits: Vec<f64> = gw
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "ACME order failed")
        .filter_map(|v| v["retry_in_secs"].as_f64())
        .collect();
    assert!(waits.len() >= 3, "{waits:?}");
    assert!(waits[0] >= 1.0 && waits[0] < 1.2, "{waits:?}");
    assert!(waits[1] >= 2.0 && waits[1] < 2.3, "{waits:?}");
    assert!(waits[2] >= 4.0 && waits[2] < 4.5, "{waits:?}");
    assert!(waits.iter().all(|w| *w < 4.5), "{waits:?}");

    // The CA comes back (a new pebble knows no account: the gateway registers again) and the next
    // retry succeeds; the failure count resets.
    pebble.restart().await;
    within(
        Duration::from_secs(60),
        "renewal after the outage",
        &gw,
        &pebble,
        || async { gw.metric(failed).await == 0.0 },
    )
    .await;
    let root = pebble.issuing_root().await;
    let r = https_get(
        gw.https,
        name,
        "/after",
        &root,
        "served with the certificate of the restarted CA",
    )
    .await;
    assert_ne!(r.serial, renewed);
}

const SECRET: &str = "on-demand-secret-on-demand-secret-01";

/// `GET /api/orders` on the tenant's own domain `shop.example.org`, over TLS with `client`.
async fn shop(
    gw: &Gateway,
    headers: &[(&str, &str)],
    client: &Arc<rustls::ClientConfig>,
) -> Result<TlsResp, String> {
    get(
        gw.https,
        "shop.example.org",
        "/api/orders",
        headers,
        client.clone(),
    )
    .await
}

/// What every on-demand test starts from: pebble, an upstream, the backend's ask endpoint answering
/// `allowed` for each `(domain, tenant)` of `owned`, and a gateway whose `[tls.acme]` orders over
/// HTTP-01 into a directory (plus `acme`) and whose `[tls.on_demand]` asks that endpoint (plus
/// `on_demand`); `before` goes before `[tls.acme]`, `routes` after it.
struct OnDemandEnv {
    pebble: Pebble,
    up: TestUpstream,
    ask: DocServer,
    gw: Gateway,
    client: Arc<rustls::ClientConfig>,
    _storage: tempfile::TempDir,
}

struct OnDemandSpec<'a> {
    owned: &'a [(&'a str, &'a str)],
    before: &'a str,
    acme: &'a str,
    on_demand: &'a str,
    routes: &'a str,
    env: &'a [(&'a str, &'a str)],
    alpn: &'a [&'a [u8]],
}

async fn on_demand_env(spec: OnDemandSpec<'_>) -> OnDemandEnv {
    on_demand_env_valid(spec, 3600).await
}

/// [`on_demand_env`] with certificates valid `validity` seconds.
async fn on_demand_env_valid(spec: OnDemandSpec<'_>, validity: u64) -> OnDemandEnv {
    let ports = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(ports.0, ports.1, validity).await;
    let up = TestUpstream::start("u");
    let storage = tempfile::tempdir().expect("tempdir");
    // The backend's contract for GET /internal/tenant-domains/{host}.
    let ask = DocServer::start().await;
    for (host, tenant) in spec.owned {
        ask.set(
            &format!("/internal/tenant-domains/{host}"),
            200,
            &format!(r#"{{"allowed":true,"tenant":"{tenant}"}}"#),
        );
    }
    let body = acme_toml(
        &pebble,
        &up,
        spec.before,
        &format!(
            "challenge = \"http-01\"\nstorage = \"{storage}\"\n{acme}\n[tls.on_demand]\n\
             ask = \"http://{ask}/internal/tenant-domains/{{host}}\"\n{on_demand}",
            storage = storage.path().display(),
            acme = spec.acme,
            ask = ask.addr,
            on_demand = spec.on_demand,
        ),
        spec.routes,
    );
    let gw = Gateway::start_on(
        ports,
        tempfile::tempdir().expect("tempdir"),
        &body,
        spec.env,
    )
    .await;
    let root = pebble.issuing_root().await;
    let client = client_config(&root, spec.alpn);
    OnDemandEnv {
        pebble,
        up,
        ask,
        gw,
        client,
        _storage: storage,
    }
}

#[tokio::test]
async fn on_demand_certificates_only_for_domains_an_active_tenant_owns() {
    // Partners' integrations with client certificates, on every tenant host — a tenant's own domain
    // included.
    let partners = Pki::new("Partners CA");
    let partners_dir = tempfile::tempdir().expect("tempdir");
    let partners_ca = partners.write(partners_dir.path(), "partners.pem");
    let routes = format!(
        r#"[[routes]]
name = "tenant-api"
hosts = ["*.aggios.test"]
path_prefix = "/api"
auth = "jwt_tenant"
upstream = "u"

[[routes]]
name = "partners"
hosts = ["*.aggios.test"]
path_prefix = "/partner"
auth = "client_cert"
client_auth = {{ ca = "{partners_ca}", tenant_uri = "spiffe://partners.test/tenant/{{tenant}}" }}
upstream = "u"
"#
    );
    let env = on_demand_env(OnDemandSpec {
        owned: &[("shop.example.org", "acme")],
        before: "[auth.jwt]\nsecret_env = \"GW_SECRET\"\n\n[tls]\nhandshake_timeout = \"30s\"",
        acme: "order_timeout = \"20s\"",
        on_demand: "wait = \"20s\"\nmax_concurrent_orders = 2\norders_per_minute = 5",
        routes: &routes,
        env: &[("GW_SECRET", SECRET)],
        alpn: &[b"h2", b"http/1.1"],
    })
    .await;
    let OnDemandEnv {
        pebble,
        up,
        ask,
        gw,
        client,
        ..
    } = &env;

    // A domain no tenant owns: refused at the handshake, asked once (the no is cached), never ordered.
    for _ in 0..3 {
        let err = connect(gw.https, "evil.example.org", client.clone()).await;
        assert!(
            err.is_err(),
            "a certificate was served for a name nobody owns"
        );
    }
    assert_eq!(ask.hits(), 1, "the answer was not cached");
    assert_eq!(
        gw.metric("gateway_tls_on_demand_total{decision=\"denied\"}")
            .await,
        3.0
    );
    assert_eq!(pebble.orders(), 0, "an order for a name nobody owns");

    // An active tenant's domain: the first handshake waits for its certificate.
    let hits = up.hits.load(std::sync::atomic::Ordering::SeqCst);
    let bearer = Token::new(SECRET, "acme").bearer();
    let r = shop(gw, &[("authorization", &bearer)], client)
        .await
        .unwrap_or_else(|e| panic!("first handshake on a tenant's domain: {e}\n{}", gw.stderr()));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["x-tenant-id"],
        serde_json::json!(["acme"])
    );
    assert_eq!(
        r.json()["headers"]["x-forwarded-host"][0],
        "shop.example.org"
    );
    assert_eq!(pebble.orders(), 1);
    assert_eq!(
        gw.metric("gateway_tls_on_demand_total{decision=\"issued\"}")
            .await,
        1.0
    );
    // Routed as that tenant's: tenant binding applies to the domain.
    let other = Token::new(SECRET, "globex").bearer();
    let r = shop(gw, &[("authorization", &other)], client)
        .await
        .expect("request");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "tenant_mismatch");
    let r = shop(gw, &[], client).await.expect("request");
    assert_eq!(r.status, 401);
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), hits + 1);
    // Later handshakes are served from the store: no new order, no new ask.
    let asks = ask.hits();
    let r = shop(gw, &[("authorization", &bearer)], client)
        .await
        .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(pebble.orders(), 1);
    assert_eq!(ask.hits(), asks);

    // The tenant's own domain is routed as its host, so its handshakes ask for a client certificate
    // as that host's do: a partner of this tenant is served, a client without one refused 401 (not
    // 421, which a handshake that never asked would get).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (cert, key, _) = partners.client(
        "acme integration",
        &["spiffe://partners.test/tenant/acme"],
        (now - 3600, now + 3600),
        7,
    );
    let root = pebble.issuing_root().await;
    let partner = client_config_with_cert(&root, &[b"h2", b"http/1.1"], &cert, &key, false);
    let r = get(
        gw.https,
        "shop.example.org",
        "/partner/orders",
        &[],
        partner,
    )
    .await
    .expect("partner request");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["headers"]["x-tenant-id"],
        serde_json::json!(["acme"])
    );
    assert!(r.json()["headers"]["x-auth-client-cert-sha256"][0].is_string());
    let r = get(
        gw.https,
        "shop.example.org",
        "/partner/orders",
        &[],
        client.clone(),
    )
    .await
    .expect("request without a certificate");
    assert_eq!(
        (r.status, r.error_code()),
        (401, "client_cert_required".to_string())
    );
}

/// #23 point 2: an anonymous client hammering a tenant's domain whose validation fails (its DNS points
/// elsewhere) gets one order per backoff step for it, and another tenant's new domain is still issued
/// at its first handshake. Before the fix every handshake made an order until `orders_per_minute` was
/// spent, and the other tenant's domain was then refused (`throttled`).
#[tokio::test]
async fn a_failing_tenant_domain_spends_no_other_tenants_orders() {
    let env = on_demand_env(OnDemandSpec {
        owned: &[("fail.example.org", "bad"), ("shop.example.org", "acme")],
        before: "[tls]\nhandshake_timeout = \"30s\"",
        acme: "order_timeout = \"15s\"\nretry_initial = \"3s\"\nretry_max = \"6s\"",
        on_demand: "wait = \"15s\"\nmax_concurrent_orders = 2\norders_per_minute = 5",
        routes: PUBLIC_ROUTE,
        env: &[],
        alpn: &[b"http/1.1"],
    })
    .await;
    let OnDemandEnv {
        pebble, gw, client, ..
    } = &env;
    // Pebble validates fail.example.org at an address where nothing listens.
    pebble.add_a("fail.example.org", "127.0.0.2").await;
    let retry_initial = Duration::from_secs(3);

    // The first handshake for the failing name waits for its order, which fails.
    let t0 = Instant::now();
    assert!(connect(gw.https, "fail.example.org", client.clone())
        .await
        .is_err());
    within(
        Duration::from_secs(30),
        "the failing name's first order failed",
        gw,
        pebble,
        || async {
            gw.metric("gateway_tls_on_demand_total{decision=\"order_failed\"}")
                .await
                >= 1.0
        },
    )
    .await;
    // Then a client hammers it.
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let hammer = {
        let (stop, handshakes, client, port) =
            (stop.clone(), handshakes.clone(), client.clone(), gw.https);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = connect(port, "fail.example.org", client.clone()).await;
                handshakes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    eventually("the failing name is hammered", || async {
        handshakes.load(Ordering::SeqCst) >= 30
    })
    .await;
    // Another tenant's new domain: issued at its first handshake.
    let r = get(gw.https, "shop.example.org", "/", &[], client.clone())
        .await
        .unwrap_or_else(|e| panic!("another tenant's domain refused: {e}\n{}", gw.stderr()));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        gw.metric("gateway_tls_on_demand_total{decision=\"issued\"}")
            .await,
        1.0
    );
    stop.store(true, Ordering::SeqCst);
    hammer.await.expect("hammer");
    let elapsed = t0.elapsed();
    let failing_orders = pebble.orders() - 1;
    let steps = 1 + (elapsed.as_secs_f64() / retry_initial.as_secs_f64()) as usize;
    assert!(
        failing_orders <= steps,
        "{failing_orders} orders for the failing name in {elapsed:?} ({} handshakes): more than one per \
         backoff step ({steps})",
        handshakes.load(Ordering::SeqCst)
    );
    assert!(
        gw.metric("gateway_tls_on_demand_total{decision=\"backoff\"}")
            .await
            >= 20.0,
        "the hammering handshakes were not held back by the name's backoff"
    );
    assert_eq!(
        gw.metric("gateway_tls_on_demand_total{decision=\"throttled\"}")
            .await,
        0.0
    );
}

/// #23 point 2, the budgets: one tenant's domains get `tenant_orders_per_hour` orders (its second domain is
/// refused, `tenant_throttled`, while another tenant's is issued), and all on-demand orders together stop
/// at `orders_per_hour` (`throttled`), leaving the rest of the account's budget to the configured names.
#[tokio::test]
async fn on_demand_orders_keep_to_the_tenant_and_hourly_budgets() {
    let env = on_demand_env(OnDemandSpec {
        owned: &[
            ("a1.example.org", "acme"),
            ("a2.example.org", "acme"),
            ("g1.example.org", "globex"),
            ("i1.example.org", "initech"),
        ],
        before: "[tls]\nhandshake_timeout = \"30s\"",
        acme: "order_timeout = \"20s\"",
        on_demand: "wait = \"20s\"\ntenant_orders_per_hour = 1\norders_per_hour = 2",
        routes: PUBLIC_ROUTE,
        env: &[],
        alpn: &[b"http/1.1"],
    })
    .await;
    let OnDemandEnv {
        pebble, gw, client, ..
    } = &env;
    let decision = |d: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(&format!("gateway_tls_on_demand_total{{decision=\"{d}\"}}"))
                .await
        }
    };

    let served = |host: &'static str| {
        let client = client.clone();
        let port = gw.https;
        async move { get(port, host, "/", &[], client).await.map(|r| r.status) }
    };
    assert_eq!(served("a1.example.org").await, Ok(200), "{}", gw.stderr());
    // acme's second domain: its tenant's budget is spent.
    assert!(served("a2.example.org").await.is_err());
    assert_eq!(decision("tenant_throttled").await, 1.0);
    // Another tenant's domain is issued: the second order of the hour.
    assert_eq!(served("g1.example.org").await, Ok(200), "{}", gw.stderr());
    // A third tenant's: the hourly cap of on-demand orders is reached.
    assert!(served("i1.example.org").await.is_err());
    assert_eq!(decision("throttled").await, 1.0);
    assert_eq!(decision("issued").await, 2.0);
    assert_eq!(pebble.orders(), 2, "orders past the budgets reached the CA");
}

/// #32 point 1: `max_concurrent_orders` and `orders_per_minute` bound what reaches the CA. Two tenants'
/// first handshakes at the same moment with one order slot: one is ordered, the other refused
/// (`throttled`) while that order runs; then with two orders a minute, a third tenant's domain is the
/// second order and a fourth's is refused. Pebble saw exactly the orders the bounds let through (each
/// name belongs to another tenant and the hourly budgets are far off, so only these two bounds refuse).
#[tokio::test]
async fn on_demand_orders_keep_to_the_concurrency_and_per_minute_bounds() {
    let env = on_demand_env(OnDemandSpec {
        owned: &[
            ("b1.example.org", "acme"),
            ("b2.example.org", "globex"),
            ("b3.example.org", "initech"),
            ("b4.example.org", "hooli"),
        ],
        before: "[tls]\nhandshake_timeout = \"30s\"",
        acme: "order_timeout = \"20s\"",
        on_demand: "wait = \"20s\"\nmax_concurrent_orders = 1\norders_per_minute = 2",
        routes: PUBLIC_ROUTE,
        env: &[],
        alpn: &[b"http/1.1"],
    })
    .await;
    let OnDemandEnv {
        pebble, gw, client, ..
    } = &env;
    let served = |host: &'static str| {
        let client = client.clone();
        let port = gw.https;
        async move { get(port, host, "/", &[], client).await.map(|r| r.status) }
    };
    let throttled = || gw.metric("gateway_tls_on_demand_total{decision=\"throttled\"}");

    // Both at once: the slot is taken by one order, which takes pebble far longer than the other's ask.
    let (one, two) = tokio::join!(served("b1.example.org"), served("b2.example.org"));
    let ok = [&one, &two].iter().filter(|r| matches!(r, Ok(200))).count();
    assert_eq!(
        ok,
        1,
        "one order at a time: {one:?} {two:?}\n{}",
        gw.stderr()
    );
    assert_eq!(throttled().await, 1.0, "{one:?} {two:?}");
    assert_eq!(pebble.orders(), 1, "a second order ran beside the first");

    // The slot is free again: a third tenant's domain is the minute's second order, a fourth's is over it.
    assert_eq!(served("b3.example.org").await, Ok(200), "{}", gw.stderr());
    assert!(
        served("b4.example.org").await.is_err(),
        "a third order in the minute"
    );
    assert_eq!(throttled().await, 2.0);
    assert_eq!(
        gw.metric("gateway_tls_on_demand_total{decision=\"issued\"}")
            .await,
        2.0
    );
    assert_eq!(pebble.orders(), 2, "orders past the bounds reached the CA");
}

/// #32 point 1, renewals of tenants' domains: the ask endpoint failing refuses a new domain's handshake
/// (`ask_failed`, nothing ordered); at renewal time a domain its tenant no longer owns is dropped (not
/// renewed, not served as the tenant's), while a domain whose ask fails then is kept and renewed once the
/// endpoint answers again — it was dropped like an unowned one before (a backend outage at renewal time
/// cost every tenant domain due then its renewals).
#[tokio::test]
async fn on_demand_renewals_drop_unowned_domains_and_wait_out_ask_failures() {
    let env = on_demand_env_valid(
        OnDemandSpec {
            owned: &[("gone.example.org", "acme"), ("kept.example.org", "globex")],
            before: "[tls]\nhandshake_timeout = \"30s\"",
            acme: "order_timeout = \"20s\"\nretry_initial = \"2s\"\nretry_max = \"4s\"",
            on_demand: "wait = \"20s\"",
            routes: PUBLIC_ROUTE,
            env: &[],
            alpn: &[b"http/1.1"],
        },
        // 30 s certificates: renewal falls due 18.5-20 s after issuance.
        30,
    )
    .await;
    let OnDemandEnv {
        pebble,
        gw,
        client,
        ask,
        ..
    } = &env;
    let served = |host: &'static str| {
        let client = client.clone();
        let port = gw.https;
        async move { get(port, host, "/", &[], client).await }
    };
    let decision = |d: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(&format!("gateway_tls_on_demand_total{{decision=\"{d}\"}}"))
                .await
        }
    };
    let ask_path = |host: &str| format!("/internal/tenant-domains/{host}");

    // The ask endpoint failing: the handshake is refused, nothing is ordered.
    ask.set(&ask_path("down.example.org"), 500, "");
    assert!(served("down.example.org").await.is_err());
    assert_eq!(decision("ask_failed").await, 1.0);
    assert_eq!(pebble.orders(), 0);

    served("gone.example.org")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr()));
    let kept = served("kept.example.org")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr()));
    let issued_at = std::time::Instant::now();
    assert_eq!(pebble.orders(), 2);

    // Then acme gives its domain up, and the ask endpoint fails for globex's.
    // (404: no active tenant owns it, the contract of shared/DESIGN.md)
    ask.set(&ask_path("gone.example.org"), 404, "");
    ask.set(&ask_path("kept.example.org"), 503, "");
    within(
        Duration::from_secs(60),
        "the renewal pass asked about both and dropped the unowned one",
        gw,
        pebble,
        || async {
            gw.stderr()
                .contains("not renewing: no active tenant owns this domain any more")
                && gw
                    .stderr()
                    .contains("renewal waits: the ask endpoint did not answer")
        },
    )
    .await;
    assert!(
        issued_at.elapsed() >= Duration::from_secs(15),
        "renewal asked {:?} after issuance, before it was due",
        issued_at.elapsed()
    );
    assert_eq!(pebble.orders(), 2, "a renewal was ordered without a yes");
    assert!(
        !gw.stderr()
            .lines()
            .any(|l| l.contains("not renewing") && l.contains("kept.example.org")),
        "a failed ask dropped the domain"
    );

    // The endpoint answers again: globex's domain is renewed and served with the new certificate.
    ask.set(
        &ask_path("kept.example.org"),
        200,
        r#"{"allowed":true,"tenant":"globex"}"#,
    );
    within(
        Duration::from_secs(60),
        "the kept domain renewed",
        gw,
        pebble,
        || async { pebble.orders() == 3 },
    )
    .await;
    eventually("the renewed certificate served", || async {
        served("kept.example.org")
            .await
            .is_ok_and(|r| r.serial != kept.serial)
    })
    .await;
    assert_eq!(pebble.orders(), 3, "the dropped domain was renewed");
}

/// #23 point 5: 20 000 handshakes for random SNI names leave the ask count and the answer cache
/// bounded: one client gets `client_asks_per_minute` asks (a burst, then one a second), the cache
/// keeps at most `cache_size` names, and every other handshake is refused without asking. Before the
/// fix every name was asked once and its `no` kept forever.
#[tokio::test]
async fn random_sni_names_leave_asks_and_cache_bounded() {
    let env = on_demand_env(OnDemandSpec {
        owned: &[],
        before: "[tls]\nhandshake_timeout = \"10s\"",
        acme: "",
        on_demand: "cache_size = 20\nasks_per_second = 1000\nclient_asks_per_minute = 60",
        routes: PUBLIC_ROUTE,
        env: &[],
        alpn: &[b"http/1.1"],
    })
    .await;
    let OnDemandEnv {
        ask, gw, client, ..
    } = &env;
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    const NAMES: usize = 20_000;
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (next, client, port) = (next.clone(), client.clone(), gw.https);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= NAMES {
                        break;
                    }
                    let name = format!("r{i}-{}.example.org", fastrand::u32(..));
                    assert!(
                        connect(port, &name, client.clone()).await.is_err(),
                        "a certificate for a random name"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = t0.elapsed().as_secs() + 1;
    let asks = ask.hits();
    assert!(
        asks as u64 <= 60 + elapsed,
        "{asks} asks in {elapsed} s: more than the client's budget (60 + 1/s)"
    );
    assert!(asks >= 60, "the burst was not asked: {asks}");
    let cached = gw.metric("gateway_tls_on_demand_cached_answers").await;
    assert!(cached <= 20.0, "{cached} answers cached, over cache_size");
    let throttled = gw
        .metric("gateway_tls_on_demand_total{decision=\"ask_throttled\"}")
        .await;
    assert_eq!(
        throttled as usize + asks,
        NAMES,
        "every handshake was either asked or refused without asking"
    );
}

#[tokio::test]
async fn two_replicas_sharing_redis_order_once_and_both_serve() {
    let redis = RedisServer::start().await;
    let mut conn = redis.conn().await;
    let a_ports = (free_port(), free_port(), free_port());
    let b_ports = (free_port(), free_port(), free_port());
    // Pebble validates on replica A's ports; whichever replica orders, A must answer.
    let pebble = Pebble::start(a_ports.0, a_ports.1, 3600).await;
    let up = TestUpstream::start("u");
    let name = "shared.aggios.test";
    // A replica that died holding the lock: nobody orders until its lease runs out.
    let lock = format!("aggios:acme:lock:{name}");
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("dead-replica")
        .arg("PX")
        .arg(4000)
        .query_async(&mut conn)
        .await
        .expect("set lock");
    let body = acme_toml(
        &pebble,
        &up,
        SHARED_STORE,
        &format!(
            r#"domains = ["{name}"]
challenge = "http-01"
storage = "redis"
storage_key_env = "GW_ACME_KEY"
lock_lease = "3s"
retry_initial = "1s"
retry_max = "2s""#
        ),
        PUBLIC_ROUTE,
    );
    // The sealing key as base64 (the other test gives it as hex).
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let a = replica(a_ports, &body, &redis, key).await;
    let b = replica(b_ports, &body, &redis, key).await;
    // While the dead replica's lease lasts, no order is made.
    loop {
        let owner: Option<String> = redis::cmd("GET")
            .arg(&lock)
            .query_async(&mut conn)
            .await
            .expect("get lock");
        if owner.as_deref() != Some("dead-replica") {
            break;
        }
        assert_eq!(
            pebble.orders(),
            0,
            "ordered while another replica held the lock"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for gw in [&a, &b] {
        until_served(
            gw,
            &pebble,
            &[name],
            60,
            "both replicas serve the certificate",
        )
        .await;
    }
    assert_eq!(pebble.orders(), 1, "one order for one name across replicas");
    let root = pebble.issuing_root().await;
    let client = client_config(&root, &[b"http/1.1"]);
    let ra = get(a.https, name, "/", &[], client.clone())
        .await
        .expect("HTTPS on A");
    let rb = get(b.https, name, "/", &[], client.clone())
        .await
        .expect("HTTPS on B");
    assert_eq!((ra.status, rb.status), (200, 200));
    assert_eq!(
        ra.serial, rb.serial,
        "the replicas serve different certificates"
    );
    let orders = a
        .metric("gateway_acme_orders_total{result=\"success\"}")
        .await
        + b.metric("gateway_acme_orders_total{result=\"success\"}")
            .await;
    assert_eq!(orders, 1.0);

    // The private key is sealed in Redis; the chain is not secret.
    let stored: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("aggios:acme:cert:{name}"))
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    assert!(stored["chain"].contains("BEGIN CERTIFICATE"));
    assert!(
        !stored["key"].contains("PRIVATE KEY"),
        "private key stored in clear"
    );
    // Any replica answers a challenge token another one published.
    let _: () = redis::cmd("SET")
        .arg("aggios:acme:http01:tok-from-elsewhere")
        .arg("tok-from-elsewhere.thumbprint")
        .query_async(&mut conn)
        .await
        .expect("set token");
    for gw in [&a, &b] {
        let r = gw
            .get(name, "/.well-known/acme-challenge/tok-from-elsewhere")
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"tok-from-elsewhere.thumbprint");
    }
}

/// Replica B orders a name that replica A does not list; the CA validates on A, which answers from the
/// shared storage, and then serves B's certificate too.
async fn challenge_answered_by_the_other_replica(challenge: &str) {
    let redis = RedisServer::start().await;
    let a_ports = (free_port(), free_port(), free_port());
    let b_ports = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(a_ports.0, a_ports.1, 3600).await;
    let up = TestUpstream::start("u");
    let config = |domains: &str| {
        acme_toml(
            &pebble,
            &up,
            SHARED_STORE,
            &format!(
                r#"domains = [{domains}]
challenge = "{challenge}"
storage = "redis"
storage_key_env = "GW_ACME_KEY"
retry_initial = "1s"
retry_max = "2s""#
            ),
            PUBLIC_ROUTE,
        )
    };
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let a = replica(a_ports, &config("\"a.aggios.test\""), &redis, key).await;
    let b = replica(b_ports, &config("\"b.aggios.test\""), &redis, key).await;
    within(
        Duration::from_secs(60),
        "B's certificate issued",
        &b,
        &pebble,
        || async {
            served_names(&b)
                .await
                .contains(&"b.aggios.test".to_string())
        },
    )
    .await;
    assert_eq!(
        b.metric("gateway_acme_orders_total{result=\"success\"}")
            .await,
        1.0
    );
    within(
        Duration::from_secs(30),
        "A serves B's certificate",
        &a,
        &pebble,
        || async {
            served_names(&a)
                .await
                .contains(&"b.aggios.test".to_string())
        },
    )
    .await;
    let root = pebble.issuing_root().await;
    let r = https_get(
        a.https,
        "b.aggios.test",
        "/",
        &root,
        "A serves the certificate B ordered",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn http01_answered_by_the_replica_that_did_not_order() {
    challenge_answered_by_the_other_replica("http-01").await;
}

#[tokio::test]
async fn tls_alpn01_answered_by_the_replica_that_did_not_order() {
    challenge_answered_by_the_other_replica("tls-alpn-01").await;
}

fn wildcard_config(up: &TestUpstream, pebble: &Pebble, storage: &Path, dns: &str) -> String {
    acme_toml(
        pebble,
        up,
        "",
        &format!(
            r#"domains = ["*.aggios.test"]
challenge = "dns-01"
dns = {dns}
storage = "{storage}""#,
            storage = storage.display()
        ),
        PUBLIC_ROUTE,
    )
}

/// A wildcard certificate serves every tenant's host, verified against pebble's root.
async fn wildcard_serves_tenants(gw: &Gateway, pebble: &Pebble) {
    until_served(
        gw,
        pebble,
        &["*.aggios.test"],
        60,
        "the wildcard certificate",
    )
    .await;
    let root = pebble.issuing_root().await;
    for host in ["acme.aggios.test", "globex.aggios.test"] {
        let r = get(gw.https, host, "/", &[], client_config(&root, &[b"h2"]))
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn dns01_wildcard_through_rfc2136_with_tsig() {
    let knot = Knot::start("aggios.test").await;
    let ports = (free_port(), free_port(), free_port());
    // Pebble looks the TXT record up on the Knot server the gateway updates.
    let pebble = Pebble::start_with_dns(ports.0, ports.1, 3600, Some(knot.port)).await;
    let up = TestUpstream::start("u");
    let storage = tempfile::tempdir().expect("tempdir");
    let dns = format!(
        r#"{{ provider = "rfc2136", server = "127.0.0.1:{}", zone = "aggios.test", key_name = "{}", algorithm = "hmac-sha256", secret_env = "GW_TSIG" }}"#,
        knot.port, knot.key_name
    );
    let body = wildcard_config(&up, &pebble, storage.path(), &dns);
    let gw = Gateway::start_on(
        ports,
        tempfile::tempdir().expect("tempdir"),
        &body,
        &[("GW_TSIG", knot.secret.as_str())],
    )
    .await;
    wildcard_serves_tenants(&gw, &pebble).await;
    assert!(
        knot.log().contains("_acme-challenge") || knot.log().contains("DDNS"),
        "{}",
        knot.log()
    );
    // The record is withdrawn once the order is done.
    within(
        Duration::from_secs(10),
        "the TXT record withdrawn",
        &gw,
        &pebble,
        || async { knot.query("TXT", "_acme-challenge.aggios.test").is_empty() },
    )
    .await;

    // A wrong TSIG key is refused by the server, and the order fails with that reason.
    let bad = Knot::start("aggios.test").await;
    let ports = (free_port(), free_port(), free_port());
    let pebble2 = Pebble::start_with_dns(ports.0, ports.1, 3600, Some(bad.port)).await;
    let storage2 = tempfile::tempdir().expect("tempdir");
    let dns = format!(
        r#"{{ provider = "rfc2136", server = "127.0.0.1:{}", zone = "aggios.test", key_name = "{}", secret_env = "GW_TSIG" }}"#,
        bad.port, bad.key_name
    );
    let gw2 = Gateway::start_on(
        ports,
        tempfile::tempdir().expect("tempdir"),
        &wildcard_config(&up, &pebble2, storage2.path(), &dns),
        &[("GW_TSIG", knot.secret.as_str())],
    )
    .await;
    within(
        Duration::from_secs(30),
        "the refused update reported",
        &gw2,
        &pebble2,
        || async { gw2.stderr().contains("NOTAUTH") },
    )
    .await;
    assert!(
        gw2.metric("gateway_acme_orders_total{result=\"failure\"}")
            .await
            >= 1.0
    );
    assert!(served_names(&gw2).await.is_empty());
}

#[tokio::test]
async fn dns01_wildcard_through_an_exec_hook() {
    let ports = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(ports.0, ports.1, 3600).await;
    let up = TestUpstream::start("u");
    let storage = tempfile::tempdir().expect("tempdir");
    // The hook publishes through pebble-challtestsrv's API (the DNS pebble asks) and logs its calls.
    let hook_dir = tempfile::tempdir().expect("tempdir");
    let hook = hook_dir.path().join("dns-hook");
    let calls = hook_dir.path().join("calls.log");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nset -e\necho \"$1 $2\" >> {calls}\ncase \"$1\" in\n  present) curl -sf -X POST -d \"{{\\\"host\\\":\\\"$2\\\",\\\"value\\\":\\\"$3\\\"}}\" http://127.0.0.1:{m}/set-txt ;;\n  cleanup) sleep 2; curl -sf -X POST -d \"{{\\\"host\\\":\\\"$2\\\"}}\" http://127.0.0.1:{m}/clear-txt ;;\n  *) exit 2 ;;\nesac\n",
            calls = calls.display(),
            m = pebble.dns_management
        ),
    )
    .expect("hook");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let dns = format!(
        r#"{{ provider = "exec", command = ["{}"] }}"#,
        hook.display()
    );
    let gw = Gateway::start_on(
        ports,
        tempfile::tempdir().expect("tempdir"),
        &wildcard_config(&up, &pebble, storage.path(), &dns),
        &[],
    )
    .await;
    // The hook's cleanup takes 2 s: the certificate is served only once the order has ended, cleanup
    // included, and whoever sees it served sees the order counted (CI once read 0 orders right after
    // seeing a certificate served, when the counting came after a Redis round trip).
    until_served(
        &gw,
        &pebble,
        &["*.aggios.test"],
        60,
        "the wildcard certificate",
    )
    .await;
    assert_eq!(
        gw.metric("gateway_acme_orders_total{result=\"success\"}")
            .await,
        1.0,
        "a certificate served before its order was counted"
    );
    let calls_now = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        calls_now.contains("cleanup"),
        "served before the order's cleanup: {calls_now}"
    );
    wildcard_serves_tenants(&gw, &pebble).await;
    within(
        Duration::from_secs(10),
        "the hook's cleanup call",
        &gw,
        &pebble,
        || async {
            std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .lines()
                .count()
                >= 2
        },
    )
    .await;
    let log = std::fs::read_to_string(&calls).expect("calls");
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "present _acme-challenge.aggios.test.",
            "cleanup _acme-challenge.aggios.test."
        ]
    );
}

/// A CA that requires External Account Binding: the gateway registers with `[tls.acme] eab` and gets its
/// certificate; without it, the CA refuses the account and no certificate is served.
#[tokio::test]
async fn external_account_binding() {
    // pebble's example key format: base64url, no padding.
    let hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let ports = (free_port(), free_port(), free_port());
    let pebble = Pebble::start_with_eab(ports.0, ports.1, "kid-1", hmac).await;
    let up = TestUpstream::start("u");
    let storage = tempfile::tempdir().expect("tempdir");
    let plain = config(&up, &pebble, storage.path(), "eab.aggios.test", "http-01");
    let with_eab = plain.replace(
        "[tls.acme]\n",
        "[tls.acme]\neab = { kid = \"kid-1\", hmac_env = \"GW_EAB\" }\n",
    );
    let gw = Gateway::start_on(
        ports,
        tempfile::tempdir().expect("tempdir"),
        &with_eab,
        &[("GW_EAB", hmac)],
    )
    .await;
    until_served(
        &gw,
        &pebble,
        &["eab.aggios.test"],
        60,
        "the certificate issued with EAB",
    )
    .await;
    let root = pebble.issuing_root().await;
    let r = https_get(
        gw.https,
        "eab.aggios.test",
        "/",
        &root,
        "HTTPS with the EAB-issued certificate",
    )
    .await;
    assert_eq!(r.status, 200);

    // The same CA, an account without a binding: refused, no certificate.
    let (ports, _) = gw.stop();
    let storage2 = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_on(
        ports,
        tempfile::tempdir().expect("tempdir"),
        &config(&up, &pebble, storage2.path(), "eab.aggios.test", "http-01"),
        &[],
    )
    .await;
    within(
        Duration::from_secs(30),
        "the CA refusing the account",
        &gw,
        &pebble,
        || async { gw.stderr().contains("externalAccountRequired") },
    )
    .await;
    assert!(served_names(&gw).await.is_empty());
    assert!(
        gw.metric("gateway_acme_orders_total{result=\"failure\"}")
            .await
            >= 1.0
    );
}

/// #29 point 1: HTTP/3 serves the live store's ACME certificates. A tenant's domain asked first over
/// QUIC is refused at the QUIC handshake and not ordered there (clients learn of HTTP/3 from an
/// `Alt-Svc` on HTTPS over TCP, whose handshake orders it); once the TCP handshake has it issued, QUIC
/// serves the same certificate.
#[tokio::test]
async fn http3_serves_on_demand_certificates_once_issued_over_tcp() {
    let env = on_demand_env(OnDemandSpec {
        owned: &[("shop.example.org", "acme")],
        before: "[h3]\n\n[tls]\nhandshake_timeout = \"30s\"",
        acme: "order_timeout = \"20s\"",
        on_demand: "wait = \"20s\"",
        routes: PUBLIC_ROUTE,
        env: &[],
        alpn: &[b"http/1.1"],
    })
    .await;
    let OnDemandEnv {
        pebble, gw, client, ..
    } = &env;
    let root = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(root.path(), pebble.issuing_root().await).expect("root");
    let request =
        serde_json::json!([{"method": "GET", "authority": "shop.example.org", "path": "/"}]);
    let over_quic = || h3_requests(gw.https, "shop.example.org", root.path(), &request, 1);
    let before = over_quic().await;
    assert!(
        before[0].get("error").is_some(),
        "served over QUIC without a certificate: {}",
        before[0]
    );
    assert_eq!(
        pebble.orders(),
        0,
        "the QUIC handshake ordered a certificate"
    );

    let tcp = get(gw.https, "shop.example.org", "/", &[], client.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the TCP handshake on a tenant's domain: {e}\n{}",
                gw.stderr()
            )
        });
    assert_eq!(tcp.status, 200);
    assert_eq!(pebble.orders(), 1);
    let after = over_quic().await;
    let r = after[0]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("QUIC after issuance: {}", after[0]));
    assert_eq!(r[0]["status"], 200, "{}", r[0]);
    let hex = |s: &str| {
        s.replace(':', "")
            .trim_start_matches('0')
            .to_ascii_uppercase()
    };
    assert_eq!(
        hex(after[0]["serial"].as_str().expect("serial")),
        hex(&tcp.serial),
        "QUIC and TCP serve the same issued certificate"
    );
    assert_eq!(pebble.orders(), 1);
}
