-- Every FTP partner belongs to a grid company (tenant) and delivers as a source (libs/platform/tenancy.py); it may end
-- by itself (expires_at), and during a password rotation its previous hash stays valid until previous_valid_until
-- (old and new password both open a session until then). Partners from before tenancy have no tenant: they are
-- disabled here rather than guessed into one, and come back with `gridhub ftpuser passwd <login> --tenant <id>`.
ALTER TABLE ftp_users ADD COLUMN tenant text CHECK (length(tenant) BETWEEN 13 AND 16);
ALTER TABLE ftp_users ADD COLUMN expires_at timestamptz;
ALTER TABLE ftp_users ADD COLUMN previous_password_hash text CHECK (previous_password_hash LIKE 'scrypt$%');
ALTER TABLE ftp_users ADD COLUMN previous_valid_until timestamptz;
ALTER TABLE ftp_users ADD CONSTRAINT ftp_users_previous_check
    CHECK ((previous_password_hash IS NULL) = (previous_valid_until IS NULL));
UPDATE ftp_users SET disabled_at = coalesce(disabled_at, now()) WHERE tenant IS NULL;
ALTER TABLE ftp_users ADD CONSTRAINT ftp_users_enabled_has_tenant CHECK (disabled_at IS NOT NULL OR tenant IS NOT NULL);
CREATE INDEX ftp_users_tenant ON ftp_users (tenant);
