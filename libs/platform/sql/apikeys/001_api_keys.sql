-- API keys of the client systems that call a service's REST API. Only a SHA-256 hash of each key is stored.
CREATE TABLE api_keys (
    key_id     text        PRIMARY KEY,
    key_hash   text        NOT NULL CHECK (length(key_hash) = 64),
    role       text        NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    client     text        NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
