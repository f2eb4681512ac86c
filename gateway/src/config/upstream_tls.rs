//! `tls = { ca, sni, cert, key, verify }` of an `[[upstreams]]` entry whose `protocol` is `"https"` or
//! `"h2"` (HTTP/2 over TLS): the client side of TLS towards the upstream. Everything is read and checked
//! when the config loads (so `validate` names a bad file at its line and column, and a reload re-reads
//! the files: a renewed client certificate or CA bundle takes effect with the next connection), and
//! built into one rustls client configuration per upstream, which every handshake to it uses as it is
//! (its session cache lets reconnections resume).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use toml::Spanned;

use super::file::UpstreamTlsFile;
use super::Diagnostic;

/// The TLS an upstream is spoken to over.
#[derive(Debug)]
pub struct UpstreamTls {
    /// The handshake's configuration: roots, verifier, client certificate, and the ALPN of the
    /// upstream's protocol (`http/1.1` for `https`, `h2` for `h2`). Health checks use it too.
    pub client: Arc<ClientConfig>,
    /// `tls.sni`: the name sent and verified for every server of the upstream.
    pub sni: Option<String>,
    /// Whether the server's certificate is verified (`tls.verify`, on unless turned off).
    pub verify: bool,
    /// `tls.ca` as written, or `None` for the system's roots.
    pub ca: Option<String>,
    /// Whether a client certificate is presented (`tls.cert` and `tls.key`).
    pub client_cert: bool,
}

/// Two specs are the same TLS when they share one built configuration (a reload builds a new one).
impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.client, &other.client)
    }
}

impl UpstreamTls {
    /// The name a server is asked for (SNI) and its certificate verified against: `tls.sni`, else the
    /// host name of the server entry its address came from (`svc.internal:8443`), else its IP address
    /// (verified against the certificate's IP SANs; no SNI is sent for an IP).
    pub fn server_name(&self, via: Option<&str>, addr: SocketAddr) -> String {
        if let Some(sni) = &self.sni {
            return sni.clone();
        }
        match via.and_then(|v| v.rsplit_once(':')).map(|(host, _)| host) {
            Some(host) if !host.is_empty() => host.to_string(),
            _ => addr.ip().to_string(),
        }
    }
}

/// The system's trust roots, read once per process (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured).
fn system_roots() -> &'static Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = pingora::tls::load_native_certs()
            .map_err(|e| format!("cannot read the system's CA roots ({e}): set tls.ca"))?;
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(found);
        if added == 0 {
            return Err(
                "the system has no CA roots: install ca-certificates or set tls.ca".to_string(),
            );
        }
        Ok(Arc::new(store))
    })
}

/// The bytes of the file the key `what` (`tls.ca`) names, or a diagnostic at it.
pub(super) fn read_file(
    path: &Spanned<String>,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<u8>> {
    match std::fs::read(path.get_ref()) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            diags.push(Diagnostic::at(
                path,
                format!("cannot read {what} `{}`: {e}", path.get_ref()),
            ));
            None
        }
    }
}

/// The PEM certificates of the file the key `what` names (at least one).
pub(super) fn certificates(
    path: &Spanned<String>,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<CertificateDer<'static>>> {
    let pem = read_file(path, what, diags)?;
    match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => Some(certs),
        Ok(_) => {
            diags.push(Diagnostic::at(
                path,
                format!("{what} `{}` holds no PEM certificate", path.get_ref()),
            ));
            None
        }
        Err(e) => {
            diags.push(Diagnostic::at(
                path,
                format!("{what} `{}`: {e}", path.get_ref()),
            ));
            None
        }
    }
}

/// The roots: `tls.ca` alone when given (a private CA is not mixed with the public ones), else the
/// system's.
fn roots(file: &UpstreamTlsFile, diags: &mut Vec<Diagnostic>) -> Option<Arc<RootCertStore>> {
    let Some(ca) = &file.ca else {
        return match system_roots() {
            Ok(roots) => Some(Arc::clone(roots)),
            Err(e) => {
                diags.push(Diagnostic::new(None, e.clone()));
                None
            }
        };
    };
    let certs = certificates(ca, "tls.ca", diags)?;
    let mut store = RootCertStore::empty();
    for cert in certs {
        if let Err(e) = store.add(cert) {
            diags.push(Diagnostic::at(
                ca,
                format!("tls.ca `{}`: not a CA certificate: {e}", ca.get_ref()),
            ));
            return None;
        }
    }
    Some(Arc::new(store))
}

