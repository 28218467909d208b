"""API keys: generation, hashing at rest, roles, and the require_role dependency's 401/403 problems."""

import hashlib
import re
from dataclasses import astuple
from datetime import UTC, datetime
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

from libs.platform.apikeys import (
    ApiKeyRecord,
    InMemoryKeyStore,
    NewApiKey,
    Role,
    authenticate,
    generate_api_key,
    hash_api_key,
    parse_key_id,
    require_role,
    set_key_store,
    verify_api_key,
)
from libs.platform.problems import PROBLEM_JSON, install_problem_handlers
from libs.platform.tenancy import PrincipalKind
from tests.tenants import TENANT_A, TENANT_B


def test_generated_key_has_the_documented_shape() -> None:
    plain_key, record = generate_api_key("datahub", "source", tenant=TENANT_A, now=datetime(2024, 11, 1, tzinfo=UTC))
    assert re.fullmatch(r"ghk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", plain_key)
    assert parse_key_id(plain_key) == record.key_id
    assert (record.role, record.client, record.active) == (Role.SOURCE, "datahub", True)
    assert record.created_at == datetime(2024, 11, 1, tzinfo=UTC)


def test_the_record_never_holds_the_plain_key_or_its_secret() -> None:
    plain_key, record = generate_api_key("grid-company-north", Role.READER, tenant=TENANT_A)
    secret = plain_key[len("ghk_") + 16 + 1 :]
    stored = " ".join(str(value) for value in astuple(record))
    assert plain_key not in stored
    assert secret not in stored
    assert record.key_hash == hashlib.sha256(plain_key.encode()).hexdigest() == hash_api_key(plain_key)


def test_keys_are_unique() -> None:
    keys = [generate_api_key("datahub", "reader", tenant=TENANT_A) for _ in range(200)]
    assert len({key.plain_key for key in keys}) == len({key.record.key_id for key in keys}) == 200


def test_verify_accepts_only_the_exact_key() -> None:
    plain_key, record = generate_api_key("datahub", "reader", tenant=TENANT_A)
    assert verify_api_key(plain_key, record)
    tampered = plain_key[:-1] + ("A" if plain_key[-1] != "A" else "B")
    assert not verify_api_key(tampered, record)


@pytest.mark.parametrize("client_name", ["", "has space", "x" * 65, "semi;colon"])
def test_bad_client_names_are_refused(client_name: str) -> None:
    with pytest.raises(ValueError, match="client"):
        generate_api_key(client_name, "reader", tenant=TENANT_A)


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="superuser"):
        generate_api_key("datahub", "superuser")


@pytest.mark.parametrize(
    ("role", "required", "allowed"),
    [
        (Role.READER, Role.READER, True),
        (Role.READER, Role.OPERATOR, False),
        (Role.READER, Role.SOURCE, False),
        (Role.OPERATOR, Role.READER, True),
        (Role.OPERATOR, Role.ADMIN, False),
        (Role.ADMIN, Role.OPERATOR, True),
        (Role.ADMIN, Role.SOURCE, False),
        (Role.SOURCE, Role.SOURCE, True),
        (Role.SOURCE, Role.READER, False),
        (Role.PLATFORM, Role.ADMIN, True),
        (Role.PLATFORM, Role.SOURCE, True),
        (Role.ADMIN, Role.PLATFORM, False),
    ],
)
def test_role_hierarchy(role: Role, required: Role, allowed: bool) -> None:
    assert role.allows(required) is allowed


@pytest.mark.parametrize(
    ("role", "tenant", "error"),
    [
        (Role.READER, None, "belongs to a tenant"),
        (Role.SOURCE, "5790000000013", "check character"),
        (Role.PLATFORM, TENANT_A, "no tenant"),
    ],
)
def test_a_key_has_a_tenant_unless_it_is_the_platform_s(role: Role, tenant: str | None, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        generate_api_key("datahub", role, tenant=tenant)


def test_the_record_names_its_principal() -> None:
    _, record = generate_api_key("hes-north", Role.SOURCE, tenant=TENANT_A)
    principal = record.principal
    assert (principal.name, principal.kind, principal.role, principal.tenant) == (
        "hes-north",
        PrincipalKind.API_KEY,
        Role.SOURCE,
        TENANT_A,
    )
    assert principal.sees(TENANT_A)
    assert not principal.sees(TENANT_B)
    assert not principal.sees(None)
    platform = generate_api_key("hub-ops", Role.PLATFORM).record.principal
    assert platform.sees(TENANT_B)
    assert platform.sees(None)


async def test_in_memory_store_add_get_revoke() -> None:
    plain_key, record = generate_api_key("datahub", "source", tenant=TENANT_A)
    store = InMemoryKeyStore()
    await store.add(record)
    with pytest.raises(ValueError, match="exists"):
        await store.add(record)
    assert await authenticate(store, plain_key) == record
    assert await store.revoke(record.key_id, at=datetime(2024, 12, 1, tzinfo=UTC))
    revoked = await store.get(record.key_id)
    assert revoked is not None
    assert revoked.revoked_at == datetime(2024, 12, 1, tzinfo=UTC)
    assert await authenticate(store, plain_key) is None
    assert not await store.revoke("0000000000000000")


@pytest.mark.parametrize("presented", ["", "not-a-key", "ghk_short_secret", "Bearer ghk_"])
async def test_malformed_keys_do_not_authenticate(presented: str) -> None:
    assert await authenticate(InMemoryKeyStore(), presented) is None


class Keys:
    def __init__(self) -> None:
        self.read = generate_api_key("warehouse", "reader", tenant=TENANT_A)
        self.write = generate_api_key("datahub", "operator", tenant=TENANT_A)
        self.admin = generate_api_key("ops", "admin", tenant=TENANT_A)
        self.revoked = generate_api_key("former-partner", "admin", tenant=TENANT_A)


@pytest.fixture
async def keys_and_app() -> tuple[Keys, FastAPI]:
    keys = Keys()
    store = InMemoryKeyStore([k.record for k in (keys.read, keys.write, keys.admin, keys.revoked)])
    await store.revoke(keys.revoked.record.key_id)

    app = FastAPI()
    install_problem_handlers(app)
    set_key_store(app, store)

    @app.get("/workorders")
    async def list_work_orders(caller: Annotated[ApiKeyRecord, Depends(require_role("reader"))]) -> dict[str, str]:
        return {"client": caller.client}

    @app.post("/workorders", status_code=201)
    async def create_work_order(
        caller: Annotated[ApiKeyRecord, Depends(require_role(Role.OPERATOR))],
    ) -> dict[str, str]:
        return {"client": caller.client}

    @app.delete("/apikeys/{key_id}", dependencies=[Depends(require_role("admin"))], status_code=204)
    async def revoke_key(key_id: str) -> None:
        await store.revoke(key_id)

    return keys, app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://workorders.test")


def bearer(key: NewApiKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.plain_key}"}


async def test_missing_key_is_401_with_a_challenge(keys_and_app: tuple[Keys, FastAPI]) -> None:
    _, app = keys_and_app
    async with client(app) as http:
        response = await http.get("/workorders")
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"] == 'Bearer realm="gridhub"'
    assert response.json() == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "an API key is required",
    }


