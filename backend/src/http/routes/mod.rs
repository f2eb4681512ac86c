//! Dispatch by method and path; one module per resource.

pub mod api_keys;
pub mod auth;
pub mod files;
pub mod health;
pub mod oauth;
pub mod oauth_clients;
pub mod plans;
pub mod tenants;
pub mod users;

use http::Method;
use hyper::body::Incoming;

use super::{ApiError, ApiResult, Ctx};

/// Every endpoint of both listeners, found once per request from the path: what [`dispatch`] runs and
/// what the request metrics call it ([`Endpoint::label`]), so the two can never drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    AuthLogin,
    AuthRefresh,
    AuthLogout,
    UsersMe,
    Users,
    User,
    ApiKeys,
    ApiKey,
    Files,
    File,
    Tenant,
    Tenants,
    TenantUsage,
    Plans,
    Plan,
    TenantPlan,
    TenantSuspend,
    TenantResume,
    OAuthMetadata,
    Jwks,
    OAuthToken,
    OAuthAuthorize,
    OAuthRevoke,
    OAuthIntrospect,
    OAuthClients,
    OAuthClient,
    OAuthClientSecret,
    OAuthConsents,
    OAuthConsent,
    InternalTenantDomains,
    InternalApiKeys,
    InternalTenantPolicy,
    /// No endpoint: 404, or 405 under a known resource.
    Other,
}

impl Endpoint {
    /// The endpoint at `segs` (the path split on `/`) on the internal listener or the public one.
    pub fn of(segs: &[&str], internal: bool) -> Endpoint {
        use Endpoint::*;
        match (internal, segs) {
            (_, ["healthz"]) => Healthz,
            (true, ["internal", "tenant-domains", _]) => InternalTenantDomains,
            (true, ["internal", "api-keys", _]) => InternalApiKeys,
            (true, ["internal", "tenant-policy", _]) => InternalTenantPolicy,
            (true, _) => Other,
            (false, ["readyz"]) => Readyz,
            (false, ["metrics"]) => Metrics,
            (false, ["api", "auth", "login"]) => AuthLogin,
            (false, ["api", "auth", "refresh"]) => AuthRefresh,
            (false, ["api", "auth", "logout"]) => AuthLogout,
            (false, ["api", "users", "me"]) => UsersMe,
            (false, ["api", "users"]) => Users,
            (false, ["api", "users", _]) => User,
            (false, ["api", "api-keys"]) => ApiKeys,
            (false, ["api", "api-keys", _]) => ApiKey,
            (false, ["api", "files"]) => Files,
            (false, ["api", "files", _, ..]) => File,
            (false, ["api", "tenant"]) => Tenant,
            (false, ["api", "tenants"]) => Tenants,
            (false, ["api", "tenant", "usage"]) => TenantUsage,
            (false, ["api", "plans"]) => Plans,
            (false, ["api", "plans", _]) => Plan,
            (false, ["api", "tenants", _, "plan"]) => TenantPlan,
            (false, ["api", "tenants", _, "suspend"]) => TenantSuspend,
            (false, ["api", "tenants", _, "resume"]) => TenantResume,
            (false, [".well-known", "oauth-authorization-server"]) => OAuthMetadata,
            (false, [".well-known", "jwks.json"]) => Jwks,
            (false, ["oauth", "token"]) => OAuthToken,
            (false, ["oauth", "authorize"]) => OAuthAuthorize,
            (false, ["oauth", "revoke"]) => OAuthRevoke,
            (false, ["oauth", "introspect"]) => OAuthIntrospect,
            (false, ["api", "oauth", "clients"]) => OAuthClients,
            (false, ["api", "oauth", "clients", _]) => OAuthClient,
            (false, ["api", "oauth", "clients", _, "secret"]) => OAuthClientSecret,
            (false, ["api", "oauth", "consents"]) => OAuthConsents,
            (false, ["api", "oauth", "consents", _]) => OAuthConsent,
            (false, _) => Other,
        }
    }

