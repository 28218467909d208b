"""Flow control at every GridHub boundary: overload slows the system down instead of knocking it over.

One small module per policy, each built on an injected `Clock` (tests use
`libs.flowcontrol.testing.FakeClock`) and reporting to an optional `Observer` (Prometheus via
`FlowMetrics`). Adapters for ASGI, Kafka consumers, httpx, MQTT and FTP wrap these objects.
See docs/flow-control.md.
"""

from libs.flowcontrol.admission import (
    AdmissionController,
    Scalable,
    Signal,
    breaker_signal,
    depth_signal,
    lag_signal,
    strongest,
)
from libs.flowcontrol.breaker import BreakerState, CircuitBreaker, Permit, StateTransition, WindowType
from libs.flowcontrol.buffer import BoundedBuffer, DropCallback, Offer, OverflowStrategy
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.clock import Clock, MonotonicClock, wait_future
from libs.flowcontrol.delivery import (
    Acked,
    DeadLetter,
    DeliveryPolicy,
    Nack,
    Reject,
    SourceRecord,
    deliver,
    dlq_headers,
    dlq_topic,
)
from libs.flowcontrol.errors import (
    BufferClosed,
    BufferFull,
    BufferOverflow,
    BulkheadFull,
    CallNotPermitted,
    ClientBusy,
    FlowControlError,
    LimitExceeded,
    QuotaExceeded,
    Refused,
    Throttled,
)
from libs.flowcontrol.limits import AdaptiveLimiter, AIMDLimit, GradientLimit, LimitAlgorithm, Ticket
from libs.flowcontrol.metrics import BoundaryMetrics, FlowMetrics
from libs.flowcontrol.observer import NULL_OBSERVER, NullObserver, Observer
from libs.flowcontrol.perclient import PerClientLimit
from libs.flowcontrol.policy import (
    AdmissionSettings,
    Boundary,
    BoundaryPolicy,
    BreakerSettings,
    BufferSettings,
    BulkheadSettings,
    DeliverySettings,
    LimiterSettings,
    PerClientSettings,
    QuotaSettings,
    RateSettings,
    ThrottleSettings,
    build_boundaries,
    build_boundary,
)
from libs.flowcontrol.quota import Quota, QuotaDecision, Rate
from libs.flowcontrol.throttle import Throttle
from libs.flowcontrol.window import CountWindow, Snapshot, TimeWindow

__all__ = [
    "NULL_OBSERVER",
    "AIMDLimit",
    "Acked",
    "AdaptiveLimiter",
    "AdmissionController",
    "AdmissionSettings",
    "Boundary",
    "BoundaryMetrics",
    "BoundaryPolicy",
    "BoundedBuffer",
    "BreakerSettings",
    "BreakerState",
    "BufferClosed",
    "BufferFull",
    "BufferOverflow",
    "BufferSettings",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadSettings",
    "CallNotPermitted",
    "CircuitBreaker",
    "ClientBusy",
    "Clock",
    "CountWindow",
    "DeadLetter",
    "DeliveryPolicy",
    "DeliverySettings",
    "DropCallback",
    "FlowControlError",
    "FlowMetrics",
    "GradientLimit",
    "LimitAlgorithm",
    "LimitExceeded",
    "LimiterSettings",
    "MonotonicClock",
    "Nack",
    "NullObserver",
    "Observer",
    "Offer",
    "OverflowStrategy",
    "PerClientLimit",
    "PerClientSettings",
    "Permit",
    "Quota",
    "QuotaDecision",
    "QuotaExceeded",
    "QuotaSettings",
    "Rate",
    "RateSettings",
    "Refused",
    "Reject",
    "Scalable",
    "Signal",
    "Snapshot",
    "SourceRecord",
    "StateTransition",
    "Throttle",
    "ThrottleSettings",
    "Throttled",
    "Ticket",
    "TimeWindow",
    "WindowType",
    "breaker_signal",
    "build_boundaries",
    "build_boundary",
    "deliver",
    "depth_signal",
    "dlq_headers",
    "dlq_topic",
    "lag_signal",
    "strongest",
    "wait_future",
]
