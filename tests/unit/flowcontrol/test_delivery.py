import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

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
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.testing import FakeClock, RecordingObserver

FAILED_AT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SOURCE = SourceRecord(
    topic="meter.readings.v1",
    partition=3,
    offset=42,
    value=b'{"reading": 1.5}',
    key=b"735999999999999993",
    headers=(("ce_type", b"MeterReadingReceived"), ("dlq.reason", b"stale from an earlier round")),
)


class Handler:
    """Fails with the given exceptions in turn, then succeeds; remembers when it was called."""

    def __init__(self, clock: FakeClock, *failures: Exception) -> None:
        self.clock = clock
        self.failures = list(failures)
        self.calls: list[float] = []

    async def __call__(self) -> None:
        self.calls.append(self.clock.now())
        if self.failures:
            raise self.failures.pop(0)


def policy(**overrides: object) -> DeliveryPolicy:
    settings: dict[str, object] = {"max_attempts": 4, "base_backoff": 1.0, "max_backoff": 3.0, "jitter": 0.0}
    settings.update(overrides)
    return DeliveryPolicy(**settings)  # type: ignore[arg-type]


async def test_success_acks_on_the_first_attempt(clock: FakeClock, observer: RecordingObserver) -> None:
    handler = Handler(clock)
    outcome = await deliver("r1", handler, policy=policy(), clock=clock, observer=observer)
    assert outcome == Acked("r1", 1)
    assert observer.admitted_count == 1


async def test_nack_is_retried_with_exponential_backoff_until_success(clock: FakeClock) -> None:
    handler = Handler(clock, Nack("db lock timeout"), Nack("db lock timeout"), Nack("again"))
    outcome = await clock.run(deliver("r1", handler, policy=policy(), clock=clock))
    assert outcome == Acked("r1", 4)
    assert [t - 1_000.0 for t in handler.calls] == [0.0, 1.0, 3.0, 6.0]  # waits 1, 2, then 3 (capped)


async def test_nack_past_max_attempts_is_dead_lettered(clock: FakeClock, observer: RecordingObserver) -> None:
    handler = Handler(clock, *(Nack(f"attempt {n}") for n in range(1, 10)))
    outcome = await clock.run(
        deliver(
            "r1",
            handler,
            policy=policy(),
            source=SOURCE,
            clock=clock,
            observer=observer,
            wall_clock=lambda: FAILED_AT,
        )
    )
    assert isinstance(outcome, DeadLetter)
    assert (outcome.reason, outcome.attempts, outcome.error) == ("attempt 4", 4, "libs.flowcontrol.delivery.Nack")
    assert outcome.source is SOURCE
    assert outcome.topic == "meter.readings.v1.dlq"
    assert len(handler.calls) == 4
    assert observer.rejected_reasons == {"nack": 3}
    assert observer.dropped_strategies == {"dead_letter": 1}


async def test_reject_is_dead_lettered_at_once_with_the_underlying_error(clock: FakeClock) -> None:
    async def handler() -> None:
        try:
            int("not a number")
        except ValueError as error:
            raise Reject("reading is not a number") from error

    outcome = await deliver("r1", handler, policy=policy(), source=SOURCE, clock=clock)
    assert isinstance(outcome, DeadLetter)
    assert outcome.attempts == 1
    assert outcome.reason == "reading is not a number"
    assert outcome.error == "builtins.ValueError"
    assert clock.now() == 1_000.0


async def test_unexpected_exceptions_are_retried_like_nack_by_default(clock: FakeClock) -> None:
    handler = Handler(clock, KeyError("register"))
    assert await clock.run(deliver("r1", handler, policy=policy(), clock=clock)) == Acked("r1", 2)
    strict = Handler(clock, KeyError("register"))
    outcome = await deliver("r2", strict, policy=policy(retry_unexpected=False), clock=clock)
    assert isinstance(outcome, DeadLetter)
    assert outcome.attempts == 1
    assert outcome.error == "builtins.KeyError"
    assert outcome.reason == "KeyError: 'register'"


async def test_a_refusing_dependency_halts_instead_of_dead_lettering(clock: FakeClock) -> None:
    handler = Handler(clock, Nack("flaky"), CallNotPermitted("database breaker open", retry_after=5))
    with pytest.raises(CallNotPermitted):
        await clock.run(deliver("r1", handler, policy=policy(), clock=clock))
    assert len(handler.calls) == 2


async def test_a_poison_record_does_not_block_its_partition(clock: FakeClock) -> None:
    handled: list[int] = []
    dead: list[DeadLetter] = []
    committed: list[int] = []

    def handler_for(offset: int) -> Callable[[], Awaitable[None]]:
        async def handle() -> None:
            if offset == 1:
                raise Nack("poison")
            handled.append(offset)

        return handle

    async def consume() -> None:
        for offset in range(4):
            outcome = await deliver(f"o{offset}", handler_for(offset), policy=policy(), clock=clock)
            if isinstance(outcome, DeadLetter):
                dead.append(outcome)
            committed.append(offset)

    await clock.run(consume())
    assert handled == [0, 2, 3]
    assert committed == [0, 1, 2, 3]
    assert [d.record_id for d in dead] == ["o1"]
    assert clock.now() - 1_000.0 == policy().max_total_backoff() == 6.0


def test_backoff_stays_within_its_bounds() -> None:
    jittery = DeliveryPolicy(max_attempts=20, base_backoff=0.1, max_backoff=5.0, multiplier=2.0, jitter=0.25)
    rng = random.Random(7)
    for attempt in range(1, 20):
        ceiling = min(5.0, 0.1 * 2 ** (attempt - 1))
        for _ in range(50):
            assert 0.75 * ceiling <= jittery.backoff(attempt, rng) <= ceiling
    assert DeliveryPolicy(jitter=0).backoff(1) == 0.1


def test_policy_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        DeliveryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        DeliveryPolicy(jitter=1.5)
    with pytest.raises(ValueError, match="backoff"):
        DeliveryPolicy(base_backoff=2.0, max_backoff=1.0)


def test_dead_letter_headers_keep_the_originals_and_name_the_failure() -> None:
    dead = DeadLetter("r1", "schema mismatch", 3, "pydantic_core.ValidationError", SOURCE, FAILED_AT)
    assert dlq_headers(dead) == dead.headers()
    assert dead.headers() == [
        ("ce_type", b"MeterReadingReceived"),
        ("dlq.reason", b"schema mismatch"),
        ("dlq.attempts", b"3"),
        ("dlq.error", b"pydantic_core.ValidationError"),
        ("dlq.record_id", b"r1"),
        ("dlq.failed_at", b"2026-11-26T12:00:00+00:00"),
        ("dlq.source.topic", b"meter.readings.v1"),
        ("dlq.source.partition", b"3"),
        ("dlq.source.offset", b"42"),
    ]
    assert dlq_topic("customers.v1") == "customers.v1.dlq"


def test_sources_without_partition_or_offset_leave_those_headers_out() -> None:
    mqtt = SourceRecord(topic="mqtt:meters/+/readings", partition=None, offset=None, value=b"x")
    names = [name for name, _ in DeadLetter("m1", "bad", 1, "E", mqtt, FAILED_AT).headers()]
    assert "dlq.source.partition" not in names
    assert "dlq.source.offset" not in names
    assert "dlq.source.topic" in names
    assert DeadLetter("m1", "bad", 1, "E", None, FAILED_AT).topic is None
