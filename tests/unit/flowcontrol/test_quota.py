import math

import pytest

from libs.flowcontrol.errors import QuotaExceeded
from libs.flowcontrol.quota import Quota, Rate
from libs.flowcontrol.testing import FakeClock, RecordingObserver


def test_burst_then_refill(clock: FakeClock) -> None:
    quota = Quota(rate=5, burst=10, clock=clock)
    decisions = [quota.try_acquire("meter-1") for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert decisions[9].remaining == 0
    assert decisions[10].retry_after == pytest.approx(0.2)
    clock.tick(0.2)
    assert quota.try_acquire("meter-1").allowed
    assert not quota.try_acquire("meter-1").allowed
    clock.tick(10)
    assert quota.try_acquire("meter-1").remaining == pytest.approx(9)


def test_retry_after_is_exact(clock: FakeClock) -> None:
    quota = Quota(rate=3, burst=4, clock=clock)
    assert quota.try_acquire("client", cost=4).allowed
    refused = quota.try_acquire("client", cost=2)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(2 / 3)
    assert refused.reset_after == pytest.approx(4 / 3)
    clock.tick(refused.retry_after * 0.999)
    assert not quota.try_acquire("client", cost=2).allowed
    clock.tick(1_000.0 + refused.retry_after - clock.now())
    assert quota.try_acquire("client", cost=2).allowed


def test_cost_above_burst_can_never_be_granted(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=5, clock=clock)
    decision = quota.try_acquire("ftp-user", cost=6)
    assert not decision.allowed
    assert math.isinf(decision.retry_after)
    with pytest.raises(ValueError, match="positive"):
        quota.try_acquire("ftp-user", cost=0)


def test_one_key_never_spends_another_keys_tokens(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=3, clock=clock)
    for _ in range(3):
        assert quota.try_acquire("noisy").allowed
    assert not quota.try_acquire("noisy").allowed
    assert all(quota.try_acquire("quiet").allowed for _ in range(3))


def test_static_overrides_from_settings(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=1, overrides={"datahub": Rate(100, 50)}, clock=clock)
    assert sum(quota.try_acquire("datahub").allowed for _ in range(60)) == 50
    assert sum(quota.try_acquire("other").allowed for _ in range(60)) == 1
    assert quota.limits("datahub") == Rate(100, 50)


def test_dynamic_rate_change_keeps_tokens_earned_at_the_old_rate(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=10, clock=clock)
    assert quota.try_acquire("grid-co", cost=10).allowed
    clock.tick(2)  # two tokens earned at the old rate
    quota.set_rate("grid-co", rate=10, burst=5)
    assert quota.try_acquire("grid-co", cost=2).allowed
    refused = quota.try_acquire("grid-co")
    assert refused.retry_after == pytest.approx(0.1)
    assert refused.limit == 5
    clock.tick(100)
    assert quota.try_acquire("grid-co").remaining == pytest.approx(4)  # clamped to the new burst
    quota.clear_rate("grid-co")
    assert quota.limits("grid-co") == Rate(1, 10)


def test_lowering_a_burst_clamps_the_bucket(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=10, clock=clock)
    quota.try_acquire("device")
    quota.set_rate("device", rate=1, burst=2)
    assert quota.try_acquire("device").remaining == pytest.approx(1)


def test_idle_full_buckets_expire_after_the_ttl(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=2, idle_ttl=60, clock=clock)
    quota.try_acquire("a")
    quota.try_acquire("b")
    assert len(quota) == 2
    clock.tick(59)
    quota.try_acquire("c")
    assert len(quota) == 3
    clock.tick(1)
    quota.try_acquire("c")
    assert len(quota) == 1  # a and b were full and idle for 60 s; c was just touched


def test_a_bucket_that_is_not_full_again_does_not_expire(clock: FakeClock) -> None:
    quota = Quota(rate=0.01, burst=2, idle_ttl=10, clock=clock)
    quota.try_acquire("slow", cost=2)
    clock.tick(50)  # idle past the TTL but only half refilled
    quota.try_acquire("other")
    assert len(quota) == 2
    assert not quota.try_acquire("slow", cost=2).allowed  # forgetting it would have been a free refill
    assert quota.sweep() == 0
    clock.tick(500)
    assert quota.sweep() == 2


def test_max_keys_evicts_the_least_recently_used(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=1, max_keys=2, clock=clock)
    quota.try_acquire("a")
    quota.try_acquire("b")
    quota.try_acquire("a")  # refused, but touches a
    quota.try_acquire("c")  # evicts b
    assert len(quota) == 2
    assert quota.evictions == 1
    assert not quota.try_acquire("a").allowed
    assert quota.try_acquire("b").allowed  # b came back with a fresh bucket (evicting c)


def test_scale_slows_every_refill(clock: FakeClock) -> None:
    quota = Quota(rate=10, burst=1, clock=clock)
    quota.try_acquire("k")
    quota.set_scale(0.5)
    assert quota.scale == 0.5
    assert quota.try_acquire("k").retry_after == pytest.approx(0.2)
    with pytest.raises(ValueError, match="scale"):
        quota.set_scale(0)
    quota.set_default(rate=20, burst=1)
    assert quota.limits("k") == Rate(10, 1)


def test_acquire_raises_with_retry_after_and_reports(clock: FakeClock, observer: RecordingObserver) -> None:
    quota = Quota(rate=2, burst=1, clock=clock, observer=observer)
    quota.acquire("k")
    with pytest.raises(QuotaExceeded) as refused:
        quota.acquire("k")
    assert refused.value.retry_after == pytest.approx(0.5)
    assert refused.value.reason == "quota"
    assert observer.admitted_count == 1
    assert observer.rejected_reasons == {"quota": 1}


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Quota(rate=0, burst=1)
    with pytest.raises(ValueError, match="max_keys"):
        Quota(rate=1, burst=1, max_keys=0)
