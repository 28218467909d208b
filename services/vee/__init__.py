"""Validation, estimation and gap fill: every meterpoint's series complete and quality-coded by D+1."""
