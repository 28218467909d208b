"""The plumbing every service shares from libs/platform: the key-store slot, the contract writer, settings load."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from libs.platform.apikeys import InMemoryKeyStore, KeyStoreSlot, Role, generate_api_key
from libs.platform.contracts import ContractDocument, contracts_main, render_json
from libs.platform.serve import load_settings, serve
from libs.platform.settings import ServiceSettings
from tests.tenants import TENANT_A


class _Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PLUMBING_TEST_")
    service_name: str = "plumbing-test"


async def test_the_key_store_slot_finds_nothing_until_filled_and_refuses_changes() -> None:
    slot = KeyStoreSlot()
    new = generate_api_key("hes-north", Role.SOURCE, tenant=TENANT_A)
    assert await slot.get(new.record.key_id) is None
    with pytest.raises(RuntimeError, match="not started"):
        await slot.add(new.record)
    slot.store = InMemoryKeyStore()
    await slot.add(new.record)
    assert await slot.get(new.record.key_id) == new.record
    assert await slot.revoke(new.record.key_id) is True


def test_the_contract_writer_writes_then_check_passes_and_catches_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = {"openapi": "3.1.0", "info": {"title": "x"}}
    document = ContractDocument(tmp_path / "openapi" / "x.json", lambda: render_json(content))
    assert contracts_main([document], prog="x", argv=["--check"]) == 1  # missing counts as differing
    assert contracts_main([document], prog="x", argv=[]) == 0
    assert document.path.read_bytes() == b'{\n  "openapi": "3.1.0",\n  "info": {\n    "title": "x"\n  }\n}\n'
    assert contracts_main([document], prog="x", argv=["--check"]) == 0
    content["info"]["title"] = "y"
    assert contracts_main([document], prog="x", argv=["--check"]) == 1
    assert "x.json differs from the code; run x" in capsys.readouterr().err


def test_bad_settings_exit_2_naming_the_field_without_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLUMBING_TEST_HTTP_PORT", "70000")
    with pytest.raises(SystemExit) as exit_:
        load_settings(_Settings)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "http_port" in err
    assert "70000" not in err


def test_serve_checks_the_settings_and_exits_without_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[object] = []
    code = serve(
        lambda settings, **_: built.append(settings), _Settings, prog="p", description=None, argv=["--check-settings"]
    )
    assert code == 0
    assert built == []
    assert "plumbing-test: settings are valid" in capsys.readouterr().out


def test_pool_sizes_are_checked_against_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUMBING_TEST_POSTGRES_POOL_MIN_SIZE", "5")
    monkeypatch.setenv("PLUMBING_TEST_POSTGRES_POOL_MAX_SIZE", "2")
    with pytest.raises(ValueError, match="postgres_pool_min_size"):
        _Settings()
