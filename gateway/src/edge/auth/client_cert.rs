//! A route's `client_auth` at the request: the certificate the connection's handshake collected (see
//! `tls::client_auth`), verified against this route's CA and CRLs, and with `auth = "client_cert"` the
//! tenant it names bound to the host's.

use pingora::proxy::Session;

use super::{AuthError, Identity};
use crate::config::{ClientAuthMode, ClientAuthSpec};
use crate::edge::error::EdgeError;
use crate::edge::state::RouteRt;
use crate::telemetry::metrics::metrics;
use crate::tls::client_auth::{ClientTls, PeerCert, Presented};

/// What the connection's handshake collected, when it asked for a certificate.
fn collected(session: &Session) -> Option<&ClientTls> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<ClientTls>()
}

/// The connection's certificate, when it sent a readable one.
pub fn peer_cert(session: &Session) -> Option<&PeerCert> {
    match &collected(session)?.cert {
        Presented::Cert(c) => Some(c),
        Presented::None | Presented::Unreadable => None,
    }
}

/// The route's check: `Ok(Some)` with a certificate verified for this route, `Ok(None)` when an
/// optional certificate is absent, else the refusal (counted in `gateway_auth_rejections_total`).
pub fn check<'s>(
    session: &'s Session,
    route: &RouteRt,
    spec: &ClientAuthSpec,
) -> Result<Option<&'s PeerCert>, EdgeError> {
    let refuse = |reason: &'static str, err: EdgeError| {
        metrics()
            .auth_rejections
            .with_label_values(&[&route.spec.name, reason])
            .inc();
        Err(err)
    };
    let required = spec.mode == ClientAuthMode::Required;
    let is_tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let Some(tls) = collected(session) else {
        return match (required, is_tls) {
            (false, _) => Ok(None),
            // Over TLS, the handshake was for a name that asks for no certificate (an HTTP/2
            // connection reused for another host, or a Host that is not the SNI name): a connection
            // made for this host will ask.
            (true, true) => refuse("misdirected", EdgeError::Misdirected),
            (true, false) => refuse(
                AuthError::ClientCertRequired.reason(),
                EdgeError::Auth(AuthError::ClientCertRequired),
            ),
        };
    };
    let invalid = || {
        refuse(
            AuthError::ClientCertInvalid.reason(),
            EdgeError::Auth(AuthError::ClientCertInvalid),
        )
    };
    match &tls.cert {
        Presented::None if required => refuse(
            AuthError::ClientCertRequired.reason(),
            EdgeError::Auth(AuthError::ClientCertRequired),
        ),
        Presented::None => Ok(None),
        Presented::Unreadable => invalid(),
        Presented::Cert(c) if c.verify(spec) => Ok(Some(c)),
        Presented::Cert(_) => invalid(),
    }
}

/// `auth = "client_cert"`: the verified certificate as a tenant's integration — the tenant its URI SAN
/// names (`client_auth.tenant_uri`); the caller is the certificate (its SHA-256 as the user id).
pub fn identity(cert: &PeerCert, spec: &ClientAuthSpec) -> Result<Identity, AuthError> {
    let tenant = spec
        .tenant_uri
        .as_ref()
        .and_then(|u| cert.tenant(u))
        .ok_or(AuthError::ClientCertNoTenant)?;
    Ok(Identity {
        user_id: cert.sha256.clone(),
        tenant: tenant.to_string(),
        email: None,
        role: Some("client_cert".to_string()),
        jti: None,
        iat: None,
        client_id: None,
        scope: None,
    })
}
