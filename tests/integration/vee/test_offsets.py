"""The transactional consumer's offset half (libs/flowcontrol/transactional.py) on the real PostgreSQL: offsets move
only from where this consumer left them, inside the state's transaction."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka import TopicPartition

from libs.flowcontrol.transactional import OFFSETS_TABLE, Fenced, OffsetAdvance, advance_offsets, read_offsets

pytestmark = [pytest.mark.postgres]


async def test_offsets_are_fenced_and_roll_back_with_the_state(pg_dsn: str, pg_schema: str) -> None:
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": pg_schema})
    try:
        await conn.execute(OFFSETS_TABLE)
        await conn.execute("CREATE TABLE state (n integer)")
        tp = TopicPartition("readings", 0)
        async with conn.transaction():
            await advance_offsets(conn, "vee", [OffsetAdvance("readings", 0, None, 10)])
        assert await read_offsets(conn, "vee", [tp, TopicPartition("readings", 1)]) == {
            tp: 10,
            TopicPartition("readings", 1): None,
        }

        # A consumer that still believes the partition is at 5 (it lost it in a rebalance) is refused, and the
        # state it wrote in the same transaction goes with it.
        async def stale_write() -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO state VALUES (1)")
                await advance_offsets(conn, "vee", [OffsetAdvance("readings", 0, 5, 20)])

        with pytest.raises(Fenced):
            await stale_write()
        assert await conn.fetchval("SELECT count(*) FROM state") == 0

        async def first_write_again() -> None:
            async with conn.transaction():
                await advance_offsets(conn, "vee", [OffsetAdvance("readings", 0, None, 20)])

        with pytest.raises(Fenced):
            await first_write_again()
        async with conn.transaction():
            await advance_offsets(conn, "vee", [OffsetAdvance("readings", 0, 10, 20)])
        assert (await read_offsets(conn, "vee", [tp]))[tp] == 20
        with pytest.raises(RuntimeError):
            await advance_offsets(conn, "vee", [OffsetAdvance("readings", 0, 20, 30)])
    finally:
        await conn.close()
