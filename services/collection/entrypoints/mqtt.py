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
rest. An invalid message is published to the DLQ with its reason, then acknowledged, so it is not redelivered
forever.

Per-device fairness: the subscriber session is shared by every meter, so a PUBACK held for one device takes a
slot of everyone's in-flight window (Receive Maximum). A device over its quota therefore parks at most
``quota_lane_messages`` messages in its own lane (and at most ``quota_lanes`` devices park at once, together far
below Receive Maximum), released in order by one scheduler as its tokens come back (libs/flowcontrol/lanes.py).
Beyond that its message is published to the DLQ with reason ``quota_exceeded`` (the original payload, so it can
be replayed) and then acknowledged. Either way a message the broker acknowledged to a device reaches
meter.readings.v1 or the DLQ with its reason, and is counted; the other meters never wait for it.

The broker's own counters (queue depth, drops, clients) arrive on ``$SYS/broker/...`` (QoS 0, no ack) and become
gauges. Connect properties: Maximum Packet Size (the broker never sends us more) and, when ``tls_ca_file`` is
set, TLS with the broker's certificate verified against that CA (and a client certificate if configured).

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
import ssl
import threading
import time
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
from libs.flowcontrol.lanes import QuotaLanes
from libs.flowcontrol.quota import Quota
from services.collection.adapters.devicecommands import CommandNotDelivered
from services.collection.adapters.kafka import Publisher, PublishFailed, dead_letter_record
from services.collection.domain import ItemOutcome
from services.collection.handlers import MqttMessage, Pipeline, PreparedMessage, prepare_message
from services.collection.metrics import CollectionMetrics
from services.collection.settings import MqttSettings

logger = logging.getLogger(__name__)

_HANDOFF_POLL = 0.5  # seconds paho's thread waits at a time for buffer space before checking for shutdown
_OVER_QUOTA_LOG_EVERY = 10.0  # seconds: one summary line for quota_exceeded letters, not one per message

QUOTA_EXCEEDED = "quota_exceeded"
"""The DLQ reason of a message its device sent over its quota with no room left in the device's lane."""

