"""Operator commands: ``python -m services.workorders.commands.<command>``."""