    /// The `route` label of the request metrics (bounded: never the raw path).
    pub fn label(self) -> &'static str {
        use Endpoint::*;
        match self {
            Healthz => "healthz",
            Readyz => "readyz",
            Metrics => "metrics",
            AuthLogin => "auth_login",
            AuthRefresh => "auth_refresh",
            AuthLogout => "auth_logout",
            UsersMe => "users_me",
            Users => "users",
            User => "user",
            ApiKeys => "api_keys",
            ApiKey => "api_key",
            Files => "files",
            File => "file",
            Tenant => "tenant",
            Tenants => "tenants",
            TenantUsage => "tenant_usage",
            Plans => "plans",
            Plan => "plan",
            TenantPlan => "tenant_plan",
            TenantSuspend => "tenant_suspend",
            TenantResume => "tenant_resume",
            OAuthMetadata => "oauth_metadata",
            Jwks => "jwks",
            OAuthToken => "oauth_token",
            OAuthAuthorize => "oauth_authorize",
            OAuthRevoke => "oauth_revoke",
            OAuthIntrospect => "oauth_introspect",
            OAuthClients => "oauth_clients",
            OAuthClient => "oauth_client",
            OAuthClientSecret => "oauth_client_secret",
            OAuthConsents => "oauth_consents",
            OAuthConsent => "oauth_consent",
            InternalTenantDomains => "internal_tenant_domains",
            InternalApiKeys => "internal_api_keys",
            InternalTenantPolicy => "internal_tenant_policy",
            Other => "other",
        }
    }
}

/// The path split on `/`, without its leading one.
pub fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

