"""The customers settings: the shared ``postgres_*`` names, the typed boundaries, what production refuses."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from libs.flowcontrol.policy import BoundaryPolicy
from libs.platform.passwords import hash_password
from libs.platform.settings import DEV_ONLY_MARKER
from services.customers.settings import DEFAULT_MAX_BODY_BYTES, DEV_POSTGRES_DSN, Boundaries, CustomersSettings
from tests.tenants import TENANT_A


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CUSTOMERS_", "GRIDHUB_")):
            monkeypatch.delenv(name)


def test_the_defaults() -> None:
    settings = CustomersSettings()
    assert settings.postgres_dsn.get_secret_value() == DEV_POSTGRES_DSN
    assert DEV_ONLY_MARKER in DEV_POSTGRES_DSN
    assert (settings.postgres_pool_min_size, settings.postgres_pool_max_size) == (1, 10)
    assert (settings.postgres_command_timeout, settings.postgres_acquire_timeout) == (5.0, 2.0)
    assert settings.boundaries == Boundaries()
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert CustomersSettings.defaults().boundaries == settings.boundaries


def test_the_shared_postgres_names_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMERS_POSTGRES_POOL_MIN_SIZE", "2")
    monkeypatch.setenv("CUSTOMERS_POSTGRES_POOL_MAX_SIZE", "4")
    monkeypatch.setenv("CUSTOMERS_POSTGRES_COMMAND_TIMEOUT", "1.5")
    monkeypatch.setenv("CUSTOMERS_POSTGRES_ACQUIRE_TIMEOUT", "0.5")
    settings = CustomersSettings()
    assert (settings.postgres_pool_min_size, settings.postgres_pool_max_size) == (2, 4)
    assert (settings.postgres_command_timeout, settings.postgres_acquire_timeout) == (1.5, 0.5)


def test_one_number_of_a_boundary_changes_and_the_rest_keeps_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMERS_BOUNDARIES__SOAP_INGRESS__TIMEOUT", "3")
    monkeypatch.setenv("CUSTOMERS_BOUNDARIES__SOAP_INGRESS__QUOTA__RATE", "7")
    soap = CustomersSettings().boundaries.soap_ingress
    default = Boundaries().soap_ingress
    assert soap.timeout == 3.0
    assert soap.quota is not None
    assert default.quota is not None
    assert (soap.quota.rate, soap.quota.burst) == (7.0, default.quota.burst)
    assert soap.bulkhead == default.bulkhead


def test_a_json_policy_is_merged_into_the_defaults_and_null_drops_a_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMERS_BOUNDARIES__SOAP_INGRESS", '{"quota": {"rate": 1, "burst": 2}, "bulkhead": null}')
    soap = CustomersSettings().boundaries.soap_ingress
    assert soap.quota is not None
    assert (soap.quota.rate, soap.quota.burst) == (1.0, 2.0)
    assert soap.bulkhead is None
    assert soap.max_body_bytes == DEFAULT_MAX_BODY_BYTES


def test_boundaries_are_frozen_and_refuse_unknown_boundaries() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Boundaries(soap_egress=BoundaryPolicy())  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="frozen"):
        Boundaries().soap_ingress = BoundaryPolicy()  # type: ignore[misc]


def test_production_needs_a_body_limit() -> None:
    real_dsn = "postgresql://customers:Zx9-real-secret@db:5432/customers"
    encoded = hash_password("a-real-generated-password-123456")
    clients = {"billing": {"password_hash": encoded, "role": "reader", "tenant": TENANT_A}}
    unlimited = Boundaries(soap_ingress=BoundaryPolicy(max_body_bytes=None))
    with pytest.raises(ValidationError, match=r"boundaries\.soap_ingress\.max_body_bytes must be set"):
        CustomersSettings(environment="production", postgres_dsn=real_dsn, clients=clients, boundaries=unlimited)
    assert CustomersSettings(postgres_dsn=real_dsn, boundaries=unlimited).max_body_bytes == DEFAULT_MAX_BODY_BYTES
