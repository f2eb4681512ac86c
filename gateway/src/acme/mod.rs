//! The ACME client: orders a certificate for each name of `[tls.acme] domains` that has none; the
//! renewal loop ([`renewal`]) renews each at two thirds of its lifetime (minus a jitter, so that replicas and names spread out), and
//! backs off exponentially after failures. The old certificate stays served until a new one is in
//! place. The account is created once and kept in storage.
//!
//! Challenges are answered from the [`CertStore`]: HTTP-01 tokens on the HTTP entrypoint, TLS-ALPN-01
//! certificates to `acme-tls/1` handshakes on the HTTPS entrypoint. With `storage = "redis"` the answers
//! are published there too (any replica answers), one replica orders a name at a time (a lock with a
//! lease), and every replica loads what another one ordered ([`AcmeManager`] watches the store).

pub mod dns;
pub mod on_demand;
mod renewal;
pub mod storage;

pub use renewal::{backoff, AcmeManager, TenantDomains};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use self::storage::dir::{DirStorage, StorageError};
use self::storage::redis::RedisStorage;
use self::storage::{Lock, Storage};
use crate::config::{AcmeSettings, ChallengeKind, StorageKind};
use crate::support::cert::{CertError, Certificate, Source};
use crate::telemetry::metrics::metrics;
use crate::tls::store::CertStore;

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the issued certificate is unusable: {0}")]
    Certificate(#[from] CertError),
    #[error("the CA offers no {0} challenge for this name")]
    NoChallenge(&'static str),
    #[error("authorization is {0:?}")]
    Authorization(AuthorizationStatus),
    #[error("order became {status:?}: {problem}")]
    Order {
        status: OrderStatus,
        problem: String,
    },
    #[error("challenge certificate: {0}")]
    ChallengeCert(String),
    #[error("order not finished within {0:?}")]
    Timeout(Duration),
    #[error("another replica is ordering this name")]
    Busy,
    #[error("DNS-01: {0}")]
    Dns(#[from] self::dns::DnsError),
    #[error("challenge = \"dns-01\" without a dns provider")]
    NoDnsProvider,
    #[error("storage = \"redis\" was configured by a reload; it takes effect on restart")]
    NoSharedStorage,
}

/// What an order published for its challenges, withdrawn when it ends.
#[derive(Default)]
struct Published {
    /// HTTP-01 tokens.
    tokens: Vec<String>,
    /// DNS-01 records: (fqdn, value).
    records: Vec<(String, String)>,
}

/// Orders certificates into the store: the configured names (from [`AcmeManager`]) and tenants' own
/// domains (from the on-demand certificates, [`TenantDomains`]) share it, and so one account.
pub struct AcmeClient {
    store: Arc<CertStore>,
    /// Set when `storage = "redis"` at start.
    shared: Option<Arc<RedisStorage>>,
    /// The account for the directory of the settings it was made with.
    account: tokio::sync::Mutex<Option<(AcmeSettings, Account)>>,
}

/// What the https entrypoint asks this module before a handshake: the TLS-ALPN-01 answer of an order
/// another replica made (shared storage), and a certificate for a tenant's own domain (on-demand).
pub struct Handshakes {
    pub on_demand: Option<Arc<on_demand::OnDemand>>,
    pub acme: Option<Arc<AcmeClient>>,
}

impl Handshakes {
    fn shared(&self) -> Option<&Arc<AcmeClient>> {
        self.acme.as_ref().filter(|a| a.shared().is_some())
    }
    fn on_demand(&self) -> Option<&Arc<on_demand::OnDemand>> {
        self.on_demand.as_ref().filter(|od| od.enabled())
    }
}

#[async_trait]
impl crate::tls::accept::BeforeHandshake for Handshakes {
    fn active(&self) -> bool {
        self.on_demand().is_some() || self.shared().is_some()
    }

    async fn alpn_challenge(&self, name: &str) -> bool {
        match self.shared() {
            Some(a) => a.fetch_alpn(name).await,
            None => false,
        }
    }

    async fn unknown_name(&self, name: &str, client: Option<std::net::IpAddr>) {
        if let Some(od) = self.on_demand() {
            od.ensure(name, client).await;
        }
    }

    fn routed_as(&self, name: &str) -> Option<String> {
        self.on_demand()?.routed_as(name)
    }
}

impl AcmeClient {
    pub fn new(store: Arc<CertStore>, shared: Option<Arc<RedisStorage>>) -> AcmeClient {
        AcmeClient {
            store,
            shared,
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// The storage that `acme` names.
    pub fn storage(&self, acme: &AcmeSettings) -> Result<Storage, AcmeError> {
        match (&acme.storage, &self.shared) {
            (StorageKind::Dir(p), _) => Ok(Storage::Dir(DirStorage::new(p))),
            (StorageKind::Redis { .. }, Some(r)) => Ok(Storage::Redis(Arc::clone(r))),
            (StorageKind::Redis { .. }, None) => Err(AcmeError::NoSharedStorage),
        }
    }

    /// The Redis storage, when the replicas share one.
    pub fn shared(&self) -> Option<&Arc<RedisStorage>> {
        self.shared.as_ref()
    }

    /// The HTTP-01 answer for `token`: this replica's, or one another replica published.
    pub async fn http01(&self, token: &str) -> Option<String> {
        if let Some(ka) = self.store.http_challenge(token) {
            return Some(ka);
        }
        match &self.shared {
            Some(r) => r.http01(token).await.ok().flatten(),
            None => None,
        }
    }

    /// Makes a TLS-ALPN-01 certificate that another replica published for `name` servable here.
    /// Returns whether one was found.
    pub async fn fetch_alpn(&self, name: &str) -> bool {
        let Some(r) = &self.shared else {
            return false;
        };
        match r.alpn(name).await {
            Ok(Some((cert, key))) => {
                let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
                match rustls::crypto::ring::sign::any_supported_type(&der) {
                    Ok(signer) => {
                        let ck = CertifiedKey::new(vec![cert.into()], signer);
                        self.store.set_alpn_challenge(name, Arc::new(ck));
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        }
    }

    /// The store the certificates go into.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// Loads the stored certificate for `name` into the store when it is not the one served (none yet,
    /// or another replica renewed it). Returns the owning tenant of an on-demand name, when stored.
    pub async fn load_stored(&self, storage: &Storage, name: &str) -> Option<String> {
        let served = self.store.acme(name);
        let known = served.as_ref().map(|c| c.serial.as_str());
        match storage.cert_if_new(name, known).await {
            Ok(Some((stored, tenant))) => {
                match Certificate::from_pem(&stored.chain_pem, &stored.key_pem, Source::Acme) {
                    Ok(cert) => {
                        tracing::info!(domain = name, not_after = cert.not_after, serial = %cert.serial, "ACME certificate loaded from storage");
                        self.store.set_acme(name, Arc::new(cert));
                        tenant
                    }
                    Err(e) => {
                        tracing::warn!(domain = name, error = %e, "stored ACME certificate unusable");
                        None
                    }
                }
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(domain = name, error = %e, "cannot read ACME storage");
                None
            }
        }
    }

    async fn account(&self, acme: &AcmeSettings, storage: &Storage) -> Result<Account, AcmeError> {
        let mut cache = self.account.lock().await;
        if let Some((for_settings, account)) = cache.as_ref() {
            if for_settings.directory == acme.directory && for_settings.ca_root == acme.ca_root {
                return Ok(account.clone());
            }
        }
        let builder = match &acme.ca_root {
            Some(root) => Account::builder_with_root(root)?,
            None => Account::builder()?,
        };
        let account = match storage.account(&acme.directory).await? {
            Some(credentials) => builder.from_credentials(credentials).await?,
            None => {
                let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
                let eab = acme
                    .eab
                    .as_ref()
                    .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac));
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        acme.directory.clone(),
                        eab.as_ref(),
                    )
                    .await?;
                storage.save_account(&acme.directory, &credentials).await?;
                tracing::info!(directory = %acme.directory, account = account.id(), "ACME account created");
                account
            }
        };
        *cache = Some((acme.clone(), account.clone()));
        Ok(account)
    }

    /// Orders a certificate for `name` (within `order_timeout`) and puts it in the store and storage;
    /// `tenant` is the owner of an on-demand name. With shared storage, `Busy` when another replica
    /// holds the name's lock. Failures that point at the account make the next call load or register
    /// it again.
    pub async fn issue(
        &self,
        acme: &AcmeSettings,
        name: &str,
        tenant: Option<&str>,
    ) -> Result<(), AcmeError> {
        let storage = self.storage(acme)?;
        let lease = match acme.storage {
            StorageKind::Redis { lease, .. } => lease,
            StorageKind::Dir(_) => Duration::ZERO,
        };
        let _lock = match storage.lock(name, lease).await? {
            Lock::Busy => return Err(AcmeError::Busy),
            Lock::Free => None,
            Lock::Held(g) => Some(g),
        };
        // The lock may have been taken right after another replica finished: use its certificate.
        let before = self.store.acme(name).map(|c| c.serial.clone());
        self.load_stored(&storage, name).await;
        let after = self.store.acme(name).map(|c| c.serial.clone());
        if after.is_some() && after != before {
            return Ok(());
        }
        let result = match self.account(acme, &storage).await {
            Ok(account) => {
                let order = self.order(acme, &storage, &account, name, tenant);
                match tokio::time::timeout(acme.order_timeout, order).await {
                    Ok(r) => r,
                    Err(_) => Err(AcmeError::Timeout(acme.order_timeout)),
                }
            }
            Err(e) => Err(e),
        };
        let m = metrics();
        match &result {
            Ok(cert) => {
                // Counted before it is served: whoever sees the certificate sees the order counted.
                m.acme_orders.with_label_values(&["success"]).inc();
                self.store.set_acme(name, Arc::clone(cert));
            }
            Err(e) => {
                m.acme_orders.with_label_values(&["failure"]).inc();
                if matches!(e, AcmeError::Acme(_) | AcmeError::Storage(_)) {
                    // The account may be what failed (deleted at the CA, storage lost).
                    *self.account.lock().await = None;
                }
                if is_unknown_account(e) {
                    // The CA forgot the account (a reset staging or private CA): register anew.
                    if let Err(se) = storage.forget_account(&acme.directory).await {
                        tracing::warn!(error = %se, "cannot forget the ACME account");
                    }
                }
            }
        }
        result.map(|_| ())
    }

    /// One order for `name`, from the first request to the certificate saved in storage; what was
    /// published for its challenges is withdrawn on success and failure alike. The caller serves it.
    async fn order(
        &self,
        acme: &AcmeSettings,
        storage: &Storage,
        account: &Account,
        name: &str,
        tenant: Option<&str>,
    ) -> Result<Arc<Certificate>, AcmeError> {
        let mut published = Published::default();
        let result = self
            .order_inner(acme, storage, account, name, tenant, &mut published)
            .await;
        let tokens = published.tokens;
        self.store.clear_challenges(&[name.to_string()], &tokens);
        if let Storage::Redis(r) = storage {
            r.clear_challenges(name, &tokens).await;
        }
        if let Some(dns) = &acme.dns {
            for (fqdn, value) in &published.records {
                if let Err(e) = dns.cleanup(fqdn, value).await {
                    tracing::warn!(record = %fqdn, error = %e, "DNS-01 record not withdrawn");
                }
            }
        }
        result
    }

    async fn order_inner(
        &self,
        acme: &AcmeSettings,
        storage: &Storage,
        account: &Account,
        name: &str,
        tenant: Option<&str>,
        published: &mut Published,
    ) -> Result<Arc<Certificate>, AcmeError> {
        let identifiers = [Identifier::Dns(name.to_string())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(AcmeError::Authorization(other)),
            }
            let kind = match acme.challenge {
                ChallengeKind::Http01 => ChallengeType::Http01,
                ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
                ChallengeKind::Dns01 => ChallengeType::Dns01,
            };
            let mut challenge = authz
                .challenge(kind)
                .ok_or(AcmeError::NoChallenge(acme.challenge.as_str()))?;
            let key_authorization = challenge.key_authorization();
            match acme.challenge {
                ChallengeKind::Http01 => {
                    self.store
                        .set_http_challenge(&challenge.token, key_authorization.as_str());
                    published.tokens.push(challenge.token.clone());
                    if let Storage::Redis(r) = storage {
                        r.set_http01(&challenge.token, key_authorization.as_str())
                            .await?;
                    }
                }
                ChallengeKind::Dns01 => {
                    let dns = acme.dns.as_ref().ok_or(AcmeError::NoDnsProvider)?;
                    // `*.aggios.app` is validated at `_acme-challenge.aggios.app`.
                    let base = name.strip_prefix("*.").unwrap_or(name);
                    let fqdn = format!("_acme-challenge.{base}.");
                    let value = key_authorization.dns_value();
                    dns.present(&fqdn, &value).await?;
                    published.records.push((fqdn, value));
                }
                ChallengeKind::TlsAlpn01 => {
                    let made = alpn_challenge_cert(name, key_authorization.digest().as_ref())?;
                    self.store.set_alpn_challenge(name, Arc::clone(&made.key));
                    if let Storage::Redis(r) = storage {
                        r.set_alpn(name, &made.cert_der, &made.key_der).await?;
                    }
                }
            }
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(acme.order_timeout);
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Order {
                status,
                problem: problem_of(&mut order).await,
            });
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&retries).await?;
        let cert = Certificate::from_pem(chain_pem.as_bytes(), key_pem.as_bytes(), Source::Acme)?;
        storage
            .save_cert(
                name,
                chain_pem.as_bytes(),
                key_pem.as_bytes(),
                &cert.serial,
                tenant,
            )
            .await?;
        tracing::info!(domain = name, issuer = %cert.issuer, not_after = cert.not_after, serial = %cert.serial, "ACME certificate issued");
        Ok(Arc::new(cert))
    }
}

fn is_unknown_account(e: &AcmeError) -> bool {
    matches!(e, AcmeError::Acme(instant_acme::Error::Api(p))
        if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
}

/// The CA's problem document of a failed order, as JSON for the log (empty when there is none).
fn problem_json(e: &AcmeError) -> String {
    match e {
        AcmeError::Acme(instant_acme::Error::Api(p)) => problem_doc(p),
        AcmeError::Order { problem, .. } => problem.clone(),
        _ => String::new(),
    }
}

/// An RFC 7807 problem document as the CA sent it, as JSON.
fn problem_doc(p: &instant_acme::Problem) -> String {
    serde_json::json!({
        "type": p.r#type,
        "detail": p.detail,
        "status": p.status,
        "subproblems": p.subproblems.iter().map(|s| serde_json::json!({
            "type": s.r#type,
            "detail": s.detail,
            "identifier": s.identifier.as_ref().map(|i| format!("{i:?}")),
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

/// The order's own problem, or the first challenge error of its authorizations.
async fn problem_of(order: &mut instant_acme::Order) -> String {
    if let Some(p) = &order.state().error {
        return problem_doc(p);
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut a)) = authorizations.next().await {
        if let Ok(state) = a.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    return problem_doc(p);
                }
            }
        }
    }
    String::new()
}

/// A TLS-ALPN-01 challenge certificate, servable and in DER for other replicas.
pub struct ChallengeCert {
    pub key: Arc<CertifiedKey>,
    pub cert_der: Vec<u8>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
}

/// The self-signed certificate that proves control of `name` under TLS-ALPN-01 (RFC 8737): the name
/// as its only SAN and the critical acmeIdentifier extension holding SHA-256(key authorization).
pub fn alpn_challenge_cert(name: &str, digest: &[u8]) -> Result<ChallengeCert, AcmeError> {
    let err = |e: rcgen::Error| AcmeError::ChallengeCert(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(err)?;
    let key_der = key.serialize_der();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.clone()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| AcmeError::ChallengeCert(e.to_string()))?;
    Ok(ChallengeCert {
        key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)),
        cert_der: cert.der().to_vec(),
        key_der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_certificate_carries_the_acme_identifier() {
        let made = alpn_challenge_cert("a.example.test", &[7u8; 32]).expect("cert");
        let der = made.key.end_entity_cert().expect("leaf");
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parse");
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // DER OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
    }
}
