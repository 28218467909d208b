-- MQTT device accounts as principals: a meter logs in with its GSRN, belongs to a grid company (tenant) and delivers
-- as a source. The password lives only in the broker (its password file, or dynamic security in production);
-- here is who the device is, since when its password holds (password_set_at), when it ends (expires_at: `gridhub
-- device prune` takes an expired device out of the broker) and when it was removed.
CREATE TABLE device_accounts (
    meterpoint_id   text        PRIMARY KEY CHECK (meterpoint_id ~ '^[0-9]{18}$'),
    tenant          text        NOT NULL CHECK (length(tenant) BETWEEN 13 AND 16),
    created_at      timestamptz NOT NULL,
    password_set_at timestamptz NOT NULL,
    expires_at      timestamptz,
    removed_at      timestamptz
);
CREATE INDEX device_accounts_tenant ON device_accounts (tenant);
