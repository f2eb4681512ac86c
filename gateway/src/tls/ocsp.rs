//! OCSP stapling (RFC 6960, RFC 6066 `status_request`): for every certificate served that names an OCSP
//! responder (its Authority Information Access) and comes with its issuer in the chain, a background
//! task asks the responder for the certificate's status, checks the answer — for this certificate, a
//! successful response signed by the issuer or by a responder the issuer delegated to, current — and
//! has the store staple it in every handshake (`CertifiedKey::ocsp`). It is refreshed halfway through
//! its validity; a failed fetch keeps the last good response until its `nextUpdate`, and retries
//! sooner the closer that is; an expired response is dropped rather than served.
//!
//! The DER here is the little OCSP needs, read and written by hand: the request (one `CertID`, SHA-1
//! hashes as RFC 5019 profiles it) and the response's basic form.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use sha2::Digest as _;
use x509_parser::der_parser::oid::Oid;

use super::store::CertStore;
use crate::telemetry::metrics::metrics;

/// How long a responder may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A response whose `thisUpdate` is further ahead than this is refused (clock skew allowance).
const SKEW_SECS: i64 = 300;
/// Retries without a response to keep: the first after this, doubling up to [`MAX_WAIT_SECS`].
const FIRST_RETRY_SECS: i64 = 60;
/// The longest the task sleeps, whatever is due.
const MAX_WAIT_SECS: i64 = 3600;

const OID_SHA1: &str = "1.3.14.3.2.26";
const OID_BASIC: &str = "1.3.6.1.5.5.7.48.1.1";
const OID_AD_OCSP: &str = "1.3.6.1.5.5.7.48.1";

/// Why a certificate's status could not be stapled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    #[error("the chain has no issuer certificate after the leaf")]
    NoIssuer,
    #[error("cannot parse a certificate: {0}")]
    Certificate(String),
    #[error("the responder URL `{0}` is not http(s)")]
    Url(String),
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("the responder answered HTTP {0}")]
    Http(u16),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("the responder answered status {0} (not successful)")]
    Status(u8),
    #[error("the response is not about this certificate")]
    NotThisCertificate,
    #[error("the certificate's status is unknown to the responder")]
    Unknown,
    #[error("the response's signature does not verify with the issuer or a delegated responder")]
    Signature,
    #[error("the response has no nextUpdate")]
    NoNextUpdate,
    #[error("the response is not current (thisUpdate {this_update}, nextUpdate {next_update})")]
    NotCurrent { this_update: i64, next_update: i64 },
}

/// A certificate's status as the responder gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    /// Stapled all the same (it is the truth, and a client that checks refuses the certificate), and
    /// logged as an error.
    Revoked,
}

/// A checked response, ready to staple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staple {
    pub der: Vec<u8>,
    pub status: CertStatus,
    /// Unix seconds.
    pub this_update: i64,
    pub next_update: i64,
}

impl Staple {
    /// When to ask again: halfway through the response's validity.
    pub fn refresh_at(&self) -> i64 {
        self.this_update + (self.next_update - self.this_update) / 2
    }
}

/// What asking about one certificate takes: where, what, and whose signature to trust.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    request: Vec<u8>,
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    serial: Vec<u8>,
    issuer: PublicKey,
    issuer_subject: Vec<u8>,
}

/// A subject public key: its algorithm, the curve for EC keys, and the key bits.
#[derive(Debug, Clone)]
struct PublicKey {
    algorithm: String,
    curve: Option<String>,
    bits: Vec<u8>,
}

impl PublicKey {
    fn of(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> PublicKey {
        PublicKey {
            algorithm: spki.algorithm.algorithm.to_id_string(),
            curve: spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string()),
            bits: spki.subject_public_key.data.to_vec(),
        }
    }

