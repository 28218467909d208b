-- The control schema: which version of the views the read side serves. A rebuild fills <schema>_v<n+1> from the
-- log and then moves this one row in one transaction; consumers read it (FOR SHARE) at the start of every batch.
CREATE TABLE view_version (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version     integer     NOT NULL CHECK (version >= 1),
    switched_at timestamptz NOT NULL DEFAULT now()
);
