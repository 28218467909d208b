"""The /metrics endpoint and the request histogram labelled by route template."""

import httpx
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from libs.platform.metrics import RequestMetricsMiddleware, http_metrics, mount_metrics


def build_app(registry: CollectorRegistry) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    mount_metrics(app, registry=registry)

    meterpoints = APIRouter(prefix="/meterpoints")

    @meterpoints.get("/{meterpoint_id}")
    async def meterpoint(meterpoint_id: str) -> dict[str, str]:
        return {"meterpoint_id": meterpoint_id}

    @meterpoints.post("/{meterpoint_id}/readings", status_code=202)
    async def reading(meterpoint_id: str) -> dict[str, str]:
        return {"meterpoint_id": meterpoint_id}

    @meterpoints.get("/{meterpoint_id}/fail")
    async def fail(meterpoint_id: str) -> None:
        raise RuntimeError("broken")

    v1 = APIRouter(prefix="/v1")
    v1.include_router(meterpoints)
    app.include_router(v1)

    async def ftp_receipt(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app.mount("/ftp", Starlette(routes=[Route("/receipts/{name}", ftp_receipt)]))
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://collection.test")


def count(registry: CollectorRegistry, method: str, route: str, status_class: str) -> float | None:
    labels = {"method": method, "route": route, "status_class": status_class}
    return registry.get_sample_value("http_request_duration_seconds_count", labels)


async def test_metrics_endpoint_exposes_a_request_by_its_route_template() -> None:
    registry = CollectorRegistry()
    async with client(build_app(registry)) as http:
        await http.get("/v1/meterpoints/571234567890123457")
        await http.get("/v1/meterpoints/571234567890123464")
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    series = (
        'http_request_duration_seconds_count{method="GET",route="/v1/meterpoints/{meterpoint_id}",'
        'status_class="2xx"} 2.0'
    )
    assert series in response.text
    assert "571234567890123457" not in response.text


async def test_status_class_method_and_unmatched_routes_are_bounded() -> None:
    registry = CollectorRegistry()
    async with client(build_app(registry)) as http:
        await http.post("/v1/meterpoints/571234567890123457/readings")
        await http.get("/v1/meterpoints/571234567890123457/fail")
        for attempt in range(3):
            await http.get(f"/scan/{attempt}/wp-admin")
        await http.request("PROPFIND", "/v1/meterpoints/571234567890123457")
    assert count(registry, "POST", "/v1/meterpoints/{meterpoint_id}/readings", "2xx") == 1
    assert count(registry, "GET", "/v1/meterpoints/{meterpoint_id}/fail", "5xx") == 1
    assert count(registry, "GET", "<unmatched>", "4xx") == 3
    assert count(registry, "OTHER", "/v1/meterpoints/{meterpoint_id}", "4xx") == 1


async def test_routes_of_a_mounted_app_keep_the_mount_prefix() -> None:
    registry = CollectorRegistry()
    async with client(build_app(registry)) as http:
        response = await http.get("/ftp/receipts/upload-1.csv")
    assert response.text == "ok"
    assert count(registry, "GET", "/ftp/receipts/{name}", "2xx") == 1


async def test_openmetrics_is_served_when_asked_for() -> None:
    registry = CollectorRegistry()
    async with client(build_app(registry)) as http:
        response = await http.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_metrics_route_is_left_out_of_openapi() -> None:
    registry = CollectorRegistry()
    async with client(build_app(registry)) as http:
        document = (await http.get("/openapi.json")).json()
    assert "/metrics" not in document["paths"]
    assert "/v1/meterpoints/{meterpoint_id}" in document["paths"]


def test_apps_sharing_a_registry_share_the_metrics() -> None:
    registry = CollectorRegistry()
    build_app(registry)
    build_app(registry)  # a second registration of the same name would raise
    assert http_metrics(registry) is http_metrics(registry)


async def test_a_router_included_under_two_prefixes_gets_both_templates() -> None:
    registry = CollectorRegistry()
    app = FastAPI()
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    workorders = APIRouter(prefix="/workorders")

    @workorders.get("/{work_order_id}")
    async def work_order(work_order_id: str) -> dict[str, str]:
        return {"work_order_id": work_order_id}

    app.include_router(workorders, prefix="/v1")
    app.include_router(workorders, prefix="/v2")
    async with client(app) as http:
        await http.get("/v1/workorders/wo-1")
        await http.get("/v2/workorders/wo-2")
        await http.get("/v2/workorders/wo-3")
    assert count(registry, "GET", "/v1/workorders/{work_order_id}", "2xx") == 1
    assert count(registry, "GET", "/v2/workorders/{work_order_id}", "2xx") == 2
