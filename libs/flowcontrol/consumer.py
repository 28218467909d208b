"""Kafka consumer delivery: commit what is done, dead-letter what never will be, pause what cannot run now.

`KafkaDelivery` applies a `DeliveryPolicy` to one consumed record at a time over a plain aiokafka
consumer (`KafkaDelivery.run`, or `handle_batch` in a loop of one's own). Per record:

- a concurrency permit (`Bulkhead` or `AdaptiveLimiter`, shared by all consumers of a service) is
  taken for the whole delivery, waiting at most `permit_wait`;
- `deliver()` runs the handler: success -> `Acked`; `Nack` (and unexpected errors) -> retried in
  place with backoff, then a `DeadLetter`; `Reject` or an error in `reject_on` (`InvalidEvent`,
  pydantic's `ValidationError`) -> a `DeadLetter` at once;
- a `DeadLetter` is published to `<topic>.dlq` (original key, value and headers plus the `dlq.*`
  headers) with the caller's no-loss producer, and only then is the record settled;
- settling an `Acked` or published `DeadLetter` commits `offset + 1` of that partition (or calls
  the service's own `settle`, e.g. offsets kept in PostgreSQL);
- anything else -- a `Refused` (a breaker open, a full bulkhead: the *dependency* is down), a dead
  letter that could not be published, an error of the adapter itself -- commits nothing: the
  partition is rewound to the record and paused for a while (`Paused`), so it is redelivered
  later and never skipped.

Commits are only correct because each partition is handled by one task, one record at a time:
committing `offset + 1` says every earlier record of the partition is done, and every record that
is not settled rewinds its partition before a later one can be handled.

Time bound: aiokafka leaves the group when the time between two polls (`getone`/`getmany`) passes
`max.poll.interval.ms`. One record takes at most `worst_case()` = `permit_wait` + `max_attempts` x
`attempt_timeout` + `policy.max_total_backoff()` + `dead_letter_timeout`; the constructor refuses
settings where that exceeds half of `max_poll_interval`. `run()` stops handling a polled batch once
half of `max_poll_interval` has passed, rewinds the rest and polls again, so the poll interval
stays under `max_poll_interval`. Waiting for a dependency never happens in place: it is a paused
partition while the poll loop keeps polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from aiokafka import TopicPartition
from pydantic import ValidationError

from libs.events.records import InvalidEvent
from libs.events.topics import dlq
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.delivery import Acked, DeadLetter, DeliveryPolicy, Reject, SourceRecord, deliver, dlq_headers
from libs.flowcontrol.errors import Refused
from libs.flowcontrol.limits import AdaptiveLimiter, Ticket
from libs.flowcontrol.observer import NULL_OBSERVER, Observer
from libs.flowcontrol.policy import Boundary

__all__ = [
    "ConsumedRecord",
    "Consumer",
    "DeadLetterProducer",
    "KafkaDelivery",
    "Outcome",
    "Paused",
    "PollingConsumer",
    "Settle",
    "commit_offset",
    "record_id",
]

logger = logging.getLogger(__name__)


class ConsumedRecord(Protocol):
    """What the adapter reads from a consumed record (aiokafka's `ConsumerRecord`)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Consumer(Protocol):
    """The part of aiokafka's `AIOKafkaConsumer` the adapter uses."""

    def assignment(self) -> Set[Any]: ...
    def seek(self, partition: Any, offset: int) -> None: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...
    async def commit(self, offsets: Mapping[Any, int] | None = None) -> None: ...


class PollingConsumer(Consumer, Protocol):
    """A consumer `KafkaDelivery.run` can poll."""

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[Any, Sequence[ConsumedRecord]]: ...


class DeadLetterProducer(Protocol):
    """A producer with the no-loss settings (`libs.platform.kafka.start_producer`)."""

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class Paused:
    """Nothing was decided: the record's partition was rewound to it and paused for `pause_for` seconds."""

    record_id: str
    reason: str
    pause_for: float


Outcome: TypeAlias = Acked | DeadLetter | Paused
Settle: TypeAlias = Callable[[Consumer, ConsumedRecord, Acked | DeadLetter], Awaitable[None]]
Handler: TypeAlias = Callable[[], Awaitable[object]]


async def commit_offset(consumer: Consumer, record: ConsumedRecord, outcome: Acked | DeadLetter) -> None:
    """The default `settle`: commit `offset + 1` of the record's partition (only that partition)."""
    await consumer.commit({TopicPartition(record.topic, record.partition): record.offset + 1})


def record_id(record: ConsumedRecord) -> str:
    """`topic:partition:offset`, the id in logs and the `dlq.record_id` header."""
    return f"{record.topic}:{record.partition}:{record.offset}"


def _reject_reason(error: BaseException) -> str:
    if isinstance(error, InvalidEvent):
        return str(error)  # "<reason code>: <detail>"; the detail never echoes input values
    if isinstance(error, ValidationError):
        # Never str(error): it echoes the input, which may be personal data.
        places = ", ".join(".".join(map(str, e["loc"])) or "(body)" for e in error.errors()[:5])
        return f"schema_violation: {error.error_count()} validation error(s) at {places}"
    return f"{type(error).__name__}: {error}"


class KafkaDelivery:
    """Ack/nack/reject/pause for consumed Kafka records; see the module docstring."""

    def __init__(
        self,
        producer: DeadLetterProducer,
        *,
        policy: DeliveryPolicy | None = None,
        concurrency: Bulkhead | AdaptiveLimiter | None = None,
        observer: Observer | None = None,
        clock: Clock | None = None,
        reject_on: tuple[type[BaseException], ...] = (InvalidEvent, ValidationError),
        attempt_timeout: float = 20.0,
        permit_wait: float = 1.0,
        dead_letter_timeout: float = 15.0,
        pause: float = 1.0,
        max_pause: float = 30.0,
        max_poll_interval: float = 300.0,
        settle: Settle = commit_offset,
        dead_letter_topic: Callable[[str], str] = dlq,
        rng: random.Random | None = None,
    ) -> None:
        if min(attempt_timeout, dead_letter_timeout, pause) <= 0 or permit_wait < 0 or max_pause < pause:
            raise ValueError("need positive timeouts and 0 < pause <= max_pause")
        self.policy = policy or DeliveryPolicy()
        self.max_poll_interval = max_poll_interval
        self._producer = producer
        self._concurrency = concurrency
        self._observer = observer or NULL_OBSERVER
        self._clock = clock or MonotonicClock()
        self._reject_on = reject_on
        self._attempt_timeout = attempt_timeout
        self._permit_wait = permit_wait
        self._dead_letter_timeout = dead_letter_timeout
        self._pause = pause
        self._max_pause = max_pause
        self._settle = settle
        self._dead_letter_topic = dead_letter_topic
        self._rng = rng
        self._resumes: dict[tuple[int, Any], asyncio.Task[None]] = {}
        if self.worst_case() > max_poll_interval / 2:
            raise ValueError(
                f"one record may take {self.worst_case():.1f}s (permit wait + attempts x attempt_timeout + backoff"
                f" + dead-letter timeout), more than half of max_poll_interval ({max_poll_interval}s)"
            )

    @classmethod
    def from_boundary(
        cls, boundary: Boundary, producer: DeadLetterProducer, *, observer: Observer | None = None, **options: Any
    ) -> KafkaDelivery:
        """A delivery with a boundary's `delivery` policy, its bulkhead or limiter and clock.

        `permit_wait` defaults to the bulkhead's or limiter's declared `max_wait`. Metrics go to
        `observer`, by default the boundary's own; pass `metrics.boundary(name, "delivery")` to label the
        delivery's admissions apart from the bulkhead's or limiter's.
        """
        declared = boundary.policy.bulkhead or boundary.policy.limiter
        if declared is not None:
            options.setdefault("permit_wait", declared.max_wait)
        return cls(
            producer,
            policy=boundary.delivery,
            concurrency=boundary.bulkhead or boundary.limiter,
            observer=observer or boundary.observer,
            clock=boundary.clock,
            **options,
        )

    def worst_case(self) -> float:
        """The longest one record can keep the poll loop waiting, in seconds."""
        attempts = self.policy.max_attempts * self._attempt_timeout
        return self._permit_wait + attempts + self.policy.max_total_backoff() + self._dead_letter_timeout

    @property
    def paused(self) -> int:
        """Partitions waiting for their scheduled resume."""
        return sum(1 for task in self._resumes.values() if not task.done())

    async def handle(self, consumer: Consumer, record: ConsumedRecord, handler: Handler) -> Outcome:
        """Decide the record's fate with `decide`, then `settle` it unless it was paused."""
        outcome = await self.decide(consumer, record, handler)
        if not isinstance(outcome, Paused):
            await self.settle(consumer, record, outcome)
        return outcome

    async def decide(self, consumer: Consumer, record: ConsumedRecord, handler: Handler) -> Outcome:
        """Run `handler` under the policy and publish a dead letter if it comes to that; commit nothing.

        Returns `Acked`, a published `DeadLetter`, or `Paused` (partition rewound and paused). Any
        exception (including cancellation) rewinds the partition before it propagates, so a later
        commit of the same partition can never pass this record.
        """
        rid = record_id(record)
        try:
            try:
                permit = await self._acquire()
            except Refused as error:
                return self.halt(consumer, record, error)
            try:
                outcome = await deliver(
                    rid,
                    self._attempt(handler),
                    policy=self.policy,
                    source=SourceRecord(
                        record.topic, record.partition, record.offset, record.value, record.key, tuple(record.headers)
                    ),
                    clock=self._clock,
                    rng=self._rng,
                    observer=self._observer,
                )
            except BaseException as error:
                self._release(permit, error)
                if isinstance(error, self.policy.halt_on):
                    return self.halt(consumer, record, error)
                raise
            self._release(permit, None)
            if isinstance(outcome, DeadLetter):
                try:
                    await self.publish_dead_letter(outcome)
                except Exception as error:
                    logger.error("dead letter of %s not published (%r); the record will be redelivered", rid, error)
                    return self.halt(consumer, record, error)
            return outcome
        except BaseException:
            self.rewind(consumer, record)
            raise

    async def dead_letter(self, consumer: Consumer, record: ConsumedRecord, error: Exception) -> Outcome:
        """Dead-letter a record at once (e.g. one the framework could not even parse); commit nothing."""
        rid = record_id(record)

        async def reject() -> None:
            raise Reject(_reject_reason(error)) from error

        source = SourceRecord(
            record.topic, record.partition, record.offset, record.value, record.key, tuple(record.headers)
        )
        outcome = await deliver(rid, reject, policy=self.policy, source=source, observer=self._observer)
        assert isinstance(outcome, DeadLetter)
        try:
            await self.publish_dead_letter(outcome)
        except Exception as publish_error:
            logger.error("dead letter of %s not published (%r); the record will be redelivered", rid, publish_error)
            return self.halt(consumer, record, publish_error)
        return outcome

    async def publish_dead_letter(self, dead: DeadLetter) -> None:
        """Publish `dead` to its dead-letter topic and wait for the broker's ack (no-loss producer)."""
        source = dead.source
        assert source is not None
        async with asyncio.timeout(self._dead_letter_timeout):
            await self._producer.send_and_wait(
                self._dead_letter_topic(source.topic), value=source.value, key=source.key, headers=dlq_headers(dead)
            )

    async def settle(self, consumer: Consumer, record: ConsumedRecord, outcome: Acked | DeadLetter) -> None:
        """Commit a record that is done; a failed commit only means a redelivery later (at least once)."""
        try:
            await self._settle(consumer, record, outcome)
        except Exception as error:
            # A rebalance took the partition, or the coordinator moved: the next owner gets the record again.
            logger.warning("commit of %s failed (%r); it will be redelivered", record_id(record), error)

    def halt(self, consumer: Consumer, record: ConsumedRecord, error: BaseException) -> Paused:
        """Rewind the record's partition to it, pause it and schedule its resume; commit nothing."""
        retry_after = getattr(error, "retry_after", None)
        pause_for = min(self._max_pause, max(self._pause, retry_after or 0.0))
        reason = getattr(error, "reason", None) or type(error).__name__
        self._observer.rejected("paused")
        tp = TopicPartition(record.topic, record.partition)
        if self.rewind(consumer, record):
            consumer.pause(tp)
            self._schedule_resume(consumer, tp, pause_for)
            logger.warning("%s not handled now (%s); partition paused for %.2fs", record_id(record), reason, pause_for)
        return Paused(record_id(record), str(reason), pause_for)

    def rewind(self, consumer: Consumer, record: ConsumedRecord) -> bool:
        """Seek the record's partition back to the record, if it is still assigned; True if it was."""
        tp = TopicPartition(record.topic, record.partition)
        try:
            if tp not in consumer.assignment():
                return False  # revoked: its next owner starts from the last commit
            consumer.seek(tp, record.offset)
        except Exception as error:
            logger.warning("could not rewind %s (%r)", record_id(record), error)
            return False
        return True

    async def run(
        self,
        consumer: PollingConsumer,
        handler: Callable[[ConsumedRecord], Awaitable[object]],
        *,
        max_records: int = 100,
        poll_timeout: float = 1.0,
    ) -> None:
        """Poll `consumer` (aiokafka, `enable_auto_commit=False`) and handle each record, until cancelled."""
        while True:
            batch = await consumer.getmany(timeout_ms=int(poll_timeout * 1000), max_records=max_records)
            await self.handle_batch(consumer, batch, handler)

    async def handle_batch(
        self,
        consumer: Consumer,
        batch: Mapping[Any, Sequence[ConsumedRecord]],
        handler: Callable[[ConsumedRecord], Awaitable[object]],
    ) -> None:
        """Handle one polled batch partition by partition; a paused partition's later records are skipped.

        Once half of `max_poll_interval` has passed, the unhandled rest is rewound for the next poll.
        """
        deadline = self._clock.now() + self.max_poll_interval / 2
        partitions = list(batch.values())
        for position, records in enumerate(partitions):
            for index, record in enumerate(records):
                if self._clock.now() >= deadline:
                    for rest in (records[index:], *partitions[position + 1 :]):
                        if rest:
                            self.rewind(consumer, rest[0])
                    return
                outcome = await self.handle(consumer, record, _bind(handler, record))
                if isinstance(outcome, Paused):
                    break  # the partition was rewound to this record: the rest comes again after the pause

    async def aclose(self) -> None:
        """Cancel pending resumes (on shutdown, after the consumers stopped)."""
        tasks = list(self._resumes.values())
        self._resumes.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _attempt(self, handler: Handler) -> Handler:
        async def attempt() -> object:
            try:
                async with asyncio.timeout(self._attempt_timeout):
                    return await handler()
            except self._reject_on as error:
                raise Reject(_reject_reason(error)) from error

        return attempt

    async def _acquire(self) -> Ticket | None:
        concurrency = self._concurrency
        if concurrency is None:
            return None
        if isinstance(concurrency, Bulkhead):
            await concurrency.acquire(self._permit_wait)
            return None
        return await concurrency.acquire(self._permit_wait)

    def _release(self, ticket: Ticket | None, error: BaseException | None) -> None:
        concurrency = self._concurrency
        if isinstance(concurrency, Bulkhead):
            concurrency.release()
        elif concurrency is not None and ticket is not None:
            if error is None:
                concurrency.on_success(ticket)
            else:
                concurrency.on_exception(ticket, error)

    def _schedule_resume(self, consumer: Consumer, tp: Any, delay: float) -> None:
        key = (id(consumer), tp)
        previous = self._resumes.pop(key, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(self._resume_later(consumer, tp, delay))
        self._resumes[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._resumes.get(key) is done:
                del self._resumes[key]

        task.add_done_callback(forget)

    async def _resume_later(self, consumer: Consumer, tp: Any, delay: float) -> None:
        await self._clock.sleep(delay)
        with contextlib.suppress(Exception):
            # A partition revoked meanwhile is not ours to resume; a new assignment starts unpaused.
            if tp in consumer.assignment():
                consumer.resume(tp)
                logger.info("partition %s resumed", tp)


def _bind(handler: Callable[[ConsumedRecord], Awaitable[object]], record: ConsumedRecord) -> Handler:
    async def bound() -> object:
        return await handler(record)

    return bound
