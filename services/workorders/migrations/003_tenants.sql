-- Tenancy (issue 15): a work order belongs to the grid company (tenant) that owns its meterpoint.
-- meterpoint_owners is the local view of meterpoints.v1 (compacted; the newest version wins), fed by the
-- meterpoints consumer, so scoping an order never costs a remote call.
CREATE TABLE meterpoint_owners (
    meterpoint_id text        PRIMARY KEY,
    grid_company  text        NOT NULL,
    version       integer     NOT NULL CHECK (version >= 1),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- NULL: the meterpoint's master data has not arrived yet (an alarm order for a meterpoint nobody registered, or an
-- order from before tenancy); only the platform role sees such an order until the meterpoints consumer fills it in.
ALTER TABLE work_orders ADD COLUMN grid_company text;
CREATE INDEX work_orders_by_tenant ON work_orders (grid_company, seq DESC);
CREATE INDEX work_orders_by_tenant_status ON work_orders (grid_company, status, seq DESC);
