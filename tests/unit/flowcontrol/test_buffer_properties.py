"""Property-based tests: capacity is never exceeded, backpressure loses and reorders nothing,
and every strategy drops exactly what Akka's semantics say, each drop counted once."""

import asyncio
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.flowcontrol.buffer import BoundedBuffer, OverflowStrategy
from libs.flowcontrol.errors import BufferFull, BufferOverflow
from libs.flowcontrol.testing import FakeClock, RecordingObserver

S = OverflowStrategy
# An operation is either a put (None) or taking up to n items.
operations = st.lists(st.one_of(st.none(), st.integers(min_value=1, max_value=4)), max_size=60)


class Model:
    """Akka's OverflowStrategy, written as plainly as possible."""

    def __init__(self, capacity: int, strategy: OverflowStrategy) -> None:
        self.capacity, self.strategy = capacity, strategy
        self.items: deque[int] = deque()
        self.dropped: list[int] = []
        self.refused: list[int] = []
        self.failed = False

    def put(self, item: int) -> None:
        if self.failed:
            self.refused.append(item)
        elif len(self.items) < self.capacity:
            self.items.append(item)
        elif self.strategy is S.BACKPRESSURE:
            self.refused.append(item)
        elif self.strategy is S.DROP_NEW:
            self.dropped.append(item)
        elif self.strategy is S.DROP_HEAD:
            self.dropped.append(self.items.popleft())
            self.items.append(item)
        elif self.strategy is S.DROP_TAIL:
            self.dropped.append(self.items.pop())
            self.items.append(item)
        elif self.strategy is S.DROP_BUFFER:
            self.dropped.extend(self.items)
            self.items.clear()
            self.items.append(item)
        else:
            self.dropped.extend(self.items)
            self.items.clear()
            self.refused.append(item)
            self.failed = True

    def take(self, count: int) -> list[int]:
        return [self.items.popleft() for _ in range(min(count, len(self.items)))]


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=6), strategy=st.sampled_from(S), ops=operations)
def test_every_strategy_matches_akka_and_counts_each_drop_exactly(
    capacity: int, strategy: OverflowStrategy, ops: list[int | None]
) -> None:
    sink: list[int] = []
    observer = RecordingObserver()
    buffer: BoundedBuffer[int] = BoundedBuffer(
        capacity, strategy, on_drop=lambda items, _: sink.extend(items), clock=FakeClock(), observer=observer
    )
    model = Model(capacity, strategy)
    taken: list[int] = []
    expected_taken: list[int] = []
    refused: list[int] = []
    for item, op in enumerate(ops):
        if op is None:
            model.put(item)
            try:
                buffer.put_nowait(item)
            except (BufferFull, BufferOverflow):
                refused.append(item)
        elif not buffer.failed:
            taken += buffer.drain(op)
            expected_taken += model.take(op)
        assert len(buffer) <= capacity
        assert buffer.snapshot() == list(model.items)
    assert taken == expected_taken
    assert sink == model.dropped
    assert refused == model.refused
    assert sum(observer.dropped_strategies.values()) == len(sink)
    assert set(observer.dropped_strategies) <= {strategy.value}
    # Nothing vanishes: every item put is taken, held, dropped (reported) or refused (raised).
    puts = [item for item, op in enumerate(ops) if op is None]
    assert sorted(taken + buffer.snapshot() + sink + refused) == puts


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=4),
    counts=st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=4),
    batch_sizes=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=10),
    # (producer, step, after_drain): cancelling right after a drain hits producers that were woken
    # with a reserved slot but have not resumed yet.
    cancels=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=20), st.booleans()),
        max_size=3,
    ),
)
async def test_backpressure_never_loses_or_reorders_even_with_cancelled_producers(
    capacity: int, counts: list[int], batch_sizes: list[int], cancels: list[tuple[int, int, bool]]
) -> None:
    observer = RecordingObserver()
    buffer: BoundedBuffer[tuple[int, int]] = BoundedBuffer(capacity, clock=FakeClock(), observer=observer)
    sent: dict[int, list[tuple[int, int]]] = {producer: [] for producer in range(len(counts))}

    async def produce(producer: int, count: int) -> None:
        for index in range(count):
            await buffer.put((producer, index))
            sent[producer].append((producer, index))  # only after put returned: no await between

    tasks = [asyncio.create_task(produce(producer, count)) for producer, count in enumerate(counts)]
    received: list[tuple[int, int]] = []
    for step in range(2_000):
        await asyncio.sleep(0)
        for after_drain in (False, True):
            if after_drain:
                received += buffer.drain(batch_sizes[step % len(batch_sizes)])
            for producer, at, after in cancels:
                if at == step and after is after_drain and producer < len(tasks):
                    tasks[producer].cancel()
        assert len(buffer) <= capacity
        if all(task.done() for task in tasks) and not len(buffer):
            break
    await asyncio.gather(*tasks, return_exceptions=True)
    received += buffer.drain()
    for producer in sent:
        assert [item for item in received if item[0] == producer] == sent[producer]
    assert len(received) == sum(len(items) for items in sent.values())
    assert max(observer.depths, default=0) <= capacity
    assert buffer.waiting_producers == 0
    for index in range(capacity):  # no slot is still reserved for a producer that is gone
        buffer.put_nowait((-1, index))
