"""Operator commands: ``python -m services.customers.commands.<command>``."""
