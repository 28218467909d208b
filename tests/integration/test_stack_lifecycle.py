"""`make stack-up` is idempotent and `make stack-down` stops exactly what the stack started.

Runs a second, throw-away stack on other ports and in its own folder, so the suite's stack stays up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from stack.config import REPO, StackConfig
from stack.kafka import Kafka
from stack.mosquitto import Mosquitto
from stack.postgres import Postgres
from stack.process import pid_alive, port_open

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.mqtt]


def stack_cli(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_up_twice_then_down_leaves_nothing_running(stack: StackConfig) -> None:
    root = REPO / ".stack" / "lifecycle-test"
    shutil.rmtree(root, ignore_errors=True)
    env = {
        **os.environ,
        "GRIDHUB_STACK_DIR": str(root),
        "GRIDHUB_KAFKA_PORT": "19092",
        "GRIDHUB_KAFKA_CONTROLLER_PORT": "19093",
        "GRIDHUB_PG_PORT": "15432",
        "GRIDHUB_MQTT_PORT": "11883",
        "GRIDHUB_KAFKA_HEAP": "256m",
    }
    other = StackConfig(root=root, kafka_port=19092, kafka_controller_port=19093, postgres_port=15432, mqtt_port=11883)
    parts = (Kafka(other), Postgres(other), Mosquitto(other))
    suite_pids = [part.pid() for part in (Kafka(stack), Postgres(stack), Mosquitto(stack))]
    try:
        first = stack_cli("up", env)
        assert first.returncode == 0, first.stdout + first.stderr
        pids = [part.pid() for part in parts]
        assert all(pids), first.stdout

        second = stack_cli("up", env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "started" not in second.stdout, "a second `up` must reuse the running processes"
        assert [part.pid() for part in parts] == pids
        assert stack_cli("status", env).returncode == 0

        down = stack_cli("down", env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert [port for port in (19092, 19093, 15432, 11883) if port_open("127.0.0.1", port)] == []
        assert stack_cli("status", env).returncode == 1
        # The suite's own stack was not touched.
        assert [part.pid() for part in (Kafka(stack), Postgres(stack), Mosquitto(stack))] == suite_pids
        assert all(pid_alive(pid) for pid in suite_pids if pid)
    finally:
        stack_cli("down", env)
        shutil.rmtree(root, ignore_errors=True)
        for part in parts[1:]:  # PostgreSQL and Mosquitto may live outside a private checkout
            if not part.home.is_relative_to(root):
                shutil.rmtree(part.home.parent, ignore_errors=True)
