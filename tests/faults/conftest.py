"""Fixtures for fault tests: the collection service's devices (the stack fixtures come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from stack.config import StackConfig
from tests.integration.collection.support import Device, device_factory


@pytest.fixture
def devices(stack: StackConfig) -> Iterator[Callable[[], Device]]:
    """Factory of logged-in MQTT devices with fresh meterpoints; their broker users are removed afterwards."""
    with device_factory(stack) as make:
        yield make
