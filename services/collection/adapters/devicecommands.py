"""Re-read commands to devices: a bounded buffer, a rate limit and a breaker in front of the MQTT session.

``send(request)`` queues the command in the bounded buffer (back pressure when it is full) and returns once the
broker acknowledged it (PUBACK) on the service's own MQTT session; one sender task drains the buffer, paced by the
``device_commands`` boundary's throttle and guarded by its breaker. A broker that is away, slow or refusing counts
against the breaker; while it is open ``send`` raises `CallNotPermitted` (a `Refused`), so the consumer pauses the
partition and the request is delivered later, never dropped. A request id sent recently is not sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from libs.events.series import GapFillRequested
from libs.flowcontrol.breaker import CircuitBreaker
from libs.flowcontrol.buffer import BoundedBuffer
from libs.flowcontrol.errors import BufferClosed, Refused
from libs.flowcontrol.throttle import Throttle
from services.collection.gapfill import command_topic, reread_payload

logger = logging.getLogger(__name__)

_REMEMBERED = 10_000  # request ids sent recently (a redelivered request is not sent twice)


class CommandNotDelivered(Refused):
    """The broker did not acknowledge the command (not connected, refused, timed out): try again later."""

    reason = "command_not_delivered"


class CommandChannel(Protocol):
    """The service's MQTT session (``MqttIngress.publish_command``)."""

    async def publish_command(self, topic: str, payload: bytes, *, timeout: float) -> None:
        """Publish with QoS 1 and return after the PUBACK; raise `CommandNotDelivered` otherwise."""
        ...


@dataclass
class _Pending:
    topic: str
    payload: bytes
    done: asyncio.Future[None] = field(repr=False)


class DeviceCommands:
    """See the module doc; ``run()`` is the sender (an asyncio task)."""

    def __init__(
        self,
        channel: CommandChannel,
        *,
        buffer: BoundedBuffer[_Pending],
        throttle: Throttle,
        breaker: CircuitBreaker,
        timeout: float,
        topic_prefix: str,
    ) -> None:
        self._channel = channel
        self._buffer = buffer
        self._throttle = throttle
        self._breaker = breaker
        self._timeout = timeout
        self._topic_prefix = topic_prefix
        self._sent: OrderedDict[str, None] = OrderedDict()
        self.sent = 0
        self.skipped = 0

    async def send(self, request: GapFillRequested) -> None:
        """Queue the command of ``request`` and wait for the broker's PUBACK (see the module doc)."""
        if request.request_id in self._sent:
            self.skipped += 1
            return
        self._fail_fast()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        topic = command_topic(self._topic_prefix, request.meterpoint_id)
        await self._buffer.put(_Pending(topic, reread_payload(request), done))
        await done
        self._remember(request.request_id)
        self.sent += 1

    def _fail_fast(self) -> None:
        # An open breaker refuses at once, before the command takes a place in the buffer.
        permit = self._breaker.acquire()
        self._breaker.release(permit)

    def _remember(self, request_id: str) -> None:
        self._sent[request_id] = None
        while len(self._sent) > _REMEMBERED:
            self._sent.popitem(last=False)

    async def run(self) -> None:
        """Send queued commands one at a time until cancelled (or the buffer closes)."""
        try:
            while True:
                try:
                    pending = await self._buffer.get()
                except BufferClosed:
                    return
                if pending.done.done():  # its sender gave up (cancelled)
                    continue
                try:
                    await self._throttle.acquire(max_wait=self._timeout)

                    async def publish(item: _Pending = pending) -> None:
                        await self._channel.publish_command(item.topic, item.payload, timeout=self._timeout)

                    await self._breaker.call(publish)
                except Exception as error:
                    if not pending.done.done():
                        pending.done.set_exception(error)
                else:
                    if not pending.done.done():
                        pending.done.set_result(None)
        finally:
            self._buffer.close()
            for pending in self._buffer.drain():
                if not pending.done.done():
                    pending.done.set_exception(CommandNotDelivered("the command sender stopped", retry_after=1.0))
