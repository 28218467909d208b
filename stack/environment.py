"""The services' dev settings on the local stack, and the env file that hands them to the ``gridhub`` command.

``python -m stack up`` writes ``<stack dir>/dev.env``; ``gridhub`` loads it (``GRIDHUB_ENV_FILE``, by default
``.stack/dev.env`` in the current folder) for every variable its environment leaves unset, so the operator
command finds the local stack without importing it, and a deployment's own settings always win.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ops.services import SERVICES, soap_url
from stack.config import StackConfig
from stack.mosquitto import Mosquitto

ENV_FILE_NAME = "dev.env"


def service_environment(config: StackConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The services' dev settings: the stack's Kafka, databases and broker, unless the environment says otherwise."""
    env = dict(base)
    broker = Mosquitto(config)
    defaults = {
        "GRIDHUB_KAFKA_BOOTSTRAP": config.kafka_bootstrap,
        "COLLECTION_MQTT__PORT": str(config.mqtt_service_port),  # the services' listener
        "COLLECTION_DEVICES__PASSWORD_FILE": str(broker.passwd),
        "COLLECTION_DEVICES__BROKER_PID_FILE": str(broker.pid_file),
        "WORKORDERS_CUSTOMERS_SOAP_URL": soap_url(env),
        "PYTHONUNBUFFERED": "1",
        **{f"{s.env_prefix}POSTGRES_DSN": config.postgres_dsn(s.name) for s in SERVICES},
    }
    for name, value in defaults.items():
        env.setdefault(name, value)
    return env


def write_env_file(config: StackConfig) -> Path:
    """``<stack dir>/dev.env``: the stack's part of `service_environment` (mode 0600: it holds dev passwords)."""
    env = service_environment(config, {})
    del env["PYTHONUNBUFFERED"]
    path = config.root / ENV_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    lines = ["# written by python -m stack up; gridhub reads it (GRIDHUB_ENV_FILE)\n"]
    lines += [f"{name}={value}\n" for name, value in sorted(env.items())]
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.writelines(lines)
    partial.replace(path)
    return path


__all__ = ["ENV_FILE_NAME", "service_environment", "write_env_file"]
