"""The customers service's way out: the PostgreSQL store (state and outbox in one transaction)."""
