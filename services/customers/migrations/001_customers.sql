-- Customers and their meterpoint links. Every change also writes its event to the outbox (platform.outbox),
-- in the same transaction.

-- btree_gist lets one exclusion constraint combine equality on the meterpoint with overlap of the periods;
-- pg_trgm indexes name searches ("contains"). Both are trusted extensions (PostgreSQL 13+), so the database
-- owner (the service's role) may create them without superuser rights. They go into public, which every
-- search_path reaches, so schemas of tests share them and dropping a schema never drops them.
CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public;
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

-- Customer ids are C-<number>: short enough to read out on the phone, never reused.
CREATE SEQUENCE customer_number START WITH 100000;

CREATE TABLE customers (
    customer_id text        PRIMARY KEY CHECK (customer_id ~ '^C-[0-9]{6,12}$'),
    kind        text        NOT NULL CHECK (kind IN ('person', 'organisation')),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email       text,
    phone       text,
    street      text        NOT NULL,
    postcode    text        NOT NULL,
    city        text        NOT NULL,
    country     text        NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    -- Optimistic concurrency: UpdateCustomer names the version it read; 1 at registration.
    version     integer     NOT NULL CHECK (version >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX customers_name_trgm ON customers USING gin (name public.gin_trgm_ops);
CREATE INDEX customers_postcode_key ON customers ((upper(replace(postcode, ' ', ''))));

CREATE TABLE meterpoint_links (
    link_id       bigserial   PRIMARY KEY,
    customer_id   text        NOT NULL REFERENCES customers (customer_id),
    meterpoint_id text        NOT NULL CHECK (meterpoint_id ~ '^[0-9]{18}$'),
    move_in       date        NOT NULL,
    move_out      date,
    -- Both days included; no move-out means open-ended.
    period        daterange   GENERATED ALWAYS AS (daterange(move_in, move_out, '[]')) STORED,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT move_out_not_before_move_in CHECK (move_out IS NULL OR move_out >= move_in),
    -- The rule "a meterpoint has at most one customer on any date", enforced by the database itself, so that
    -- two concurrent LinkMeterpoint calls cannot both pass the service's check. Its GiST index also serves
    -- "who is at this meterpoint on that date".
    CONSTRAINT one_customer_per_meterpoint_and_day EXCLUDE USING gist (meterpoint_id WITH =, period WITH &&)
);

CREATE INDEX meterpoint_links_customer ON meterpoint_links (customer_id, move_in);
