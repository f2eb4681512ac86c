//! The per-request cost of the edge decisions that do not touch the network: route lookup among 10 000
//! tenant routes, JWT verification (HS256) and tenant binding. `cargo bench -p gateway --bench edge_path`.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::config::{parse_host_pattern, AuthPolicy, JwtKey, JwtSettings, RouteSpec, Tenancy};
use gateway::edge::auth::{bind_tenant, JwtVerifier};
use gateway::edge::route::{RequestView, Router};
use http::{HeaderMap, Method};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn route(name: &str, host: &str, tenancy: &Tenancy) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        hosts: vec![parse_host_pattern(host, tenancy).expect("host")],
        path_prefix: "/api".into(),
        methods: None,
        headers: vec![],
        priority: None,
        upstream: Some("backend".into()),
        strip_prefix: false,
        redirect_https: false,
        max_body_bytes: 1 << 20,
        timeouts: Default::default(),
        request_headers: Default::default(),
        response_headers: Default::default(),
        auth: AuthPolicy::JwtTenant,
        cors: None,
        scopes: Vec::new(),
        ip_access: Default::default(),
        compression: None,
        rate_limits: Vec::new(),
        quota: false,
        on_store_error: gateway::config::OnStoreError::Open,
        security: Default::default(),
        canary: None,
        client_auth: None,
        grpc_web: false,
    }
}

fn bench(c: &mut Criterion) {
    let tenancy = Tenancy {
        base_domains: vec!["aggios.app".into()],
        reserved: ["api".to_string()].into_iter().collect(),
    };
    let mut routes = vec![route("wild", "*.aggios.app", &tenancy)];
    for i in 0..10_000 {
        routes.push(route(
            &format!("t{i}"),
            &format!("t{i}.aggios.app"),
            &tenancy,
        ));
    }
    let router = Router::new(&routes, &tenancy);
    let secret = b"bench-secret-bench-secret-bench-secret".to_vec();
    let verifier = JwtVerifier::new(
        &JwtSettings {
            keys: vec![JwtKey {
                kid: None,
                secret: secret.clone(),
            }],
            tenant_claim: "tenant_id".into(),
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            max_token_bytes: 8192,
            jwks: None,
        },
        None,
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({ "user_id": "8c3c6a8e-0000-4000-8000-000000000001", "email": "ann@t5000.test", "tenant_id": "t5000", "role": "admin", "iat": now, "exp": now + 3600, "jti": "j" });
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .expect("sign");
    let headers = HeaderMap::new();

    c.bench_function("route (10 001 routes)", |b| {
        b.iter(|| {
            let view = RequestView {
                host: black_box("t5000.aggios.app"),
                path: "/api/users/me",
                method: &Method::GET,
                headers: &headers,
            };
            black_box(router.lookup(&view).map(|m| m.route))
        })
    });
    c.bench_function("route + verify + bind", |b| {
        b.iter(|| {
            let view = RequestView {
                host: black_box("t5000.aggios.app"),
                path: "/api/users/me",
                method: &Method::GET,
                headers: &headers,
            };
            let m = router.lookup(&view).expect("route");
            let identity = verifier.verify(black_box(&token)).expect("valid");
            black_box(bind_tenant(AuthPolicy::JwtTenant, &identity, m.tenant.as_deref()).is_ok())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