    /// Whether `signature` over `message` verifies with this key under `sig_alg` (an OID).
    fn verifies(&self, sig_alg: &str, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature as s;
        let alg: &dyn s::VerificationAlgorithm =
            match (self.algorithm.as_str(), self.curve.as_deref(), sig_alg) {
                ("1.2.840.113549.1.1.1", _, "1.2.840.113549.1.1.11") => {
                    &s::RSA_PKCS1_2048_8192_SHA256
                }
                ("1.2.840.113549.1.1.1", _, "1.2.840.113549.1.1.12") => {
                    &s::RSA_PKCS1_2048_8192_SHA384
                }
                ("1.2.840.113549.1.1.1", _, "1.2.840.113549.1.1.13") => {
                    &s::RSA_PKCS1_2048_8192_SHA512
                }
                ("1.2.840.113549.1.1.1", _, "1.2.840.113549.1.1.5") => {
                    &s::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
                }
                ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7"), "1.2.840.10045.4.3.2") => {
                    &s::ECDSA_P256_SHA256_ASN1
                }
                ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7"), "1.2.840.10045.4.3.3") => {
                    &s::ECDSA_P256_SHA384_ASN1
                }
                ("1.2.840.10045.2.1", Some("1.3.132.0.34"), "1.2.840.10045.4.3.2") => {
                    &s::ECDSA_P384_SHA256_ASN1
                }
                ("1.2.840.10045.2.1", Some("1.3.132.0.34"), "1.2.840.10045.4.3.3") => {
                    &s::ECDSA_P384_SHA384_ASN1
                }
                ("1.3.101.112", _, "1.3.101.112") => &s::ED25519,
                _ => return false,
            };
        s::UnparsedPublicKey::new(alg, &self.bits)
            .verify(message, signature)
            .is_ok()
    }
}

/// The OCSP target of a served chain: `Ok(None)` when the leaf names no OCSP responder.
pub fn target(chain: &[CertificateDer<'_>]) -> Result<Option<Target>, OcspError> {
    let leaf = chain.first().ok_or(OcspError::NoIssuer)?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| OcspError::Certificate(e.to_string()))?;
    let mut url = None;
    for ext in x509.extensions() {
        if let x509_parser::extensions::ParsedExtension::AuthorityInfoAccess(aia) =
            ext.parsed_extension()
        {
            for desc in &aia.accessdescs {
                if desc.access_method.to_id_string() == OID_AD_OCSP {
                    if let x509_parser::extensions::GeneralName::URI(u) = &desc.access_location {
                        url.get_or_insert_with(|| u.to_string());
                    }
                }
            }
        }
    }
    let Some(url) = url else {
        return Ok(None);
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(OcspError::Url(url));
    }
    let issuer_der = chain.get(1).ok_or(OcspError::NoIssuer)?;
    let (_, issuer) = x509_parser::parse_x509_certificate(issuer_der.as_ref())
        .map_err(|e| OcspError::Certificate(e.to_string()))?;
    if issuer.subject().as_raw() != x509.issuer().as_raw() {
        return Err(OcspError::NoIssuer);
    }
    let name_hash = sha1(x509.issuer().as_raw());
    let issuer_key = PublicKey::of(issuer.public_key());
    let key_hash = sha1(&issuer_key.bits);
    let serial = x509.raw_serial().to_vec();
    // OCSPRequest { TBSRequest { requestList { Request { CertID } } } }
    let request = der::seq(&der::seq(&der::seq(&der::seq(&der::seq(&cert_id(
        &name_hash, &key_hash, &serial,
    ))))));
    Ok(Some(Target {
        url,
        request,
        name_hash,
        key_hash,
        serial,
        issuer: issuer_key,
        issuer_subject: issuer.subject().as_raw().to_vec(),
    }))
}

