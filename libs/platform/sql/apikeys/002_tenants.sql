-- Every key belongs to a grid company (tenant) and has one of the tenancy roles (libs/platform/tenancy.py).
-- Keys issued before tenancy have no tenant: they are revoked here rather than guessed into one, and are
-- re-issued with `gridhub apikey add --tenant ...` (docs/operations.md).
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
ALTER TABLE api_keys ADD COLUMN tenant text;
UPDATE api_keys
   SET role = CASE role WHEN 'read' THEN 'reader' WHEN 'write' THEN 'source' ELSE role END,
       revoked_at = coalesce(revoked_at, now());
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('source', 'reader', 'operator', 'admin', 'platform'));
ALTER TABLE api_keys ADD CONSTRAINT api_keys_tenant_check
    CHECK (revoked_at IS NOT NULL OR (role = 'platform') = (tenant IS NULL));
