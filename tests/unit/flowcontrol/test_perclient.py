import pytest

from libs.flowcontrol.errors import ClientBusy
from libs.flowcontrol.perclient import PerClientLimit
from libs.flowcontrol.testing import RecordingObserver


def test_one_client_at_its_cap_is_refused_while_another_passes(observer: RecordingObserver) -> None:
    limit = PerClientLimit(2, retry_after=3.0, observer=observer)
    limit.acquire("meter-co")
    limit.acquire("meter-co")
    with pytest.raises(ClientBusy) as refused:
        limit.acquire("meter-co")
    assert refused.value.retry_after == 3.0
    assert refused.value.reason == "client_busy"
    limit.acquire("grid-op-2")
    assert limit.in_flight("meter-co") == 2
    assert limit.in_flight("grid-op-2") == 1
    limit.release("meter-co")
    limit.acquire("meter-co")  # a released permit is the client's again
    assert observer.rejected_reasons == {"client_busy": 1}
    assert observer.in_flights[-1] == 3


def test_keys_leave_the_map_with_their_last_permit() -> None:
    limit = PerClientLimit(4)
    for n in range(1000):
        limit.acquire(f"ip:10.0.{n // 256}.{n % 256}")
        limit.release(f"ip:10.0.{n // 256}.{n % 256}")
    assert len(limit) == 0
    with pytest.raises(RuntimeError):
        limit.release("never-acquired")


def test_the_map_is_bounded_by_max_clients(observer: RecordingObserver) -> None:
    limit = PerClientLimit(1, max_clients=3, observer=observer)
    for key in ("a", "b", "c"):
        limit.acquire(key)
    with pytest.raises(ClientBusy) as refused:
        limit.acquire("d")
    assert refused.value.reason == "clients_full"
    assert len(limit) == 3
    limit.release("a")
    limit.acquire("d")
    assert observer.rejected_reasons == {"clients_full": 1}


def test_bad_limits_fail_fast() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PerClientLimit(0)
    with pytest.raises(ValueError, match="at least 1"):
        PerClientLimit(1, max_clients=0)
    with pytest.raises(ValueError, match="negative"):
        PerClientLimit(1, retry_after=-1)
