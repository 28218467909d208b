"""Run an outbox relay as its own process: ``python -m libs.platform.outbox_relay --dsn ... --bootstrap ...``.

Services run the relay inside their process; this entry point runs it alone (a sidecar, a one-off drain, and the
kill-and-restart tests that prove a relay dying mid-batch loses nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from libs.platform.db import create_pool
from libs.platform.kafka import start_producer
from libs.platform.outbox import OutboxRelay


async def relay(dsn: str, bootstrap: str, schema: str | None, batch_size: int, poll_interval: float) -> None:
    """Relay until SIGTERM or SIGINT, then finish the batch in hand and stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await create_pool(dsn, min_size=1, max_size=2, schema=schema, application_name="outbox-relay")
    producer = await start_producer(bootstrap, "outbox-relay")
    try:
        await OutboxRelay(pool, producer, batch_size=batch_size, poll_interval=poll_interval).run(stop)
    finally:
        await producer.stop()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(relay(args.dsn, args.bootstrap, args.schema, args.batch_size, args.poll_interval))


if __name__ == "__main__":
    main()
