-- Tenancy (issue 15): every answer is scoped to the caller's grid company (tenant).
-- A meterpoint's owner comes from its master data on meterpoints.v1 (the newest version wins); a customer's from
-- its own record. Rows with no grid company yet (a meterpoint whose master data has not arrived, a customer from
-- before tenancy) are visible to the platform role only. A work order belongs to the tenant of its meterpoint:
-- grid_company is copied onto it in the batch that applies either side, whichever comes first, so the list of
-- one tenant's orders is an index range, not a join.
ALTER TABLE meterpoints
    ADD COLUMN grid_company   text COLLATE "C",
    ADD COLUMN grid_area      text,
    ADD COLUMN master_version integer;
CREATE INDEX meterpoints_by_grid_company ON meterpoints (grid_company, meterpoint_id);

ALTER TABLE customers ADD COLUMN grid_company text COLLATE "C";

ALTER TABLE work_orders ADD COLUMN grid_company text COLLATE "C";
UPDATE work_orders w SET grid_company = m.grid_company FROM meterpoints m WHERE m.meterpoint_id = w.meterpoint_id;
CREATE INDEX work_orders_by_tenant ON work_orders (grid_company, work_order_id);
CREATE INDEX work_orders_by_tenant_status ON work_orders (grid_company, status, work_order_id);
