import pytest
from prometheus_client import CollectorRegistry

from libs.flowcontrol.breaker import BreakerState, CircuitBreaker
from libs.flowcontrol.buffer import BoundedBuffer, OverflowStrategy
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.errors import BulkheadFull
from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_every_policy_writes_the_same_series_labelled_by_boundary(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    metrics = FlowMetrics(registry)
    rest = metrics.boundary("rest_ingress", "quota")
    assert metrics.boundary("rest_ingress", "quota") is rest

    quota = Quota(rate=1, burst=2, clock=clock, observer=rest)
    for _ in range(3):
        quota.try_acquire("client")
    bulkhead = Bulkhead(1, clock=clock, observer=metrics.boundary("rest_ingress", "bulkhead"))
    await bulkhead.acquire()
    with pytest.raises(BulkheadFull):
        await bulkhead.acquire()

    mqtt = metrics.boundary("mqtt_ingress")
    buffer: BoundedBuffer[int] = BoundedBuffer(2, OverflowStrategy.DROP_HEAD, clock=clock, observer=mqtt)
    for reading in range(5):
        buffer.put_nowait(reading)

    soap = metrics.boundary("customers_soap")
    breaker = CircuitBreaker(clock=clock, observer=soap)
    breaker.transition_to(BreakerState.OPEN)
    soap.waited(0.3)

    # Each policy counts what it admitted: a sum over policies would count a request once per policy.
    assert value(registry, "gridhub_flow_admitted_total", boundary="rest_ingress", policy="quota") == 2
    assert value(registry, "gridhub_flow_admitted_total", boundary="rest_ingress", policy="bulkhead") == 1
    assert value(registry, "gridhub_flow_rejected_total", boundary="rest_ingress", reason="quota") == 1
    assert value(registry, "gridhub_flow_rejected_total", boundary="rest_ingress", reason="bulkhead_full") == 1
    assert value(registry, "gridhub_flow_in_flight", boundary="rest_ingress") == 1
    assert value(registry, "gridhub_flow_limit", boundary="rest_ingress") == 1
    assert value(registry, "gridhub_flow_dropped_total", boundary="mqtt_ingress", strategy="drop_head") == 3
    assert value(registry, "gridhub_flow_buffer_depth", boundary="mqtt_ingress") == 2
    assert value(registry, "gridhub_flow_breaker_state", boundary="customers_soap") == 2
    assert value(registry, "gridhub_flow_wait_seconds_count", boundary="customers_soap") == 1
    assert value(registry, "gridhub_flow_wait_seconds_bucket", boundary="customers_soap", le="0.5") == 1


def test_one_flow_metrics_per_registry() -> None:
    registry = CollectorRegistry()
    assert FlowMetrics.for_registry(registry) is FlowMetrics.for_registry(registry)
    assert FlowMetrics.for_registry(CollectorRegistry()) is not FlowMetrics.for_registry(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        FlowMetrics(registry)
