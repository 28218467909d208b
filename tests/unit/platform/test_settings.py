"""ServiceSettings: environment sources, shared variables and fail-fast on placeholder secrets."""

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from libs.platform.settings import (
    DEFAULT_INTERNAL_HTTP_PORT,
    DEV_ONLY_MARKER,
    SHARED_ENV,
    ServiceSettings,
    is_placeholder_secret,
)

DEV_DSN = f"postgresql://workorders:workorders-{DEV_ONLY_MARKER}@127.0.0.1:5432/workorders"
REAL_DSN = "postgresql://workorders:Zq8v4Lw2pR7kT1xN@db.internal:5432/workorders"


class WorkordersSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WORKORDERS_")

    service_name: str = "workorders"
    postgres_dsn: SecretStr = SecretStr(DEV_DSN)
    customers_soap_password: SecretStr = SecretStr(f"soap-{DEV_ONLY_MARKER}")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in SHARED_ENV:
        monkeypatch.delenv(variable, raising=False)
    for field in WorkordersSettings.model_fields:
        monkeypatch.delenv(f"WORKORDERS_{field.upper()}", raising=False)


def test_defaults_are_loopback_dev_values() -> None:
    settings = WorkordersSettings()
    assert settings.environment == "dev"
    assert settings.http_host == "127.0.0.1"
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.log_level == "INFO"
    assert settings.metrics_enabled is True
    assert settings.postgres_dsn.get_secret_value() == DEV_DSN


def test_service_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKORDERS_HTTP_PORT", "8082")
    monkeypatch.setenv("WORKORDERS_LOG_LEVEL", "debug")
    monkeypatch.setenv("WORKORDERS_METRICS_ENABLED", "false")
    settings = WorkordersSettings()
    assert (settings.http_port, settings.log_level, settings.metrics_enabled) == (8082, "DEBUG", False)


def test_shared_kafka_bootstrap_is_read_and_service_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDHUB_KAFKA_BOOTSTRAP", "10.0.0.5:9092, 10.0.0.6:9092")
    settings = WorkordersSettings()
    assert settings.kafka_bootstrap_servers == "10.0.0.5:9092,10.0.0.6:9092"
    assert settings.kafka_bootstrap_list == ["10.0.0.5:9092", "10.0.0.6:9092"]
    monkeypatch.setenv("WORKORDERS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    assert WorkordersSettings().kafka_bootstrap_servers == "127.0.0.1:19092"


@pytest.mark.parametrize("servers", ["", "kafka", "kafka:port", "kafka:9092,", "kafka:70000"])
def test_bad_bootstrap_servers_are_refused(servers: str) -> None:
    with pytest.raises(ValidationError, match="kafka_bootstrap_servers"):
        WorkordersSettings(kafka_bootstrap_servers=servers)


def test_bad_port_and_service_name_are_refused() -> None:
    with pytest.raises(ValidationError):
        WorkordersSettings(http_port=0)
    with pytest.raises(ValidationError, match="service_name"):
        WorkordersSettings(service_name="Work Orders")


def test_dev_defaults_are_allowed_in_dev() -> None:
    settings = WorkordersSettings(environment="dev")
    assert DEV_ONLY_MARKER in settings.customers_soap_password.get_secret_value()


@pytest.mark.parametrize(
    ("dsn", "soap_password"),
    [
        ("postgresql://workorders:changeme@db.internal:5432/workorders", "Xk29fLq0pW8e"),
        (REAL_DSN, "CHANGE_ME"),
        (REAL_DSN, ""),
        ("", "Xk29fLq0pW8e"),
        (DEV_DSN, "Xk29fLq0pW8e"),
        ("host=db.internal dbname=workorders password=change-me", "Xk29fLq0pW8e"),
    ],
)
def test_placeholder_secrets_are_refused_in_production(
    monkeypatch: pytest.MonkeyPatch, dsn: str, soap_password: str
) -> None:
    monkeypatch.setenv("GRIDHUB_ENVIRONMENT", "production")
    monkeypatch.setenv("WORKORDERS_POSTGRES_DSN", dsn)
    monkeypatch.setenv("WORKORDERS_CUSTOMERS_SOAP_PASSWORD", soap_password)
    with pytest.raises(ValidationError, match="placeholder or dev-only secret in production") as raised:
        WorkordersSettings()
    # The message names the field but never repeats a value, not even a bad one.
    message = str(raised.value)
    for secret in (dsn, soap_password):
        assert not secret or secret not in message


def test_default_dev_secrets_are_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="postgres_dsn, customers_soap_password"):
        WorkordersSettings(environment="production")


def test_real_secrets_are_accepted_in_production() -> None:
    settings = WorkordersSettings(
        environment="production",
        postgres_dsn=SecretStr(REAL_DSN),
        customers_soap_password=SecretStr("Xk29fLq0pW8e"),
    )
    assert settings.environment == "production"
    assert "Zq8v4Lw2pR7kT1xN" not in repr(settings)


def test_dsn_without_password_is_accepted_in_production() -> None:
    # Certificate or peer authentication: no password is not a placeholder password.
    settings = WorkordersSettings(
        environment="production",
        postgres_dsn=SecretStr("postgresql://workorders@db.internal:5432/workorders?sslmode=verify-full"),
        customers_soap_password=SecretStr("Xk29fLq0pW8e"),
    )
    assert settings.postgres_dsn is not None


def test_settings_are_frozen() -> None:
    settings = WorkordersSettings()
    with pytest.raises(ValidationError):
        settings.http_port = 1  # type: ignore[misc]


@pytest.mark.parametrize("value", ["", "  ", "changeme", "CHANGE_ME", "Change-Me", "x-dev-only-y", "password"])
def test_is_placeholder_secret(value: str) -> None:
    assert is_placeholder_secret(value)


def test_real_secret_is_not_a_placeholder() -> None:
    assert not is_placeholder_secret("Zq8v4Lw2pR7kT1xN")


def _production(**values: object) -> WorkordersSettings:
    return WorkordersSettings(
        environment="production",
        postgres_dsn=SecretStr(REAL_DSN),
        customers_soap_password=SecretStr("Xk29fLq0pW8e"),
        **values,  # type: ignore[arg-type]
    )


def test_production_serves_metrics_and_documents_on_the_internal_port_unless_moved() -> None:
    assert WorkordersSettings().internal_http_port is None, "dev keeps everything on the main port"
    assert _production().internal_http_port == DEFAULT_INTERNAL_HTTP_PORT
    assert _production(internal_http_port=9191).internal_http_port == 9191
    with pytest.raises(ValidationError, match="internal_http_port must differ from http_port"):
        _production(internal_http_port=8000, http_port=8000)


def test_trusted_proxies_are_a_comma_separated_list_of_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDHUB_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,fd00::/8")
    settings = WorkordersSettings()
    assert [str(network) for network in settings.trusted_proxies] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    assert WorkordersSettings(trusted_proxies=()).trusted_proxies == ()
    monkeypatch.setenv("GRIDHUB_TRUSTED_PROXIES", "10.0.0.0/8,not-an-address")
    with pytest.raises(ValidationError, match="trusted_proxies"):
        WorkordersSettings()
