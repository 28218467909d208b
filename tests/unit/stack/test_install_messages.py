"""The stack says exactly what to install when it cannot install it itself."""

from __future__ import annotations

import pytest

from stack import process
from stack.process import StackError, ensure_packages


def test_without_root_it_names_the_apt_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(process.shutil, "which", lambda cmd: None)
    with pytest.raises(StackError) as raised:
        ensure_packages(["mosquitto", "mosquitto-clients"], ["mosquitto", "mosquitto_passwd"])
    assert "missing mosquitto, mosquitto_passwd" in str(raised.value)
    assert "sudo apt-get install -y mosquitto mosquitto-clients" in str(raised.value)


def test_nothing_happens_when_the_commands_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_apt(*args: object, **kwargs: object) -> None:
        raise AssertionError("apt-get must not run when nothing is missing")

    monkeypatch.setattr(process, "run", no_apt)
    ensure_packages(["coreutils"], ["ls"])
