"""The read side's adapters: PostgreSQL (schemas, versions, the exactly-once apply) and Kafka (consumers, DLQ)."""
