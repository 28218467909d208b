"""``python -m stack up|down|status|restart mosquitto``: the local stack's front door (see the Makefile)."""

from __future__ import annotations

import asyncio
import sys
import time

from stack.config import StackConfig
from stack.environment import write_env_file
from stack.kafka import Kafka
from stack.mosquitto import Mosquitto
from stack.postgres import Postgres
from stack.process import StackError


def parts(config: StackConfig) -> tuple[Kafka, Postgres, Mosquitto]:
    return Kafka(config), Postgres(config), Mosquitto(config)


def up(config: StackConfig) -> None:
    started = time.monotonic()
    for part in parts(config):
        part.install()
    # Built again after installing: where PostgreSQL and Mosquitto live depends on their OS users existing.
    kafka, postgres, mosquitto = parts(config)
    # Start all three before waiting on any: Kafka's JVM start overlaps PostgreSQL's and Mosquitto's.
    kafka.start()
    postgres.start()
    mosquitto.start()
    postgres.wait_ready(config.ready_timeout)
    created_dbs = postgres.ensure_databases()
    mosquitto.wait_ready(config.ready_timeout)
    asyncio.run(kafka.wait_ready(config.ready_timeout))
    created_topics = asyncio.run(kafka.ensure_topics())
    if created_dbs:
        print(f"  created databases: {', '.join(created_dbs)}")
    if created_topics:
        print(f"  created topics: {', '.join(created_topics)}")
    env_file = write_env_file(config)
    print(f"stack is up in {time.monotonic() - started:.1f}s (settings for gridhub in {env_file})")
    status(config)


def down(config: StackConfig) -> None:
    for part in reversed(parts(config)):
        part.stop()
    print("stack is down")


def status(config: StackConfig) -> int:
    kafka, postgres, mosquitto = parts(config)
    mqtt_ports = f"{config.host}:{config.mqtt_port},{config.mqtt_service_port}"  # devices', services'
    rows = [
        ("kafka", kafka.pid(), config.kafka_bootstrap, kafka.log_file),
        ("postgres", postgres.pid(), f"{config.host}:{config.postgres_port}", postgres.log_file),
        ("mosquitto", mosquitto.pid(), mqtt_ports, mosquitto.log_file),
    ]
    for name, pid, address, log in rows:
        state = f"up (pid {pid})" if pid else "down"
        print(f"  {name:<10} {state:<18} {address:<18} log: {log}")
    return 0 if all(pid for _, pid, _, _ in rows) else 1


def main(argv: list[str]) -> int:
    config = StackConfig()
    command = argv[1] if len(argv) > 1 else "status"
    try:
        if command == "up":
            up(config)
            return 0
        if command == "down":
            down(config)
            return 0
        if command == "status":
            return status(config)
        if command == "restart" and argv[2:] == ["mosquitto"]:
            # Only the broker (a new configuration), leaving Kafka and PostgreSQL running for everyone else.
            Mosquitto(config).restart(config.ready_timeout)
            write_env_file(config)
            return status(config)
    except StackError as exc:
        print(f"stack {command} failed: {exc}", file=sys.stderr)
        return 1
    print(f"usage: python -m stack up|down|status|restart mosquitto (not {command!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