# Mosquitto's $SYS counters exported as gauges (the ACL lets only the service accounts read them).
BROKER_COUNTERS = {
    "$SYS/broker/store/messages/count": "stored_messages",
    "$SYS/broker/publish/messages/dropped": "dropped_messages",
    "$SYS/broker/clients/connected": "connected_clients",
}


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
        self._lanes: QuotaLanes[Delivery] = QuotaLanes(
            quota,
            max_lanes=settings.quota_lanes,
            max_per_lane=settings.quota_lane_messages,
            clock=self._clock,
            on_depth=metrics.mqtt_parked.set,
        )
        self._over_quota_logged = -math.inf
        self._over_quota_unlogged = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer: BoundedBuffer[Delivery] | None = None
        self._client: paho.Client | None = None
        self._subscribed = asyncio.Event()
        self._pending: deque[concurrent.futures.Future[None]] = deque()  # paho's thread only
        self._max_pending = settings.receive_maximum
        # PUBACKs of the commands this session publishes (gap fill): packet id -> reason code.
        self._command_acks: dict[int, int] = {}
        self._command_acked = threading.Condition()

    # --- lifetime ----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, consume until cancelled, then disconnect leaving unacknowledged messages with the broker.

        Connects once the scope view has caught up: before that, a registered meterpoint could look unknown.
        """
        scope = self._pipeline.scope
        while scope is not None and not scope.ready:
            await self._clock.sleep(0.05)
        self._loop = asyncio.get_running_loop()
        self._subscribed.clear()
        self._buffer = buffer = self._buffer_factory()
        self._stopping.clear()
        client = self._client = self._make_client()
        settings = self._settings
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = settings.session_expiry_seconds
        properties.ReceiveMaximum = settings.receive_maximum
        properties.MaximumPacketSize = settings.max_packet_bytes
        client.connect_async(
            settings.host,
            settings.port,
            keepalive=settings.keepalive_seconds,
            clean_start=False,
            properties=properties,
        )
        client.loop_start()
        releases = asyncio.create_task(self._lanes.run(self._release), name="mqtt-quota-lanes")
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
            releases.cancel()
            await asyncio.gather(releases, return_exceptions=True)
            self._lanes.clear()  # unacknowledged, so the broker redelivers them
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
        if settings.tls_ca_file is not None:
            client.tls_set(
                ca_certs=str(settings.tls_ca_file),
                certfile=None if settings.tls_cert_file is None else str(settings.tls_cert_file),
                keyfile=None if settings.tls_key_file is None else str(settings.tls_key_file),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # --- commands to devices (gap fill) ------------------------------------------------------------------------

    async def publish_command(self, topic: str, payload: bytes, *, timeout: float) -> None:
        """Publish ``payload`` to a device's commands topic with QoS 1 on this session; return after the PUBACK.

        Raises `CommandNotDelivered` when the session is not connected, the broker refused the message (its ACL)
        or no PUBACK came within ``timeout`` seconds.
        """
        client = self._client
        if client is None or not client.is_connected():
            raise CommandNotDelivered("the MQTT session is not connected", retry_after=1.0)
        # Not under _command_acked: paho calls on_publish holding its own message lock (a lock-order inversion).
        info = client.publish(topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise CommandNotDelivered(f"the command was not sent ({paho.error_string(info.rc)})", retry_after=1.0)
        mid = info.mid

        def wait() -> int | None:
            with self._command_acked:
                if not self._command_acked.wait_for(lambda: mid in self._command_acks, timeout):
                    return None
                return self._command_acks.pop(mid)

        code = await asyncio.to_thread(wait)
        if code is None:
            raise CommandNotDelivered(f"no PUBACK within {timeout:g} s", retry_after=1.0)
        if code >= 0x80:
            raise CommandNotDelivered(f"the broker refused the command (reason {code:#x})", retry_after=5.0)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._command_acked:
            self._command_acks[mid] = int(reason_code.value)
            if len(self._command_acks) > 10_000:  # PUBACKs nobody waits for any more (timed out)
                self._command_acks.pop(next(iter(self._command_acks)))
            self._command_acked.notify_all()

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
        topics += [(topic, SubscribeOptions(qos=0)) for topic in BROKER_COUNTERS]
        client.subscribe(topics)
        self._metrics.mqtt_connected.set(1)
        logger.info("MQTT connected (session present: %s)", flags.session_present)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._lock:
            self._generation += 1
        self._metrics.mqtt_connected.set(0)
        self._call_soon(self._subscribed.clear)
        self._call_soon(self._forget_parked)
        if not self._stopping.is_set():
            logger.warning("MQTT disconnected (%s); reconnecting", reason_code)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        meters, counters = reason_codes[:2], reason_codes[2:]
        if any(code.is_failure for code in counters):
            logger.warning("MQTT: the broker refused its $SYS counters; no gridhub_collection_mqtt_broker_* gauges")
        refused = [str(code) for code in meters if code.is_failure]
        if refused:
            logger.error("MQTT subscription refused: %s", ", ".join(refused))
        else:
            self._call_soon(self._subscribed.set)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")
        if topic.startswith("$SYS/"):
            self._broker_counter(topic, message.payload)
            return
        delivery = Delivery(topic, bytes(message.payload), message.mid, message.qos, self._generation)
        self._hand_over(self._put(delivery))

    def _broker_counter(self, topic: str, payload: bytes | bytearray) -> None:
        name = BROKER_COUNTERS.get(topic)
        if name is None:
            return
        try:
            value = float(payload)
        except ValueError:
            return
        self._metrics.mqtt_broker.labels(name).set(value)

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
        spilled: set[int] = set()  # ids of the quota_exceeded letters among `ready`
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
            if not delivery.quota_paid and not self._admit(prepared):
                if self._lanes.park(prepared.device or "(unknown)", prepared.cost, delivery):
                    self._metrics.mqtt_messages.labels("parked").inc()
                    continue
                prepared = self._over_quota(delivery, prepared, received_at)
                spilled.add(id(prepared))
            ready.append((delivery, prepared))
        if not ready:
            return
        ready = await self._publish(ready)
        counts = {"acked": 0, "dead_lettered": 0, QUOTA_EXCEEDED: 0, "stale": 0}
        outcomes: dict[str, list[ItemOutcome]] = {"reading": [], "alarm": []}
        over_quota = 0
        for delivery, prepared in ready:
            if not self._ack(delivery):
                counts["stale"] += 1
            elif id(prepared) in spilled:
                counts[QUOTA_EXCEEDED] += 1
                over_quota += prepared.cost
            else:
                counts["dead_lettered" if prepared.dead_lettered else "acked"] += 1
                outcomes[prepared.kind.name] += prepared.outcomes
        if over_quota:
            self._metrics.rejections.labels("mqtt", QUOTA_EXCEEDED).inc(over_quota)
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

    def _admit(self, prepared: PreparedMessage) -> bool:
        """Whether the device may send this message now (its tokens paid); False: park it or record it."""
        device = prepared.device or "(unknown)"
        if self._lanes.has_lane(device):
            return False  # behind the device's parked messages, in order
        decision = self._quota.try_acquire(device, prepared.cost)
        # A message costing more than the device's whole burst could never pass: it is let through rather than
        # parked forever (settings keep every burst at or above max_readings_per_message).
        return decision.allowed or math.isinf(decision.retry_after)

    def _over_quota(self, delivery: Delivery, prepared: PreparedMessage, received_at: datetime) -> PreparedMessage:
        """The message as a ``quota_exceeded`` dead letter: its original payload, acknowledged once Kafka has it."""
        device = prepared.device or "(unknown)"
        limits = self._quota.limits(device)
        letter = dead_letter_record(
            topic=prepared.kind.dlq,
            origin=f"mqtt:{delivery.topic}",
            record_id=f"{self._settings.client_id}/{delivery.generation}/{delivery.mid}",
            key=prepared.device.encode() or None,
            value=delivery.payload,
            reason=QUOTA_EXCEEDED,
            detail=(
                f"device over its quota ({limits.rate:g} readings/s, burst {limits.burst:g}) with its lane full "
                f"({self._settings.quota_lane_messages} messages) or no lane free ({self._settings.quota_lanes})"
            ),
            failed_at=received_at,
            headers=[("gridhub.ingress", b"mqtt"), ("gridhub.client", prepared.device.encode())],
        )
        self._over_quota_unlogged += 1
        now = time.monotonic()
        if now - self._over_quota_logged >= _OVER_QUOTA_LOG_EVERY:
            logger.warning(
                "MQTT device %s over its quota: %d message(s) recorded in the DLQ as quota_exceeded since the last "
                "line (gridhub_collection_rejections_total{channel=mqtt,reason=quota_exceeded})",
                device,
                self._over_quota_unlogged,
            )
            self._over_quota_logged, self._over_quota_unlogged = now, 0
        return replace(prepared, records=[letter], outcomes=[], dead_lettered=True)

    async def _release(self, delivery: Delivery) -> None:
        """A parked message whose tokens are paid goes back into the buffer (the scheduler awaits the room)."""
        buffer = self._buffer
        if buffer is None or delivery.generation != self._generation:
            self._metrics.mqtt_messages.labels("stale").inc()
            return
        with contextlib.suppress(BufferClosed):
            await buffer.put(replace(delivery, quota_paid=True))

    def _forget_parked(self) -> None:
        # Their connection is gone: their acks would be dropped and the broker redelivers them anyway.
        stale = self._lanes.clear()
        if stale:
            self._metrics.mqtt_messages.labels("stale").inc(len(stale))

    def _ack(self, delivery: Delivery) -> bool:
        client = self._client
        with self._lock:
            if client is None or delivery.generation != self._generation:
                return False
            client.ack(delivery.mid, delivery.qos)
            return True
