//! `gateway certs dev`: a local CA and a leaf certificate for development names, so that the stack
//! serves HTTPS on a laptop without any public CA. The CA is reused when it already exists, so a CA
//! that was trusted once stays trusted when the leaf is made again for other names.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration as TimeDuration, OffsetDateTime};

/// What `certs dev` wrote.
#[derive(Debug)]
pub struct DevCerts {
    pub ca_cert: PathBuf,
    pub ca_created: bool,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<String>,
}

/// Why dev certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("`{0}` is not a DNS name or IP address")]
    BadName(String),
    #[error("no --domain given")]
    NoNames,
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Write(crate::support::fs::WriteError),
}

const CA_CERT: &str = "dev-ca.crt";
const CA_KEY: &str = "dev-ca.key";
const LEAF_CERT: &str = "dev.crt";
const LEAF_KEY: &str = "dev.key";
/// How long a development leaf is valid.
pub const DEV_LEAF_DAYS: i64 = 200;

fn write(path: &Path, contents: &str, private: bool) -> Result<(), DevError> {
    crate::support::fs::write_atomic(path, contents.as_bytes(), private).map_err(DevError::Write)
}

/// Writes (or reuses) the CA in `dir` and a new leaf for `names` signed by it.
pub fn generate(dir: &Path, names: &[String]) -> Result<DevCerts, DevError> {
    if names.is_empty() {
        return Err(DevError::NoNames);
    }
    let mut clean = Vec::new();
    for n in names {
        let v = n.trim_end_matches('.').to_ascii_lowercase();
        let bare = v.strip_prefix("*.").unwrap_or(&v);
        if !(crate::config::is_hostname(bare) || v.parse::<std::net::IpAddr>().is_ok()) {
            return Err(DevError::BadName(n.clone()));
        }
        clean.push(v);
    }
    std::fs::create_dir_all(dir).map_err(|source| DevError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let existing = std::fs::read_to_string(&ca_cert_path)
        .ok()
        .zip(std::fs::read_to_string(&ca_key_path).ok());
    let now = OffsetDateTime::now_utc();
    let (issuer, ca_created) = match existing {
        Some((cert_pem, key_pem)) => {
            let key = KeyPair::from_pem(&key_pem)?;
            (Issuer::from_ca_cert_pem(&cert_pem, key)?, false)
        }
        None => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "Aggios Edge development CA");
            dn.push(DnType::OrganizationName, "Aggios Edge (local only)");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = now - TimeDuration::hours(1);
            params.not_after = now + TimeDuration::days(3650);
            let cert = params.self_signed(&key)?;
            write(&ca_key_path, &key.serialize_pem(), true)?;
            write(&ca_cert_path, &cert.pem(), false)?;
            (Issuer::new(params, key), true)
        }
    };
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(clean.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, clean[0].clone());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - TimeDuration::hours(1);
    // The CA/Browser Forum's maximum for public certificates since March 2026 (200 days); Mozilla's
    // "intermediate" profile wants under 366 (a TLS scan checks it, tests/edge/tls_scan.rs).
    params.not_after = now + TimeDuration::days(DEV_LEAF_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    let cert_path = dir.join(LEAF_CERT);
    let key_path = dir.join(LEAF_KEY);
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok(DevCerts {
        ca_cert: ca_cert_path,
        ca_created,
        cert: cert_path,
        key: key_path,
        names: clean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::cert::{Certificate, Source};

    #[test]
    fn leaf_is_signed_by_a_reused_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec![
            "aggios.localhost".to_string(),
            "*.aggios.localhost".to_string(),
        ];
        let load = |made: &DevCerts| {
            let chain = std::fs::read(&made.cert).expect("cert");
            let key = std::fs::read(&made.key).expect("key");
            Certificate::from_pem(&chain, &key, Source::Acme).expect("usable")
        };
        let first = generate(dir.path(), &names).expect("generate");
        assert!(first.ca_created);
        let cert = load(&first);
        assert_eq!(cert.names, names);
        assert!(
            cert.issuer.contains("Aggios Edge development CA"),
            "{}",
            cert.issuer
        );
        let ca_before = std::fs::read(&first.ca_cert).expect("ca");

        let second = generate(dir.path(), &names[..1]).expect("again");
        assert!(!second.ca_created);
        assert_eq!(std::fs::read(&second.ca_cert).expect("ca"), ca_before);
        let again = load(&second);
        assert_eq!(again.names, names[..1]);
        assert_eq!(again.issuer, cert.issuer);
        assert!(matches!(
            generate(dir.path(), &["bad name".into()]),
            Err(DevError::BadName(_))
        ));
    }
}
