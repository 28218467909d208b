"""The datahub exchange: validated daily series to the national datahub (and neighbouring grid companies)."""
