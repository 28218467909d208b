"""Shared libraries of GridHub: flow control, event contracts, platform plumbing. Never imports services."""
