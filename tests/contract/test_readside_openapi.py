"""The read side's committed OpenAPI document is the one the code generates (python -m services.readside.contracts)."""

from __future__ import annotations

import json

from services.readside.contracts import OPENAPI_PATH, render_openapi


def test_the_committed_openapi_document_matches_the_code() -> None:
    assert OPENAPI_PATH.read_bytes() == render_openapi(), "run: uv run python -m services.readside.contracts"


def test_every_operation_has_a_stable_id_and_answers_with_freshness_headers() -> None:
    document = json.loads(OPENAPI_PATH.read_text())
    operations = [op for path in document["paths"].values() for op in path.values()]
    assert sorted(op["operationId"] for op in operations) == [
        "getCompleteness",
        "getConsumption",
        "getCustomerOverview",
        "getMeterpoint",
        "getValidatedSeries",
        "listSeriesVersions",
        "listWorkOrders",
    ]
    for operation in operations:
        assert {"Readside-Lag", "Readside-View-Version", "ETag"} <= set(operation["responses"]["200"]["headers"])
        assert "304" in operation["responses"]
