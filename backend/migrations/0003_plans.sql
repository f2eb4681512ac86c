-- Tenant plans: what a tenant may use (rates, quotas, sizes), changed at run time by platform admins.
-- `plans` is global (no tenant's data); a tenant's overrides, usage and storage figures are tenant data
-- under row-level security like every other tenant table.

CREATE TABLE plans (
    name                 text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    requests_per_second  bigint  NOT NULL CHECK (requests_per_second BETWEEN 1 AND 1000000000),
    burst                bigint  NOT NULL CHECK (burst BETWEEN 0 AND 1000000000),
    concurrency_weight   integer NOT NULL CHECK (concurrency_weight BETWEEN 1 AND 1000),
    monthly_requests     bigint  NOT NULL CHECK (monthly_requests >= 0),  -- 0: no monthly quota
    storage_bytes        bigint  NOT NULL CHECK (storage_bytes >= 0),
    max_upload_bytes     bigint  NOT NULL CHECK (max_upload_bytes >= 0),
    max_api_keys         integer NOT NULL CHECK (max_api_keys >= 0),
    max_users            integer NOT NULL CHECK (max_users >= 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

INSERT INTO plans (name, requests_per_second, burst, concurrency_weight, monthly_requests, storage_bytes,
                   max_upload_bytes, max_api_keys, max_users) VALUES
    ('free',       20,    40,    1, 100000,        1073741824,      10485760,   2,    5),
    ('pro',        200,   400,   4, 10000000,      107374182400,    104857600,  20,   100),
    ('enterprise', 2000,  4000,  16, 1000000000,   10995116277760,  5368709120, 1000, 10000);

-- NULL: the default plan (the backend's BACKEND_DEFAULT_PLAN). A plan in use cannot be deleted.
ALTER TABLE tenants ADD COLUMN plan text REFERENCES plans (name) ON DELETE RESTRICT;
ALTER TABLE tenants ADD COLUMN suspended_at timestamptz;
-- Bumped by every change of the tenant's plan, overrides or suspension (the gateway's cache names it).
ALTER TABLE tenants ADD COLUMN policy_version bigint NOT NULL DEFAULT 1;
CREATE INDEX tenants_plan_idx ON tenants (plan);

-- A tenant's own values for some of its plan's fields (an enterprise deal, a temporary raise).
CREATE TABLE plan_overrides (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    overrides   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(overrides) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Requests per tenant per calendar month (UTC), flushed from the gateway's Redis counters.
CREATE TABLE usage (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    month       date NOT NULL CHECK (extract(day FROM month) = 1),
    requests    bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    flushed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, month)
);

-- Bytes a tenant stores, and bytes reserved by uploads in progress: an upload reserves its size before
-- it writes, under the row's lock, so concurrent uploads cannot together pass the quota.
CREATE TABLE storage_usage (
    tenant_id       uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    used_bytes      bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
    reserved_bytes  bigint NOT NULL DEFAULT 0 CHECK (reserved_bytes >= 0)
);

ALTER TABLE plan_overrides ENABLE ROW LEVEL SECURITY;
ALTER TABLE plan_overrides FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON plan_overrides USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

ALTER TABLE usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
-- The usage flusher writes every tenant's count of the month in one statement: a transaction that sets
-- `app.usage_flush` may read, insert and update usage rows (it only ever raises a count).
CREATE POLICY usage_flush_select ON usage FOR SELECT
    USING (current_setting('app.usage_flush', true) = 'on');
CREATE POLICY usage_flush_insert ON usage FOR INSERT
    WITH CHECK (current_setting('app.usage_flush', true) = 'on');
CREATE POLICY usage_flush_update ON usage FOR UPDATE
    USING (current_setting('app.usage_flush', true) = 'on')
    WITH CHECK (current_setting('app.usage_flush', true) = 'on');

ALTER TABLE storage_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON storage_usage USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
