"""Operator commands of the VEE service."""
