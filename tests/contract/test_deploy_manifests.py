"""The deployment descriptions, checked offline: the Dockerfile, docker-compose.yml with deploy/, and k8s/.

No Docker engine and no cluster: the compose file is checked against the Compose Specification schema and by
Debian's ``docker-compose config``; the overlays are built with kustomize, the core kinds validated strictly with
``kubernetes-validate``, the Strimzi / CloudNativePG / KEDA resources field by field. Above the schemas, the rules
that matter: hardening, no committed secret, topics equal to ``libs/events/topics.py``, and every service's
settings accept the environment compose and the manifests give it. A missing tool fails (``make deploy-tools``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from pydantic_settings import BaseSettings

from libs.events import topics
from libs.platform.passwords import hash_password
from libs.platform.settings import SHARED_ENV
from services.collection.settings import CollectionSettings
from services.customers.settings import CustomersSettings
from services.readside.settings import ReadsideSettings
from services.vee.settings import VeeSettings
from services.workorders.settings import WorkordersSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
K8S = REPO / "k8s"
VENV_BIN = Path(sys.executable).parent
KUSTOMIZE = REPO / ".bin" / "kustomize"
# The oldest Kubernetes minor the manifests promise to work on.
KUBERNETES_VERSION = "1.32.0"
OVERLAY_NAMESPACES = {"dev": "gridhub-dev", "prod": "gridhub"}

SETTINGS: dict[str, type[BaseSettings]] = {
    "collection": CollectionSettings,
    "customers": CustomersSettings,
    "workorders": WorkordersSettings,
    "readside": ReadsideSettings,
    "vee": VeeSettings,
}
PORTS = {"collection": 8001, "customers": 8082, "workorders": 8083, "readside": 8004, "vee": 8005}
# Services no pod or client calls: their network policy opens only the internal port (the kubelet's probes come
# from the node, which network policies never block).
UNCALLED = {"vee"}
# /metrics and the API documents answer only here in production (libs/platform/internal.py), never published.
INTERNAL_PORT = 9090
MONITORING = {"namespaceSelector": {"matchLabels": {"gridhub.io/monitoring": "true"}}}
PREFIXES = {name: f"{name.upper()}_" for name in SETTINGS}
CUSTOM_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "Cluster", "Database", "ScaledObject"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|DSN|CLIENTS|_KEY$", re.IGNORECASE)


def _tool(path: Path | str | None, name: str) -> str:
    if path is None or not Path(path).exists():
        pytest.fail(f"{name} is missing: run `make deploy-tools` (make test does)")
    return str(path)


def _run(args: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def _documented() -> str:
    return (DEPLOY / "README.md").read_text()


# --- the image ------------------------------------------------------------------------------------------------------


def _final_stage(dockerfile: str) -> str:
    return dockerfile[dockerfile.rindex("\nFROM ") :]


def test_dockerfile_builds_one_slim_non_root_image_for_every_service() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.MULTILINE)
    assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) >= 3, "multi-stage: uv, build, runtime"
    assert "uv sync --frozen --no-dev" in dockerfile
    for source in ("libs/", "services/", "ops/", "contracts/"):
        assert re.search(rf"^COPY {source} {source}$", dockerfile, re.MULTILINE), f"{source} is not in the image"
    final = _final_stage(dockerfile)
    user = re.findall(r"^USER (\S+)", final, re.MULTILINE)
    assert user, "the runtime stage must switch to a non-root user"
    assert user[-1].split(":")[0] not in {"0", "root"}
    assert 'ENTRYPOINT ["python", "-m"]' in final
    # The build starts every command once, so an image that cannot start one is never pushed.
    assert 'python -m "services.$name" --help' in final
    assert "for name in collection customers workorders readside vee;" in final
    assert "python -m ops --help" in final
    assert "PYTHONDONTWRITEBYTECODE=1" in final, "a read-only root filesystem gets no .pyc files"
    assert "uv" not in re.findall(r"^COPY --from=(\S+)", final, re.MULTILINE), "no installer in the final image"
    assert "ADD " not in dockerfile


def test_dockerignore_lets_only_what_the_image_needs_into_the_context() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: everything is excluded first"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "libs", "services", "ops", "contracts"}


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_runs_as_python_dash_m(service: str) -> None:
    assert (REPO / "services" / service / "__main__.py").is_file()


# --- docker-compose -------------------------------------------------------------------------------------------------


@cache
def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _required_variables() -> set[str]:
    """The variables compose refuses to start without (``${VAR:?...}`` anywhere in the file's values)."""
    return {name for text in _strings(_compose()) for name in re.findall(r"\$\{([A-Z0-9_]+):\?", text)}


@cache
def _dummy_secrets() -> dict[str, str]:
    """Realistic values for every required variable: random, URL-safe, and no placeholder."""
    values = {name: secrets.token_hex(16) for name in _required_variables()}
    workorders = {"password_hash": hash_password(values["WORKORDERS_CUSTOMERS_PASSWORD"]), "role": "platform"}
    values["CUSTOMERS_CLIENTS"] = json.dumps({"workorders": workorders})
    return values


def _docker_compose(*args: str, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = _tool(shutil.which("docker-compose"), "docker-compose (Debian's package)")
    # A clean environment and an empty env file: a developer's .env or shell must not decide the outcome.
    empty_env_file = REPO / ".bin" / "empty.env"
    empty_env_file.parent.mkdir(exist_ok=True)
    empty_env_file.write_text("")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO / ".bin"), **variables}
    return _run([binary, "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), *args], env=env)


def test_compose_file_matches_the_compose_specification() -> None:
    check_jsonschema = _tool(VENV_BIN / "check-jsonschema", "check-jsonschema (dev dependency)")
    result = _run([check_jsonschema, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_accepts_the_file() -> None:
    result = _docker_compose("config", "-q", variables=_dummy_secrets())
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_while_a_secret_is_unset() -> None:
    for missing in sorted(_required_variables()):
        variables = {name: value for name, value in _dummy_secrets().items() if name != missing}
        result = _docker_compose("config", "-q", variables=variables)
        assert result.returncode != 0, f"compose started without {missing}"
        assert missing in result.stderr


@cache
def _resolved_compose() -> dict[str, Any]:
    result = _docker_compose("config", variables=_dummy_secrets())
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert isinstance(document, dict)
    return document


def test_every_secret_in_compose_comes_from_a_required_variable() -> None:
    required = _required_variables()
    expected = {
        "POSTGRES_PASSWORD",
        "COLLECTION_DB_PASSWORD",
        "CUSTOMERS_DB_PASSWORD",
        "WORKORDERS_DB_PASSWORD",
        "READSIDE_DB_PASSWORD",
        "VEE_DB_PASSWORD",
        "MQTT_COLLECTION_PASSWORD",
        "CUSTOMERS_CLIENTS",
        "WORKORDERS_CUSTOMERS_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "COLLECTION_FTPS_CERTIFICATE",
        "COLLECTION_FTPS_KEY",
        "MQTT_TLS_CA",
        "MQTT_TLS_CERTIFICATE",
        "MQTT_TLS_KEY",
    }
    assert required == expected
    for name, service in _compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRETISH.search(key) and key != "GF_SECURITY_ADMIN_USER":
                assert isinstance(value, str), f"{name}: {key}"
                assert re.search(r"\$\{[A-Z0-9_]+:\?", value), f"{name}: {key} must be ${{VAR:?}}, not a value"
    documented = _documented()
    for variable in required:
        assert f"`{variable}`" in documented, f"{variable} is not documented in deploy/README.md"


def test_compose_services_are_hardened_and_wait_for_healthy_dependencies() -> None:
    services = _compose()["services"]
    for name, port in PORTS.items():
        service = services[name]
        assert service["command"] == [f"services.{name}"]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert any(mount.startswith("/tmp") for mount in service["tmpfs"])
        assert "user" not in service, "the image's own non-root user"
        assert f"http://127.0.0.1:{port}/readyz" in service["healthcheck"]["test"]
        published = [int(mapping.rsplit(":", 1)[1].split("-")[0]) for mapping in service.get("ports", [])]
        assert INTERNAL_PORT not in published, f"{name}: the internal port stays inside the compose network"
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        assert one_shot or "healthcheck" in service, f"{name} has no health check"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert isinstance(condition, dict), f"{name} -> {dependency}: use `condition:`"
            wanted = "service_completed_successfully" if services[dependency].get("restart") == "no" else None
            assert condition["condition"] == (wanted or "service_healthy"), f"{name} -> {dependency}"


def _clear_service_environment(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    for variable in list(os.environ):
        if variable.startswith(prefix) or variable in SHARED_ENV:
            monkeypatch.delenv(variable)


def _settings_from(service: str, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    unknown = [variable for variable in environment if not _is_settings_variable(service, variable)]
    assert not unknown, f"{service}: variables its settings do not read: {unknown}"
    with monkeypatch.context() as patch:
        _clear_service_environment(patch, PREFIXES[service])
        for variable, value in environment.items():
            patch.setenv(variable, value)
        return SETTINGS[service]()


def _is_settings_variable(service: str, variable: str) -> bool:
    """True when ``variable`` names a field (nested with ``__``) of the service's settings or a shared one."""
    if variable in SHARED_ENV:
        return True
    if variable == "PG_PASSWORD":  # k8s only: spliced into the DSN by $(PG_PASSWORD)
        return True
    prefix = PREFIXES[service]
    if not variable.startswith(prefix):
        return False
    model: Any = SETTINGS[service]
    for part in variable[len(prefix) :].lower().split("__"):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if hasattr(c, "model_fields")), None)
    return True


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_compose_environment_gives_valid_production_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # `config` writes a literal "$" as "$$" (the scrypt hashes in CUSTOMERS_CLIENTS have some).
    resolved = _resolved_compose()["services"][service]["environment"]
    environment = {key: str(value).replace("$$", "$") for key, value in resolved.items()}
    settings = _settings_from(service, environment, monkeypatch)
    assert settings.environment == "production"
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == PORTS[service]
    assert settings.internal_http_port == INTERNAL_PORT
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    dsn = settings.postgres_dsn.get_secret_value()
    assert re.fullmatch(rf"postgresql://{service}:[0-9a-f]+@postgres:5432/{service}", dsn)
    if service == "collection":
        assert (settings.mqtt.host, settings.mqtt.port) == ("mosquitto", 1884), "the service listener"
        # MQTT over TLS: the broker's CA from the compose secret the broker's certificate comes with.
        assert str(settings.mqtt.tls_ca_file) == "/run/secrets/mqtt_tls_ca"
        assert "mqtt_tls_ca" in _compose()["services"]["collection"]["secrets"]
        broker_secrets = {s["source"]: s["target"] for s in _compose()["services"]["mosquitto"]["secrets"]}
        assert broker_secrets == {
            "mqtt_tls_ca": "/mosquitto/tls/ca.crt",
            "mqtt_tls_certificate": "/mosquitto/tls/tls.crt",
            "mqtt_tls_key": "/mosquitto/tls/tls.key",
        }
        assert str(settings.ftp.root).startswith("/data/"), "the FTP spool belongs on the data volume"
        assert {"/data"} <= {m.split(":")[1] for m in _compose()["services"]["collection"]["volumes"]}
        # FTPS only, with the certificate and key from the compose secrets the service mounts.
        assert settings.ftp.tls_control_required
        assert settings.ftp.tls_data_required
        mounted = {f"/run/secrets/{name}" for name in _compose()["services"]["collection"]["secrets"]}
        assert {str(settings.ftp.tls_cert_file), str(settings.ftp.tls_key_file)} <= mounted
        assert set(_compose()["secrets"]) >= {Path(path).name for path in mounted}
    if service == "workorders":
        assert settings.customers_soap_url.startswith("http://customers:8082/")


def _topic_rows(path: Path) -> list[tuple[str, int, int, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, partitions, retention_ms, cleanup_policy = line.split()
            rows.append((name, int(partitions), int(retention_ms), cleanup_policy))
    return rows


def _catalogue() -> list[tuple[str, int, int, str]]:
    return [(spec.name, spec.partitions, spec.retention_ms, spec.config()["cleanup.policy"]) for spec in topics.TOPICS]


def test_compose_creates_the_topics_of_the_event_catalogue() -> None:
    assert _topic_rows(DEPLOY / "kafka" / "topics.txt") == _catalogue()
    services = _compose()["services"]
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    init = services["kafka-init"]
    assert init["entrypoint"][-1] == "/deploy/kafka/create-topics.sh"
    assert "./deploy/kafka:/deploy/kafka:ro" in init["volumes"]
    for name in PORTS:
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def _acl_rules(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_mosquitto_acl_is_the_local_stacks_and_k8s_carries_the_same_files() -> None:
    from stack.mosquitto import ACL, MAX_PACKET_SIZE, SERVICES_ACL

    assert _acl_rules((DEPLOY / "mosquitto" / "acl").read_text()) == _acl_rules(ACL)
    services = _acl_rules(SERVICES_ACL)
    # The same rules minus the integration tests' user.
    test_user = services.index("user gridhub_test")
    assert _acl_rules((DEPLOY / "mosquitto" / "acl.services").read_text()) == services[:test_user]
    for name in ("acl", "acl.services", "mosquitto.conf"):
        assert (K8S / "base" / "mosquitto" / name).read_text() == (DEPLOY / "mosquitto" / name).read_text()
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"^per_listener_settings true$", conf, re.MULTILINE)
    assert re.search(r"^persistence true$", conf, re.MULTILINE)
    assert re.search(rf"^max_packet_size {MAX_PACKET_SIZE}$", conf, re.MULTILINE)
    # Each listener: no anonymous client, its own password file and ACL; devices' client id is their user name.
    devices, services_listener = re.split(r"^listener 1884 ", conf.split("\nlistener 8883 ", 1)[1], flags=re.MULTILINE)
    assert not re.search(r"^listener 1883 ", conf, re.MULTILINE), "no plain MQTT in production"
    for block, passwd, acl in ((devices, "passwd", "acl"), (services_listener, "services.passwd", "acl.services")):
        # TLS only, with the material of the gridhub-mosquitto-tls Secret (compose: its secrets, same paths).
        for option, name in (("cafile", "ca.crt"), ("certfile", "tls.crt"), ("keyfile", "tls.key")):
            assert re.search(rf"^{option} /mosquitto/tls/{re.escape(name)}$", block, re.MULTILINE), option
        assert re.search(r"^allow_anonymous false$", block, re.MULTILINE)
        assert re.search(rf"^password_file /mosquitto/auth/{re.escape(passwd)}$", block, re.MULTILINE)
        assert re.search(rf"^acl_file /mosquitto/config/{re.escape(acl)}$", block, re.MULTILINE)
    assert re.search(r"^use_username_as_clientid true$", devices, re.MULTILINE)


def test_alerts_fire_when_the_mqtt_broker_drops_messages_or_holds_too_many() -> None:
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    dropping, deep = rules["GridHubMqttBrokerDropping"], rules["GridHubMqttBrokerQueueDeep"]
    assert 'gridhub_collection_mqtt_broker{counter="dropped_messages"}' in dropping["expr"]
    assert dropping["labels"]["severity"] == "critical", "dropped messages were acknowledged to meters: data lost"
    assert 'gridhub_collection_mqtt_broker{counter="stored_messages"}' in deep["expr"]
    assert "gridhub_collection_mqtt_broker" in _registered_metric_names()
    # The collection reads these counters from $SYS: the service listener's ACL lets it, the broker publishes them.
    assert "topic read $SYS/broker/#" in (DEPLOY / "mosquitto" / "acl.services").read_text()
    assert re.search(r"^sys_interval \d+$", (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(), re.MULTILINE)


def test_postgres_init_creates_one_database_and_role_per_service_without_passwords() -> None:
    sql = (DEPLOY / "postgres" / "initdb" / "10-gridhub-databases.sql").read_text()
    for service in SETTINGS:
        assert f"CREATE ROLE {service} LOGIN PASSWORD :'{service}_password';" in sql
        assert f"CREATE DATABASE {service} OWNER {service};" in sql
        assert f"\\getenv {service}_password {service.upper()}_DB_PASSWORD" in sql
    assert "PASSWORD '" not in sql, "no literal password"
    environment = _compose()["services"]["postgres"]["environment"]
    assert {f"{service.upper()}_DB_PASSWORD" for service in SETTINGS} <= set(environment)


def test_prometheus_scrapes_every_service_and_alerts_are_well_formed() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    for name in PORTS:
        assert targets[name] == [f"{name}:{INTERNAL_PORT}"], "metrics answer on the internal port only"
    assert targets["kafka-exporter"] == ["kafka-exporter:9308"]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in _compose()["services"]["prometheus"]["volumes"]
    rules = [
        rule
        for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    assert rules
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def _registered_metric_names() -> set[str]:
    """Every metric name registered in libs/ and services/ (the first string argument of a collector)."""
    names: set[str] = set()
    pattern = re.compile(r"(?:Counter|Gauge|Histogram|Summary)\(\s*\"([a-z_:][a-z0-9_:]*)\"", re.MULTILINE)
    for folder in ("libs", "services"):
        for path in (REPO / folder).rglob("*.py"):
            names.update(pattern.findall(path.read_text()))
    return names


def _expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]


def test_grafana_dashboard_reads_the_provisioned_datasource_and_real_metrics() -> None:
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [prometheus] = datasource["datasources"]
    assert prometheus["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/gridhub.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{folder}:ro" in _compose()["services"]["grafana"]["volumes"]

    dashboard = json.loads((DEPLOY / "grafana/dashboards/gridhub-flow.json").read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]
    used = set()
    for expression in _expressions(dashboard):
        used.update(re.findall(r"\b((?:gridhub|readside|http|kafka)_[a-z0-9_]+)\b", expression))
    base_names = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    registered = {re.sub(r"_total$", "", name) for name in _registered_metric_names()}
    # kafka_* comes from the Kafka exporter (compose) or Strimzi's Kafka Exporter (k8s), not from GridHub.
    assert {name for name in base_names if not name.startswith("kafka_")} <= registered
    wanted = {
        "gridhub_flow_admitted",
        "gridhub_flow_rejected",
        "gridhub_flow_dropped",
        "gridhub_flow_buffer_depth",
        "gridhub_flow_in_flight",
        "gridhub_flow_breaker_state",
        "gridhub_flow_wait_seconds",
        "gridhub_flow_limit",
        "http_request_duration_seconds",
        "kafka_consumergroup_lag",
    }
    assert wanted <= base_names


# --- Kubernetes -----------------------------------------------------------------------------------------------------


@cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    kustomize = _tool(KUSTOMIZE, "kustomize (.bin/kustomize)")
    result = _run([kustomize, "build", str(K8S / "overlays" / overlay)])
    assert result.returncode == 0, result.stderr
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def _of_kind(overlay: str, *kinds: str) -> list[dict[str, Any]]:
    return [document for document in _rendered(overlay) if document["kind"] in kinds]


def _named(overlay: str, kind: str, name: str) -> dict[str, Any]:
    [document] = [d for d in _of_kind(overlay, kind) if d["metadata"]["name"] == name]
    return document


overlays = pytest.mark.parametrize("overlay", sorted(OVERLAY_NAMESPACES))


@overlays
def test_overlay_builds_into_its_own_namespace(overlay: str) -> None:
    namespace = OVERLAY_NAMESPACES[overlay]
    documents = _rendered(overlay)
    assert [d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"] == [namespace]
    for document in documents:
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == namespace, document["metadata"]["name"]


@overlays
def test_core_kinds_pass_strict_schema_validation(overlay: str, tmp_path: Path) -> None:
    validator = _tool(VENV_BIN / "kubernetes-validate", "kubernetes-validate (dev dependency)")
    core = [d for d in _rendered(overlay) if d["kind"] not in CUSTOM_KINDS]
    assert {d["apiVersion"].split("/")[0] for d in core} <= {"v1", "apps", "policy", "networking.k8s.io"}
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    result = _run([validator, "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(manifest)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(core), result.stdout + result.stderr


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@overlays
def test_every_workload_is_hardened_probed_and_limited(overlay: str) -> None:
    workloads = _of_kind(overlay, *WORKLOAD_KINDS)
    assert {w["metadata"]["name"] for w in workloads} == {*SETTINGS, "mosquitto"}
    for workload in workloads:
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in _containers(workload):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "privileged" not in context or context["privileged"] is False, name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "livenessProbe" in container, name
            assert "readinessProbe" in container, name
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container["volumeMounts"]), name


@overlays
def test_each_service_runs_the_image_with_its_probes_service_and_disruption_budget(overlay: str) -> None:
    images = {"dev": "gridhub:dev", "prod": "registry.example.com/gridhub/gridhub:0.1.0"}
    budgets = {p["metadata"]["name"]: p for p in _of_kind(overlay, "PodDisruptionBudget")}
    services = {s["metadata"]["name"]: s for s in _of_kind(overlay, "Service")}
    for name, port in PORTS.items():
        kind = "StatefulSet" if name == "collection" else "Deployment"
        workload = _named(overlay, kind, name)
        [container] = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"] == images[overlay]
        assert container["args"] == [f"services.{name}"]
        assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]
        assert {"name": "internal", "containerPort": INTERNAL_PORT, "protocol": "TCP"} in container["ports"]
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(INTERNAL_PORT), "metrics answer on the internal port only"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert services[name]["spec"]["selector"].items() <= labels.items()
        assert services[name]["spec"]["ports"][0]["port"] == port
        assert {"name": "internal", "port": INTERNAL_PORT, "targetPort": "internal", "protocol": "TCP"} in services[
            name
        ]["spec"]["ports"]


def _container_environment(overlay: str, workload: dict[str, Any]) -> dict[str, str]:
    """The environment of a workload's container as Kubernetes builds it, with stand-ins for Secrets."""
    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in _of_kind(overlay, "ConfigMap")}
    [container] = workload["spec"]["template"]["spec"]["containers"]
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environment.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        if "value" in variable:
            value = re.sub(r"\$\(([A-Za-z0-9_]+)\)", lambda m: environment[m.group(1)], variable["value"])
        elif "secretKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            value = _dummy_secret_value(ref["name"], ref["key"])
        else:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            value = f"{workload['metadata']['name']}-0"
        environment[variable["name"]] = value
    return environment


@cache
def _dummy_secret_value(secret: str, key: str) -> str:
    if (secret, key) == ("gridhub-customers-clients", "clients"):
        password = _dummy_secret_value("gridhub-workorders-customers", "password")
        return json.dumps({"workorders": {"password_hash": hash_password(password), "role": "platform"}})
    return secrets.token_hex(16)


@overlays
@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_manifest_environment_gives_valid_settings(overlay: str, service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kind = "StatefulSet" if service == "collection" else "Deployment"
    environment = _container_environment(overlay, _named(overlay, kind, service))
    environment.pop("PG_PASSWORD")
    settings = _settings_from(service, environment, monkeypatch)
    assert settings.environment == ("production" if overlay == "prod" else "dev")
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == PORTS[service]
    assert settings.internal_http_port == INTERNAL_PORT
    assert settings.trusted_proxies == (), "set per cluster: the ingress controller's pod CIDR"
    assert settings.kafka_bootstrap_servers == "gridhub-kafka-bootstrap:9092"
    dsn = settings.postgres_dsn.get_secret_value()
    assert re.fullmatch(rf"postgresql://{service}:[0-9a-f]+@gridhub-pg-rw:5432/{service}\?sslmode=require", dsn)
    if service == "collection":
        # The pod name: stable per replica, so each keeps its own MQTT persistent session.
        assert settings.mqtt.client_id == "collection-0"
        assert str(settings.ftp.root).startswith("/data/")
        # MQTT over TLS: the CA from the broker's TLS Secret, mounted where the setting points.
        assert str(settings.mqtt.tls_ca_file) == "/etc/gridhub/mqtt/ca.crt"
        pod = _named(overlay, kind, service)["spec"]["template"]["spec"]
        [mount] = [m for c in pod["containers"] for m in c["volumeMounts"] if m["mountPath"] == "/etc/gridhub/mqtt"]
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "gridhub-mosquitto-tls"
        assert {"key": "ca.crt", "path": "ca.crt"} in volume["secret"]["items"]
        # FTPS only, with the certificate and key from the Secret mounted into the pod.
        assert settings.ftp.tls_control_required
        assert settings.ftp.tls_data_required
        spec = _named(overlay, "StatefulSet", "collection")["spec"]["template"]["spec"]
        [volume] = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "gridhub-collection-ftps"]
        [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        assert settings.ftp.tls_cert_file == Path(mount["mountPath"]) / "tls.crt"
        assert settings.ftp.tls_key_file == Path(mount["mountPath"]) / "tls.key"


@overlays
def test_no_secret_value_is_committed(overlay: str) -> None:
    documents = _rendered(overlay)
    for secret in [d for d in documents if d["kind"] == "Secret"]:
        assert not secret.get("data"), secret["metadata"]["name"]
        assert not secret.get("stringData"), secret["metadata"]["name"]
    for config_map in _of_kind(overlay, "ConfigMap"):
        for key in config_map.get("data", {}):
            if config_map["metadata"]["name"].startswith("mosquitto-config"):
                continue
            assert not SECRETISH.search(key), f"{key} belongs in a Secret"
    referenced = set()
    for workload in _of_kind(overlay, *WORKLOAD_KINDS):
        for container in _containers(workload):
            for variable in container.get("env", []):
                if SECRETISH.search(variable["name"]) and "value" in variable:
                    assert "$(" in variable["value"], f"{variable['name']} holds a literal secret"
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
    cluster = _named(overlay, "Cluster", "gridhub-pg")
    referenced |= {role["passwordSecret"]["name"] for role in cluster["spec"]["managed"]["roles"]}
    referenced.add(cluster["spec"]["bootstrap"]["initdb"]["secret"]["name"])
    documented = _documented()
    for name in referenced:
        assert f"`{name}`" in documented, f"Secret {name} is not documented in deploy/README.md"


def test_k8s_tree_holds_no_secret_material() -> None:
    for path in K8S.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "kind: Secret" not in text, path
            assert not re.search(r"^\s*(password|passwd)\s*[:=]\s*\S", text, re.IGNORECASE | re.MULTILINE), path


@overlays
def test_strimzi_kafka_has_three_brokers_replicating_every_topic_three_times(overlay: str) -> None:
    [kafka] = _of_kind(overlay, "Kafka")
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
    spec = kafka["spec"]["kafka"]
    assert "replicas" not in spec, "node pools own the replicas"
    assert "storage" not in spec, "node pools own the storage"
    assert spec["version"]
    for listener in spec["listeners"]:
        assert {"name", "port", "type", "tls"} <= set(listener)
    [plain] = [listener for listener in spec["listeners"] if listener["port"] == 9092]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "service"}}} in plain["networkPolicyPeers"]
    config = spec["config"]
    assert config["auto.create.topics.enable"] is False
    assert config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2
    assert config["offsets.topic.replication.factor"] == 3
    assert "topicOperator" in kafka["spec"]["entityOperator"]
    assert "kafkaExporter" in kafka["spec"]

    pools = _of_kind(overlay, "KafkaNodePool")
    for pool in pools:
        assert pool["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert pool["spec"]["replicas"] >= 1
        assert set(pool["spec"]["roles"]) <= {"broker", "controller"}
        assert pool["spec"]["storage"]["type"] in {"jbod", "persistent-claim", "ephemeral"}
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    assert brokers == 3
    assert controllers % 2 == 1, "a KRaft quorum has an odd number of controllers"

    kafka_topics = _of_kind(overlay, "KafkaTopic")
    assert sorted(
        (
            t["spec"]["topicName"],
            t["spec"]["partitions"],
            t["spec"]["config"]["retention.ms"],
            t["spec"]["config"]["cleanup.policy"],
        )
        for t in kafka_topics
    ) == sorted(_catalogue())
    for topic in kafka_topics:
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"]["min.insync.replicas"] == 2


@overlays
def test_cloudnativepg_cluster_gives_each_service_its_database_and_role(overlay: str) -> None:
    cluster = _named(overlay, "Cluster", "gridhub-pg")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] == (3 if overlay == "prod" else 1)
    assert spec["storage"]["size"]
    assert spec["enableSuperuserAccess"] is False
    roles = {role["name"]: role for role in spec["managed"]["roles"]}
    assert set(roles) == set(SETTINGS)
    for name, role in roles.items():
        assert role["login"] is True
        assert role["passwordSecret"]["name"] == f"gridhub-pg-{name}"
    databases = {spec["bootstrap"]["initdb"]["database"]: spec["bootstrap"]["initdb"]["owner"]}
    for database in _of_kind(overlay, "Database"):
        assert database["apiVersion"] == "postgresql.cnpg.io/v1"
        assert database["spec"]["cluster"]["name"] == "gridhub-pg"
        databases[database["spec"]["name"]] = database["spec"]["owner"]
    assert databases == {name: name for name in SETTINGS}
    # Each role reaches its own database only, over TLS.
    hba = spec["postgresql"]["pg_hba"]
    for name in SETTINGS:
        assert f"hostssl {name} {name} all scram-sha-256" in hba, name
    assert hba[-1] == f"host {','.join(SETTINGS)} all all reject"


@overlays
def test_keda_scales_the_consumers_on_their_groups_lag(overlay: str) -> None:
    namespace = OVERLAY_NAMESPACES[overlay]
    scaled = {s["metadata"]["name"]: s for s in _of_kind(overlay, "ScaledObject")}
    assert set(scaled) == {"workorders", "readside"}
    groups = {
        "workorders": {
            ("workorders.meter-events", topics.METER_EVENTS),
            ("workorders.customers", topics.CUSTOMERS),
        },
        "readside": {("readside", None)},
    }
    assert WorkordersSettings.model_fields["consumer_group_prefix"].default == "workorders"
    assert ReadsideSettings.model_fields["group_id"].default == "readside"
    for name, scaled_object in scaled.items():
        assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled_object["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        deployment = _named(overlay, spec["scaleTargetRef"].get("kind", "Deployment"), name)
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= topics.PARTITIONS
        kafka_triggers = [t for t in spec["triggers"] if t["type"] == "kafka"]
        found = set()
        for trigger in kafka_triggers:
            metadata = trigger["metadata"]
            assert metadata["bootstrapServers"] == f"gridhub-kafka-bootstrap.{namespace}.svc:9092"
            assert int(metadata["lagThreshold"]) > 0
            found.add((metadata["consumerGroup"], metadata.get("topic")))
        assert found == groups[name]


@overlays
def test_network_policies_deny_by_default_and_cover_every_gridhub_pod(overlay: str) -> None:
    policies = {p["metadata"]["name"]: p for p in _of_kind(overlay, "NetworkPolicy")}
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {}
    assert deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    egress_deny = policies["gridhub-default-deny-egress"]["spec"]
    assert "egress" not in egress_deny
    assert egress_deny["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["service", "broker"]}
    ]
    for name, port in {**PORTS, "mosquitto": 8883}.items():
        policy = policies[name]["spec"]
        assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": name}}
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
        ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
        if name in UNCALLED:
            assert port not in ingress_ports, f"nothing calls {name}, yet its {port} is open"
        else:
            assert port in ingress_ports, f"{name} cannot be reached on {port}"
        egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
        if name in SETTINGS:
            assert {9092, 5432} <= egress_ports, name
            # The internal port from monitoring only; monitoring reaches nothing else.
            internal = [rule for rule in policy["ingress"] if INTERNAL_PORT in {p["port"] for p in rule["ports"]}]
            assert internal == [{"from": [MONITORING], "ports": [{"protocol": "TCP", "port": INTERNAL_PORT}]}], name
            others = [rule for rule in policy["ingress"] if rule not in internal]
            assert all(MONITORING not in rule.get("from", []) for rule in others), name
    assert 1884 in {p["port"] for rule in policies["collection"]["spec"]["egress"] for p in rule["ports"]}
    # The service listener only from collection: a device that reached it could try the services' account.
    (services_rule,) = [r for r in policies["mosquitto"]["spec"]["ingress"] if 1884 in {p["port"] for p in r["ports"]}]
    assert services_rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "collection"}}}]
    assert 8082 in {p["port"] for rule in policies["workorders"]["spec"]["egress"] for p in rule["ports"]}
    # PostgreSQL takes every service's connections (and only theirs besides its own instances).
    (clients,) = [r for r in policies["gridhub-pg"]["spec"]["ingress"] if 5432 in {p["port"] for p in r["ports"]}]
    (expression,) = [
        peer["podSelector"]["matchExpressions"][0]
        for peer in clients["from"]
        if "matchExpressions" in peer.get("podSelector", {})
    ]
    assert expression["key"] == "app.kubernetes.io/name"
    assert set(expression["values"]) == set(SETTINGS)
