"""The exchange's ways out: the datahub's wire format (adapters/datahub.py)."""
