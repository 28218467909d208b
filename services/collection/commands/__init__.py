"""Operator commands: ``python -m services.collection.commands.<command>``."""
