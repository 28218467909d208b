"""The work orders service's committed OpenAPI document is the one the code generates.

Regenerate it with ``uv run python -m services.workorders.openapi``.
"""

from __future__ import annotations

import json

from services.workorders.openapi import CONTRACT, generated


def test_the_committed_openapi_document_matches_the_code() -> None:
    assert CONTRACT.read_bytes() == generated(), "run: uv run python -m services.workorders.openapi"


def test_every_operation_has_a_stable_id_and_documents_its_problems() -> None:
    document = json.loads(CONTRACT.read_text())
    operations = {op["operationId"]: op for path in document["paths"].values() for op in path.values()}
    assert sorted(operations) == [
        "cancelWorkOrder",
        "completeWorkOrder",
        "createWorkOrder",
        "getWorkOrder",
        "listWorkOrders",
        "scheduleWorkOrder",
        "startWorkOrder",
    ]
    for name, operation in operations.items():
        assert {"401", "403", "429", "503"} <= set(operation["responses"]), name
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert list(response["content"]) == ["application/problem+json"], (name, status)
    for name in ("scheduleWorkOrder", "startWorkOrder", "completeWorkOrder", "cancelWorkOrder"):
        operation = operations[name]
        assert {"409", "412", "428"} <= set(operation["responses"]), name
        headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
        assert headers["If-Match"]["required"] is True
    create = operations["createWorkOrder"]
    assert next(p for p in create["parameters"] if p["name"] == "Idempotency-Key")["required"] is True
