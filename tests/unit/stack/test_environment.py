"""The local stack hands its settings to ``gridhub`` through an env file, so ops never imports the stack."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from stack.config import REPO, StackConfig
from stack.environment import write_env_file
from stack.mosquitto import Mosquitto

PROBE = (
    "import os; from typer.testing import CliRunner; from ops.cli import app; "
    "CliRunner().invoke(app, ['lag', '--help']); "
    "print(os.environ.get('COLLECTION_POSTGRES_DSN')); print(os.environ.get('GRIDHUB_KAFKA_BOOTSTRAP'))"
)


def _gridhub_sees(env_file: Path, **environment: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTION_", "GRIDHUB_"))}
    env.update(environment, GRIDHUB_ENV_FILE=str(env_file))
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.split()


def test_the_env_file_holds_the_stacks_ports_and_only_its_owner_reads_it(tmp_path: Path) -> None:
    config = StackConfig(root=tmp_path, postgres_port=6543, kafka_port=19092, mqtt_port=11883)
    path = write_env_file(config)
    assert path == tmp_path / "dev.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if not line.startswith("#"))
    assert values["GRIDHUB_KAFKA_BOOTSTRAP"] == "127.0.0.1:19092"
    assert values["COLLECTION_MQTT__PORT"] == "11884"  # the services' listener, after the devices' 11883
    assert ":6543/collection" in values["COLLECTION_POSTGRES_DSN"]
    assert values["COLLECTION_DEVICES__PASSWORD_FILE"] == str(Mosquitto(config).passwd)


def test_gridhub_takes_unset_settings_from_the_env_file(tmp_path: Path) -> None:
    path = write_env_file(StackConfig(root=tmp_path, postgres_port=6543, kafka_port=19092))
    dsn, bootstrap = _gridhub_sees(path)
    assert ":6543/collection" in dsn
    assert bootstrap == "127.0.0.1:19092"


def test_the_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    path = write_env_file(StackConfig(root=tmp_path, postgres_port=6543, kafka_port=19092))
    _, bootstrap = _gridhub_sees(path, GRIDHUB_KAFKA_BOOTSTRAP="kafka.prod:9092")
    assert bootstrap == "kafka.prod:9092"
