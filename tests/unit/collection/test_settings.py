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
MQTT_TLS = MqttSettings(tls_ca_file="/etc/gridhub/mqtt/ca.crt")


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
        mqtt=MQTT_TLS.model_copy(update={"password": "Hq2m9Ww4Tz7Kc1Pd"}),
        ftp=FTPS,
    )


def test_production_refuses_plain_ftp_and_dev_allows_it() -> None:
    secrets = {
        "postgres_dsn": "postgresql://c:Zq8v4Lw2pR7kT1xN@db/c",
        "mqtt": MqttSettings(password="Hq2m9Ww4Tz7Kc1Pd", tls_ca_file=MQTT_TLS.tls_ca_file),
    }
    with pytest.raises(ValidationError, match="production needs FTPS"):
        CollectionSettings(environment="production", **secrets)  # type: ignore[arg-type]
    optional = FTPS.model_copy(update={"tls_data_required": False})
    with pytest.raises(ValidationError, match="production needs FTPS"):
        CollectionSettings(environment="production", ftp=optional, **secrets)  # type: ignore[arg-type]
    # Without FTP at all there is nothing to protect; in dev plain FTP is the default.
    CollectionSettings(environment="production", ftp=FtpSettings(enabled=False), **secrets)  # type: ignore[arg-type]
    assert CollectionSettings().ftp.tls_control_required is False


def test_production_refuses_plain_mqtt_and_dev_allows_it() -> None:
    def production(mqtt: MqttSettings) -> CollectionSettings:
        return CollectionSettings(
            environment="production", postgres_dsn="postgresql://c:Zq8v4Lw2pR7kT1xN@db/c", ftp=FTPS, mqtt=mqtt
        )

    with pytest.raises(ValidationError, match="production needs MQTT over TLS"):
        production(MqttSettings(password="Hq2m9Ww4Tz7Kc1Pd"))
    tls = MQTT_TLS.model_copy(update={"password": "Hq2m9Ww4Tz7Kc1Pd"})
    assert production(tls).mqtt.tls_ca_file == MQTT_TLS.tls_ca_file
    assert CollectionSettings().mqtt.tls_ca_file is None


def test_mqtt_limits_are_checked_against_each_other() -> None:
    # Parked messages hold PUBACKs: all lanes together may take at most half of the shared in-flight window.
    with pytest.raises(ValidationError, match="at most half of receive_maximum"):
        MqttSettings(receive_maximum=100, quota_lanes=8, quota_lane_messages=8)
    MqttSettings(receive_maximum=128, quota_lanes=8, quota_lane_messages=8)
    with pytest.raises(ValidationError, match="max_packet_bytes must leave room"):
        MqttSettings(max_payload_bytes=256 * 1024, max_packet_bytes=256 * 1024)
    with pytest.raises(ValidationError, match="both tls_cert_file and tls_key_file"):
        MqttSettings(tls_ca_file="/etc/gridhub/mqtt/ca.crt", tls_cert_file="/etc/gridhub/mqtt/tls.crt")
    with pytest.raises(ValidationError, match="needs tls_ca_file"):
        MqttSettings(tls_cert_file="/etc/gridhub/mqtt/tls.crt", tls_key_file="/etc/gridhub/mqtt/tls.key")


def test_ftps_needs_both_files_before_it_can_be_required() -> None:
    with pytest.raises(ValidationError, match="both tls_cert_file and tls_key_file"):
        FtpSettings(tls_cert_file="/etc/gridhub/ftps/tls.crt")
    with pytest.raises(ValidationError, match="need tls_cert_file and tls_key_file"):
        FtpSettings(tls_control_required=True)
