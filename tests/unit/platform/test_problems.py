"""RFC 9457 problem bodies for FastAPI's own errors and for ProblemError."""

from http import HTTPStatus

import httpx
from fastapi import FastAPI

from libs.platform.logging import CORRELATION_ID_HEADER, CorrelationIdMiddleware
from libs.platform.problems import PROBLEM_JSON, Problem, ProblemError, install_problem_handlers


def build_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(CorrelationIdMiddleware)

    @app.get("/meterpoints/{meterpoint_id}")
    async def meterpoint(meterpoint_id: str, limit: int = 10) -> dict[str, str]:
        return {"meterpoint_id": meterpoint_id}

    @app.get("/quota")
    async def quota() -> None:
        raise ProblemError(
            Problem(
                type="https://gridhub.example/problems/quota-exceeded",
                title="Quota exceeded",
                status=429,
                detail="client datahub used 600 of 600 requests this minute",
                limit=600,
            ),
            headers={"Retry-After": "12"},
        )

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("database password is hunter2")

    return app


def client(app: FastAPI, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://readside.test")


async def test_unknown_route_is_a_not_found_problem() -> None:
    async with client(build_app()) as http:
        response = await http.get("/nowhere", headers={CORRELATION_ID_HEADER: "trace-1"})
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json() == {"type": "about:blank", "title": "Not Found", "status": 404, "correlation_id": "trace-1"}


async def test_wrong_method_keeps_the_allow_header() -> None:
    async with client(build_app()) as http:
        response = await http.delete("/meterpoints/571234567890123457")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "GET" in response.headers["allow"]
    assert response.json()["title"] == "Method Not Allowed"


async def test_validation_error_lists_errors_without_the_input() -> None:
    async with client(build_app()) as http:
        response = await http.get("/meterpoints/571234567890123457", params={"limit": "secret-token-x"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["title"] == HTTPStatus(422).phrase  # RFC 9110 renamed it; Python follows in 3.13
    assert body["errors"][0]["loc"] == ["query", "limit"]
    assert body["errors"][0]["type"] == "int_parsing"
    assert "secret-token-x" not in response.text


async def test_problem_error_answers_with_its_problem_and_headers() -> None:
    async with client(build_app()) as http:
        response = await http.get("/quota")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "12"
    body = response.json()
    assert body["type"] == "https://gridhub.example/problems/quota-exceeded"
    assert body["detail"] == "client datahub used 600 of 600 requests this minute"
    assert body["limit"] == 600


async def test_unhandled_error_is_a_bare_500_with_the_correlation_id() -> None:
    async with client(build_app(), raise_app_exceptions=False) as http:
        response = await http.get("/boom", headers={CORRELATION_ID_HEADER: "trace-500"})
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers[CORRELATION_ID_HEADER] == "trace-500"
    assert response.json() == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "correlation_id": "trace-500",
    }
    assert "hunter2" not in response.text


def test_from_status_uses_the_reason_phrase() -> None:
    problem = Problem.from_status(503, "kafka unreachable", checks=["kafka"])
    assert problem.model_dump(exclude_none=True) == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "kafka unreachable",
        "checks": ["kafka"],
    }
