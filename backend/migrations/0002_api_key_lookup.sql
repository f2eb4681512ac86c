-- API keys are presented without a tenant: the key names its tenant. A transaction that sets
-- `app.api_key_prefix` may read the one row with that prefix (only the hash, scopes and dates; the key
-- itself is never stored). Every other read stays scoped by `tenant_isolation`.
CREATE POLICY api_key_lookup ON api_keys FOR SELECT
    USING (prefix = nullif(current_setting('app.api_key_prefix', true), ''));
