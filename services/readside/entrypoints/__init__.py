"""Thin adapters of the outside world in: the query API, the health routes, the live consumer."""
