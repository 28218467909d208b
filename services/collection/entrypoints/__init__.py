"""Thin adapters of the outside world in: the REST API, the MQTT ingress, the FTP server."""
