-- One version of the read side's views, in its own schema (<schema>_v<n>), applied with search_path = that schema.
-- The consumer offsets live next to the views they describe, so that every batch moves both in one transaction
-- and a rebuilt version carries its own offsets when it is switched in.

CREATE TABLE view_meta (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version    integer     NOT NULL,
    timezone   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- next_offset NULL: nothing applied yet, start at the beginning of the log.
CREATE TABLE consumer_offsets (
    topic          text COLLATE "C" NOT NULL,
    partition      integer          NOT NULL,
    next_offset    bigint,
    high_watermark bigint,
    applied_at     timestamptz,
    PRIMARY KEY (topic, partition)
);

-- One row per natural key; the last write in Kafka order wins. energy is the value in kWh (kvarh for reactive
-- registers), exact; replaced_energy is what the latest write replaced (NULL when it inserted the row), so that
-- the upsert can hand the difference to the aggregates in the same statement.
CREATE TABLE readings (
    meterpoint_id   text COLLATE "C" NOT NULL,
    register        text COLLATE "C" NOT NULL,
    interval_end    timestamptz      NOT NULL,
    resolution      text             NOT NULL,
    value           numeric(12, 3)   NOT NULL,
    unit            text             NOT NULL,
    quality         text             NOT NULL,
    source          text             NOT NULL,
    reading_id      uuid             NOT NULL,
    energy          numeric(18, 6)   NOT NULL,
    replaced_energy numeric(18, 6),
    PRIMARY KEY (meterpoint_id, register, interval_end)
) PARTITION BY RANGE (interval_end);

-- Monthly partitions (UTC months) are created as readings arrive; concurrent callers are serialised per schema.
CREATE FUNCTION ensure_readings_partitions(months date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month   date;
    created integer := 0;
    name    text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '.readings'));
    FOREACH month IN ARRAY months LOOP
        name := format('readings_%s', to_char(month, 'YYYY_MM'));
        IF to_regclass(format('%I.%I', current_schema(), name)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I.%I PARTITION OF %I.readings FOR VALUES FROM (%L) TO (%L)',
                current_schema(), name, current_schema(),
                (month::timestamp AT TIME ZONE 'UTC'), ((month + interval '1 month')::timestamp AT TIME ZONE 'UTC')
            );
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

-- Hours are UTC hours, keyed by their start; days are local calendar days of view_meta.timezone.
CREATE TABLE consumption_hourly (
    meterpoint_id text COLLATE "C" NOT NULL,
    register      text COLLATE "C" NOT NULL,
    hour          timestamptz      NOT NULL,
    energy        numeric          NOT NULL,
    readings      integer          NOT NULL,
    PRIMARY KEY (meterpoint_id, register, hour)
);

CREATE TABLE consumption_daily (
    meterpoint_id text COLLATE "C" NOT NULL,
    register      text COLLATE "C" NOT NULL,
    day           date             NOT NULL,
    energy        numeric          NOT NULL,
    readings      integer          NOT NULL,
    PRIMARY KEY (meterpoint_id, register, day)
);

-- Meterpoints named by alarms, links or work orders (last_seen: newest alarm). Meterpoints with readings are in
-- latest_readings, whose last_seen is the newest reading event: the hot path upserts one table, not two.
CREATE TABLE meterpoints (
    meterpoint_id text COLLATE "C" PRIMARY KEY,
    last_seen     timestamptz
);

CREATE TABLE latest_readings (
    meterpoint_id text COLLATE "C" NOT NULL,
    register      text COLLATE "C" NOT NULL,
    interval_end  timestamptz      NOT NULL,
    value         numeric(12, 3)   NOT NULL,
    unit          text             NOT NULL,
    quality       text             NOT NULL,
    source        text             NOT NULL,
    last_seen     timestamptz      NOT NULL,
    PRIMARY KEY (meterpoint_id, register)
);

CREATE TABLE alarms (
    alarm_id      uuid             PRIMARY KEY,
    meterpoint_id text COLLATE "C" NOT NULL,
    alarm         text             NOT NULL,
    raised_at     timestamptz      NOT NULL,
    source        text             NOT NULL,
    details       text
);
CREATE INDEX alarms_by_meterpoint ON alarms (meterpoint_id, raised_at);

CREATE TABLE customers (
    customer_id text COLLATE "C" PRIMARY KEY,
    kind        text        NOT NULL,
    name        text        NOT NULL,
    email       text,
    phone       text,
    street      text        NOT NULL,
    postcode    text        NOT NULL,
    city        text        NOT NULL,
    country     text        NOT NULL,
    version     integer     NOT NULL,
    changed_at  timestamptz NOT NULL
);

-- move_out NULL: still held. The last day held is move_out (inclusive).
CREATE TABLE meterpoint_links (
    customer_id   text COLLATE "C" NOT NULL,
    meterpoint_id text COLLATE "C" NOT NULL,
    move_in       date             NOT NULL,
    move_out      date,
    PRIMARY KEY (customer_id, meterpoint_id, move_in)
);
CREATE INDEX meterpoint_links_by_meterpoint ON meterpoint_links (meterpoint_id, move_in);

CREATE TABLE work_orders (
    work_order_id    text COLLATE "C" PRIMARY KEY,
    meterpoint_id    text COLLATE "C" NOT NULL,
    type             text             NOT NULL,
    status           text             NOT NULL,
    crew             text,
    window_start     timestamptz,
    window_end       timestamptz,
    description      text,
    started_at       timestamptz,
    completed_at     timestamptz,
    result           text,
    new_meter_serial text,
    cancel_reason    text,
    created_at       timestamptz      NOT NULL,
    updated_at       timestamptz      NOT NULL
);
CREATE INDEX work_orders_by_status ON work_orders (status, work_order_id);
CREATE INDEX work_orders_by_meterpoint ON work_orders (meterpoint_id);
