"""The two grid companies (tenants) the tests use, and a platform operator: valid GLN-13s, fixed for readability."""

from __future__ import annotations

TENANT_A = "5790000000012"
"""Grid company A ("Nordgrid" in the dev stack)."""
TENANT_B = "5790000000029"
"""Grid company B ("Sydnet" in the dev stack)."""
EIC_TENANT = "10X-GRIDHUB-A--9"
"""A grid company named by an EIC-16 instead of a GLN."""
