-- Who changed a principal, a scope or an assignment, what, when and from where (libs/platform/audit.py).
-- Written in the same transaction as the change it records, never updated; detail never holds a secret.
CREATE TABLE audit_events (
    audit_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    actor       text        NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    actor_kind  text        NOT NULL CHECK (actor_kind ~ '^[a-z][a-z_]{0,31}$'),
    origin      text        NOT NULL CHECK (length(origin) BETWEEN 1 AND 200),
    action      text        NOT NULL CHECK (action ~ '^[a-z][a-z_]{0,31}\.[a-z][a-z_]{0,31}$'),
    subject     text        NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    tenant      text        CHECK (length(tenant) BETWEEN 1 AND 16),
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
                            CHECK (jsonb_typeof(detail) = 'object' AND octet_length(detail::text) <= 4096)
);
CREATE INDEX audit_events_time ON audit_events (occurred_at);
CREATE INDEX audit_events_tenant_time ON audit_events (tenant, occurred_at);
