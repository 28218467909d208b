"""A consumer process for test_flowcontrol_consumer: records every handled record in PostgreSQL.

    python flowcontrol_consumer_process.py BOOTSTRAP TOPIC GROUP DSN SCHEMA HOLD_AT

The consumer is `KafkaDelivery.run` over aiokafka, as in the services. The handler inserts
(n, partition, offset, pid) into `<schema>.processed`; for record n == HOLD_AT it then writes
`<schema>.holding` and waits forever, so the test can SIGKILL the process after the record's
effect is written but before its offset is committed. Runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from libs.flowcontrol.consumer import ConsumedRecord, KafkaDelivery
from libs.flowcontrol.delivery import DeliveryPolicy
from libs.platform.kafka import start_producer

# The broker's minimum session timeout: a killed member leaves the group as soon as Kafka allows.
GROUP_TIMEOUTS: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("bootstrap", "topic", "group", "dsn", "schema"):
        parser.add_argument(name)
    parser.add_argument("hold_at", type=int)
    args = parser.parse_args()
    pool = await asyncpg.create_pool(args.dsn, min_size=1, max_size=2)
    producer = await start_producer(args.bootstrap, f"dlq-{os.getpid()}")
    delivery = KafkaDelivery(producer, policy=DeliveryPolicy(max_attempts=2, base_backoff=0.01, max_backoff=0.01))

    async def handle(record: ConsumedRecord) -> None:
        n = json.loads(record.value or b"{}")["n"]
        await pool.execute(
            f"INSERT INTO {args.schema}.processed (n, partition, record_offset, pid) VALUES ($1, $2, $3, $4)",
            n,
            record.partition,
            record.offset,
            os.getpid(),
        )
        if n == args.hold_at:
            await pool.execute(f"INSERT INTO {args.schema}.holding (n, pid) VALUES ($1, $2)", n, os.getpid())
            await asyncio.Event().wait()

    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=int(delivery.max_poll_interval * 1000),
        **GROUP_TIMEOUTS,
    )
    await consumer.start()
    await delivery.run(consumer, handle, max_records=20)


if __name__ == "__main__":
    asyncio.run(main())
