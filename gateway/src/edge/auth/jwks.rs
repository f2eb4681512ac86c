//! Asymmetric token keys (RS256/PS256…, ES256/ES384, EdDSA) from a JWKS document, read from a file or
//! fetched from a URL, and refreshed in the background. The last good set is kept when a refresh fails
//! (network error, bad JSON, no usable key), so an identity provider's outage never locks users out.
//!
//! Each key's algorithm is pinned when the set is loaded — from its `alg`, else from its type and curve —
//! and a token must use exactly that algorithm: an HS256 token naming an RSA key's `kid` (the classic
//! key-confusion attack) is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::config::JwksOrigin;
pub use crate::support::jwks::{parse, JwksError, KeySet, PinnedKey};
use arc_swap::ArcSwap;

/// A key set and its refresh schedule. Shared across config reloads (by origin), so a reload keeps the
/// keys already fetched.
pub struct JwksSource {
    pub origin: JwksOrigin,
    keys: ArcSwap<KeySet>,
    next_refresh: Mutex<Instant>,
    refresh: Mutex<Duration>,
}

/// How long a failed fetch waits before the next try (shorter than the refresh interval).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

impl JwksSource {
    /// A source; a file is read now, a URL on the first refresh (until then it has no keys).
    pub fn new(origin: JwksOrigin, refresh: Duration) -> JwksSource {
        let src = JwksSource {
            origin,
            keys: ArcSwap::from_pointee(KeySet::default()),
            next_refresh: Mutex::new(Instant::now()),
            refresh: Mutex::new(refresh),
        };
        if let JwksOrigin::File(_) = src.origin {
            if let Err(e) = src.load_file() {
                tracing::error!(source = %src.origin, error = %e, "JWKS not loaded");
            }
        }
        src
    }

    pub fn set_refresh(&self, every: Duration) {
        *self.refresh.lock().unwrap_or_else(|p| p.into_inner()) = every;
    }

    /// The current keys (one atomic load).
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    fn load_file(&self) -> Result<usize, JwksError> {
        let JwksOrigin::File(p) = &self.origin else {
            return Ok(0);
        };
        let bytes = std::fs::read(p)
            .map_err(|e| JwksError::Read(p.display().to_string(), e.to_string()))?;
        let set = parse(&bytes)?;
        let n = set.by_kid.len();
        self.keys.store(Arc::new(set));
        Ok(n)
    }

    /// When the next refresh is due (a refresh in progress holds it for up to twice its timeout).
    pub fn next_due(&self) -> Instant {
        *self.next_refresh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a refresh is due; claims it (a second caller gets `false` until the refresh is over).
    pub fn claim_due(&self) -> bool {
        let mut next = self.next_refresh.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now < *next {
            return false;
        }
        *next = now + FETCH_TIMEOUT * 2;
        true
    }

    /// Re-reads the file or fetches the URL; on failure the previous keys stay.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let result = match &self.origin {
            JwksOrigin::File(_) => self.load_file(),
            JwksOrigin::Url(u) => match crate::support::http_client::get(u, FETCH_TIMEOUT).await {
                Ok((200, body)) => parse(&body).map(|set| {
                    let n = set.by_kid.len();
                    self.keys.store(Arc::new(set));
                    n
                }),
                Ok((s, _)) => Err(JwksError::Status(s)),
                Err(e) => Err(JwksError::Fetch(e.to_string())),
            },
        };
        let wait = match &result {
            Ok(_) => *self.refresh.lock().unwrap_or_else(|p| p.into_inner()),
            Err(_) => {
                RETRY_AFTER_FAILURE.min(*self.refresh.lock().unwrap_or_else(|p| p.into_inner()))
            }
        };
        *self.next_refresh.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + wait;
        match &result {
            Ok(n) => tracing::debug!(source = %self.origin, keys = n, "JWKS refreshed"),
            Err(e) => {
                tracing::warn!(source = %self.origin, error = %e, "JWKS refresh failed; keeping the last good keys")
            }
        }
        result
    }
}

/// The sources in use, by origin (not on the request path).
#[derive(Default)]
pub struct JwksRegistry {
    sources: Mutex<HashMap<JwksOrigin, Arc<JwksSource>>>,
}

impl JwksRegistry {
    /// The source of `origin`, created on first use.
    pub fn source(&self, origin: &JwksOrigin, refresh: Duration) -> Arc<JwksSource> {
        let mut m = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let src = m
            .entry(origin.clone())
            .or_insert_with(|| Arc::new(JwksSource::new(origin.clone(), refresh)));
        src.set_refresh(refresh);
        Arc::clone(src)
    }

    pub fn all(&self) -> Vec<Arc<JwksSource>> {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
