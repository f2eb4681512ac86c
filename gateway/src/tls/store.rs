//! The live certificate store: SNI → certificate on every handshake, from one atomic snapshot.
//!
//! Certificates come from two sources: static files of `[[tls.certificates]]` (replaced on each config
//! reload) and certificates ordered over ACME (added as they are issued or renewed). Writers rebuild
//! the snapshot under a mutex; handshakes only load it (no lock). Lookup order: the exact name, then
//! the wildcard one label up, then the default certificate. A name none of them covers is refused at
//! the handshake and counted.
//!
//! The store also holds the answers to pending ACME challenges: HTTP-01 tokens (served on the HTTP
//! entrypoint) and TLS-ALPN-01 certificates (served to a ClientHello that offers `acme-tls/1`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::support::cert::Certificate;
use crate::telemetry::metrics::metrics;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Default)]
struct Snapshot {
    exact: HashMap<String, Arc<Certificate>>,
    /// Keyed by the suffix after `*.` (`aggios.app` for `*.aggios.app`).
    wildcard: HashMap<String, Arc<Certificate>>,
    default: Option<Arc<Certificate>>,
}

#[derive(Default)]
struct Sources {
    files: Vec<Arc<Certificate>>,
    default_file: Option<usize>,
    /// ACME certificates by the name they were ordered for.
    acme: HashMap<String, Arc<Certificate>>,
    /// OCSP responses to staple, by the SHA-256 (hex) of the leaf they are about (see `ocsp`).
    staples: HashMap<String, Vec<u8>>,
}

/// `cert` as served: with its OCSP staple when one is held for its leaf.
fn stapled(cert: &Arc<Certificate>, staples: &HashMap<String, Vec<u8>>) -> Arc<Certificate> {
    if staples.is_empty() {
        return Arc::clone(cert);
    }
    use sha2::Digest;
    let staple = cert
        .key
        .cert
        .first()
        .and_then(|leaf| staples.get(&hex::encode(sha2::Sha256::digest(leaf.as_ref()))));
    match staple {
        Some(der) => Arc::new(Certificate {
            key: Arc::new(CertifiedKey {
                cert: cert.key.cert.clone(),
                key: Arc::clone(&cert.key.key),
                ocsp: Some(der.clone()),
            }),
            ..(**cert).clone()
        }),
        None => Arc::clone(cert),
    }
}

