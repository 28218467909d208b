"""Adapters of the customers service: the PostgreSQL store and the outbox relay's Kafka side."""
