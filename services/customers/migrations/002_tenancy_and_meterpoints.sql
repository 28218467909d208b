-- Tenancy (issue 15): every customer belongs to a grid company, and the registry holds meterpoint master data.
-- A grid company is its market participant id: a GLN-13 or an EIC-16 (the service checks the check character).

-- Customers registered before tenancy get no grid company: nobody can tell which grid company registered them,
-- so they are visible to the platform operator only, who may assign them (UpdateCustomer with gridCompany).
ALTER TABLE customers
    ADD COLUMN grid_company text CHECK (grid_company ~ '^([0-9]{13}|[0-9A-Z-]{15}[0-9A-Z])$');

-- Every query of a tenant's client filters by grid company first.
CREATE INDEX customers_grid_company_name ON customers (grid_company, name, customer_id);

-- One row per meterpoint: the full record MeterpointRegistered / MeterpointUpdated carry (libs/events/meterpoints.py).
CREATE TABLE meterpoints (
    meterpoint_id       text        PRIMARY KEY CHECK (meterpoint_id ~ '^[0-9]{18}$'),
    grid_company        text        NOT NULL CHECK (grid_company ~ '^([0-9]{13}|[0-9A-Z-]{15}[0-9A-Z])$'),
    grid_area           text        NOT NULL CHECK (grid_area ~ '^[A-Z0-9][A-Z0-9-]{0,15}$'),
    time_zone           text        NOT NULL CHECK (length(time_zone) BETWEEN 1 AND 64),
    type                text        NOT NULL CHECK (type IN ('consumption', 'production', 'exchange')),
    neighbour_grid_area text        CHECK (neighbour_grid_area ~ '^[A-Z0-9][A-Z0-9-]{0,15}$'),
    resolution          text        NOT NULL CHECK (resolution IN ('PT15M', 'PT1H')),
    settlement_method   text        CHECK (settlement_method IN ('flex', 'non_profiled', 'profiled')),
    connection_state    text        NOT NULL CHECK (connection_state IN ('new', 'connected', 'disconnected', 'closed_down')),
    connection_since    date        NOT NULL,
    data_source_kind    text        CHECK (data_source_kind IN ('head_end', 'ftp_partner', 'device')),
    data_source_id      text        CHECK (data_source_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    -- Optimistic concurrency: UpdateMeterpoint names the version it read; 1 at registration.
    version             integer     NOT NULL CHECK (version >= 1),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT data_source_kind_and_id CHECK ((data_source_kind IS NULL) = (data_source_id IS NULL)),
    -- The exchange rules of the event contract, so no row can make an invalid event.
    CONSTRAINT exchange_has_a_neighbour CHECK (
        CASE WHEN type = 'exchange'
             THEN neighbour_grid_area IS NOT NULL AND neighbour_grid_area <> grid_area AND settlement_method IS NULL
             ELSE neighbour_grid_area IS NULL
        END
    )
);

-- ListMeterpoints: one grid company's meterpoints in id order (keyset paging), optionally of one grid area.
CREATE INDEX meterpoints_grid_company ON meterpoints (grid_company, meterpoint_id);
CREATE INDEX meterpoints_grid_company_area ON meterpoints (grid_company, grid_area, meterpoint_id);
