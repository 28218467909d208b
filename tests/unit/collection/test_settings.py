"""Collection settings: one nested value from the environment keeps the other defaults; limits that cannot work
together fail at start-up, and so do dev secrets in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.flowcontrol.policy import BoundaryPolicy, BufferSettings, QuotaSettings
from services.collection.settings import Boundaries, CollectionSettings, FtpSettings, MqttSettings

# Production needs FTPS; the files are loaded when the server starts, so the settings take any path.
FTPS = FtpSettings(
    tls_cert_file="/etc/gridhub/ftps/tls.crt",
    tls_key_file="/etc/gridhub/ftps/tls.key",
    tls_control_required=True,
    tls_data_required=True,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("COLLECTION_", "GRIDHUB_")):
            monkeypatch.delenv(name)


def test_a_nested_variable_changes_one_value_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTION_BOUNDARIES__REST_INGRESS__QUOTA__RATE", "55")
    monkeypatch.setenv("COLLECTION_MQTT__RECEIVE_MAXIMUM", "500")
    settings = CollectionSettings()
    rest = settings.boundaries.rest_ingress
    assert rest.quota is not None
    assert rest.quota.rate == 55
    assert rest.quota.burst == Boundaries().rest_ingress.quota.burst  # type: ignore[union-attr]
    assert rest.bulkhead is not None
    assert settings.boundaries.kafka_producer.breaker is not None
    assert settings.mqtt.receive_maximum == 500
    assert settings.mqtt.client_id == "collection-0"


def test_the_buffer_must_hold_what_the_broker_may_send() -> None:
    small = BoundaryPolicy(quota=QuotaSettings(rate=1, burst=200), buffer=BufferSettings(capacity=10))
    with pytest.raises(ValidationError, match="receive_maximum"):
        CollectionSettings(boundaries=Boundaries(mqtt_ingress=small))


def test_every_device_burst_fits_the_largest_message() -> None:
    policy = BoundaryPolicy(quota=QuotaSettings(rate=1, burst=5), buffer=BufferSettings(capacity=2000))
    with pytest.raises(ValidationError, match="burst"):
        CollectionSettings(boundaries=Boundaries(mqtt_ingress=policy))


def test_production_refuses_the_dev_secrets() -> None:
    with pytest.raises(ValidationError, match="postgres_dsn"):
        CollectionSettings(environment="production", mqtt=MqttSettings(password="Zq8v4Lw2pR7kT1xN"))
    with pytest.raises(ValidationError, match=r"mqtt\.password"):
        CollectionSettings(environment="production", postgres_dsn="postgresql://c:Zq8v4Lw2pR7kT1xN@db/c")
    CollectionSettings(
        environment="production",
        postgres_dsn="postgresql://c:Zq8v4Lw2pR7kT1xN@db/c",
        mqtt=MqttSettings(password="Hq2m9Ww4Tz7Kc1Pd"),
        ftp=FTPS,
    )


def test_production_refuses_plain_ftp_and_dev_allows_it() -> None:
    secrets = {
        "postgres_dsn": "postgresql://c:Zq8v4Lw2pR7kT1xN@db/c",
        "mqtt": MqttSettings(password="Hq2m9Ww4Tz7Kc1Pd"),
    }
    with pytest.raises(ValidationError, match="production needs FTPS"):
        CollectionSettings(environment="production", **secrets)  # type: ignore[arg-type]
    optional = FTPS.model_copy(update={"tls_data_required": False})
    with pytest.raises(ValidationError, match="production needs FTPS"):
        CollectionSettings(environment="production", ftp=optional, **secrets)  # type: ignore[arg-type]
    # Without FTP at all there is nothing to protect; in dev plain FTP is the default.
    CollectionSettings(environment="production", ftp=FtpSettings(enabled=False), **secrets)  # type: ignore[arg-type]
    assert CollectionSettings().ftp.tls_control_required is False


def test_ftps_needs_both_files_before_it_can_be_required() -> None:
    with pytest.raises(ValidationError, match="both tls_cert_file and tls_key_file"):
        FtpSettings(tls_cert_file="/etc/gridhub/ftps/tls.crt")
    with pytest.raises(ValidationError, match="need tls_cert_file and tls_key_file"):
        FtpSettings(tls_control_required=True)