/// SNI → certificate, live.
#[derive(Default)]
pub struct CertStore {
    snapshot: ArcSwap<Snapshot>,
    sources: Mutex<Sources>,
    /// TLS-ALPN-01 answers by name (looked at only for `acme-tls/1` handshakes).
    alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 answers: token → key authorization.
    http_challenges: RwLock<HashMap<String, String>>,
    /// Told on every change of the served certificates (the OCSP stapler looks at new ones).
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

impl CertStore {
    /// The https entrypoint's rustls configuration: TLS 1.2 and 1.3 with ring's modern suites (AEAD only,
    /// ECDHE only), certificates from `store`, and a client-certificate verifier where one is given (see
    /// [`super::client_auth`]).
    pub fn server_config(
        store: &Arc<CertStore>,
        client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match client_auth {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_cert_resolver(Arc::clone(store) as Arc<dyn rustls::server::ResolvesServerCert>);
        // Server preference order: a browser offering both gets HTTP/2. `acme-tls/1` is listed so that
        // a validation ClientHello offering only it is not aborted; the resolver answers it with the
        // challenge certificate alone.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(config)
    }

    /// Replaces the static certificates (on start and on every config reload).
    pub fn set_files(&self, files: Vec<Arc<Certificate>>, default: Option<usize>) {
        let mut src = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        src.files = files;
        src.default_file = default;
        self.rebuild(&src);
    }

    /// Adds or replaces the ACME certificate ordered for `name`.
    pub fn set_acme(&self, name: &str, cert: Arc<Certificate>) {
        let mut src = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        src.acme.insert(name.to_string(), cert);
        self.rebuild(&src);
    }

    /// The ACME certificate held for `name`, if any.
    pub fn acme(&self, name: &str) -> Option<Arc<Certificate>> {
        let src = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        src.acme.get(name).cloned()
    }

    /// Every certificate served now (files first, then ACME), for the admin listing.
    pub fn list(&self) -> Vec<Arc<Certificate>> {
        let src = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = src.files.clone();
        let mut acme: Vec<_> = src.acme.iter().collect();
        acme.sort_by(|a, b| a.0.cmp(b.0));
        out.extend(acme.into_iter().map(|(_, c)| Arc::clone(c)));
        out
    }

    /// Staples `response` (DER) to the certificate whose leaf has SHA-256 `leaf` (hex) from the next
    /// handshake on, or stops stapling (`None`).
    pub fn set_staple(&self, leaf: &str, response: Option<Vec<u8>>) {
        let mut src = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match response {
            Some(r) => src.staples.insert(leaf.to_string(), r.clone()) != Some(r),
            None => src.staples.remove(leaf).is_some(),
        };
        if changed {
            self.rebuild(&src);
        }
    }

    /// Forgets the staples of certificates no longer served (leaf SHA-256s not in `leaves`).
    pub fn retain_staples(&self, leaves: &std::collections::HashSet<String>) {
        let mut src = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        src.staples.retain(|k, _| leaves.contains(k));
    }

    /// Resolves after the served certificates changed (at once if they did since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn rebuild(&self, src: &Sources) {
        let mut snap = Snapshot::default();
        let all = src.files.iter().chain(src.acme.values());
        for cert in all {
            let cert = &stapled(cert, &src.staples);
            for name in &cert.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut snap.wildcard, suffix),
                    None => (&mut snap.exact, name.as_str()),
                };
                // Two certificates for one name: the one valid longest wins (a renewed ACME
                // certificate over an older file, or the reverse).
                let better = map
                    .get(key)
                    .is_none_or(|old| old.not_after < cert.not_after);
                if better {
                    map.insert(key.to_string(), Arc::clone(cert));
                }
            }
        }
        snap.default = src
            .default_file
            .and_then(|i| src.files.get(i))
            .map(|c| stapled(c, &src.staples));
        // Expiry per served name; names no longer served drop their series.
        let m = &metrics().tls_cert_expiry;
        m.reset();
        for (name, cert) in &snap.exact {
            m.with_label_values(&[name]).set(cert.not_after as f64);
        }
        for (suffix, cert) in &snap.wildcard {
            m.with_label_values(&[&format!("*.{suffix}")])
                .set(cert.not_after as f64);
        }
        self.snapshot.store(Arc::new(snap));
        self.changed.notify_one();
    }

    /// The certificate that covers `name` (exact or wildcard), not counting the default one.
    pub fn lookup_name(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let snap = self.snapshot.load();
        snap.exact
            .get(name)
            .or_else(|| {
                name.split_once('.')
                    .and_then(|(_, parent)| snap.wildcard.get(parent))
            })
            .map(|c| Arc::clone(&c.key))
    }

    /// The certificate for an SNI name (already lowercase), or the default one.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let snap = self.snapshot.load();
        if let Some(name) = sni {
            if let Some(c) = snap.exact.get(name) {
                return Some(Arc::clone(&c.key));
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(c) = snap.wildcard.get(parent) {
                    return Some(Arc::clone(&c.key));
                }
            }
        }
        snap.default.as_ref().map(|c| Arc::clone(&c.key))
    }

    /// Publishes a TLS-ALPN-01 challenge certificate for `name` (until [`CertStore::clear_challenges`]).
    pub fn set_alpn_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        let mut m = self
            .alpn_challenges
            .write()
            .unwrap_or_else(|p| p.into_inner());
        m.insert(name.to_string(), key);
    }

    /// Whether a TLS-ALPN-01 certificate for `name` is published here.
    pub fn has_alpn_challenge(&self, name: &str) -> bool {
        let m = self
            .alpn_challenges
            .read()
            .unwrap_or_else(|p| p.into_inner());
        m.contains_key(name)
    }

    /// Publishes an HTTP-01 answer.
    pub fn set_http_challenge(&self, token: &str, key_authorization: &str) {
        let mut m = self
            .http_challenges
            .write()
            .unwrap_or_else(|p| p.into_inner());
        m.insert(token.to_string(), key_authorization.to_string());
    }

    /// The key authorization for an HTTP-01 token, while its challenge is pending.
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        let m = self
            .http_challenges
            .read()
            .unwrap_or_else(|p| p.into_inner());
        m.get(token).cloned()
    }

    /// Withdraws the challenge answers of an order once it is done.
    pub fn clear_challenges(&self, names: &[String], tokens: &[String]) {
        {
            let mut m = self
                .alpn_challenges
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for n in names {
                m.remove(n);
            }
        }
        let mut m = self
            .http_challenges
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for t in tokens {
            m.remove(t);
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(|s| s.trim_end_matches('.'));
        // Lowercase without allocating in the common case (clients send lowercase names).
        let lowered;
        let sni = match sni {
            Some(s) if s.bytes().any(|b| b.is_ascii_uppercase()) => {
                lowered = s.to_ascii_lowercase();
                Some(lowered.as_str())
            }
            other => other,
        };
        let acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // A validation handshake gets the challenge certificate or nothing, never a real one.
            let m = self
                .alpn_challenges
                .read()
                .unwrap_or_else(|p| p.into_inner());
            return sni.and_then(|n| m.get(n).cloned());
        }
        let found = self.lookup(sni);
        if found.is_none() {
            let reason = if sni.is_some() {
                "unknown_name"
            } else {
                "no_sni"
            };
            metrics()
                .tls_handshake_refusals
                .with_label_values(&[reason])
                .inc();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::cert::Source;

    fn cert(names: &[&str]) -> Arc<Certificate> {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let c = params.self_signed(&key).expect("sign");
        Arc::new(
            Certificate::from_pem(
                c.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
                Source::Acme,
            )
            .expect("parse"),
        )
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let store = CertStore::default();
        let api = cert(&["api.aggios.test"]);
        let wild = cert(&["*.aggios.test"]);
        let fallback = cert(&["fallback.test"]);
        store.set_files(vec![api.clone(), wild.clone(), fallback.clone()], Some(2));
        let is = |sni: Option<&str>, c: &Arc<Certificate>| {
            let got = store.lookup(sni).expect("a certificate");
            assert!(Arc::ptr_eq(&got, &c.key), "{sni:?}");
        };
        is(Some("api.aggios.test"), &api);
        is(Some("acme.aggios.test"), &wild);
        // A wildcard covers one label only.
        is(Some("a.b.aggios.test"), &fallback);
        is(Some("aggios.test"), &fallback);
        is(None, &fallback);
    }

    #[test]
    fn no_default_means_unknown_names_are_refused() {
        let store = CertStore::default();
        store.set_files(vec![cert(&["api.aggios.test"])], None);
        assert!(store.lookup(Some("other.test")).is_none());
        assert!(store.lookup(None).is_none());
    }

    #[test]
    fn acme_certificates_join_and_the_newest_wins() {
        let store = CertStore::default();
        store.set_files(vec![], None);
        assert!(store.lookup(Some("x.aggios.test")).is_none());
        let first = cert(&["x.aggios.test"]);
        store.set_acme("x.aggios.test", first.clone());
        assert!(Arc::ptr_eq(
            &store.lookup(Some("x.aggios.test")).expect("served"),
            &first.key
        ));
        let mut renewed = (*cert(&["x.aggios.test"])).clone();
        renewed.not_after += 3600;
        let renewed = Arc::new(renewed);
        store.set_acme("x.aggios.test", renewed.clone());
        assert!(Arc::ptr_eq(
            &store.lookup(Some("x.aggios.test")).expect("served"),
            &renewed.key
        ));
        // A config reload replacing the files keeps the ACME certificates.
        store.set_files(vec![], None);
        assert!(store.lookup(Some("x.aggios.test")).is_some());
    }
}
