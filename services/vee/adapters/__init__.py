"""The VEE service's way out: PostgreSQL (state, offsets, outbox)."""
