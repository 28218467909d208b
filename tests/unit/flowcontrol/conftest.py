"""Fixtures for flow-control unit tests: a fake clock and a recording observer; nothing sleeps."""

import pytest

from libs.flowcontrol.testing import FakeClock, RecordingObserver


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_000.0)


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()
