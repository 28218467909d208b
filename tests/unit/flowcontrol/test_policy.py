import inspect
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from libs.flowcontrol.breaker import CircuitBreaker, WindowType
from libs.flowcontrol.buffer import BoundedBuffer, OverflowStrategy
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.delivery import DeliveryPolicy
from libs.flowcontrol.limits import AdaptiveLimiter, AIMDLimit, GradientLimit
from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.perclient import PerClientLimit
from libs.flowcontrol.policy import (
    BoundaryPolicy,
    BreakerSettings,
    BulkheadSettings,
    DeliverySettings,
    LimiterSettings,
    PerClientSettings,
    QuotaSettings,
    ThrottleSettings,
    build_boundaries,
    build_boundary,
)
from libs.flowcontrol.quota import Quota, Rate
from libs.flowcontrol.testing import FakeClock
from libs.flowcontrol.throttle import Throttle

# What a service's settings would hold, e.g. parsed from COLLECTION_BOUNDARIES as JSON.
DECLARED = {
    "rest_ingress": {
        "quota": {"rate": 50, "burst": 100, "overrides": {"datahub": {"rate": 500, "burst": 1000}}},
        "bulkhead": {"max_concurrent": 64, "max_wait": 0.05},
        "admission": {"min_scale": 0.2},
        "max_body_bytes": 1_048_576,
    },
    "mqtt_ingress": {"quota": {"rate": 1, "burst": 10}, "buffer": {"capacity": 1000, "strategy": "backpressure"}},
    "readings_consumer": {"delivery": {"max_attempts": 3}, "breaker": {"window_type": "time_based"}},
    "customers_soap": {
        "bulkhead": {"max_concurrent": 8},
        "breaker": {"failure_rate_threshold": 25},
        "limiter": {"algorithm": "aimd"},
        "timeout": 2.0,
    },
}


def test_a_service_declares_all_its_boundaries_in_one_place(clock: FakeClock) -> None:
    policies = {name: BoundaryPolicy.model_validate(spec) for name, spec in DECLARED.items()}
    boundaries = build_boundaries(policies, clock=clock, metrics=FlowMetrics(CollectorRegistry()))
    rest = boundaries["rest_ingress"]
    assert isinstance(rest.quota, Quota)
    assert rest.quota.limits("datahub") == Rate(500, 1000)
    assert isinstance(rest.bulkhead, Bulkhead)
    assert rest.bulkhead.max_concurrent == 64
    assert rest.policy.max_body_bytes == 1_048_576
    assert rest.admission(lambda: 1.0).update() == pytest.approx(0.2)
    assert rest.quota.scale == pytest.approx(0.2)

    buffer: BoundedBuffer[bytes] = boundaries["mqtt_ingress"].buffer()
    assert (buffer.capacity, buffer.strategy) == (1000, OverflowStrategy.BACKPRESSURE)

    consumer = boundaries["readings_consumer"]
    assert consumer.delivery == DeliveryPolicy(max_attempts=3)
    assert isinstance(consumer.breaker, CircuitBreaker)
    assert consumer.breaker.name == "readings_consumer"
    assert consumer.quota is None
    with pytest.raises(LookupError):
        consumer.buffer()
    with pytest.raises(LookupError):
        consumer.admission(lambda: 0.0)

    soap = boundaries["customers_soap"]
    assert soap.limiter is not None
    assert soap.limiter.limit == 20
    assert soap.policy.timeout == 2.0


def test_record_and_ignore_lists_are_code_not_settings(clock: FakeClock) -> None:
    boundary = build_boundary(
        "customers_soap",
        BoundaryPolicy(breaker=BreakerSettings(), throttle=ThrottleSettings(rate=5)),
        clock=clock,
        record_exceptions=(ConnectionError,),
        ignore_exceptions=(LookupError,),
    )
    assert boundary.breaker is not None
    assert boundary.breaker.classify(ConnectionError()) == "failure"
    assert boundary.breaker.classify(KeyError()) == "ignored"
    assert boundary.breaker.classify(ValueError()) == "success"
    assert isinstance(boundary.throttle, Throttle)


def test_bad_settings_fail_fast() -> None:
    with pytest.raises(ValidationError):
        BoundaryPolicy.model_validate({"quota": {"rate": 0, "burst": 1}})
    with pytest.raises(ValidationError):
        BoundaryPolicy.model_validate({"buffer": {"capacity": 10, "strategy": "drop_oldest"}})
    with pytest.raises(ValidationError):
        BoundaryPolicy.model_validate({"bulkhead": {"max_concurrent": 4, "max_wiat": 1}})
    with pytest.raises(ValidationError):
        BoundaryPolicy.model_validate({"breaker": {"failure_rate_threshold": 150}})


def _defaults(target: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(target).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


@pytest.mark.parametrize(
    ("settings", "targets"),
    [
        (QuotaSettings, [Quota]),
        (ThrottleSettings, [Throttle]),
        (BulkheadSettings, [Bulkhead]),
        (PerClientSettings, [PerClientLimit]),
        (BreakerSettings, [CircuitBreaker]),
        (DeliverySettings, [DeliveryPolicy]),
        (LimiterSettings, [AIMDLimit, GradientLimit, AdaptiveLimiter]),
    ],
)
def test_settings_defaults_equal_constructor_defaults(settings: type[BaseModel], targets: list[Any]) -> None:
    constructor_defaults: dict[str, Any] = {}
    for target in targets:
        constructor_defaults |= _defaults(target)
    for name, field in settings.model_fields.items():
        if field.is_required() or name not in constructor_defaults:
            continue
        declared = field.get_default(call_default_factory=True)
        expected = constructor_defaults[name]
        assert declared == expected or (declared == {} and expected is None), name


def test_limiter_and_breaker_defaults_match_the_anchor_libraries() -> None:
    assert LimiterSettings().algorithm == "gradient"
    breaker = BreakerSettings()
    assert (breaker.failure_rate_threshold, breaker.window_size, breaker.minimum_calls) == (50.0, 100, 100)
    assert breaker.window_type is WindowType.COUNT_BASED