fn sha1(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

/// `CertID ::= SEQUENCE { hashAlgorithm, issuerNameHash, issuerKeyHash, serialNumber }` (its content).
fn cert_id(name_hash: &[u8], key_hash: &[u8], serial: &[u8]) -> Vec<u8> {
    let sha1_oid = [0x2b, 0x0e, 0x03, 0x02, 0x1a];
    let mut alg = der::tlv(0x06, &sha1_oid);
    alg.extend_from_slice(&der::tlv(0x05, &[]));
    let mut id = der::tlv(0x30, &alg);
    id.extend_from_slice(&der::tlv(0x04, name_hash));
    id.extend_from_slice(&der::tlv(0x04, key_hash));
    id.extend_from_slice(&der::tlv(0x02, serial));
    id
}

impl Target {
    /// The GET URL of the request (RFC 6960 appendix A.1): the responder's URL, `/`, and the request's
    /// base64, percent-encoded.
    pub fn get_url(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.request);
        let enc = b64
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        match self.url.ends_with('/') {
            true => format!("{}{enc}", self.url),
            false => format!("{}/{enc}", self.url),
        }
    }

    /// Asks the responder.
    pub async fn fetch(&self) -> Result<Vec<u8>, OcspError> {
        let (status, body) = crate::support::http_client::get(&self.get_url(), FETCH_TIMEOUT)
            .await
            .map_err(|e| OcspError::Fetch(e.to_string()))?;
        if status != 200 {
            return Err(OcspError::Http(status));
        }
        Ok(body.to_vec())
    }

    /// Checks a response for this certificate at `now` (Unix seconds).
    pub fn check(&self, der: &[u8], now: i64) -> Result<Staple, OcspError> {
        use der::Reader;
        let m = OcspError::Malformed;
        // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT … }
        let mut top = Reader::new(der)
            .expect(0x30)
            .ok_or(m("OCSPResponse"))?
            .content;
        let status = top.expect(0x0a).ok_or(m("responseStatus"))?.content.rest();
        match status {
            [0] => {}
            [n] => return Err(OcspError::Status(*n)),
            _ => return Err(m("responseStatus")),
        }
        let mut bytes = top
            .expect(0xa0)
            .ok_or(m("responseBytes"))?
            .content
            .expect(0x30)
            .ok_or(m("ResponseBytes"))?
            .content;
        if oid(bytes.expect(0x06).ok_or(m("responseType"))?.content.rest()) != OID_BASIC {
            return Err(m("responseType is not id-pkix-ocsp-basic"));
        }
        let basic = bytes.expect(0x04).ok_or(m("response"))?.content.rest();
        // BasicOCSPResponse ::= SEQUENCE { tbsResponseData, signatureAlgorithm, signature, certs }
        let mut basic = Reader::new(basic)
            .expect(0x30)
            .ok_or(m("BasicOCSPResponse"))?
            .content;
        let tbs = basic.expect(0x30).ok_or(m("tbsResponseData"))?;
        let mut sig_alg = basic.expect(0x30).ok_or(m("signatureAlgorithm"))?.content;
        let sig_alg = oid(sig_alg
            .expect(0x06)
            .ok_or(m("signatureAlgorithm"))?
            .content
            .rest());
        let signature = match basic.expect(0x03).ok_or(m("signature"))?.content.rest() {
            [0, sig @ ..] => sig,
            _ => return Err(m("signature")),
        };
        let mut certs = Vec::new();
        if let Some(mut list) = basic.expect(0xa0) {
            let mut seq = list.content.expect(0x30).ok_or(m("certs"))?.content;
            while !seq.is_empty() {
                certs.push(seq.any().ok_or(m("certs"))?.raw);
            }
        }
        if !self.signed_by_issuer_or_delegate(&sig_alg, tbs.raw, signature, &certs, now) {
            return Err(OcspError::Signature);
        }
        // ResponseData ::= SEQUENCE { version [0] OPTIONAL, responderID, producedAt, responses, … }
        let mut data = tbs.content;
        if data.peek() == Some(0xa0) {
            data.any().ok_or(m("version"))?;
        }
        data.any().ok_or(m("responderID"))?;
        data.expect(0x18).ok_or(m("producedAt"))?;
        let mut responses = data.expect(0x30).ok_or(m("responses"))?.content;
        while !responses.is_empty() {
            let mut single = responses.expect(0x30).ok_or(m("SingleResponse"))?.content;
            let mut id = single.expect(0x30).ok_or(m("CertID"))?.content;
            let mut alg = id.expect(0x30).ok_or(m("hashAlgorithm"))?.content;
            let alg = oid(alg.expect(0x06).ok_or(m("hashAlgorithm"))?.content.rest());
            let name_hash = id.expect(0x04).ok_or(m("issuerNameHash"))?.content.rest();
            let key_hash = id.expect(0x04).ok_or(m("issuerKeyHash"))?.content.rest();
            let serial = id.expect(0x02).ok_or(m("serialNumber"))?.content.rest();
            if alg != OID_SHA1
                || name_hash != self.name_hash
                || key_hash != self.key_hash
                || strip_zeros(serial) != strip_zeros(&self.serial)
            {
                continue;
            }
            let status = match single.any().ok_or(m("certStatus"))?.tag {
                0x80 => CertStatus::Good,
                0xa1 => CertStatus::Revoked,
                _ => return Err(OcspError::Unknown),
            };
            let this_update = time(single.expect(0x18).ok_or(m("thisUpdate"))?.content.rest())?;
            let next_update = match single.expect(0xa0) {
                Some(mut n) => time(
                    n.content
                        .expect(0x18)
                        .ok_or(m("nextUpdate"))?
                        .content
                        .rest(),
                )?,
                None => return Err(OcspError::NoNextUpdate),
            };
            if this_update > now + SKEW_SECS || next_update <= now || next_update <= this_update {
                return Err(OcspError::NotCurrent {
                    this_update,
                    next_update,
                });
            }
            return Ok(Staple {
                der: der.to_vec(),
                status,
                this_update,
                next_update,
            });
        }
        Err(OcspError::NotThisCertificate)
    }

    /// The issuer signed the response, or a certificate in it that the issuer signed for OCSP signing
    /// (id-kp-OCSPSigning), valid now, did.
    fn signed_by_issuer_or_delegate(
        &self,
        sig_alg: &str,
        tbs: &[u8],
        signature: &[u8],
        certs: &[&[u8]],
        now: i64,
    ) -> bool {
        if self.issuer.verifies(sig_alg, tbs, signature) {
            return true;
        }
        certs.iter().any(|der| {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                return false;
            };
            let delegated = cert
                .extended_key_usage()
                .ok()
                .flatten()
                .is_some_and(|e| e.value.ocsp_signing);
            let valid = cert.validity().not_before.timestamp() <= now
                && now <= cert.validity().not_after.timestamp();
            delegated
                && valid
                && cert.issuer().as_raw() == self.issuer_subject.as_slice()
                && self.issuer.verifies(
                    &cert.signature_algorithm.algorithm.to_id_string(),
                    cert.tbs_certificate.as_ref(),
                    &cert.signature_value.data,
                )
                && PublicKey::of(cert.public_key()).verifies(sig_alg, tbs, signature)
        })
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|x| **x == 0).count();
    &b[n.min(b.len().saturating_sub(1))..]
}

