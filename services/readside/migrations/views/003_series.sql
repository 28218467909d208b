-- Validated daily series (meter.series.v1, issue 16). Every published version of a meterpoint's register's local
-- day is kept: series_days and series_points are keyed by the day's version and only ever inserted (a republished
-- version changes nothing; a published version is never updated in place). series_current names the newest version
-- of each day: the greatest version wins, so an older version that arrives late is kept but does not become current.
-- Fed by a topic of its own: an existing view version takes these tables in place, their offsets start at the log's
-- beginning, so no rebuild is needed for them.
CREATE TABLE series_days (
    meterpoint_id   text COLLATE "C" NOT NULL,
    register        text COLLATE "C" NOT NULL,
    day             date             NOT NULL,
    version         integer          NOT NULL,
    series_id       uuid             NOT NULL,
    grid_company    text COLLATE "C" NOT NULL,
    grid_area       text             NOT NULL,
    meterpoint_type text             NOT NULL,
    resolution      text             NOT NULL,
    time_zone       text             NOT NULL,
    day_start       timestamptz      NOT NULL,
    day_end         timestamptz      NOT NULL,
    reason          text             NOT NULL,
    final           boolean          NOT NULL,
    published_at    timestamptz      NOT NULL,
    -- Interval counts by quality (A04 measured, A03 estimated, A02 missing): the completeness view sums them.
    intervals       integer          NOT NULL,
    measured        integer          NOT NULL,
    estimated       integer          NOT NULL,
    missing         integer          NOT NULL,
    PRIMARY KEY (meterpoint_id, register, day, version)
);

-- version is the day's version; point_version the interval's own (1, and +1 per change of it).
CREATE TABLE series_points (
    meterpoint_id  text COLLATE "C" NOT NULL,
    register       text COLLATE "C" NOT NULL,
    interval_end   timestamptz      NOT NULL,
    version        integer          NOT NULL,
    day            date             NOT NULL,
    position       smallint         NOT NULL,
    interval_start timestamptz      NOT NULL,
    quantity       numeric(15, 3)   NOT NULL,
    quality        text             NOT NULL,
    status         text             NOT NULL,
    point_version  integer          NOT NULL,
    method         text,
    rules          text[]           NOT NULL,
    measured       numeric(15, 3),
    PRIMARY KEY (meterpoint_id, register, interval_end, version)
);

CREATE TABLE series_current (
    meterpoint_id text COLLATE "C" NOT NULL,
    register      text COLLATE "C" NOT NULL,
    day           date             NOT NULL,
    version       integer          NOT NULL,
    grid_area     text             NOT NULL,
    PRIMARY KEY (meterpoint_id, register, day)
);
CREATE INDEX series_current_by_day ON series_current (day, grid_area);
