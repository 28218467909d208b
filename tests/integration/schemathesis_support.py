"""What every Schemathesis run against a service's OpenAPI document shares: the checks, the client and the settings.

A test module builds `schemathesis.openapi.from_path(<document>)`, a module fixture yielding a `Service`, and
calls `call_and_check(case, service)` under `@schema.parametrize()` and `@FUZZ`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# No 5xx, and every status, content type, header and body as the document says.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# Reproducible (derandomized, no example database) and bounded: 40 generated cases per operation.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Service:
    base_url: str
    headers: dict[str, str]
    session: requests.Session


def call_and_check(case: Any, service: Service) -> None:
    case.call_and_validate(base_url=service.base_url, session=service.session, headers=service.headers, checks=CHECKS)
