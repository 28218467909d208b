"""The CQRS read side: Kafka -> exactly-once materialized views in PostgreSQL -> REST queries (see README.md)."""
