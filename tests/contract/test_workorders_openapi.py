"""The work orders service's committed OpenAPI document is the one the code generates.

Regenerate it with ``uv run python -m services.workorders.contracts`` (``--check`` compares).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from services.workorders import contracts
from services.workorders.contracts import OPENAPI, openapi_bytes

SERVICE = Path(contracts.__file__).resolve().parent


def test_the_committed_openapi_document_matches_the_code() -> None:
    assert OPENAPI.read_bytes() == openapi_bytes(), "run: uv run python -m services.workorders.contracts"


def test_the_contracts_command_checks_the_committed_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert contracts.main(["--check"]) == 0, capsys.readouterr().err


def test_nothing_in_the_service_imports_the_contracts_module() -> None:
    importers = []
    for path in SERVICE.rglob("*.py"):
        if path.name == "contracts.py" and path.parent == SERVICE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            if "services.workorders.contracts" in names:
                importers.append(str(path.relative_to(SERVICE)))
    assert importers == []


def test_every_operation_has_a_stable_id_and_documents_its_problems() -> None:
    document = json.loads(OPENAPI.read_text())
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
