"""The FastStream delivery middleware on FastStream's in-memory test broker (the real broker: tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest
from faststream import AckPolicy
from faststream.exceptions import RejectMessage, SetupError
from faststream.kafka import KafkaBroker, TestKafkaBroker

from libs.flowcontrol.consumer import KafkaDelivery
from libs.flowcontrol.delivery import DeliveryPolicy, Nack
from libs.flowcontrol.faststream import DeliveryMiddleware
from libs.flowcontrol.testing import RecordingObserver

TOPIC = "meter.readings.v1"


class DeadLetters:
    """A fake no-loss producer that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, dict[str, bytes]]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append((topic, key, value, dict(headers or [])))


def middleware_for(dead_letters: DeadLetters, observer: RecordingObserver) -> DeliveryMiddleware:
    policy = DeliveryPolicy(max_attempts=3, base_backoff=0.0, max_backoff=0.0)
    return DeliveryMiddleware(KafkaDelivery(dead_letters, policy=policy, observer=observer))


def test_subscriber_options_fix_manual_ack_and_the_poll_interval() -> None:
    middleware = middleware_for(DeadLetters(), RecordingObserver())
    options = middleware.subscriber_options(max_workers=3)
    assert options == {
        "ack_policy": AckPolicy.MANUAL,
        "auto_offset_reset": "earliest",
        "max_poll_interval_ms": 300_000,
        "max_workers": 3,
    }
    with pytest.raises(ValueError, match="ack_policy"):
        middleware.subscriber_options(ack_policy=AckPolicy.ACK_FIRST)


async def test_the_in_memory_broker_retries_dead_letters_and_publishes_results() -> None:
    dead_letters, observer = DeadLetters(), RecordingObserver()
    middleware = middleware_for(dead_letters, observer)
    broker = KafkaBroker(middlewares=[middleware])
    attempts: dict[str, int] = {}
    results: list[Any] = []

    @broker.subscriber(TOPIC, group_id="readside", **middleware.subscriber_options())
    @broker.publisher("results")
    async def on_reading(body: dict[str, str]) -> str:
        attempts[body["id"]] = attempts.get(body["id"], 0) + 1
        if body["id"] == "poison":
            raise Nack("row locked")
        if body["id"] == "refused-by-faststream":
            raise RejectMessage()
        return body["id"]

    @broker.subscriber("results", group_id="test", **middleware.subscriber_options())
    async def on_result(body: str) -> None:
        results.append(body)

    async with TestKafkaBroker(broker) as test_broker:
        for name in ("ok", "poison", "refused-by-faststream", "after"):
            await test_broker.publish({"id": name}, TOPIC, key=name.encode(), headers={"trace": name})

    assert attempts == {"ok": 1, "poison": 3, "refused-by-faststream": 1, "after": 1}
    assert results == ["ok", "after"], "a dead-lettered record publishes no result"
    assert [(topic, key) for topic, key, _, _ in dead_letters.sent] == [
        (f"{TOPIC}.dlq", b"poison"),
        (f"{TOPIC}.dlq", b"refused-by-faststream"),
    ]
    poison_headers = dead_letters.sent[0][3]
    assert poison_headers["trace"] == b"poison"
    assert (poison_headers["dlq.reason"], poison_headers["dlq.attempts"]) == (b"row locked", b"3")
    assert dead_letters.sent[1][3]["dlq.reason"] == b"rejected by the handler"
    assert observer.dropped_strategies == {"dead_letter": 2}


async def test_a_subscriber_without_manual_ack_is_refused_loudly() -> None:
    middleware = middleware_for(DeadLetters(), RecordingObserver())
    broker = KafkaBroker(middlewares=[middleware])
    handled: list[Any] = []

    @broker.subscriber(TOPIC, group_id="readside", ack_policy=AckPolicy.ACK)
    async def on_reading(body: Any) -> None:
        handled.append(body)

    async with TestKafkaBroker(broker) as test_broker:
        with pytest.raises(SetupError, match="subscriber_options"):
            await test_broker.publish({"id": "x"}, TOPIC)
    assert handled == []
