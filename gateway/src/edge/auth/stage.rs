//! The auth stage of the request's way: the credential the route asks for checked — a bearer JWT at
//! admission ([`Gateway::authenticate`]), a presented API key looked up afterwards
//! ([`Gateway::check_api_key`]), and a verified token's revocation ([`Gateway::check_revocation`]) —
//! moving [`crate::edge::ctx::Credential`] from presented to verified.

use crate::edge::*;

impl Gateway {
    pub(in crate::edge) fn authenticate(
        rt: &Snapshot,
        policy: AuthPolicy,
        scopes: &[String],
        header: Option<&http::HeaderValue>,
        host_tenant: Option<&str>,
    ) -> std::result::Result<auth::Identity, auth::AuthError> {
        let token = auth::bearer(header.map(|h| h.as_bytes()))?;
        // Validation guarantees [auth.jwt] exists when a route asks for a token.
        let verifier = rt.jwt.as_ref().ok_or(auth::AuthError::MissingToken)?;
        let identity = verifier.verify(token)?;
        auth::bind_tenant(policy, &identity, host_tenant)?;
        // An OAuth token carries the scopes its user (or tenant admin) granted: the route's must be
        // among them, as for API keys.
        if !identity.grants(scopes) {
            return Err(auth::AuthError::InsufficientScope);
        }
        Ok(identity)
    }

    /// Verifies a presented API key (cached in process, then Redis, then the backend's lookup), binds its
    /// tenant to the host's and checks the route's scopes.
    pub(in crate::edge) async fn check_api_key(
        &self,
        ctx: &mut RequestCtx,
        rt: &Snapshot,
    ) -> std::result::Result<(), EdgeError> {
        let (Credential::KeyPresented { key, from_header }, Some(route)) =
            (&ctx.credential, ctx.route(rt))
        else {
            return Ok(());
        };
        let from_header = *from_header;
        let reject = |a: auth::AuthError| refused(route, a);
        let Some(store) = rt.api_keys.as_ref() else {
            return Err(reject(auth::AuthError::InvalidApiKey));
        };
        // A client that keeps presenting refused keys is stopped before any lookup.
        if let Some(ip) = ctx.request.client_ip {
            if let Some(retry) = store.over_budget(ip) {
                let limit = store.failures_per_minute();
                return Err(EdgeError::RateLimited(Box::new(
                    crate::edge::error::RateLimitRefusal {
                        policy: "api_key_failures".to_string(),
                        retry_after_secs: retry,
                        policy_field: format!("\"api_key_failures\";q={limit};w=60"),
                        ratelimit_field: format!("\"api_key_failures\";r=0;t={retry}"),
                        quota: false,
                    },
                )));
            }
        }
        let (identity, record) = match store.verify(key).await {
            Ok(Ok(v)) => v,
            Ok(Err(a)) => {
                if let Some(ip) = ctx.request.client_ip {
                    store.charge_failure(ip);
                }
                return Err(reject(a));
            }
            Err(e) => {
                // A key that cannot be checked is never let through, whatever `on_store_error` says.
                tracing::warn!(error = %e, "API key lookup failed");
                metrics().auth_store_errors.inc();
                return Err(EdgeError::StoreUnavailable);
            }
        };
        auth::bind_tenant(route.spec.auth, &identity, ctx.request.tenant.as_deref())
            .map_err(reject)?;
        if !api_key::has_scopes(&record, &route.spec.scopes) {
            return Err(reject(auth::AuthError::InsufficientScope));
        }
        if ctx.request.tenant.is_none() {
            ctx.request.tenant = Some(identity.tenant.clone());
        }
        ctx.credential = Credential::Key {
            identity,
            record,
            from_header,
        };
        Ok(())
    }

    /// The one Redis round trip of an authenticated request (cached briefly): is its `jti` revoked?
    pub(in crate::edge) async fn check_revocation(
        &self,
        ctx: &RequestCtx,
        rt: &Snapshot,
    ) -> std::result::Result<(), EdgeError> {
        let (Some(store), Some(identity), Some(route)) = (
            self.state.revocation.as_ref(),
            ctx.credential.identity(),
            ctx.route(rt),
        ) else {
            return Ok(());
        };
        let Some(jti) = identity.jti.as_deref() else {
            return Ok(());
        };
        match store.check(jti, &identity.user_id, identity.iat).await {
            revocation::Revocation::Valid => Ok(()),
            revocation::Revocation::Revoked => Err(refused(route, auth::AuthError::Revoked)),
            revocation::Revocation::StoreError => {
                metrics().auth_store_errors.inc();
                match route.spec.on_store_error {
                    crate::config::OnStoreError::Open => Ok(()),
                    crate::config::OnStoreError::Closed => Err(EdgeError::StoreUnavailable),
                }
            }
        }
    }
}
