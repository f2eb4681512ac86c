//! Client certificates on the https entrypoint, for routes with `client_auth`.
//!
//! Pingora's rustls listener takes one client-certificate verifier for every handshake, and the route
//! is only known from the request. So the handshake only *collects*: on the names that a `client_auth`
//! route serves (never elsewhere: a browser asked for a certificate may prompt its user), the
//! certificate request names the union of the routes' CAs as hints, the client proves it holds the
//! key of whatever certificate it sends, and the chain is kept with the connection ([`ClientTls`]).
//! Each request then verifies that chain against its own route's CA and CRLs ([`PeerCert::verify`],
//! cached per connection and configuration): a resumed session, whose chain comes back from the
//! session cache unverified by any handshake, is checked like a new one, and so is a connection opened
//! before a reload that changed the CA.

use std::any::Any;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use pingora::listeners::tls::Acceptor;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::StoresServerSessions;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::{ClientAuthSpec, HostPattern, RouteSpec, TenantUri};

/// The longest chain a client may send (leaf and intermediates).
const MAX_CHAIN: usize = 8;
/// Verification outcomes kept per connection (one per route configuration it was used for).
const VERIFIED_PER_CONNECTION: usize = 4;
/// Sessions kept for resumption on the names that ask for certificates.
const SESSIONS: usize = 4096;

/// What the handshake of a connection on a client-auth name left for its requests (the digest's
/// extension). Its presence says the certificate was asked for.
#[derive(Debug)]
pub struct ClientTls {
    pub cert: Presented,
}

/// The certificate a client sent, if any.
#[derive(Debug)]
pub enum Presented {
    None,
    /// A chain whose leaf is not a certificate we can read: refused wherever it would be used.
    Unreadable,
    Cert(PeerCert),
}

/// A client's certificate chain with what the upstream is told about it.
pub struct PeerCert {
    chain: Vec<CertificateDer<'static>>,
    /// SHA-256 of the leaf's DER, lowercase hex.
    pub sha256: String,
    /// The subject (RFC 4514), escaped for a header field.
    pub subject: String,
    /// The subject alternative names, `DNS:…`, `URI:…`, `email:…`, `IP:…` joined by `, `, escaped for
    /// a header field.
    pub sans: String,
    uris: Vec<String>,
    /// `notAfter`, Unix seconds: a long-lived connection stops being served when its certificate
    /// expires.
    not_after: i64,
    verified: Mutex<Vec<(Arc<dyn ClientCertVerifier>, bool)>>,
}

impl std::fmt::Debug for PeerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCert")
            .field("sha256", &self.sha256)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl PeerCert {
    /// Reads the leaf of `chain`; `None` when it is not an X.509 certificate.
    pub fn parse(chain: &[CertificateDer<'static>]) -> Option<PeerCert> {
        let leaf = chain.first()?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let mut uris = Vec::new();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = x509.subject_alternative_name() {
            use x509_parser::extensions::GeneralName;
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::URI(u) => {
                        sans.push(format!("URI:{u}"));
                        uris.push(u.to_string());
                    }
                    GeneralName::RFC822Name(e) => sans.push(format!("email:{e}")),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => sans.push(format!(
                            "IP:{}",
                            std::net::Ipv4Addr::from([ip[0], ip[1], ip[2], ip[3]])
                        )),
                        16 => {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(ip);
                            sans.push(format!("IP:{}", std::net::Ipv6Addr::from(a)));
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Some(PeerCert {
            chain: chain.to_vec(),
            sha256: hex::encode(Sha256::digest(leaf.as_ref())),
            subject: header_safe(&rfc4514(x509.subject())),
            sans: header_safe(&sans.join(", ")),
            uris,
            not_after: x509.validity().not_after.timestamp(),
            verified: Mutex::new(Vec::new()),
        })
    }

    /// Whether the chain verifies against the route's CA and CRLs now (signatures, validity, the
    /// client-auth usage, revocation). Worked out once per connection and configuration (a reload
    /// builds a new verifier, so a changed CA or CRL is checked again), the expiry on every call.
    pub fn verify(&self, spec: &ClientAuthSpec) -> bool {
        let now = UnixTime::now();
        if now.as_secs() as i64 > self.not_after {
            return false;
        }
        let Ok(mut verified) = self.verified.lock() else {
            return false;
        };
        // Keyed by the verifier itself (held, so its address cannot be reused by a later one).
        if let Some((_, ok)) = verified
            .iter()
            .find(|(v, _)| same_verifier(v, &spec.verifier))
        {
            return *ok;
        }
        let ok = match self.chain.split_first() {
            Some((leaf, intermediates)) => spec
                .verifier
                .verify_client_cert(leaf, intermediates, now)
                .is_ok(),
            None => false,
        };
        if verified.len() >= VERIFIED_PER_CONNECTION {
            verified.remove(0);
        }
        verified.push((Arc::clone(&spec.verifier), ok));
        ok
    }

    /// The tenant the certificate names through `uri`: every URI SAN of that shape must name the same.
    pub fn tenant(&self, uri: &TenantUri) -> Option<&str> {
        let mut found = None;
        for u in &self.uris {
            if let Some(t) = uri.tenant_of(u) {
                match found {
                    None => found = Some(t),
                    Some(f) if f == t => {}
                    Some(_) => return None,
                }
            }
        }
        found
    }
}

fn same_verifier(a: &Arc<dyn ClientCertVerifier>, b: &Arc<dyn ClientCertVerifier>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// The subject as RFC 4514 writes it: last RDN first, `+` between an RDN's attributes, special
/// characters escaped; attribute types by their short names where they have one.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(v) => escape_dn_value(v, &mut out),
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex::encode(attr.as_slice()));
                }
            }
        }
    }
    out
}

