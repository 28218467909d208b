"""Apache Kafka 4.x in KRaft mode (one node: broker + controller), jars resolved by Maven from a pinned pom."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import shutil
import uuid
from pathlib import Path

from stack.config import REPO, StackConfig
from stack.process import (
    StackError,
    ensure_packages,
    ensure_port_free,
    read_pid,
    run,
    spawn,
    stop_pid,
    tail,
    write_pid,
)

POM = REPO / "stack" / "kafka" / "pom.xml"
LOG4J = REPO / "stack" / "kafka" / "log4j2.properties"
MAIN_CLASS = "kafka.Kafka"


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka's own ``Uuid.randomUuid`` makes it: never starting with ``-``.

    A leading ``-`` makes the storage tool's argument parser read the id as an option; Kafka's generator
    draws again in that case, and so do we.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka:
    name = "kafka"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.home = config.root / "kafka"
        self.libs = self.home / "libs"
        self.data = self.home / "data"
        self.logs = self.home / "logs"
        self.pid_file = self.home / "kafka.pid"
        self.properties = self.home / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.logs / "server.log"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def install(self) -> None:
        ensure_packages(["openjdk-17-jre-headless", "maven"], ["java", "mvn"])
        stamp = self.libs / ".pom.sha256"
        digest = hashlib.sha256(POM.read_bytes()).hexdigest()
        if stamp.exists() and stamp.read_text() == digest:
            return
        print("  resolving the Kafka broker's jars from Maven Central (pinned pom)")
        if self.libs.exists():
            shutil.rmtree(self.libs)
        run(["mvn", "-q", "-B", "-f", str(POM), f"-Dlibs.dir={self.libs}", "package"], timeout=900)
        stamp.write_text(digest)

    def _write_properties(self) -> None:
        c = self.config
        self.home.mkdir(parents=True, exist_ok=True)
        # Settings that lose nothing a producer was told is written: no unclean leader election, no
        # auto-created topics (a typo must fail, not create a 1-partition topic), producers use acks=all.
        self.properties.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{c.host}:{c.kafka_controller_port}",
                    f"listeners=PLAINTEXT://{c.host}:{c.kafka_port},CONTROLLER://{c.host}:{c.kafka_controller_port}",
                    f"advertised.listeners=PLAINTEXT://{c.host}:{c.kafka_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.data}",
                    "num.partitions=6",
                    "auto.create.topics.enable=false",
                    "unclean.leader.election.enable=false",
                    "default.replication.factor=1",
                    "min.insync.replicas=1",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # Tests and make run start consumer groups often: no 3 s wait for more members.
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.check.interval.ms=60000",
                    "",
                ]
            )
        )

    def _format_storage(self) -> None:
        if (self.data / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        print(f"  formatting KRaft storage (cluster {cluster_id})")
        run(
            [
                "java",
                "-cp",
                f"{self.libs}/*",
                f"-Dlog4j2.configurationFile={LOG4J}",
                f"-Dkafka.logs.dir={self.logs}",
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",
                "-c",
                str(self.properties),
            ],
            timeout=120,
        )

    def start(self) -> None:
        if self.pid() is not None:
            return
        ensure_port_free(self.config.host, self.config.kafka_port, "kafka")
        ensure_port_free(self.config.host, self.config.kafka_controller_port, "kafka controller")
        self._write_properties()
        self.logs.mkdir(parents=True, exist_ok=True)
        self._format_storage()
        heap = self.config.kafka_heap
        args = [
            "java",
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            f"-Dkafka.logs.dir={self.logs}",
            "-cp",
            f"{self.libs}/*",
            MAIN_CLASS,
            str(self.properties),
        ]
        pid = spawn(args, self.logs / "stdout.log", cwd=self.home)
        # The properties path identifies *this* stack's broker among any other Java processes.
        write_pid(self.pid_file, pid, str(self.properties))
        print(f"  kafka started (pid {pid})")

    async def wait_ready(self, timeout: float) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        # aiokafka logs every refused connection while the JVM starts; the deadline below reports failure.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        deadline = asyncio.get_running_loop().time() + timeout
        last_error: BaseException | None = None
        while asyncio.get_running_loop().time() < deadline:
            if self.pid() is None:
                raise StackError(f"kafka exited during start-up; see {self.log_file}\n{tail(self.log_file)}")
            admin = AIOKafkaAdminClient(bootstrap_servers=self.config.kafka_bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except Exception as exc:
                last_error = exc
            finally:
                await admin.close()
            await asyncio.sleep(0.5)
        raise StackError(
            f"kafka not ready on {self.config.kafka_bootstrap} after {timeout:.0f}s ({last_error!r}); "
            f"see {self.log_file}\n{tail(self.log_file)}"
        )

    async def ensure_topics(self) -> list[str]:
        """Create the topics of libs.events.topics that are missing; return the names created."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        from libs.events.topics import TOPICS

        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.kafka_bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [spec for spec in TOPICS if spec.name not in existing]
            if missing:
                await admin.create_topics(
                    [
                        NewTopic(
                            name=spec.name,
                            num_partitions=spec.partitions,
                            replication_factor=1,
                            topic_configs={
                                **spec.config(),
                                "min.insync.replicas": "1",
                                "unclean.leader.election.enable": "false",
                            },
                        )
                        for spec in missing
                    ]
                )
            return [spec.name for spec in missing]
        finally:
            await admin.close()

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        # A controlled shutdown flushes and closes the logs; it can take a few seconds.
        stop_pid(pid, name="kafka", timeout=60)
        self.pid_file.unlink(missing_ok=True)
        print(f"  kafka stopped (pid {pid})")
