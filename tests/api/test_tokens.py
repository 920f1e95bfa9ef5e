"""Tenant API tokens through the HTTP API: minted once, stored as a hash, scoped to one
tenant, revocable, expiring. (The full cross-tenant sweep of every route is scenario 6,
tests/reliability/test_isolation.py.)"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from erp_sync.api.app import create_app
from erp_sync.kit.crypto import Box
from tests.conftest import API_TOKEN, ENCRYPTION_KEY, make_settings


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_tenant(api: httpx.AsyncClient, tenant_id: str) -> None:
    r = await api.post("/api/v1/tenants", json={"id": tenant_id, "name": tenant_id.title()})
    assert r.status_code == 201, r.text


async def new_token(api: httpx.AsyncClient, tenant_id: str, **body: Any) -> dict[str, Any]:
    r = await api.post(f"/api/v1/tenants/{tenant_id}/tokens", json={"name": "shop", **body})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_a_token_is_shown_once_and_stored_as_its_hash_only(
    api_client: httpx.AsyncClient, clean_db: str
) -> None:
    await new_tenant(api_client, "acme")
    r = await api_client.post("/api/v1/tenants/acme/tokens", json={"name": "storefront production"})
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    created = r.json()
    token = created["token"]
    assert token.startswith("mxs_") and len(token) == 4 + 43
    assert created["prefix"] == token[:12]
    assert created["tenantId"] == "acme" and created["name"] == "storefront production"
    assert created["status"] == "active" and created["expiresAt"] is None

    digest = hashlib.sha256(token.encode()).hexdigest()
    listed = await api_client.get("/api/v1/tenants/acme/tokens")
    assert listed.status_code == 200
    (item,) = listed.json()["items"]
    assert item["id"] == created["id"] and item["prefix"] == token[:12]
    assert "token" not in item and token not in listed.text and digest not in listed.text

    with psycopg.connect(clean_db) as conn:
        dump = conn.execute('SELECT t::text FROM "ApiToken" t').fetchone()[0]
        stored = conn.execute('SELECT "tokenHash" FROM "ApiToken"').fetchone()[0]
    assert stored == digest
    assert token not in dump and token[12:] not in dump


async def test_a_tenant_token_opens_its_tenant_and_records_its_last_use(
    api_client: httpx.AsyncClient, clean_db: str
) -> None:
    await new_tenant(api_client, "acme")
    token = (await new_token(api_client, "acme"))["token"]

    r = await api_client.get("/api/v1/tenants/acme", headers=bearer(token))
    assert r.status_code == 200 and r.json()["id"] == "acme"
    (first,) = (await api_client.get("/api/v1/tenants/acme/tokens")).json()["items"]
    assert first["lastUsedAt"] is not None
    # Within the minute, further requests do not write again.
    await api_client.get("/api/v1/tenants/acme/status", headers=bearer(token))
    (again,) = (await api_client.get("/api/v1/tenants/acme/tokens")).json()["items"]
    assert again["lastUsedAt"] == first["lastUsedAt"]
    # A minute later, the next request moves it.
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("""UPDATE "ApiToken" SET "lastUsedAt" = now() - interval '2 minutes'""")
    await api_client.get("/api/v1/tenants/acme", headers=bearer(token))
    (moved,) = (await api_client.get("/api/v1/tenants/acme/tokens")).json()["items"]
    assert moved["lastUsedAt"] > first["lastUsedAt"]


async def test_revoked_expired_and_unknown_tokens_get_401(
    api_client: httpx.AsyncClient, clean_db: str
) -> None:
    await new_tenant(api_client, "acme")
    revoked = await new_token(api_client, "acme")
    expiring = await new_token(api_client, "acme", expiresInDays=1)
    assert expiring["expiresAt"] is not None
    for t in (revoked, expiring):
        assert (await api_client.get("/api/v1/tenants", headers=bearer(t["token"]))).is_success

    r = await api_client.delete(f"/api/v1/tenants/acme/tokens/{revoked['id']}")
    assert r.status_code == 204
    assert (
        await api_client.delete(f"/api/v1/tenants/acme/tokens/{revoked['id']}")
    ).status_code == 204
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            """UPDATE "ApiToken" SET "expiresAt" = now() - interval '1 second' WHERE id = %s""",
            (expiring["id"],),
        )
    unknown = "mxs_" + "A" * 43
    for token in (revoked["token"], expiring["token"], unknown, "mxs_", revoked["token"] + "x"):
        r = await api_client.get("/api/v1/tenants/acme", headers=bearer(token))
        assert r.status_code == 401, (token, r.text)
        assert r.json() == {"detail": "missing or wrong bearer token"}
        assert r.headers["www-authenticate"] == "Bearer"

    statuses = {
        t["id"]: t["status"]
        for t in (await api_client.get("/api/v1/tenants/acme/tokens")).json()["items"]
    }
    assert statuses == {revoked["id"]: "revoked", expiring["id"]: "expired"}


async def test_a_tenant_token_cannot_manage_tokens_nor_tenants(
    api_client: httpx.AsyncClient,
) -> None:
    await new_tenant(api_client, "acme")
    await new_tenant(api_client, "beta")
    own = (await new_token(api_client, "acme"))["token"]
    beta_token = await new_token(api_client, "beta")
    h = bearer(own)

    forbidden = [
        await api_client.post("/api/v1/tenants/acme/tokens", json={"name": "x"}, headers=h),
        await api_client.get("/api/v1/tenants/acme/tokens", headers=h),
        await api_client.delete(f"/api/v1/tenants/acme/tokens/{beta_token['id']}", headers=h),
        await api_client.post("/api/v1/tenants", json={"name": "Mine"}, headers=h),
        await api_client.patch("/api/v1/tenants/acme", json={"active": False}, headers=h),
        await api_client.delete("/api/v1/tenants/acme", headers=h),
        await api_client.get("/api/v1/status", headers=h),
        await api_client.get("/api/v1/queues", headers=h),
    ]
    for r in forbidden:
        assert r.status_code == 403, (r.request.method, r.request.url, r.text)
        assert r.json() == {
            "detail": "a tenant token cannot do this; it takes the operator's API_TOKEN"
        }
    # Another tenant's token routes: as if beta did not exist.
    r = await api_client.get("/api/v1/tenants/beta/tokens", headers=h)
    assert r.status_code == 404
    assert r.json() == {"detail": "tenant 'beta' does not exist"}
    assert (await api_client.get("/api/v1/tenants/acme")).json()["active"] is True
    assert (await api_client.get("/api/v1/tenants", headers=bearer(beta_token["token"]))).json()[
        "total"
    ] == 1


async def test_a_tenant_token_rotates_its_credentials_but_not_provider_nor_settings(
    api_client: httpx.AsyncClient, clean_db: str
) -> None:
    await new_tenant(api_client, "acme")
    h = bearer((await new_token(api_client, "acme"))["token"])
    tryton = {"url": "http://erp.acme.example/", "database": "acme"}
    first = {"provider": "tryton", "settings": tryton}
    creds = {"login": "sync", "password": "Primeira-Senha-1"}
    # No connection yet: setting one up (where the workers connect) is the operator's.
    r = await api_client.put("/api/v1/tenants/acme/connection", json=first, headers=h)
    assert r.status_code == 403, r.text
    assert "credentials only" in r.json()["detail"]
    r = await api_client.put(
        "/api/v1/tenants/acme/connection", json={**first, "credentials": creds}
    )
    assert r.status_code == 200, r.text
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("""UPDATE "ErpConnection" SET status = 'NEEDS_REAUTH'""")

    rotated = {"login": "sync", "password": "Segunda-Senha-2"}
    refused = [
        {"provider": "tryton", "settings": {**tryton, "url": "http://169.254.169.254/"}},
        {"provider": "tryton", "settings": {**tryton, "rate_limit_per_second": 0}},
        {"provider": "omie", "settings": {}},
    ]
    for body in refused:
        r = await api_client.put(
            "/api/v1/tenants/acme/connection", json={**body, "credentials": rotated}, headers=h
        )
        assert r.status_code == 403, (body, r.text)
    r = await api_client.put(
        "/api/v1/tenants/acme/connection", json={**first, "credentials": rotated}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ACTIVE" and r.json()["settings"] == tryton
    # The connector's checks hold for tenants too.
    r = await api_client.put(
        "/api/v1/tenants/acme/connection",
        json={**first, "credentials": {"login": "sync"}},
        headers=h,
    )
    assert r.status_code == 422 and r.json()["field"] == "credentials.password"
    with psycopg.connect(clean_db) as conn:
        stored = conn.execute('SELECT credentials FROM "ErpConnection"').fetchone()[0]
    assert Box(ENCRYPTION_KEY).decrypt_json(stored) == rotated


async def test_token_routes_answer_404_for_unknown_tenants_and_tokens(
    api_client: httpx.AsyncClient,
) -> None:
    await new_tenant(api_client, "acme")
    await new_tenant(api_client, "beta")
    beta = await new_token(api_client, "beta")
    r = await api_client.post("/api/v1/tenants/ghost/tokens", json={"name": "x"})
    assert r.status_code == 404 and r.json()["detail"] == "tenant 'ghost' does not exist"
    assert (await api_client.get("/api/v1/tenants/ghost/tokens")).status_code == 404
    missing = "00000000-0000-4000-8000-000000000000"
    r = await api_client.delete(f"/api/v1/tenants/acme/tokens/{missing}")
    assert r.status_code == 404 and r.json()["detail"] == f"token {missing!r} does not exist"
    # beta's token under acme's path is not acme's: 404, and it keeps working.
    r = await api_client.delete(f"/api/v1/tenants/acme/tokens/{beta['id']}")
    assert r.status_code == 404
    assert (await api_client.get("/api/v1/tenants/beta", headers=bearer(beta["token"]))).is_success


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x", "expiresInDays": 0}, "expiresInDays"),
        ({"name": "x", "expiresInDays": 99999}, "expiresInDays"),
        ({"name": "x", "tenantId": "beta"}, "tenantId"),
    ],
)
async def test_bad_token_requests_are_422_naming_the_field(
    api_client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    await new_tenant(api_client, "acme")
    r = await api_client.post("/api/v1/tenants/acme/tokens", json=body)
    assert r.status_code == 422
    assert r.json()["detail"].startswith(f"{field}:"), r.text
    assert (await api_client.get("/api/v1/tenants/acme/tokens")).json()["items"] == []


async def test_deleting_a_tenant_deletes_its_tokens(api_client: httpx.AsyncClient) -> None:
    await new_tenant(api_client, "acme")
    token = (await new_token(api_client, "acme"))["token"]
    assert (await api_client.delete("/api/v1/tenants/acme")).status_code == 204
    r = await api_client.get("/api/v1/tenants", headers=bearer(token))
    assert r.status_code == 401


@pytest.fixture
async def no_api_token_client(clean_db: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(clean_db, api_token=None)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        yield client


async def test_tenant_tokens_work_on_a_server_without_api_token(
    api_client: httpx.AsyncClient, no_api_token_client: httpx.AsyncClient
) -> None:
    await new_tenant(api_client, "acme")
    token = (await new_token(api_client, "acme"))["token"]
    r = await no_api_token_client.get("/api/v1/tenants", headers=bearer(token))
    assert r.status_code == 200 and [t["id"] for t in r.json()["items"]] == ["acme"]
    r = await no_api_token_client.get("/api/v1/tenants", headers=bearer(API_TOKEN))
    assert r.status_code == 401
    assert "API_TOKEN is not configured" in r.json()["detail"]


async def test_openapi_documents_tokens_and_the_operator_only_403(
    api_client: httpx.AsyncClient,
) -> None:
    paths = (await api_client.get("/openapi.json")).json()["paths"]
    assert set(paths["/api/v1/tenants/{tenant_id}/tokens"]) == {"get", "post"}
    assert set(paths["/api/v1/tenants/{tenant_id}/tokens/{token_id}"]) == {"delete"}
    problem = {"$ref": "#/components/schemas/Problem"}
    operator_only = [
        ("/api/v1/tenants", "post"),
        ("/api/v1/tenants/{tenant_id}", "patch"),
        ("/api/v1/tenants/{tenant_id}", "delete"),
        ("/api/v1/tenants/{tenant_id}/tokens", "post"),
        ("/api/v1/tenants/{tenant_id}/tokens/{token_id}", "delete"),
        ("/api/v1/status", "get"),
        ("/api/v1/queues", "get"),
    ]
    for path, method in operator_only:
        answer = paths[path][method]["responses"]["403"]
        assert answer["content"]["application/json"]["schema"] == problem, (path, method)
    answer = paths["/api/v1/tenants/{tenant_id}/connection"]["put"]["responses"]["403"]
    assert answer["content"]["application/json"]["schema"] == problem
    assert "403" not in paths["/api/v1/tenants/{tenant_id}/connection"]["get"]["responses"]
    not_found = paths["/api/v1/tenants/{tenant_id}/status"]["get"]["responses"]["404"]
    assert not_found["content"]["application/json"]["schema"] == problem