fn escape_dn_value(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// `s` with `%` and every byte outside visible ASCII and space percent-encoded: what a certificate
/// holds cannot break the header field it is passed in, and the encoding is unambiguous.
pub fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The handshake's side: asks for a certificate (optional at this point: each route decides), hints
/// the routes' CAs, checks that the client holds the key of the certificate it sent, and accepts the
/// chain for its route to verify.
#[derive(Debug)]
struct Collect {
    hints: Vec<DistinguishedName>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for Collect {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() >= MAX_CHAIN {
            return Err(rustls::Error::General(
                "client certificate chain too long".into(),
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Keeps what the handshake collected with the connection.
struct KeepChain;

#[async_trait::async_trait]
impl TlsAccept for KeepChain {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let cert = match tls.peer_cert_chain_der() {
            None | Some([]) => Presented::None,
            Some(chain) => PeerCert::parse(chain).map_or(Presented::Unreadable, Presented::Cert),
        };
        Some(Arc::new(ClientTls { cert }))
    }
}

/// The handshake for the names `client_auth` routes serve: another rustls configuration, with the same
/// certificates, that asks for a client certificate.
pub struct Offer {
    pub acceptor: Acceptor,
    hosts: Vec<HostPattern>,
    /// A `client_auth` route serves any host (and a connection without SNI).
    any_host: bool,
}

impl Offer {
    /// Whether a handshake for `sni` asks for a certificate.
    pub fn covers(&self, sni: Option<&str>) -> bool {
        if self.any_host {
            return true;
        }
        let Some(name) = sni else {
            return false;
        };
        self.hosts.iter().any(|p| match p {
            HostPattern::Exact { host, .. } => host == name,
            HostPattern::Wildcard { suffix } => name
                .strip_suffix(suffix.as_str())
                .and_then(|l| l.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            HostPattern::Regex { regex } => regex.is_match(name),
        })
    }
}

/// The current [`Offer`] (none while no route has `client_auth`), rebuilt on each config, with one
/// session cache across rebuilds (a reload does not end resumption; each request re-verifies).
pub struct Offers {
    current: ArcSwapOption<Offer>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl Default for Offers {
    fn default() -> Self {
        Offers {
            current: ArcSwapOption::empty(),
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSIONS),
        }
    }
}

impl Offers {
    pub fn current(&self) -> Option<Arc<Offer>> {
        self.current.load_full()
    }

    /// Rebuilds the offer for `routes`, serving certificates from `certs`.
    pub fn configure(
        &self,
        routes: &[RouteSpec],
        certs: &Arc<super::store::CertStore>,
    ) -> Result<(), rustls::Error> {
        let specs: Vec<(&RouteSpec, &Arc<ClientAuthSpec>)> = routes
            .iter()
            .filter_map(|r| r.client_auth.as_ref().map(|c| (r, c)))
            .collect();
        if specs.is_empty() {
            self.current.store(None);
            return Ok(());
        }
        let mut hints: Vec<DistinguishedName> = Vec::new();
        for (_, spec) in &specs {
            for h in &spec.hints {
                if !hints.iter().any(|x| x.as_ref() == h.as_ref()) {
                    hints.push(h.clone());
                }
            }
        }
        let provider = rustls::crypto::ring::default_provider();
        let collect = Arc::new(Collect {
            hints,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = super::store::CertStore::server_config(certs, Some(collect))?;
        config.session_storage = Arc::clone(&self.sessions);
        self.current.store(Some(Arc::new(Offer {
            acceptor: Acceptor::from_server_config(Arc::new(config))
                .with_callbacks(Box::new(KeepChain)),
            hosts: specs
                .iter()
                .flat_map(|(r, _)| r.hosts.iter().cloned())
                .collect(),
            any_host: specs.iter().any(|(r, _)| r.hosts.is_empty()),
        })));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_cannot_be_broken_by_a_certificate() {
        assert_eq!(header_safe("CN=a b,O=c"), "CN=a b,O=c");
        assert_eq!(header_safe("CN=x\r\nX-Evil: 1"), "CN=x%0D%0AX-Evil: 1");
        assert_eq!(header_safe("100%"), "100%25");
        assert_eq!(header_safe("é"), "%C3%A9");
    }

    #[test]
    fn dn_values_are_escaped_as_rfc4514_says() {
        let mut out = String::new();
        escape_dn_value(" a,b+c\"d\\e;<f> ", &mut out);
        assert_eq!(out, "\\ a\\,b\\+c\\\"d\\\\e\\;\\<f\\>\\ ");
        let mut out = String::new();
        escape_dn_value("#x", &mut out);
        assert_eq!(out, "\\#x");
    }

    #[test]
    fn the_offer_covers_the_client_auth_routes_names_only() {
        let offer = |hosts: Vec<HostPattern>, any_host| Offer {
            acceptor: Acceptor::from_server_config(Arc::new(
                super::super::store::CertStore::server_config(
                    &Arc::new(super::super::store::CertStore::default()),
                    None,
                )
                .expect("config"),
            )),
            hosts,
            any_host,
        };
        let o = offer(
            vec![
                HostPattern::Exact {
                    host: "partners.example.test".into(),
                    tenant: None,
                },
                HostPattern::Wildcard {
                    suffix: "b2b.test".into(),
                },
            ],
            false,
        );
        assert!(o.covers(Some("partners.example.test")));
        assert!(o.covers(Some("acme.b2b.test")));
        assert!(!o.covers(Some("b2b.test")));
        assert!(!o.covers(Some("x.acme.b2b.test")));
        assert!(!o.covers(Some("xb2b.test")));
        assert!(!o.covers(Some("www.example.test")));
        assert!(!o.covers(None));
        assert!(offer(vec![], true).covers(None));
    }
}
