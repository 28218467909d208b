"""The way out: PostgreSQL (the store, the outbox), the database guard, the customers SOAP client, API keys."""
