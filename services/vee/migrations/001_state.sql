-- The validation stage's state: master data, every version of every measured interval, profiles, the published
-- day versions and the day state; offsets live beside them (libs/flowcontrol/transactional.py) so that one
-- transaction moves both (exactly once).

CREATE TABLE consumer_offsets (
    consumer    text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- The newest version of each meterpoint's master data wins (meterpoints.v1 is compacted and read whole).
CREATE TABLE meterpoints (
    meterpoint_id    text        PRIMARY KEY,
    version          integer     NOT NULL,
    grid_company     text        NOT NULL,
    grid_area        text        NOT NULL,
    time_zone        text        NOT NULL,
    type             text        NOT NULL,
    resolution       text        NOT NULL,
    connection_state text        NOT NULL,
    connected_since  date        NOT NULL,
    source_kind      text,
    source_id        text,
    registers        text[]      NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Every version of a measured interval (kWh): never updated in place; the current one is the highest version.
CREATE TABLE intervals (
    meterpoint_id text        NOT NULL,
    register      text        NOT NULL,
    interval_end  timestamptz NOT NULL,
    version       integer     NOT NULL,
    value         float8      NOT NULL,
    meter_index   float8,
    rules         text[]      NOT NULL DEFAULT '{}',
    resolution    text        NOT NULL,
    reading_id    uuid        NOT NULL,
    received_at   timestamptz NOT NULL,
    stored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meterpoint_id, register, interval_end, version)
);

-- Readings of a meterpoint whose master data has not arrived yet: validated when it does.
CREATE TABLE pending_readings (
    id            bigserial   PRIMARY KEY,
    meterpoint_id text        NOT NULL,
    reading       jsonb       NOT NULL,
    received_at   timestamptz NOT NULL
);
CREATE INDEX pending_readings_meterpoint ON pending_readings (meterpoint_id, id);

-- Readings counted but not validated (reactive registers, registers the meterpoint has no series for).
CREATE TABLE unvalidated_counts (
    meterpoint_id text   NOT NULL,
    register      text   NOT NULL,
    readings      bigint NOT NULL,
    PRIMARY KEY (meterpoint_id, register)
);

CREATE TABLE profiles (
    meterpoint_id text     NOT NULL,
    register      text     NOT NULL,
    hour_of_week  smallint NOT NULL,
    samples       float8[] NOT NULL,
    PRIMARY KEY (meterpoint_id, register, hour_of_week)
);

-- One row per (meterpoint, register, local day) the stage knows of.
CREATE TABLE days (
    meterpoint_id     text        NOT NULL,
    register          text        NOT NULL,
    day               date        NOT NULL,
    deadline          timestamptz NOT NULL,
    billing_deadline  timestamptz NOT NULL,
    day_end           timestamptz NOT NULL,
    complete          boolean     NOT NULL DEFAULT false,
    published_version integer,
    final             boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (meterpoint_id, register, day)
);
CREATE INDEX days_due ON days (deadline) WHERE published_version IS NULL;
CREATE INDEX days_incomplete ON days (day_end) WHERE NOT complete;

-- Every published version of a day, points as jsonb (what MeterSeriesValidated carried).
CREATE TABLE day_versions (
    meterpoint_id text        NOT NULL,
    register      text        NOT NULL,
    day           date        NOT NULL,
    version       integer     NOT NULL,
    reason        text        NOT NULL,
    final         boolean     NOT NULL,
    points        jsonb       NOT NULL,
    published_at  timestamptz NOT NULL,
    PRIMARY KEY (meterpoint_id, register, day, version)
);

-- A correction of a day after its billing deadline: who changed what, for the settlement's audit.
CREATE TABLE final_corrections (
    meterpoint_id text        NOT NULL,
    register      text        NOT NULL,
    day           date        NOT NULL,
    version       integer     NOT NULL,
    changed       integer     NOT NULL,
    corrected_at  timestamptz NOT NULL,
    PRIMARY KEY (meterpoint_id, register, day, version)
);

-- Gap-fill requests per missing range: attempts and the last request, for the cool-down and the maximum.
CREATE TABLE gap_requests (
    meterpoint_id  text        NOT NULL,
    register       text        NOT NULL,
    gap_start      timestamptz NOT NULL,
    gap_end        timestamptz NOT NULL,
    attempts       integer     NOT NULL,
    last_requested timestamptz NOT NULL,
    PRIMARY KEY (meterpoint_id, register, gap_start, gap_end)
);
