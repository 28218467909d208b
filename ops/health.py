"""What the services say about themselves: ``/readyz`` and the breaker states in ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ops.services import SERVICES, Service

BREAKER_METRIC = "gridhub_flow_breaker_state"
ADMITTED_METRIC = "gridhub_flow_admitted"  # the family of gridhub_flow_admitted_total
BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}


@dataclass(frozen=True)
class Readiness:
    """One service's ``/readyz`` answer."""

    service: str
    url: str
    status: str  # ready, not ready, down
    detail: str = ""


@dataclass(frozen=True)
class BreakerState:
    """One breaker of one service (state None when the service could not be asked)."""

    service: str
    boundary: str
    state: str | None
    detail: str = ""


def breaker_states(metrics_text: str) -> dict[str, str]:
    """Boundary -> breaker state from a Prometheus text exposition.

    Every boundary's observer exports the state gauge (0 without a breaker), so only boundaries whose breaker
    policy reports admissions (``gridhub_flow_admitted_total{policy="breaker"}``) count as having one.
    """
    states: dict[str, str] = {}
    with_breaker: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            boundary = sample.labels.get("boundary", "?")
            if family.name == BREAKER_METRIC:
                states[boundary] = BREAKER_STATES.get(int(sample.value), f"unknown ({sample.value})")
            elif family.name == ADMITTED_METRIC and sample.labels.get("policy") == "breaker":
                with_breaker.add(boundary)
    return {boundary: state for boundary, state in states.items() if boundary in with_breaker}


async def _readiness(http: httpx.AsyncClient, service: Service, env: Mapping[str, str] | None) -> Readiness:
    url = f"{service.url(env)}/readyz"
    try:
        response = await http.get(url)
    except httpx.HTTPError as error:
        return Readiness(service.name, url, "down", type(error).__name__)
    if response.status_code == 200:
        return Readiness(service.name, url, "ready")
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        detail = response.text[:200]
    return Readiness(service.name, url, "not ready", f"{response.status_code} {detail}".strip())


async def readiness(services: Sequence[Service] = SERVICES, env: Mapping[str, str] | None = None) -> list[Readiness]:
    """Every service's readiness, asked at once."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        return list(await asyncio.gather(*(_readiness(http, service, env) for service in services)))


async def _breakers(http: httpx.AsyncClient, service: Service, env: Mapping[str, str] | None) -> list[BreakerState]:
    try:
        response = await http.get(f"{service.url(env)}/metrics")
        response.raise_for_status()
    except httpx.HTTPError as error:
        return [BreakerState(service.name, "-", None, f"unreachable: {type(error).__name__}")]
    states = breaker_states(response.text)
    if not states:
        return [BreakerState(service.name, "-", None, "no breakers")]
    return [BreakerState(service.name, boundary, state) for boundary, state in sorted(states.items())]


async def breakers(services: Sequence[Service] = SERVICES, env: Mapping[str, str] | None = None) -> list[BreakerState]:
    """Every breaker of every service, scraped at once."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        found = await asyncio.gather(*(_breakers(http, service, env) for service in services))
    return [state for states in found for state in states]
