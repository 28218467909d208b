-- Transactional outbox: written in the same transaction as the state change it announces,
-- published to Kafka by the relay (libs/platform/outbox.py), marked only after Kafka acks.
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    topic         text        NOT NULL,
    key           bytea       NOT NULL,
    value         bytea       NOT NULL,
    header_names  text[]      NOT NULL DEFAULT '{}',
    header_values bytea[]     NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);

-- The relay only ever scans unpublished rows, in id order.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Wake the relay when a transaction that wrote to the outbox commits (NOTIFY is delivered on commit).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
