"""The collection service's adapters: Kafka (records and the publisher), API keys, the MQTT broker's devices."""