fn oid(content: &[u8]) -> String {
    Oid::new(content.into()).to_id_string()
}

/// `YYYYMMDDHHMMSS[.fff]Z` → Unix seconds.
fn time(s: &[u8]) -> Result<i64, OcspError> {
    let bad = OcspError::Malformed("GeneralizedTime");
    if s.len() < 15 || s.last() != Some(&b'Z') || !s[..14].iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let n = |a: usize, b: usize| -> i64 {
        s[a..b]
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
    };
    let (y, mo, d, h, mi, se) = (n(0, 4), n(4, 6), n(6, 8), n(8, 10), n(10, 12), n(12, 14));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad);
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Just enough DER.
mod der {
    /// A tag-length-value: `tag content`.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    pub fn seq(content: &[u8]) -> Vec<u8> {
        tlv(0x30, content)
    }

    /// One element read.
    pub struct Element<'a> {
        pub tag: u8,
        pub content: Reader<'a>,
        /// The whole element, tag and length included.
        pub raw: &'a [u8],
    }

    /// Reads elements one after the other.
    pub struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        pub fn new(b: &'a [u8]) -> Reader<'a> {
            Reader(b)
        }

        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }

        pub fn rest(&self) -> &'a [u8] {
            self.0
        }

        pub fn peek(&self) -> Option<u8> {
            self.0.first().copied()
        }

        /// The next element, whatever its tag; `None` when the input ends or is not DER.
        pub fn any(&mut self) -> Option<Element<'a>> {
            let b = self.0;
            let (&tag, rest) = b.split_first()?;
            // Multi-byte tags never occur in OCSP.
            if tag & 0x1f == 0x1f {
                return None;
            }
            let (&first, rest) = rest.split_first()?;
            let (len, rest) = if first < 0x80 {
                (first as usize, rest)
            } else {
                let n = (first & 0x7f) as usize;
                if n == 0 || n > 4 || rest.len() < n {
                    return None;
                }
                let len = rest[..n].iter().fold(0usize, |a, x| (a << 8) | *x as usize);
                (len, &rest[n..])
            };
            if rest.len() < len {
                return None;
            }
            let header = b.len() - rest.len();
            self.0 = &rest[len..];
            Some(Element {
                tag,
                content: Reader(&rest[..len]),
                raw: &b[..header + len],
            })
        }

        /// The next element if its tag is `tag` (else nothing is consumed).
        pub fn expect(&mut self, tag: u8) -> Option<Element<'a>> {
            if self.peek() != Some(tag) {
                return None;
            }
            self.any()
        }
    }
}

