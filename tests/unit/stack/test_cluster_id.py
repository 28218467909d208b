"""KRaft cluster ids the storage tool accepts."""

from __future__ import annotations

import base64
import uuid

import pytest

from stack import kafka


def test_an_id_drawn_with_a_leading_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf9 0xbe... encodes to "-74..." in URL-safe base64: the id the storage tool once refused.
    dashed = uuid.UUID(bytes=bytes([0xF9, 0xBE]) + bytes(14))
    plain = uuid.UUID(int=1)
    draws = iter([dashed, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))

    cluster_id = kafka.new_cluster_id()

    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22
