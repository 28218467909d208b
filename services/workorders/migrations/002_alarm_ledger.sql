-- Every meter alarm that called for an inspection, and what it did: opened an order, attached to the open
-- order of the same meterpoint and alarm type, or was held back by the per-meterpoint limit on orders opened.
-- One row per alarm id (a redelivered alarm finds its row and does nothing); a flood of alarms from one meter
-- becomes rows here, not work orders.
CREATE TABLE work_order_alarms (
    alarm_id       uuid        PRIMARY KEY,
    meterpoint_id  text        NOT NULL,
    alarm          text        NOT NULL,
    raised_at      timestamptz NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    outcome        text        NOT NULL CHECK (outcome IN ('opened', 'attached', 'rate_limited')),
    -- The order it opened or attached to; NULL when rate limited.
    work_order_id  text        REFERENCES work_orders (work_order_id),
    CHECK ((outcome = 'rate_limited') = (work_order_id IS NULL))
);
CREATE INDEX work_order_alarms_by_order ON work_order_alarms (work_order_id) WHERE work_order_id IS NOT NULL;

-- The alarms that opened orders before this ledger existed.
INSERT INTO work_order_alarms (alarm_id, meterpoint_id, alarm, raised_at, received_at, outcome, work_order_id)
SELECT alarm_id, meterpoint_id, alarm, created_at, created_at, 'opened', work_order_id
FROM work_orders WHERE alarm_id IS NOT NULL;

-- Finding the open alarm order of a meterpoint and alarm type, and counting a meterpoint's recent ones.
CREATE INDEX work_orders_alarm_orders ON work_orders (meterpoint_id, alarm, created_at DESC) WHERE origin = 'alarm';
