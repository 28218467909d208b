"""Operator commands: ``python -m services.readside.commands.<command>``."""
