"""The read side's production refusals and edge settings (issue 14, attack 15)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.platform.settings import SHARED_ENV
from services.readside.settings import ReadsideSettings

REAL_DSN = "postgresql://readside:Zq8v4Lw2pR7kT1xN@db.internal:5432/readside"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in SHARED_ENV:
        monkeypatch.delenv(variable, raising=False)
    for field in ReadsideSettings.model_fields:
        monkeypatch.delenv(f"READSIDE_{field.upper()}", raising=False)


def test_production_refuses_the_views_without_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDHUB_ENVIRONMENT", "production")
    monkeypatch.setenv("READSIDE_REQUIRE_API_KEY", "false")
    with pytest.raises(ValidationError, match="production refuses require_api_key=false"):
        ReadsideSettings(postgres_dsn=REAL_DSN)
    monkeypatch.delenv("READSIDE_REQUIRE_API_KEY")
    assert ReadsideSettings(postgres_dsn=REAL_DSN).require_api_key
    # Dev and tests may switch keys off.
    assert not ReadsideSettings(environment="dev", require_api_key=False).require_api_key


def test_the_query_api_has_flow_control_and_a_short_key_cache() -> None:
    settings = ReadsideSettings()
    rest = settings.boundaries.rest_api
    assert rest.quota is not None
    assert rest.per_client is not None
    assert rest.bulkhead is not None
    assert rest.per_client.max_per_client < rest.bulkhead.max_concurrent
    assert rest.body_timeout is not None
    assert rest.max_body_bytes is not None
    assert 0 < settings.api_key_cache_seconds <= 30
