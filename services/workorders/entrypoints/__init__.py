"""What comes in from outside: the REST API (api.py) and the Kafka consumers (consumers.py)."""
