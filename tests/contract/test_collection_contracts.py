"""The collection service's committed OpenAPI and AsyncAPI documents are what the code generates."""

from __future__ import annotations

import yaml  # type: ignore[import-untyped,unused-ignore]

from services.collection import contracts


def test_openapi_document_matches_the_code() -> None:
    assert contracts.OPENAPI.read_bytes() == contracts.openapi_bytes(), (
        "contracts/openapi/collection.json is stale: run python -m services.collection.contracts"
    )


def test_asyncapi_document_matches_the_code() -> None:
    assert contracts.ASYNCAPI.read_bytes() == contracts.asyncapi_bytes(), (
        "contracts/asyncapi/collection.yaml is stale: run python -m services.collection.contracts"
    )


def test_asyncapi_document_is_asyncapi_3_with_the_meters_topics() -> None:
    document = yaml.safe_load(contracts.ASYNCAPI.read_text())
    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {
        "gridhub/meters/{meterpointId}/readings",
        "gridhub/meters/{meterpointId}/events",
        "gridhub/meters/{meterpointId}/commands",
    }
    actions = {name: operation["action"] for name, operation in document["operations"].items()}
    assert actions == {"receiveReadings": "receive", "receiveMeterEvents": "receive", "sendReread": "send"}
    for operation in document["operations"].values():
        assert operation["bindings"]["mqtt"]["qos"] == 1
