"""FailureBackoff: doubling delays per key, reset on success, bounded memory (expiry and LRU eviction)."""

from __future__ import annotations

import pytest

from libs.flowcontrol.backoff import FailureBackoff
from libs.flowcontrol.testing import FakeClock


def test_each_consecutive_failure_doubles_the_delay_up_to_the_maximum() -> None:
    backoff = FailureBackoff(0.5, 3.0, memory=60, max_keys=10, clock=FakeClock())
    assert [backoff.failed("10.0.0.1") for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.failed("10.0.0.2") == 0.5  # another key has its own count
    assert backoff.failures("10.0.0.1") == 5


def test_a_success_resets_the_key() -> None:
    backoff = FailureBackoff(1.0, 8.0, memory=60, max_keys=10, clock=FakeClock())
    backoff.failed("a")
    backoff.failed("a")
    backoff.succeeded("a")
    assert backoff.failures("a") == 0
    assert backoff.failed("a") == 1.0


async def test_failures_are_forgotten_after_the_memory_period() -> None:
    clock = FakeClock()
    backoff = FailureBackoff(1.0, 8.0, memory=60, max_keys=10, clock=clock)
    backoff.failed("a")
    backoff.failed("a")
    await clock.advance(60)
    assert backoff.failures("a") == 0
    assert backoff.failed("b") == 1.0  # any call drops the expired entries
    assert len(backoff) == 1
    assert backoff.failed("a") == 1.0


def test_memory_is_bounded_by_max_keys_evicting_the_least_recently_failed() -> None:
    backoff = FailureBackoff(1.0, 8.0, memory=600, max_keys=100, clock=FakeClock())
    backoff.failed("keep")
    for n in range(10_000):
        backoff.failed(f"198.51.100.{n}")
        if n % 50 == 0:
            backoff.failed("keep")  # failing again makes it recent
    assert len(backoff) == 100
    assert backoff.evictions == 10_001 - 100
    assert backoff.failures("keep") > 1


def test_zero_base_means_no_delay_but_still_counts() -> None:
    backoff = FailureBackoff(0.0, 0.0, memory=60, max_keys=10, clock=FakeClock())
    assert backoff.failed("a") == 0.0
    assert backoff.failures("a") == 1


@pytest.mark.parametrize(
    ("base", "maximum", "memory", "max_keys"), [(-1, 1, 1, 1), (2, 1, 1, 1), (1, 1, 0, 1), (1, 1, 1, 0)]
)
def test_nonsense_parameters_are_refused(base: float, maximum: float, memory: float, max_keys: int) -> None:
    with pytest.raises(ValueError, match="need 0 <= base"):
        FailureBackoff(base, maximum, memory=memory, max_keys=max_keys)
