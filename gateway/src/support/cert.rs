//! A certificate ready to serve: the chain and key as rustls wants them, with what ops need to see
//! (names, issuer, validity). Parsing only; no I/O beyond the bytes handed in.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Where a certificate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `[[tls.certificates]]`: a file that ops manage.
    File(PathBuf),
    /// Ordered by the gateway over ACME.
    Acme,
}

impl Source {
    /// `file` or `acme`, for the admin listing.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Acme => "acme",
        }
    }
}

/// A parsed certificate with its signing key.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// DNS names it covers, lowercased (`*.aggios.app` for a wildcard).
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub issuer: String,
    pub serial: String,
    pub source: Source,
}

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("bad PEM certificate: {0}")]
    Pem(String),
    #[error("no PEM private key found ({0})")]
    NoKey(String),
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    #[error("cannot parse the certificate: {0}")]
    Parse(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate names no DNS name (subjectAltName)")]
    NoNames,
}

impl Certificate {
    /// Parses a PEM chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        source: Source,
    ) -> Result<Certificate, CertError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Pem(e.to_string()))?;
        let leaf = chain.first().ok_or(CertError::NoCertificate)?.clone();
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::NoKey(e.to_string()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| CertError::UnsupportedKey(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match().map_err(|_| CertError::KeyMismatch)?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| CertError::Parse(e.to_string()))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    names.push(d.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            return Err(CertError::NoNames);
        }
        Ok(Certificate {
            key: Arc::new(certified),
            names,
            not_before: x509.validity().not_before.timestamp(),
            not_after: x509.validity().not_after.timestamp(),
            issuer: x509.issuer().to_string(),
            serial: x509.raw_serial_as_string(),
            source,
        })
    }

    /// The point of renewal: two thirds into the validity period.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn parses_names_and_validity() {
        let (c, k) = self_signed(&["API.example.test", "*.example.test"]);
        let cert = Certificate::from_pem(c.as_bytes(), k.as_bytes(), Source::Acme).expect("parse");
        assert_eq!(cert.names, vec!["api.example.test", "*.example.test"]);
        assert!(cert.not_after > cert.not_before);
        assert!(cert.renew_at() > cert.not_before && cert.renew_at() < cert.not_after);
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_validity() {
        let (c, k) = self_signed(&["a.example.test"]);
        let mut cert =
            Certificate::from_pem(c.as_bytes(), k.as_bytes(), Source::Acme).expect("parse");
        cert.not_before = 1_000;
        cert.not_after = 1_000 + 90 * 86_400;
        assert_eq!(cert.renew_at(), 1_000 + 60 * 86_400);
        cert.not_after = 1_000 + 30;
        assert_eq!(cert.renew_at(), 1_020);
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let (c, _) = self_signed(&["a.example.test"]);
        let (_, other) = self_signed(&["a.example.test"]);
        let err = Certificate::from_pem(c.as_bytes(), other.as_bytes(), Source::Acme).unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch), "{err}");
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            Certificate::from_pem(b"nope", b"nope", Source::Acme),
            Err(CertError::NoCertificate)
        ));
        let (c, _) = self_signed(&["a.example.test"]);
        assert!(matches!(
            Certificate::from_pem(c.as_bytes(), b"", Source::Acme),
            Err(CertError::NoKey(_))
        ));
    }
}
