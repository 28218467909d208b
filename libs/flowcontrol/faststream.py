"""FastStream adapter: the consumer delivery policy (`consumer.KafkaDelivery`) as a Kafka subscriber middleware.

    delivery = KafkaDelivery.from_boundary(boundaries["workorders_customers_consumer"], producer)
    middleware = DeliveryMiddleware(delivery)
    router = KafkaRouter(middlewares=[middleware])

    @router.subscriber(topics.CUSTOMERS, group_id="workorders", **middleware.subscriber_options())
    async def on_customer_event(body: bytes) -> None: ...  # return: ack; raise Nack / Reject / Refused

FastStream 0.7 takes middlewares per broker or router (not per subscriber), so every subscriber of
the router must be declared with `subscriber_options()`: manual ack (FastStream neither
auto-commits nor acks; this middleware commits exactly `offset + 1` of a record that is done) and
no `batch` (the policy decides per record). A subscriber declared otherwise gets `SetupError` for
every message rather than silently running without the policy. `max_workers=n` gives n consumers
in the group, each handling its partitions one record at a time, which is what makes per-record
commits correct; bound the work they share with the delivery's bulkhead or limiter.

Per message: `consume_scope` runs the handler (`call_next`) under `KafkaDelivery.decide` (retries in
place, dead letter published before anything is committed, `Refused` -> partition paused and
rewound); `after_processed` commits once FastStream has also published the handler's result (a
`@publisher`), so a result that fails to publish rewinds and pauses instead. Records the framework
cannot parse, or that no handler's filter accepts, are dead-lettered. FastStream's own
`AckMessage` / `NackMessage` / `RejectMessage` from a handler map to ack / `Nack` / `Reject`.

With FastStream's in-memory `TestKafkaBroker` there is no real consumer: decisions and dead letters
work as in production, commits and pauses are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Set
from types import TracebackType
from typing import Any

from faststream import AckPolicy, BaseMiddleware, ContextRepo, StreamMessage
from faststream.exceptions import AckMessage, IgnoredException, NackMessage, RejectMessage, SetupError, SkipMessage
from faststream.kafka.message import FakeConsumer

from libs.flowcontrol.consumer import ConsumedRecord, Consumer, KafkaDelivery, Outcome, record_id
from libs.flowcontrol.delivery import Acked, DeadLetter, Nack, Reject

__all__ = ["DeliveryMiddleware"]

logger = logging.getLogger(__name__)
_FORCED = frozenset({"ack_policy", "batch"})


class DeliveryMiddleware:
    """The middleware factory FastStream calls once per consumed record; see the module docstring."""

    def __init__(self, delivery: KafkaDelivery) -> None:
        self.delivery = delivery

    def subscriber_options(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for `subscriber()`: manual ack, `earliest` for a new group, the poll interval.

        `max_poll_interval_ms` is the delivery's `max_poll_interval`, which bounds its retry time.
        """
        if forced := _FORCED & set(overrides):
            raise ValueError(f"{sorted(forced)} are fixed by the delivery middleware")
        options: dict[str, Any] = {
            "ack_policy": AckPolicy.MANUAL,
            "auto_offset_reset": "earliest",
            "max_poll_interval_ms": int(self.delivery.max_poll_interval * 1000),
        }
        return {**options, **overrides}

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware:
        return _DeliveryScope(msg, context=context, delivery=self.delivery)


class _Settled(IgnoredException):
    """Ends a dead-lettered or paused record's processing without a result to publish."""


class _NoConsumer:
    """The consumer of FastStream's in-memory test broker: nothing to commit, pause or rewind."""

    def assignment(self) -> Set[Any]:
        return frozenset()

    def seek(self, partition: Any, offset: int) -> None:
        """Nothing to rewind."""

    def pause(self, *partitions: Any) -> None:
        """Nothing to pause."""

    def resume(self, *partitions: Any) -> None:
        """Nothing to resume."""

    async def commit(self, offsets: Mapping[Any, int] | None = None) -> None:
        """Nothing to commit."""


def _usable(consumer: Any) -> Consumer | None:
    if consumer is None:
        return None
    if isinstance(consumer, FakeConsumer):
        return _NoConsumer()
    return consumer  # type: ignore[no-any-return]


class _DeliveryScope(BaseMiddleware):
    """One record's pass through the middleware."""

    __slots__ = ("_consumer", "_delivery", "_outcome", "_record")

    def __init__(self, msg: Any, /, *, context: ContextRepo, delivery: KafkaDelivery) -> None:
        super().__init__(msg, context=context)
        self._delivery = delivery
        self._outcome: Outcome | None = None
        self._record: ConsumedRecord | None = None
        self._consumer: Consumer | None = None

    async def on_receive(self) -> None:
        subscriber = self.context.get_local("handler_")
        if isinstance(self.msg, tuple) or getattr(subscriber, "ack_policy", None) is not AckPolicy.MANUAL:
            raise SetupError(
                "a subscriber under DeliveryMiddleware must be declared with **middleware.subscriber_options()"
                " (ack_policy=AckPolicy.MANUAL, no batch)"
            )

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:
        record: ConsumedRecord = msg.raw_message
        consumer = _usable(getattr(msg, "consumer", None)) or self._find_consumer()
        self._record, self._consumer = record, consumer
        results: list[Any] = []

        async def handler() -> None:
            try:
                results.append(await call_next(msg))
            except (AckMessage, SkipMessage):
                results.append(None)
            except NackMessage as error:
                raise Nack("nacked by the handler") from error
            except RejectMessage as error:
                raise Reject("rejected by the handler") from error

        self._outcome = outcome = await self._delivery.decide(consumer, record, handler)
        if isinstance(outcome, Acked):
            return results[-1] if results else None
        raise _Settled(outcome)  # nothing for FastStream to publish

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        outcome = self._outcome
        if exc_val is None or isinstance(exc_val, _Settled):
            if isinstance(outcome, Acked | DeadLetter) and self._record is not None and self._consumer is not None:
                await self._delivery.settle(self._consumer, self._record, outcome)
            return exc_val is not None  # swallow our own signal
        if not isinstance(exc_val, Exception):
            return False  # cancelled: `decide` rewound the partition, nothing was committed
        raw: ConsumedRecord | None = self.msg
        record = self._record or raw
        if record is None:
            return False
        consumer = self._consumer or self._find_consumer()
        if self._record is None:
            # FastStream failed before the handler: an unparsable record or none of the filters took it.
            logger.error("%s could not be handled by FastStream (%r); dead-lettering it", record_id(record), exc_val)
            dead = await self._delivery.dead_letter(consumer, record, exc_val)
            if isinstance(dead, DeadLetter):
                await self._delivery.settle(consumer, record, dead)
            return True
        # The handler succeeded but publishing its result failed, or the adapter itself failed.
        logger.error("%s failed after its handler (%r); it will be redelivered", record_id(record), exc_val)
        self._delivery.halt(consumer, record, exc_val)
        return True

    def _find_consumer(self) -> Consumer:
        subscriber = self.context.get_local("handler_")
        found = _usable(getattr(self.msg, "consumer", None)) or _usable(getattr(subscriber, "consumer", None))
        return found or _NoConsumer()