/// Runs the endpoint `ep` (from [`Endpoint::of`] over `segs`) for the request's method.
pub async fn dispatch(
    ctx: &Ctx,
    ep: Endpoint,
    segs: &[&str],
    internal: bool,
    body: Incoming,
) -> ApiResult {
    use Endpoint as E;
    // The third segment of `…/{id}`, `…/{host}` and `…/{prefix}` endpoints.
    let third = segs.get(2).copied().unwrap_or_default();
    // The fourth of `/api/oauth/{resource}/{id}…`.
    let fourth = segs.get(3).copied().unwrap_or_default();
    match (ep, &ctx.method) {
        (E::Healthz, &Method::GET) => health::healthz(ctx).await,
        (E::Readyz, &Method::GET) => health::readyz(ctx).await,
        (E::Metrics, &Method::GET) => health::metrics(ctx).await,
        (E::AuthLogin, &Method::POST) => auth::login(ctx, body).await,
        (E::AuthRefresh, &Method::POST) => auth::refresh(ctx, body).await,
        (E::AuthLogout, &Method::POST) => auth::logout(ctx, body).await,
        (E::UsersMe, &Method::GET) => users::me(ctx).await,
        (E::Users, &Method::GET) => users::list(ctx).await,
        (E::Users, &Method::POST) => users::create(ctx, body).await,
        (E::User, &Method::GET) => users::get(ctx, third).await,
        (E::User, &Method::PATCH) => users::update(ctx, third, body).await,
        (E::User, &Method::DELETE) => users::delete(ctx, third).await,
        (E::ApiKeys, &Method::GET) => api_keys::list(ctx).await,
        (E::ApiKeys, &Method::POST) => api_keys::create(ctx, body).await,
        (E::ApiKey, &Method::DELETE) => api_keys::revoke(ctx, third).await,
        (E::Files, &Method::GET) => files::list(ctx).await,
        (E::File, &Method::PUT) => files::put(ctx, body).await,
        (E::File, &Method::GET) => files::get(ctx).await,
        (E::File, &Method::DELETE) => files::delete(ctx).await,
        (E::Tenant, &Method::GET) => tenants::current(ctx).await,
        (E::Tenants, &Method::GET) => tenants::list(ctx).await,
        (E::Tenants, &Method::POST) => tenants::create(ctx, body).await,
        (E::TenantUsage, &Method::GET) => plans::usage(ctx).await,
        (E::Plans, &Method::GET) => plans::list(ctx).await,
        (E::Plans, &Method::POST) => plans::create(ctx, body).await,
        (E::Plan, &Method::PATCH) => plans::update(ctx, third, body).await,
        (E::TenantPlan, &Method::PUT) => plans::set_tenant_plan(ctx, third, body).await,
        (E::TenantSuspend, &Method::POST) => plans::set_suspended(ctx, third, true).await,
        (E::TenantResume, &Method::POST) => plans::set_suspended(ctx, third, false).await,
        (E::OAuthMetadata, &Method::GET) => oauth::metadata(ctx).await,
        (E::Jwks, &Method::GET) => oauth::jwks(ctx).await,
        (E::OAuthToken, &Method::POST) => oauth::token(ctx, body).await,
        (E::OAuthAuthorize, &Method::GET) => oauth::authorize_page(ctx).await,
        (E::OAuthAuthorize, &Method::POST) => oauth::authorize_decision(ctx, body).await,
        (E::OAuthRevoke, &Method::POST) => oauth::revoke(ctx, body).await,
        (E::OAuthIntrospect, &Method::POST) => oauth::introspect(ctx, body).await,
        (E::OAuthClients, &Method::GET) => oauth_clients::list(ctx).await,
        (E::OAuthClients, &Method::POST) => oauth_clients::create(ctx, body).await,
        (E::OAuthClient, &Method::PATCH) => oauth_clients::update(ctx, fourth, body).await,
        (E::OAuthClient, &Method::DELETE) => oauth_clients::delete(ctx, fourth).await,
        (E::OAuthClientSecret, &Method::POST) => oauth_clients::rotate_secret(ctx, fourth).await,
        (E::OAuthConsents, &Method::GET) => oauth_clients::consents(ctx).await,
        (E::OAuthConsent, &Method::DELETE) => oauth_clients::revoke_consent(ctx, fourth).await,
        (E::InternalTenantDomains, &Method::GET) => tenants::domain_allowed(ctx, third).await,
        (E::InternalTenantPolicy, &Method::GET) => plans::internal_policy(ctx, third).await,
        (E::InternalApiKeys, &Method::GET) => api_keys::lookup(ctx, third).await,
        // The internal listener answers nothing else, whatever the method.
        _ if internal => Err(ApiError::NotFound("no such endpoint".into())),
        (E::Other, _) if !under_a_resource(segs) => {
            Err(ApiError::NotFound("no such endpoint".into()))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Whether a path with no endpoint of its own lies under a resource of the public listener (405 rather
/// than 404).
fn under_a_resource(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["api", "users", ..]
            | ["api", "files", ..]
            | ["api", "api-keys", ..]
            | ["api", "plans", ..]
            | ["api", "tenants", ..]
            | ["api", "oauth", ..]
            | ["oauth", ..]
            | [".well-known", ..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_names_what_dispatch_runs() {
        let label = |path: &str, internal: bool| Endpoint::of(&segments(path), internal).label();
        assert_eq!(label("/api/auth/login", false), "auth_login");
        assert_eq!(label("/api/users/me", false), "users_me");
        assert_eq!(label("/api/users/123", false), "user");
        assert_eq!(label("/api/files/a/b.txt", false), "file");
        assert_eq!(label("/api/files", false), "files");
        // The gateway's key lookups were counted as `other` while dispatch served them.
        assert_eq!(
            label("/internal/api-keys/abcd1234", true),
            "internal_api_keys"
        );
        assert_eq!(
            label("/internal/tenant-domains/x.example", true),
            "internal_tenant_domains"
        );
        // Internal paths are not endpoints of the public listener, nor public ones of the internal.
        assert_eq!(label("/internal/api-keys/abcd1234", false), "other");
        assert_eq!(label("/api/users", true), "other");
        assert_eq!(label("/healthz", true), "healthz");
        assert_eq!(label("/api/users/1/extra", false), "other");
        assert!(under_a_resource(&segments("/api/users/1/extra")));
        assert!(!under_a_resource(&segments("/api/tenant/x")));
    }
}
