//! Asymmetric keys from a JWKS URL: refreshed in the background, the last good set kept through a failing
//! identity provider, each key pinned to its algorithm.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::helpers::*;

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// The fixture JWKS restricted to the given kids.
fn jwks_with(kids: &[&str]) -> String {
    let all: serde_json::Value =
        serde_json::from_slice(&key_file("jwks.json")).expect("jwks fixture");
    let keys: Vec<serde_json::Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    let claims = json!({ "user_id": "u-1", "tenant_id": "acme", "iat": now, "exp": now + 600 });
    format!("Bearer {}", encode(&h, &claims, key).expect("sign"))
}

/// A JWKS from `idp` at `path`, refreshed every `refresh`, protecting `/api` on every tenant's host;
/// `extra_route` is appended.
fn config(
    idp: &DocServer,
    up: &TestUpstream,
    path: &str,
    refresh: &str,
    extra_route: &str,
) -> String {
    format!(
        r#"[tenancy]
base_domains = ["aggios.app"]

[auth.jwt]
jwks_url = "http://{idp}{path}"
jwks_refresh = "{refresh}"

{up}
[[routes]]
name = "api"
hosts = ["*.aggios.app"]
path_prefix = "/api"
auth = "jwt_tenant"
upstream = "u"
{extra_route}"#,
        idp = idp.addr,
        up = upstream_toml("u", &[up], "")
    )
}

async fn status(gw: &Gateway, auth: &str) -> (u16, String) {
    let r = gw
        .get_with("acme.aggios.app", "/api/x", &[("authorization", auth)])
        .await;
    let code = if r.status == 200 {
        String::new()
    } else {
        r.error_code()
    };
    (r.status, code)
}

#[tokio::test]
async fn jwks_keys_refresh_and_the_last_good_set_is_kept() {
    let up = TestUpstream::start("u");
    let idp = DocServer::start().await;
    idp.set("/jwks.json", 200, &jwks_with(&["rsa-1"]));
    let gw = Gateway::start(&config(&idp, &up, "/jwks.json", "1s", "")).await;
    let rsa = EncodingKey::from_rsa_pem(&key_file("rsa.pem")).expect("rsa");
    let ec = EncodingKey::from_ec_pem(&key_file("ec.pk8.pem")).expect("ec");
    let rs_token = token(Algorithm::RS256, "rsa-1", &rsa);
    eventually("the JWKS is fetched", || async {
        status(&gw, &rs_token).await.0 == 200
    })
    .await;

    // Key confusion: HMAC over the RSA public key, naming the RSA key.
    let confused = token(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(&key_file("rsa.pub.pem")),
    );
    let hits = up.hits();
    assert_eq!(
        status(&gw, &confused).await,
        (401, "wrong_algorithm".into())
    );
    assert_eq!(
        status(&gw, &token(Algorithm::ES256, "ec-1", &ec)).await,
        (401, "unknown_kid".into())
    );
    assert_eq!(up.hits(), hits, "a refused token reached the backend");

    // The identity provider fails: the keys already loaded keep working.
    idp.set("/jwks.json", 500, "down");
    let seen = idp.hits();
    eventually("two failed refreshes", || async { idp.hits() >= seen + 2 }).await;
    assert_eq!(status(&gw, &rs_token).await.0, 200);
    idp.set("/jwks.json", 200, "{ not json");
    let seen = idp.hits();
    eventually("a refresh with garbage", || async { idp.hits() > seen }).await;
    assert_eq!(status(&gw, &rs_token).await.0, 200);

    // Rotation at the provider: the new key is taken, the retired one refused.
    idp.set("/jwks.json", 200, &jwks_with(&["ec-1"]));
    let es_token = token(Algorithm::ES256, "ec-1", &ec);
    eventually("the rotated set is used", || async {
        status(&gw, &es_token).await.0 == 200
    })
    .await;
    assert_eq!(status(&gw, &rs_token).await, (401, "unknown_kid".into()));
}

/// A reload keeps the JWKS set of an unchanged URL (no new fetch, even with the provider down); a changed
/// URL starts a new set.
#[tokio::test]
async fn a_reload_keeps_the_set_of_an_unchanged_url() {
    let up = TestUpstream::start("u");
    let idp = DocServer::start().await;
    idp.set("/jwks.json", 200, &jwks_with(&["rsa-1"]));
    idp.set("/other.json", 200, &jwks_with(&["ec-1"]));
    let cfg = |path: &str, extra_route: &str| config(&idp, &up, path, "1h", extra_route);
    let gw = Gateway::start(&cfg("/jwks.json", "")).await;
    let rsa = EncodingKey::from_rsa_pem(&key_file("rsa.pem")).expect("rsa");
    let ec = EncodingKey::from_ec_pem(&key_file("ec.pk8.pem")).expect("ec");
    let rs_token = token(Algorithm::RS256, "rsa-1", &rsa);
    let es_token = token(Algorithm::ES256, "ec-1", &ec);
    eventually("the JWKS is fetched", || async {
        status(&gw, &rs_token).await.0 == 200
    })
    .await;

    // The provider goes down; a reload with the same URL keeps the set it has.
    idp.set("/jwks.json", 500, "down");
    let fetches = idp.hits();
    gw.rewrite(&cfg(
        "/jwks.json",
        "\n[[routes]]\nname = \"new\"\nhosts = [\"new.test\"]\nupstream = \"u\"\n",
    ));
    eventually("the reload is applied", || async {
        gw.get("new.test", "/").await.status == 200
    })
    .await;
    assert_eq!(status(&gw, &rs_token).await.0, 200, "the set was dropped");
    assert_eq!(idp.hits(), fetches, "the reload fetched the set again");

    // Another URL is another set.
    gw.rewrite(&cfg("/other.json", ""));
    eventually("the new URL's set is used", || async {
        status(&gw, &es_token).await.0 == 200
    })
    .await;
    assert_eq!(status(&gw, &rs_token).await, (401, "unknown_kid".into()));
}
