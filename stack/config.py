"""Where the stack lives and which ports it uses; every value can be overridden from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Dev-only credentials, clearly marked: the stack binds to 127.0.0.1 and these never leave this machine.
# Production secrets come from the deployment (k8s Secrets, compose ${VAR:?}), never from here.
DEV_PASSWORD_SUFFIX = "-dev-only-password"
SERVICE_DATABASES = ("collection", "customers", "workorders", "readside", "vee", "gridhub_test")
MQTT_SERVICE_USERS = ("collection", "gridhub_test")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a port number") from None


@dataclass(frozen=True)
class StackConfig:
    """Ports, folders and dev credentials of the local stack."""

    root: Path = field(default_factory=lambda: Path(os.environ.get("GRIDHUB_STACK_DIR", REPO / ".stack")))
    host: str = "127.0.0.1"
    kafka_port: int = field(default_factory=lambda: _env_int("GRIDHUB_KAFKA_PORT", 9092))
    kafka_controller_port: int = field(default_factory=lambda: _env_int("GRIDHUB_KAFKA_CONTROLLER_PORT", 9093))
    postgres_port: int = field(default_factory=lambda: _env_int("GRIDHUB_PG_PORT", 5432))
    mqtt_port: int = field(default_factory=lambda: _env_int("GRIDHUB_MQTT_PORT", 1883))  # devices' listener
    # The services' listener (the collection's account and client id); unset: the port after the devices'.
    mqtt_service_port: int = field(default_factory=lambda: _env_int("GRIDHUB_MQTT_SERVICE_PORT", 0))
    kafka_heap: str = field(default_factory=lambda: os.environ.get("GRIDHUB_KAFKA_HEAP", "768m"))
    ready_timeout: float = field(default_factory=lambda: float(os.environ.get("GRIDHUB_STACK_READY_TIMEOUT", "120")))

    def __post_init__(self) -> None:
        if not self.mqtt_service_port:
            object.__setattr__(self, "mqtt_service_port", self.mqtt_port + 1)

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @staticmethod
    def password(user: str) -> str:
        """The dev password of a stack user (role, MQTT user): ``<user>-dev-only-password``."""
        return f"{user}{DEV_PASSWORD_SUFFIX}"

    def postgres_dsn(self, database: str) -> str:
        """DSN for a service's own database and role."""
        return f"postgresql://{database}:{self.password(database)}@{self.host}:{self.postgres_port}/{database}"
