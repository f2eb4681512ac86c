//! `client_auth = { mode, ca, crl, tenant_uri }` of a route: client certificates at the edge. The CA
//! bundle (and its CRLs) is read and built into a verifier when the config loads, so `validate` names a
//! bad file at its line and column and a reload re-reads the files; the https entrypoint asks for a
//! certificate on the names such routes serve, and each request re-verifies the connection's chain
//! against its route's verifier (see `tls::client_auth`).

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{DistinguishedName, RootCertStore};

use super::*;
use crate::config::upstream_tls::{certificates, read_file};

/// Whether a route refuses a request without a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// No verified certificate, no request (401).
    Required,
    /// A certificate, when presented, must verify (else 401); without one the request goes on, and the
    /// upstream sees no certificate fields.
    Optional,
}

/// A validated `client_auth`.
pub struct ClientAuthSpec {
    pub mode: ClientAuthMode,
    /// `ca` as written.
    pub ca: String,
    /// `crl` as written.
    pub crl: Option<String>,
    /// The chain check against `ca` alone (and its CRLs): signatures, validity dates, the client-auth
    /// key usage.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The CA's subjects, sent in the handshake's certificate request as hints.
    pub hints: Vec<DistinguishedName>,
    /// Where a certificate names its tenant (`auth = "client_cert"` binds it to the host's).
    pub tenant_uri: Option<TenantUri>,
}

impl fmt::Debug for ClientAuthSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuthSpec")
            .field("mode", &self.mode)
            .field("ca", &self.ca)
            .field("crl", &self.crl)
            .field("tenant_uri", &self.tenant_uri)
            .finish_non_exhaustive()
    }
}

/// `tenant_uri = "spiffe://partners.example/tenant/{tenant}"`: a URI SAN of this shape names the
/// certificate's tenant, one lowercase DNS label where `{tenant}` stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantUri {
    prefix: String,
    suffix: String,
}

/// The placeholder of `tenant_uri`.
const TENANT: &str = "{tenant}";

impl TenantUri {
    /// The tenant `uri` names, if it has this shape.
    pub fn tenant_of<'a>(&self, uri: &'a str) -> Option<&'a str> {
        let label = uri.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        is_tenant_label(label).then_some(label)
    }

    /// The pattern as written.
    pub fn source(&self) -> String {
        format!("{}{TENANT}{}", self.prefix, self.suffix)
    }
}

/// A tenant label: 1–63 of `a-z`, `0-9`, `-`, neither first nor last a `-`.
fn is_tenant_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(super) fn validate_client_auth(
    c: &Spanned<file::ClientAuthFile>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<ClientAuthSpec>> {
    let f = c.get_ref();
    let mode = super::super::one_of(
        &f.mode,
        "client_auth.mode",
        &[
            ("required", ClientAuthMode::Required),
            ("optional", ClientAuthMode::Optional),
        ],
        "",
        diags,
    );
    let tenant_uri = f.tenant_uri.as_ref().and_then(|t| {
        let s = t.get_ref();
        match s.split_once(TENANT) {
            Some((prefix, suffix))
                if !suffix.contains(TENANT)
                    && !s.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                    && prefix.contains(':') =>
            {
                Some(TenantUri {
                    prefix: prefix.to_string(),
                    suffix: suffix.to_string(),
                })
            }
            _ => {
                diags.push(Diagnostic::at(
                    t,
                    "client_auth.tenant_uri is a URI with `{tenant}` once, e.g. \"spiffe://partners.example/tenant/{tenant}\"",
                ));
                None
            }
        }
    });
    let cas = certificates(&f.ca, "client_auth.ca", diags)?;
    let mut roots = RootCertStore::empty();
    for cert in cas {
        if let Err(e) = roots.add(cert) {
            diags.push(Diagnostic::at(
                &f.ca,
                format!(
                    "client_auth.ca `{}`: not a CA certificate: {e}",
                    f.ca.get_ref()
                ),
            ));
            return None;
        }
    }
    let mut crls = Vec::new();
    if let Some(crl) = &f.crl {
        let pem = read_file(crl, "client_auth.crl", diags)?;
        match CertificateRevocationListDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Ok(list) if !list.is_empty() => crls = list,
            Ok(_) => {
                diags.push(Diagnostic::at(
                    crl,
                    format!("client_auth.crl `{}` holds no PEM CRL", crl.get_ref()),
                ));
                return None;
            }
            Err(e) => {
                diags.push(Diagnostic::at(
                    crl,
                    format!("client_auth.crl `{}`: {e}", crl.get_ref()),
                ));
                return None;
            }
        }
    }
    let hints = roots.subjects();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if !crls.is_empty() {
        // The CRLs name the CA's own certificates: the leaf is checked against them, and a leaf
        // whose issuer has no CRL there is refused (unknown status is not "good").
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = match builder.build() {
        Ok(v) => v,
        Err(e) => {
            let (at, key) = match &f.crl {
                Some(crl) => (crl, "client_auth.crl"),
                None => (&f.ca, "client_auth.ca"),
            };
            diags.push(Diagnostic::at(at, format!("{key} `{}`: {e}", at.get_ref())));
            return None;
        }
    };
    Some(Arc::new(ClientAuthSpec {
        mode,
        ca: f.ca.get_ref().clone(),
        crl: f.crl.as_ref().map(|c| c.get_ref().clone()),
        verifier,
        hints,
        tenant_uri,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(prefix: &str, suffix: &str) -> TenantUri {
        TenantUri {
            prefix: prefix.into(),
            suffix: suffix.into(),
        }
    }

    #[test]
    fn a_tenant_uri_names_one_label() {
        let t = uri("spiffe://partners.example/tenant/", "");
        assert_eq!(
            t.tenant_of("spiffe://partners.example/tenant/acme"),
            Some("acme")
        );
        assert_eq!(t.tenant_of("spiffe://partners.example/tenant/acme/x"), None);
        assert_eq!(t.tenant_of("spiffe://partners.example/tenant/Acme"), None);
        assert_eq!(t.tenant_of("spiffe://partners.example/tenant/"), None);
        assert_eq!(t.tenant_of("spiffe://other.example/tenant/acme"), None);
        assert_eq!(t.tenant_of("spiffe://partners.example/tenant/-a"), None);
        let t = uri("urn:aggios:", ":integration");
        assert_eq!(t.tenant_of("urn:aggios:beta:integration"), Some("beta"));
        assert_eq!(t.tenant_of("urn:aggios:beta"), None);
        assert_eq!(t.source(), "urn:aggios:{tenant}:integration");
    }
}
