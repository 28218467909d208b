"""A scope view filled by hand for unit tests (the real one is fed from meterpoints.v1)."""

from __future__ import annotations

from services.collection.scope import ScopeView
from tests.tenants import TENANT_A


def assigned_view(
    *meterpoints: str, source: str, kind: str = "head_end", tenant: str = TENANT_A, capacity: int = 1000
) -> ScopeView:
    """A caught-up view in which ``meterpoints`` belong to ``tenant`` and are delivered by ``source``."""
    view = ScopeView(capacity)
    for meterpoint in meterpoints:
        view.apply(meterpoint, grid_company=tenant, source=(kind, source), version=1)
    view.ready = True
    return view
