"""MQTT ingress: meters publish readings and alarms; the PUBACK is sent only after Kafka acknowledged them.

One MQTT 5 connection per replica, QoS 1, a persistent session (clean start off, session expiry) and a shared
subscription (``$share/<group>/gridhub/meters/+/readings`` and ``.../events``), so replicas split the load and
the broker keeps what we did not acknowledge. paho runs its network loop in its own thread and acknowledges
nothing by itself (``manual_ack``):

    paho thread: on_message -> BoundedBuffer.put (backpressure) via run_coroutine_threadsafe
    asyncio:     get_batch -> validate -> device quota -> publish records (events + dead letters) -> Kafka acks
                 -> client.ack(mid) for each message of the batch

Back pressure: the broker sends at most Receive Maximum messages before it waits for PUBACKs, and the buffer
holds at least that many, so a slow Kafka slows the broker, never fills memory. While Kafka is down (breaker
open or publishes failing), the ingress retries the same batch and acknowledges nothing: the broker keeps the
rest. A device over its quota is slowed, not dropped: its message waits (PUBACK held) until the device's
tokens are back. An invalid message is published to the DLQ with its reason, then acknowledged, so it is not
redelivered forever.

Acknowledgements cross threads: ``client.ack`` only queues a packet for paho's thread (like ``publish``). A
message is acknowledged only on the connection that delivered it: after a reconnect the broker redelivers
what was not acknowledged (same packet ids), so an ack from an earlier connection is dropped, never sent on
the new one, where the id may already name another message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from libs.flowcontrol.buffer import BoundedBuffer
from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.errors import BufferClosed, Refused
from libs.flowcontrol.quota import Quota
from services.collection.adapters.kafka import Publisher, PublishFailed
from services.collection.domain import ItemOutcome
from services.collection.handlers import MqttMessage, Pipeline, PreparedMessage, prepare_message
from services.collection.metrics import CollectionMetrics
from services.collection.settings import MqttSettings

logger = logging.getLogger(__name__)

_HANDOFF_POLL = 0.5  # seconds paho's thread waits at a time for buffer space before checking for shutdown


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as paho delivered it, tagged with the connection (generation) it came on."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    quota_paid: bool = False


class MqttIngress:
    """Consumes the meters' topics until cancelled; see the module doc.

    ``run()`` is the whole lifetime (an asyncio task); ``wait_subscribed()`` tells when the broker granted the
    subscriptions. ``client_factory`` builds the paho client (tests may replace it).
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        publisher: Publisher,
        pipeline: Pipeline,
        quota: Quota,
        buffer_factory: Callable[[], BoundedBuffer[Delivery]],
        metrics: CollectionMetrics,
        clock: Clock | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._pipeline = pipeline
        self._quota = quota
        self._buffer_factory = buffer_factory
        self._metrics = metrics
        self._clock = clock or MonotonicClock()
        self._wall_clock = wall_clock
        self._lock = threading.Lock()  # guards _generation against acks racing a (re)connect
        self._generation = 0
        self._stopping = threading.Event()
        self._held: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer: BoundedBuffer[Delivery] | None = None
        self._client: paho.Client | None = None
        self._subscribed = asyncio.Event()
        self._pending: deque[concurrent.futures.Future[None]] = deque()  # paho's thread only
        self._max_pending = settings.receive_maximum

    # --- lifetime ----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, consume until cancelled, then disconnect leaving unacknowledged messages with the broker."""
        self._loop = asyncio.get_running_loop()
        self._subscribed.clear()
        self._buffer = buffer = self._buffer_factory()
        self._stopping.clear()
        client = self._client = self._make_client()
        settings = self._settings
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = settings.session_expiry_seconds
        properties.ReceiveMaximum = settings.receive_maximum
        client.connect_async(
            settings.host,
            settings.port,
            keepalive=settings.keepalive_seconds,
            clean_start=False,
            properties=properties,
        )
        client.loop_start()
        try:
            while True:
                try:
                    batch = await buffer.get_batch(settings.max_messages_per_batch)  # waits for the first
                    room = settings.max_messages_per_batch - len(batch)
                    if room and settings.batch_linger_ms:
                        # A few ms more fill the batch: one Kafka round trip per message would cap throughput.
                        batch += await buffer.get_batch(room, timeout=settings.batch_linger_ms / 1000)
                except BufferClosed:
                    return
                await self._process(batch)
        finally:
            self._stopping.set()
            buffer.close()
            for task in list(self._held):
                task.cancel()
            # Not acknowledged, so the broker redelivers them to the next session of this client id.
            with self._lock:
                self._generation += 1
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            self._metrics.mqtt_connected.set(0)

    async def wait_subscribed(self, timeout: float) -> None:
        """Return once the broker granted the subscriptions (TimeoutError after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    def _make_client(self) -> paho.Client:
        settings = self._settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        client.username_pw_set(settings.username, settings.password.get_secret_value())
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # --- paho's thread (never raise here: an exception would end paho's loop) ---------------------------------

    def _call_soon(self, callback: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(callback, *args)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            logger.error("MQTT connection refused: %s", reason_code)
            return
        with self._lock:
            self._generation += 1
        settings = self._settings
        topics = [
            (f"$share/{settings.share_group}/{settings.topic_prefix}/+/{kind}", SubscribeOptions(qos=1))
            for kind in ("readings", "events")
        ]
        client.subscribe(topics)
        self._metrics.mqtt_connected.set(1)
        logger.info("MQTT connected (session present: %s)", flags.session_present)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._lock:
            self._generation += 1
        self._metrics.mqtt_connected.set(0)
        self._call_soon(self._subscribed.clear)
        if not self._stopping.is_set():
            logger.warning("MQTT disconnected (%s); reconnecting", reason_code)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            logger.error("MQTT subscription refused: %s", ", ".join(refused))
        else:
            self._call_soon(self._subscribed.set)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")
        delivery = Delivery(topic, bytes(message.payload), message.mid, message.qos, self._generation)
        self._hand_over(self._put(delivery))

    async def _put(self, delivery: Delivery) -> None:
        buffer = self._buffer
        if buffer is not None:
            await buffer.put(delivery)

    def _hand_over(self, coroutine: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._stopping.is_set():
            coroutine.close()
            return
        # Puts are pipelined: paho's thread goes on reading while earlier puts complete, in order (the buffer
        # serves waiting producers first come, first served). Only when too many are still pending does it wait
        # for the oldest, which blocks its socket reads: back pressure down to TCP. With Receive Maximum at most
        # the buffer's capacity this never happens; it bounds memory if the broker ignores Receive Maximum.
        pending = self._pending
        pending.append(asyncio.run_coroutine_threadsafe(coroutine, loop))
        while pending and pending[0].done():
            pending.popleft()
        while len(pending) > self._max_pending:
            oldest = pending[0]
            try:
                oldest.result(timeout=_HANDOFF_POLL)
            except concurrent.futures.TimeoutError:
                if self._stopping.is_set():
                    return  # unacknowledged, so the broker redelivers it
                continue
            except BaseException:  # noqa: S110 - closed buffer or cancelled: unacknowledged, redelivered later
                pass
            pending.popleft()

    # --- asyncio -----------------------------------------------------------------------------------------------

    async def _process(self, batch: list[Delivery]) -> None:
        received_at = self._wall_clock()
        settings = self._settings
        ready: list[tuple[Delivery, PreparedMessage]] = []
        for delivery in batch:
            if delivery.generation != self._generation:
                self._metrics.mqtt_messages.labels("stale").inc()
                continue
            prepared = prepare_message(
                MqttMessage(
                    delivery.topic,
                    delivery.payload,
                    received_at,
                    f"{settings.client_id}/{delivery.generation}/{delivery.mid}",
                ),
                pipeline=self._pipeline,
                topic_prefix=settings.topic_prefix,
                max_items=settings.max_readings_per_message,
                max_payload_bytes=settings.max_payload_bytes,
            )
            if not delivery.quota_paid:
                decision = self._quota.try_acquire(prepared.device or "(unknown)", prepared.cost)
                if not decision.allowed and not math.isinf(decision.retry_after):
                    self._hold(delivery, prepared.device or "(unknown)", prepared.cost, decision.retry_after)
                    continue
                # A message costing more than the device's whole burst could never pass: it is let through
                # rather than held forever (settings keep the default burst above the largest message).
            ready.append((delivery, prepared))
        if not ready:
            return
        ready = await self._publish(ready)
        counts = {"acked": 0, "dead_lettered": 0, "stale": 0}
        outcomes: dict[str, list[ItemOutcome]] = {"reading": [], "alarm": []}
        for delivery, prepared in ready:
            if self._ack(delivery):
                counts["dead_lettered" if prepared.dead_lettered else "acked"] += 1
                outcomes[prepared.kind.name] += prepared.outcomes
            else:
                counts["stale"] += 1
        for outcome, count in counts.items():
            if count:
                self._metrics.mqtt_messages.labels(outcome).inc(count)
        for kind, items in outcomes.items():
            self._metrics.count("mqtt", kind, items)

    async def _publish(self, ready: list[tuple[Delivery, PreparedMessage]]) -> list[tuple[Delivery, PreparedMessage]]:
        """Publish until Kafka acknowledged everything; return the deliveries still worth acknowledging."""
        backoff = self._settings.retry_backoff_seconds
        paused = False
        while True:
            records = [record for _, prepared in ready for record in prepared.records]
            try:
                with self._metrics.publish_seconds.labels("mqtt").time():
                    await self._publisher.publish(records)
            except Refused as refused:
                wait = refused.retry_after if refused.retry_after is not None else backoff
                error: str = "Kafka breaker open"
            except PublishFailed as failed:
                wait, error = backoff, str(failed)
                backoff = min(backoff * 2, self._settings.max_retry_backoff_seconds)
            else:
                if paused:
                    logger.info("Kafka takes records again; MQTT ingress resumed")
                    self._metrics.kafka_paused.set(0)
                return ready
            if not paused:
                logger.warning("MQTT ingress paused, holding %d message(s) unacknowledged: %s", len(ready), error)
                self._metrics.kafka_paused.set(1)
                paused = True
            await self._clock.sleep(min(max(wait, 0.05), self._settings.max_retry_backoff_seconds))
            # Messages of a lost connection are redelivered by the broker anyway: stop publishing them here.
            ready = [(d, p) for d, p in ready if d.generation == self._generation]
            if not ready:
                self._metrics.kafka_paused.set(0)
                return ready

    def _hold(self, delivery: Delivery, device: str, cost: int, retry_after: float) -> None:
        self._metrics.mqtt_messages.labels("held").inc()
        task = asyncio.create_task(self._release_when_paid(delivery, device, cost, retry_after))
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def _release_when_paid(self, delivery: Delivery, device: str, cost: int, wait: float) -> None:
        # The PUBACK waits with the message; the broker's Receive Maximum bounds how many can wait at once.
        while True:
            await self._clock.sleep(wait)
            decision = self._quota.try_acquire(device, cost)
            if decision.allowed:
                break
            wait = decision.retry_after
        buffer = self._buffer
        if buffer is not None:
            with contextlib.suppress(BufferClosed):
                await buffer.put(replace(delivery, quota_paid=True))

    def _ack(self, delivery: Delivery) -> bool:
        client = self._client
        with self._lock:
            if client is None or delivery.generation != self._generation:
                return False
            client.ack(delivery.mid, delivery.qos)
            return True