/// One served certificate's stapling state.
struct Entry {
    domain: String,
    target: Option<Target>,
    staple: Option<Staple>,
    next_attempt: i64,
    failures: u32,
}

/// Keeps the store's certificates stapled, while `enabled` says so (`[tls] ocsp_stapling`, read at
/// every round: a reload turning it off unstaples everything).
pub struct Stapler {
    pub store: Arc<CertStore>,
    pub enabled: Box<dyn Fn() -> bool + Send + Sync>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Stapler {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        while !*shutdown.borrow() {
            let now = crate::support::unix_now() as i64;
            let wake = if (self.enabled)() {
                staple_round(&self.store, &mut entries, now).await
            } else {
                for id in entries.keys() {
                    self.store.set_staple(id, None);
                }
                entries.clear();
                now + MAX_WAIT_SECS
            };
            let wait = (wake - crate::support::unix_now() as i64).clamp(1, MAX_WAIT_SECS);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait as u64)) => {}
                _ = self.store.changed() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// One pass over the store's certificates: fetches what is due, drops what expired. Returns when
/// something is due next (Unix seconds).
async fn staple_round(store: &CertStore, entries: &mut HashMap<String, Entry>, now: i64) -> i64 {
    let mut wake = now + MAX_WAIT_SECS;
    let certs = store.list();
    let mut present = std::collections::HashSet::with_capacity(certs.len());
    for cert in certs {
        let Some(leaf) = cert.key.cert.first() else {
            continue;
        };
        let id = hex::encode(sha2::Sha256::digest(leaf.as_ref()));
        present.insert(id.clone());
        let entry = entries.entry(id.clone()).or_insert_with(|| {
            let domain = cert.names.first().cloned().unwrap_or_default();
            let target = match target(&cert.key.cert) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(domain = %domain, error = %e, "OCSP stapling off for this certificate");
                    None
                }
            };
            Entry {
                domain,
                target,
                staple: None,
                next_attempt: now,
                failures: 0,
            }
        });
        let Some(target) = &entry.target else {
            continue;
        };
        if now >= entry.next_attempt {
            let result = match target.fetch().await {
                Ok(der) => target.check(&der, crate::support::unix_now() as i64),
                Err(e) => Err(e),
            };
            let now = crate::support::unix_now() as i64;
            match result {
                Ok(staple) => {
                    if staple.status == CertStatus::Revoked {
                        tracing::error!(domain = %entry.domain, "OCSP: the responder says this certificate is REVOKED; stapled as such");
                    }
                    metrics().ocsp_fetches.with_label_values(&["ok"]).inc();
                    let m = metrics();
                    m.ocsp_this_update
                        .with_label_values(&[&entry.domain])
                        .set(staple.this_update as f64);
                    m.ocsp_next_update
                        .with_label_values(&[&entry.domain])
                        .set(staple.next_update as f64);
                    m.ocsp_failures.with_label_values(&[&entry.domain]).set(0);
                    store.set_staple(&id, Some(staple.der.clone()));
                    entry.next_attempt = staple.refresh_at().max(now + 1);
                    entry.failures = 0;
                    entry.staple = Some(staple);
                }
                Err(e) => {
                    entry.failures += 1;
                    metrics().ocsp_fetches.with_label_values(&["failed"]).inc();
                    metrics()
                        .ocsp_failures
                        .with_label_values(&[&entry.domain])
                        .set(i64::from(entry.failures));
                    tracing::warn!(domain = %entry.domain, url = %target.url, error = %e, failures = entry.failures, "OCSP fetch failed; the last good response (if any) stays stapled until it expires");
                    entry.next_attempt = now
                        + match &entry.staple {
                            // Sooner the closer the kept response is to its end.
                            Some(s) => ((s.next_update - now) / 4).clamp(5, MAX_WAIT_SECS),
                            None => {
                                (FIRST_RETRY_SECS << (entry.failures - 1).min(6)).min(MAX_WAIT_SECS)
                            }
                        };
                }
            }
        }
        if let Some(s) = &entry.staple {
            if crate::support::unix_now() as i64 >= s.next_update {
                tracing::warn!(domain = %entry.domain, "OCSP response expired without a fresh one: no longer stapled");
                store.set_staple(&id, None);
                entry.staple = None;
                metrics()
                    .ocsp_next_update
                    .with_label_values(&[&entry.domain])
                    .set(0.0);
            } else {
                wake = wake.min(s.next_update);
            }
        }
        wake = wake.min(entry.next_attempt);
    }
    entries.retain(|id, _| present.contains(id));
    store.retain_staples(&present);
    wake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_time() {
        assert_eq!(time(b"19700101000000Z"), Ok(0));
        assert_eq!(time(b"20261207040000Z"), Ok(1_796_616_000));
        assert_eq!(time(b"20000229123456.789Z"), Ok(951_827_696));
        assert!(time(b"2026120704000Z").is_err());
        assert!(time(b"20261307040000Z").is_err());
        assert!(time(b"20261207040000+0100").is_err());
    }

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let enc = der::tlv(0x04, &content);
            let mut r = der::Reader::new(&enc);
            let e = r.any().expect("element");
            assert_eq!(
                (e.tag, e.content.rest().len(), e.raw.len()),
                (0x04, len, enc.len())
            );
            assert!(r.is_empty());
        }
        // A length past the end, and an indefinite length, are refused.
        assert!(der::Reader::new(&[0x30, 0x05, 0x01]).any().is_none());
        assert!(der::Reader::new(&[0x30, 0x80, 0x00, 0x00]).any().is_none());
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let t = Target {
            url: "http://ocsp.test".into(),
            request: Vec::new(),
            name_hash: vec![1; 20],
            key_hash: vec![2; 20],
            serial: vec![3],
            issuer: PublicKey {
                algorithm: String::new(),
                curve: None,
                bits: Vec::new(),
            },
            issuer_subject: Vec::new(),
        };
        for bad in [
            &b""[..],
            &[0x30, 0x03, 0x0a, 0x01, 0x01],
            &[0x30, 0x03, 0x0a, 0x01, 0x00],
            &[0x30, 0x82, 0xff, 0xff],
            &[0xff; 64],
        ] {
            assert!(t.check(bad, 0).is_err(), "{bad:?}");
        }
        assert_eq!(
            t.check(&[0x30, 0x03, 0x0a, 0x01, 0x06], 0),
            Err(OcspError::Status(6))
        );
    }

    #[test]
    fn the_get_url_percent_encodes_the_base64() {
        let mut t = Target {
            url: "http://ocsp.test/x".into(),
            request: vec![0xfb, 0xff, 0xbf],
            name_hash: Vec::new(),
            key_hash: Vec::new(),
            serial: Vec::new(),
            issuer: PublicKey {
                algorithm: String::new(),
                curve: None,
                bits: Vec::new(),
            },
            issuer_subject: Vec::new(),
        };
        assert_eq!(t.get_url(), "http://ocsp.test/x/%2B%2F%2B%2F");
        t.url.push('/');
        t.request = vec![0xff];
        assert_eq!(t.get_url(), "http://ocsp.test/x/%2Fw%3D%3D");
    }
}
