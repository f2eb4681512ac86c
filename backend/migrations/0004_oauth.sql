-- OAuth2 (RFC 6749, 7636, 7009, 7662): the backend as each tenant's authorization server. Everything a
-- tenant registers or grants is tenant data under row-level security; only the platform's signing keys
-- are not (one key set signs for every tenant; the tenant is a claim of each token).

CREATE TABLE oauth_clients (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client_id      text NOT NULL UNIQUE,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- Argon2id PHC string of the secret; NULL for a public client (which must use PKCE).
    secret_hash    text,
    redirect_uris  text[] NOT NULL DEFAULT '{}',
    grant_types    text[] NOT NULL,
    scopes         text[] NOT NULL DEFAULT '{}',
    disabled_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    secret_rotated_at timestamptz
);
CREATE INDEX oauth_clients_tenant_idx ON oauth_clients (tenant_id);

-- A user's consent to a client, with the scopes granted. Revoking it revokes every token issued under it.
CREATE TABLE oauth_consents (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client      uuid NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX oauth_consents_live_idx ON oauth_consents (client, user_id) WHERE revoked_at IS NULL;
CREATE INDEX oauth_consents_tenant_idx ON oauth_consents (tenant_id);

-- Authorization codes: only their SHA-256 is stored; single use, short-lived.
CREATE TABLE oauth_codes (
    code_hash       bytea PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client          uuid NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    consent         uuid NOT NULL REFERENCES oauth_consents (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL,
    redirect_uri    text NOT NULL,
    scopes          text[] NOT NULL,
    code_challenge  text NOT NULL,
    -- The token family the code's exchange starts: a replayed code revokes it.
    family          uuid NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);
CREATE INDEX oauth_codes_expires_idx ON oauth_codes (expires_at);

-- Refresh tokens (SHA-256 only), rotated on use; a used one presented again revokes its family.
CREATE TABLE oauth_refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client      uuid NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    consent     uuid REFERENCES oauth_consents (id) ON DELETE CASCADE,
    user_id     uuid,
    scopes      text[] NOT NULL,
    family      uuid NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_refresh_family_idx ON oauth_refresh_tokens (tenant_id, family);

-- Access tokens issued and not yet expired (their `jti`): revoking a consent, a client or a family puts
-- each live one on the Redis denylist the gateway reads.
CREATE TABLE oauth_access_tokens (
    jti         uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client      uuid NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    consent     uuid,
    family      uuid,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX oauth_access_client_idx ON oauth_access_tokens (client, expires_at);

-- The platform's token-signing keys (Ed25519). A new key is published `signs_from` ahead of signing, so
-- every verifier has it before its first token; a key no longer signing stays published until the last
-- token it signed has expired (or it is retired at once, when compromised).
CREATE TABLE oauth_signing_keys (
    kid          text PRIMARY KEY,
    alg          text NOT NULL CHECK (alg = 'EdDSA'),
    private_der  bytea NOT NULL,
    public_x     text NOT NULL,
    signs_from   timestamptz NOT NULL,
    retired_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE oauth_clients ENABLE ROW LEVEL SECURITY;
ALTER TABLE oauth_clients FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON oauth_clients USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE oauth_consents ENABLE ROW LEVEL SECURITY;
ALTER TABLE oauth_consents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON oauth_consents USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE oauth_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE oauth_codes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON oauth_codes USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE oauth_refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE oauth_refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON oauth_refresh_tokens USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE oauth_access_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE oauth_access_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON oauth_access_tokens USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
