"""Thin adapters of the outside world in: the SOAP 1.1 endpoint (parsing, payload codec, routes)."""