@pytest.mark.parametrize(
    "presented",
    [
        "ghk_0123456789abcdef_" + "A" * 43,  # well-formed, unknown id
        "garbage",
    ],
)
async def test_wrong_key_is_401(keys_and_app: tuple[Keys, FastAPI], presented: str) -> None:
    _, app = keys_and_app
    async with client(app) as http:
        response = await http.get("/workorders", headers={"Authorization": f"Bearer {presented}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="gridhub", error="invalid_token"'
    assert response.json()["detail"] == "the API key is invalid, expired or revoked"


async def test_known_id_with_wrong_secret_is_401(keys_and_app: tuple[Keys, FastAPI]) -> None:
    keys, app = keys_and_app
    forged = f"ghk_{keys.admin.record.key_id}_" + "B" * 43
    async with client(app) as http:
        response = await http.post("/workorders", headers={"X-API-Key": forged})
    assert response.status_code == 401


async def test_revoked_key_is_401(keys_and_app: tuple[Keys, FastAPI]) -> None:
    keys, app = keys_and_app
    async with client(app) as http:
        response = await http.get("/workorders", headers=bearer(keys.revoked))
    assert response.status_code == 401


async def test_other_authorization_schemes_are_not_accepted(keys_and_app: tuple[Keys, FastAPI]) -> None:
    keys, app = keys_and_app
    async with client(app) as http:
        response = await http.get("/workorders", headers={"Authorization": f"Basic {keys.read.plain_key}"})
    assert response.status_code == 401


async def test_read_key_on_a_write_route_is_403(keys_and_app: tuple[Keys, FastAPI]) -> None:
    keys, app = keys_and_app
    async with client(app) as http:
        response = await http.post("/workorders", headers=bearer(keys.read))
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json() == {
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": "role 'reader' may not do this; 'operator' is required",
    }


async def test_roles_that_suffice_pass(keys_and_app: tuple[Keys, FastAPI]) -> None:
    keys, app = keys_and_app
    async with client(app) as http:
        read = await http.get("/workorders", headers=bearer(keys.read))
        write_reads = await http.get("/workorders", headers={"X-API-Key": keys.write.plain_key})
        write = await http.post("/workorders", headers=bearer(keys.write))
        admin_writes = await http.post("/workorders", headers=bearer(keys.admin))
        write_admins = await http.delete(f"/apikeys/{keys.read.record.key_id}", headers=bearer(keys.write))
        admin = await http.delete(f"/apikeys/{keys.read.record.key_id}", headers=bearer(keys.admin))
        revoked_read = await http.get("/workorders", headers=bearer(keys.read))
    assert (read.status_code, read.json()) == (200, {"client": "warehouse"})
    assert (write_reads.status_code, write.status_code, admin_writes.status_code) == (200, 201, 201)
    assert admin_writes.json() == {"client": "ops"}
    assert write_admins.status_code == 403
    assert admin.status_code == 204
    assert revoked_read.status_code == 401


async def test_openapi_documents_both_ways_to_send_a_key(keys_and_app: tuple[Keys, FastAPI]) -> None:
    _, app = keys_and_app
    async with client(app) as http:
        document = (await http.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"


async def test_missing_key_store_is_a_wiring_error() -> None:
    app = FastAPI()

    @app.get("/workorders", dependencies=[Depends(require_role("reader"))])
    async def work_orders() -> None:
        return None

    async with client(app) as http:
        with pytest.raises(RuntimeError, match="set_key_store"):
            await http.get("/workorders", headers={"X-API-Key": "ghk_x"})
