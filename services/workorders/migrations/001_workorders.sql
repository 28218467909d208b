-- Work orders, the idempotency keys of their creation, and the replica of who holds which meterpoint.

-- Work order numbers: readable for crews (WO-00000042) and the order of creation for the list's cursor.
CREATE SEQUENCE work_order_number;

CREATE TABLE work_orders (
    seq                 bigint      PRIMARY KEY,
    work_order_id       text        NOT NULL UNIQUE,
    meterpoint_id       text        NOT NULL CHECK (meterpoint_id ~ '^[0-9]{18}$'),
    type                text        NOT NULL
                                    CHECK (type IN ('install_meter', 'replace_meter', 'inspect_meter', 'disconnect', 'reconnect')),
    status              text        NOT NULL
                                    CHECK (status IN ('created', 'scheduled', 'in_progress', 'completed', 'cancelled')),
    version             integer     NOT NULL CHECK (version >= 1),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    origin              text        NOT NULL CHECK (origin IN ('api', 'alarm')),
    description         text,
    -- The alarm an inspection was opened for: unique, so a redelivered alarm cannot open a second order.
    alarm_id            uuid        UNIQUE,
    alarm               text,
    crew                text,
    window_start        timestamptz,
    window_end          timestamptz,
    started_at          timestamptz,
    completed_at        timestamptz,
    result              text        CHECK (result IN ('succeeded', 'failed', 'no_access')),
    new_meter_serial    text,
    cancel_reason       text,
    cancelled_at        timestamptz,
    customer_status     text        NOT NULL CHECK (customer_status IN ('pending', 'known', 'none')),
    customer_source     text        CHECK (customer_source IN ('customers_service', 'replica')),
    customer_id         text,
    customer_name       text,
    customer_email      text,
    customer_phone      text,
    customer_street     text,
    customer_postcode   text,
    customer_city       text,
    customer_country    text,
    customer_checked_at timestamptz,
    -- Pending customers only: the enricher's next try (NULL: at once) and how often the service refused.
    enrich_after        timestamptz,
    enrich_attempts     integer     NOT NULL DEFAULT 0,
    CHECK ((window_start IS NULL) = (window_end IS NULL) AND (window_end IS NULL OR window_end > window_start))
);

CREATE INDEX work_orders_by_status ON work_orders (status, seq DESC);
CREATE INDEX work_orders_by_meterpoint ON work_orders (meterpoint_id, seq DESC);
CREATE INDEX work_orders_by_created_at ON work_orders (created_at);
CREATE INDEX work_orders_pending_customer ON work_orders (seq) WHERE customer_status = 'pending';

-- Idempotency-Key of POST /v1/work-orders, per client system; purged after the retention period.
CREATE TABLE idempotency_keys (
    client         text        NOT NULL,
    key            text        NOT NULL,
    request_hash   text        NOT NULL,
    work_order_id  text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- The replica of customers.v1: full customer records (newest version wins) and their meterpoint periods.
CREATE TABLE replica_customers (
    customer_id  text        PRIMARY KEY,
    kind         text        NOT NULL,
    name         text        NOT NULL,
    email        text,
    phone        text,
    street       text        NOT NULL,
    postcode     text        NOT NULL,
    city         text        NOT NULL,
    country      text        NOT NULL,
    version      integer     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE replica_meterpoint_links (
    meterpoint_id text NOT NULL,
    customer_id   text NOT NULL,
    move_in       date NOT NULL,
    move_out      date,
    PRIMARY KEY (meterpoint_id, customer_id, move_in)
);
CREATE INDEX replica_links_by_customer ON replica_meterpoint_links (customer_id, meterpoint_id);
