"""Devices and tenants as principals through the real `gridhub` entry point, on the stack's broker and databases.

A device belongs to a tenant (recorded in collection's ``device_accounts``); its password rotates without overlap
(Mosquitto keeps one per user): after ``device passwd`` only the new password logs in and the session opened with
the old one is closed by the broker's reload; an expired device is taken out of the broker by ``device prune``;
``tenant list`` shows the grid companies with their principals; every change is in ``audit list``. The
configuration is the dev stack's (``.stack/dev.env``), as an operator's shell has it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from libs.events.gsrn import with_check_digit
from ops.cli import app
from stack.config import StackConfig
from stack.mosquitto import Mosquitto
from tests.integration.collection.support import Device, can_log_in
from tests.tenants import EIC_TENANT, TENANT_A, TENANT_B

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres]


def gridhub(*argv: str) -> str:
    result = CliRunner().invoke(app, list(argv), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def new_meterpoint() -> str:
    return with_check_digit("5713131" + "".join(secrets.choice("0123456789") for _ in range(10)))


def shown_password(output: str) -> str:
    return output.split("password (shown once): ")[1].split()[0]


def wait_until(check: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def meterpoint(stack: StackConfig) -> Iterator[str]:
    """A fresh meterpoint; its device is removed from the broker afterwards, whatever the test did."""
    gsrn = new_meterpoint()
    yield gsrn
    CliRunner().invoke(app, ["device", "remove", gsrn])


def audit_of(subject: str) -> list[dict[str, Any]]:
    listing = json.loads(gridhub("audit", "list", "--json", "--service", "collection", "--since", "10m"))
    return [event for event in listing["events"] if event["subject"] == subject]


def test_a_device_belongs_to_its_tenant_and_rotates_without_overlap(stack: StackConfig, meterpoint: str) -> None:
    old = shown_password(gridhub("device", "add", meterpoint, "--tenant", TENANT_A))
    wait_until(lambda: can_log_in(stack, meterpoint, old), timeout=10, what="the broker did not take the device")
    listing = gridhub("device", "list", "--tenant", TENANT_A)
    assert f"{meterpoint}  {TENANT_A}  source" in listing
    assert meterpoint not in gridhub("device", "list", "--tenant", TENANT_B)

    session = Device(meterpoint, old, stack.host, stack.mqtt_port)
    session.connect()
    try:
        new = shown_password(gridhub("device", "passwd", meterpoint))
        wait_until(lambda: can_log_in(stack, meterpoint, new), timeout=10, what="the new password did not log in")
        assert not can_log_in(stack, meterpoint, old), "the old password still logs in after the rotation"
        wait_until(
            lambda: not session.client.is_connected(), timeout=10, what="the session of the old password stayed open"
        )
    finally:
        session.close()
    assert [e["action"] for e in audit_of(meterpoint)] == ["device.add", "device.rotate"]


def test_a_device_of_another_tenant_is_not_taken_over(meterpoint: str) -> None:
    gridhub("device", "add", meterpoint, "--tenant", TENANT_A)
    taken = CliRunner().invoke(app, ["device", "add", meterpoint, "--tenant", TENANT_B])
    assert taken.exit_code == 2
    assert f"belongs to {TENANT_A}" in taken.output
    refused = CliRunner().invoke(app, ["device", "add", new_meterpoint(), "--tenant", "5790000000013"])
    assert refused.exit_code == 2, "a GLN with a wrong check digit is no tenant"


def test_an_expired_device_is_pruned_out_of_the_broker(stack: StackConfig, meterpoint: str) -> None:
    password = shown_password(gridhub("device", "add", meterpoint, "--tenant", TENANT_A, "--expires-in", "1s"))
    wait_until(lambda: can_log_in(stack, meterpoint, password), timeout=10, what="the broker did not take the device")
    wait_until(
        lambda: "expired" in gridhub("device", "list", "--tenant", TENANT_A).split(meterpoint, 1)[1].split("\n")[0],
        timeout=10,
        what="the device did not expire",
    )
    assert meterpoint in gridhub("device", "prune")
    assert f"{meterpoint}:" not in Path(Mosquitto(stack).passwd).read_text()
    wait_until(lambda: not can_log_in(stack, meterpoint, password), timeout=10, what="the pruned device logged in")
    assert [e["action"] for e in audit_of(meterpoint)] == ["device.add", "device.remove"]
    assert audit_of(meterpoint)[-1]["detail"] == {"reason": "expired"}


def test_tenant_list_shows_each_grid_company_with_its_principals() -> None:
    login = f"p{secrets.token_hex(4)}"
    gridhub("ftpuser", "add", login, "--tenant", EIC_TENANT)
    key = gridhub("apikey", "add", "readside", f"web-{secrets.token_hex(3)}", "--tenant", EIC_TENANT)
    try:
        listing = json.loads(gridhub("tenant", "list", "--json"))
        assert listing["unreachable"] == {}
        entry = next(t for t in listing["tenants"] if t["tenant"] == EIC_TENANT)
        assert entry["counts"]["ftp_partner"] >= 1
        assert entry["counts"]["api_key:readside"] >= 1
    finally:
        gridhub("ftpuser", "disable", login)
        key_id = key.split("key id ")[1].split()[0]
        gridhub("apikey", "revoke", "readside", key_id)
    events = json.loads(gridhub("audit", "list", "--json", "--tenant", EIC_TENANT, "--since", "10m"))["events"]
    assert {"ftp_partner.add", "ftp_partner.disable", "apikey.add", "apikey.revoke"} <= {e["action"] for e in events}
    assert all(e["tenant"] == EIC_TENANT for e in events)


def test_audit_list_refuses_a_bad_since_or_service() -> None:
    bad = CliRunner().invoke(app, ["audit", "list", "--since", "yesterday"])
    assert bad.exit_code == 2
    assert "duration" in bad.output
    unknown = CliRunner().invoke(app, ["audit", "list", "--service", "billing"])
    assert unknown.exit_code == 2


def test_an_api_key_is_listed_with_tenant_role_expiry_and_state() -> None:
    client = f"hes-{secrets.token_hex(3)}"
    added = gridhub("apikey", "add", "collection", client, "--tenant", TENANT_B, "--expires-in", "30d")
    key_id = added.split("key id ")[1].split()[0]
    rows = json.loads(gridhub("apikey", "list", "--service", "collection", "--tenant", TENANT_B, "--json"))
    row = next(r for r in rows if r["key_id"] == key_id)
    assert (row["client"], row["tenant"], row["role"], row["state"]) == (client, TENANT_B, "source", "active")
    assert row["expires_at"] is not None
    gridhub("apikey", "revoke", "collection", key_id)
    rows = json.loads(gridhub("apikey", "list", "--service", "collection", "--tenant", TENANT_B, "--json"))
    assert next(r for r in rows if r["key_id"] == key_id)["state"] == "revoked"
    refused = CliRunner().invoke(app, ["apikey", "rotate", "collection", key_id])
    assert refused.exit_code == 2
    assert "revoked" in refused.output
    bad = CliRunner().invoke(app, ["apikey", "add", "collection", client, "--tenant", TENANT_B, "--expires-in", "soon"])
    assert bad.exit_code == 2
