"""The read side's consumer lag on a topic, read from Kafka on an interval: the signal of lag-aware admission.

Kafka decouples ingress from its consumers, so a slow read side never slows ingress by itself: its lag just
grows. `ConsumerLagProbe` reads a consumer group's committed offsets (admin API) and the topic's end offsets
(a group-less consumer) every ``interval`` seconds and keeps the latest total lag; the admission controllers
read it synchronously (``probe.lag``) and scale the ingress quotas down while it is high.

A group that has committed nothing yet (not deployed, or a new name) gives no pressure rather than "infinitely
behind": an absent signal must not throttle ingress. A read that fails keeps the last value.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from libs.flowcontrol.clock import Clock, MonotonicClock

logger = logging.getLogger(__name__)


def total_lag(
    committed: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
    beginnings: Mapping[TopicPartition, int],
) -> float:
    """Records the group has not consumed yet, summed over the topic's partitions.

    A partition without a committed offset counts from its beginning; with no commit at all the lag is 0.
    """
    if not committed:
        return 0.0
    lag = 0
    for partition, end in ends.items():
        position = committed.get(partition, beginnings.get(partition, 0))
        lag += max(0, end - position)
    return float(lag)


class ConsumerLagProbe:
    """Polls the lag of ``group_id`` on ``topic``; ``lag`` is the latest value (0 until the first read)."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        group_id: str,
        topic: str,
        interval: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self.group_id = group_id
        self.topic = topic
        self._interval = interval
        self._clock = clock or MonotonicClock()
        self.lag = 0.0
        self.reads = 0
        self._partitions: list[TopicPartition] = []

    async def read_once(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> float:
        """One measurement with started clients."""
        if not self._partitions:  # a topic's partitions are fixed for its life (a new count is a new version)
            described = await admin.describe_topics([self.topic])
            found = [entry["partition"] for topic in described for entry in topic.get("partitions", ())]
            self._partitions = [TopicPartition(self.topic, p) for p in sorted(found)]
        partitions = self._partitions
        offsets = await admin.list_consumer_group_offsets(self.group_id)
        committed = {tp: meta.offset for tp, meta in offsets.items() if tp.topic == self.topic and meta.offset >= 0}
        ends = await consumer.end_offsets(partitions)
        beginnings = await consumer.beginning_offsets(partitions)
        return total_lag(committed, ends, beginnings)

    async def run(self) -> None:
        """Read every ``interval`` seconds until cancelled."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, request_timeout_ms=5000)
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False)
        await admin.start()
        try:
            await consumer.start()
            try:
                while True:
                    try:
                        async with asyncio.timeout(max(self._interval, 5.0)):
                            self.lag = await self.read_once(admin, consumer)
                        self.reads += 1
                    except Exception as error:  # keep the last value; Kafka may be restarting
                        logger.warning("reading the lag of %s on %s failed: %s", self.group_id, self.topic, error)
                    await self._clock.sleep(self._interval)
            finally:
                await consumer.stop()
        finally:
            await admin.close()


__all__ = ["ConsumerLagProbe", "total_lag"]
