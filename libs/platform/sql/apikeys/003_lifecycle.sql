-- A key may end by itself (expires_at: set at creation, or moved to the end of a rotation's overlap) and names the
-- key it replaced (rotated_from). libs/platform/apikeys.py: rotate_api_key; `gridhub apikey list` reads by tenant.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN rotated_from text;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_expiry_check CHECK (expires_at IS NULL OR expires_at >= created_at);
CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at);
