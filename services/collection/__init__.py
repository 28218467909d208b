"""Meterpoint data collection: readings and meter events over REST and MQTT (FTP later) into Kafka.

Nothing is acknowledged (202, PUBACK) before Kafka has it; nothing unbounded sits in between. See README.md.
"""
