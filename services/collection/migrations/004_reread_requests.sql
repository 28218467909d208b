-- Gap fill: the re-read requests a head-end system polls (GET /v1/reread-requests) and acknowledges (DELETE).
-- One row per request id (a redelivered request changes nothing); bounded per client: the oldest are dropped.
CREATE TABLE reread_requests (
    request_id    uuid        PRIMARY KEY,
    tenant        text        NOT NULL CHECK (length(tenant) BETWEEN 13 AND 16),
    client        text        NOT NULL CHECK (length(client) BETWEEN 1 AND 128),
    meterpoint_id text        NOT NULL CHECK (meterpoint_id ~ '^[0-9]{18}$'),
    register      text        NOT NULL,
    resolution    text        NOT NULL,
    range_start   timestamptz NOT NULL,
    range_end     timestamptz NOT NULL,
    requested_at  timestamptz NOT NULL,
    stored_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reread_requests_client ON reread_requests (tenant, client, stored_at, request_id);