/// The client certificate chain and key, checked to belong together.
fn client_identity(
    file: &UpstreamTlsFile,
    diags: &mut Vec<Diagnostic>,
) -> Option<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let (cert, key) = match (&file.cert, &file.key) {
        (None, None) => return Some(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(c), None) | (None, Some(c)) => {
            diags.push(Diagnostic::at(
                c,
                "tls.cert and tls.key go together (the client certificate and its private key)",
            ));
            return None;
        }
    };
    let chain = certificates(cert, "tls.cert", diags)?;
    let key_pem = read_file(key, "tls.key", diags)?;
    let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(e) => {
            diags.push(Diagnostic::at(
                key,
                format!("tls.key `{}`: no PEM private key ({e})", key.get_ref()),
            ));
            return None;
        }
    };
    let signer = match rustls::crypto::ring::sign::any_supported_type(&key_der) {
        Ok(s) => s,
        Err(e) => {
            diags.push(Diagnostic::at(
                key,
                format!("tls.key `{}`: unsupported key: {e}", key.get_ref()),
            ));
            return None;
        }
    };
    if rustls::sign::CertifiedKey::new(chain.clone(), signer)
        .keys_match()
        .is_err()
    {
        diags.push(Diagnostic::at(
            key,
            format!(
                "tls.key `{}` does not belong to the certificate in tls.cert `{}`",
                key.get_ref(),
                cert.get_ref()
            ),
        ));
        return None;
    }
    Some(Some((chain, key_der)))
}

/// Validates `tls` for an upstream spoken to over TLS (`h2`: ALPN `h2`, else `http/1.1`) and builds its
/// client configuration. `file` absent: the system's roots, verification on, no client certificate.
pub(super) fn validate(
    upstream: &str,
    file: Option<&Spanned<UpstreamTlsFile>>,
    h2: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<UpstreamTls>> {
    let empty = UpstreamTlsFile::default();
    let tls = file.map_or(&empty, |f| f.get_ref());
    let verify = tls.verify.as_ref().is_none_or(|v| *v.get_ref());
    if let Some(v) = tls.verify.as_ref().filter(|v| !*v.get_ref()) {
        diags.push(Diagnostic::warn(
            Some(v.span()),
            format!(
                "upstream `{upstream}`: tls.verify = false: its certificate is not checked, so anyone on \
                 the network path can pose as it (and read what the gateway forwards)"
            ),
        ));
    }
    let sni = tls.sni.as_ref().and_then(|s| {
        let name = s.get_ref().trim_end_matches('.').to_ascii_lowercase();
        match ServerName::try_from(name.clone()) {
            Ok(_) if !name.is_empty() => Some(name),
            _ => {
                diags.push(Diagnostic::at(
                    s,
                    format!("tls.sni `{}` is not a host name", s.get_ref()),
                ));
                None
            }
        }
    });
    let roots = roots(tls, diags);
    let identity = client_identity(tls, diags);
    let (roots, identity) = (roots?, identity?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        Err(e) => {
            diags.push(Diagnostic::new(
                None,
                format!("upstream `{upstream}`: TLS: {e}"),
            ));
            return None;
        }
    };
    let builder = if verify {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    let client_cert = identity.is_some();
    let mut config = match identity {
        Some((chain, key)) => match builder.with_client_auth_cert(chain, key) {
            Ok(c) => c,
            Err(e) => {
                diags.push(Diagnostic::new(
                    None,
                    format!("upstream `{upstream}`: tls.cert/tls.key: {e}"),
                ));
                return None;
            }
        },
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Some(Arc::new(UpstreamTls {
        client: Arc::new(config),
        sni,
        verify,
        ca: tls.ca.as_ref().map(|c| c.get_ref().clone()),
        client_cert,
    }))
}

/// `tls.verify = false`: any certificate is accepted; the handshake's signatures are still checked
/// (the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(sni: Option<&str>) -> UpstreamTls {
        UpstreamTls {
            client: Arc::new(
                ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
            ),
            sni: sni.map(str::to_string),
            verify: true,
            ca: None,
            client_cert: false,
        }
    }

    #[test]
    fn the_server_name_is_the_sni_else_the_entrys_host_else_the_address() {
        let addr: SocketAddr = "10.0.0.7:8443".parse().expect("addr");
        assert_eq!(
            tls(Some("svc.internal")).server_name(Some("backend:8443"), addr),
            "svc.internal"
        );
        assert_eq!(tls(None).server_name(Some("backend:8443"), addr), "backend");
        assert_eq!(tls(None).server_name(None, addr), "10.0.0.7");
        let v6: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
        assert_eq!(tls(None).server_name(None, v6), "2001:db8::1");
    }
}
