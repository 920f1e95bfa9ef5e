from __future__ import annotations

import httpx
import psycopg
import pytest

from erp_sync.kit.crypto import Box
from tests.conftest import ENCRYPTION_KEY

CNPJ = "11.222.333/0001-81"  # valid check digits


async def test_create_list_show_update_delete(api_client: httpx.AsyncClient) -> None:
    r = await api_client.post(
        "/api/v1/tenants", json={"id": "acme", "name": "Acme Ltda", "document": CNPJ}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["document"] == "11222333000181"
    assert created["schedule"] == "*/15 * * * *"
    assert created["active"] is True

    r = await api_client.post("/api/v1/tenants", json={"name": "Beta", "schedule": "0 * * * *"})
    beta_id = r.json()["id"]
    assert len(beta_id) == 36

    listed = (await api_client.get("/api/v1/tenants")).json()
    assert listed["total"] == 2
    assert [t["id"] for t in listed["items"]] == ["acme", beta_id]

    r = await api_client.patch(
        "/api/v1/tenants/acme", json={"schedule": "*/5 * * * *", "active": False}
    )
    assert r.status_code == 200
    shown = (await api_client.get("/api/v1/tenants/acme")).json()
    assert shown["schedule"] == "*/5 * * * *" and shown["active"] is False

    assert (await api_client.delete("/api/v1/tenants/acme")).status_code == 204
    assert (await api_client.get("/api/v1/tenants/acme")).status_code == 404
    assert (await api_client.get("/api/v1/tenants")).json()["total"] == 1


async def test_duplicate_id_is_a_conflict(api_client: httpx.AsyncClient) -> None:
    await api_client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    r = await api_client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme again"})
    assert r.status_code == 409
    assert "already exists" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": "X", "schedule": "every minute"}, "schedule", "not a valid cron expression"),
        ({"name": "X", "schedule": "61 * * * *"}, "schedule", "not a valid cron expression"),
        ({"name": "X", "document": "11.222.333/0001-82"}, "document", "not a valid CNPJ"),
        ({"name": ""}, "name", "at least 1 character"),
        ({"name": "X", "id": "has space"}, "id", "pattern"),
        ({"name": "X", "colour": "red"}, "colour", "Extra inputs"),
    ],
)
async def test_validation_errors_name_the_field(
    api_client: httpx.AsyncClient, body: dict[str, str], field: str, words: str
) -> None:
    r = await api_client.post("/api/v1/tenants", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith(f"{field}:"), detail
    assert words in detail


async def test_bad_cron_on_update_is_422(api_client: httpx.AsyncClient) -> None:
    await api_client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    r = await api_client.patch("/api/v1/tenants/acme", json={"schedule": "*/0 * * *"})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("schedule:")


async def test_unknown_tenant_is_404_everywhere(api_client: httpx.AsyncClient) -> None:
    assert (await api_client.get("/api/v1/tenants/nope")).status_code == 404
    assert (
        await api_client.patch("/api/v1/tenants/nope", json={"active": False})
    ).status_code == 404
    assert (await api_client.delete("/api/v1/tenants/nope")).status_code == 404
    r = await api_client.put("/api/v1/tenants/nope/connection", json={"provider": "bling"})
    assert r.status_code == 404
    assert r.json()["detail"] == "tenant 'nope' does not exist"


async def test_api_requires_the_bearer_token(api_client: httpx.AsyncClient) -> None:
    r = await api_client.get("/api/v1/tenants", headers={"Authorization": ""})
    assert r.status_code == 401
    r = await api_client.get("/api/v1/tenants", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


async def test_credentials_are_write_only_and_encrypted_at_rest(
    api_client: httpx.AsyncClient, clean_db: str
) -> None:
    password = "S3nha-Muito-Secreta!"
    await api_client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    r = await api_client.put(
        "/api/v1/tenants/acme/connection",
        json={
            "provider": "tryton",
            "settings": {"url": "http://erp.example/", "database": "acme"},
            "credentials": {"login": "sync", "password": password},
        },
    )
    assert r.status_code == 200, r.text
    assert password not in r.text
    assert r.json()["hasCredentials"] is True
    assert r.json()["status"] == "ACTIVE"
    for url in ("/api/v1/tenants/acme", "/api/v1/tenants/acme/connection", "/api/v1/tenants"):
        text = (await api_client.get(url)).text
        assert password not in text and "sync" not in text.replace("Sync", "")

    with psycopg.connect(clean_db) as conn:
        row_text = conn.execute('SELECT t::text FROM "ErpConnection" t').fetchone()[0]
        stored = conn.execute('SELECT credentials FROM "ErpConnection"').fetchone()[0]
    assert password not in row_text
    assert Box(ENCRYPTION_KEY).decrypt_json(stored) == {"login": "sync", "password": password}

    # Changing settings without credentials keeps the stored ones.
    r = await api_client.put(
        "/api/v1/tenants/acme/connection",
        json={
            "provider": "tryton",
            "settings": {"url": "http://erp2.example/", "database": "acme"},
        },
    )
    assert r.json()["hasCredentials"] is True
    assert r.json()["settings"]["url"] == "http://erp2.example/"


async def test_invalid_credentials_payload_is_not_echoed(api_client: httpx.AsyncClient) -> None:
    await api_client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    r = await api_client.put(
        "/api/v1/tenants/acme/connection",
        json={"provider": "Not A Provider!", "credentials": {"password": "do-not-echo-me"}},
    )
    assert r.status_code == 422
    assert "do-not-echo-me" not in r.text
    r = await api_client.put(
        "/api/v1/tenants/acme/connection",
        json={"provider": "bling", "credentials": "do-not-echo-me-either"},
    )
    assert r.status_code == 422
    assert "do-not-echo-me-either" not in r.text


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b'{"name": 5}',
        b'{"name": null}',
        b'"x"',
        '{"name": "\udcff"}'.encode("utf-8", "surrogatepass"),
    ],
)
async def test_garbage_bodies_are_422_not_500(api_client: httpx.AsyncClient, raw: bytes) -> None:
    r = await api_client.post(
        "/api/v1/tenants", content=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, (raw, r.status_code, r.text)


async def test_openapi_is_served(api_client: httpx.AsyncClient) -> None:
    r = await api_client.get("/openapi.json")
    assert r.status_code == 200
    assert "/api/v1/tenants/{tenant_id}/connection" in r.json()["paths"]
    assert (await api_client.get("/docs")).status_code == 200


TRYTON = {"url": "http://erp.example/", "database": "acme"}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (
            {"provider": "bling", "settings": {"base_url": "ftp://erp.example"}},
            "settings.base_url",
            "must start with https://",
        ),
        (
            {"provider": "bling", "settings": {"detail_concurrency": 500}},
            "settings.detail_concurrency",
            "less than or equal to 32",
        ),
        ({"provider": "bling", "settings": {"colour": "red"}}, "settings.colour", "Extra inputs"),
        (
            {"provider": "omie", "settings": {"base_url": "https:///api/v1"}},
            "settings.base_url",
            "and name the server",
        ),
        (
            {"provider": "tryton", "settings": {**TRYTON, "url": "erp.example:8000"}},
            "settings.url",
            "must start with https://",
        ),
        ({"provider": "tryton", "settings": {"database": "acme"}}, "settings.url", "required"),
        (
            {"provider": "tryton", "settings": TRYTON, "credentials": {"login": "sync"}},
            "credentials.password",
            "required",
        ),
        (
            {"provider": "omie", "credentials": {"app_key": "k", "app_secret": ""}},
            "credentials.app_secret",
            "at least 1 character",
        ),
    ],
)
async def test_connection_settings_are_checked_by_the_connector_when_set(
    api_client: httpx.AsyncClient, body: dict[str, object], field: str, words: str
) -> None:
    await api_client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    r = await api_client.put("/api/v1/tenants/acme/connection", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert r.json()["detail"].startswith(f"{field}: ") and words in r.json()["detail"], r.text
    # Nothing stored: the tenant still has no connection.
    assert (await api_client.get("/api/v1/tenants/acme/connection")).status_code == 404


async def test_a_refused_connection_change_keeps_the_stored_one_and_echoes_no_secret(
    api_client: httpx.AsyncClient, clean_db: str
) -> None:
    secret = "Segredo-Que-Nao-Volta-31"
    await api_client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    creds = {"login": "sync", "password": secret}
    r = await api_client.put(
        "/api/v1/tenants/acme/connection",
        json={"provider": "tryton", "settings": TRYTON, "credentials": creds},
    )
    assert r.status_code == 200, r.text
    for body in (
        {"provider": "tryton", "settings": {**TRYTON, "page_size": 5}},
        {"provider": "tryton", "settings": TRYTON, "credentials": {**creds, secret: secret}},
        {"provider": "tryton", "settings": TRYTON, "credentials": {"login": secret}},
    ):
        r = await api_client.put("/api/v1/tenants/acme/connection", json=body)
        assert r.status_code == 422, r.text
        assert secret not in r.text
    shown = (await api_client.get("/api/v1/tenants/acme/connection")).json()
    assert shown["settings"] == TRYTON and shown["hasCredentials"] is True
    with psycopg.connect(clean_db) as conn:
        stored = conn.execute('SELECT credentials FROM "ErpConnection"').fetchone()[0]
    assert Box(ENCRYPTION_KEY).decrypt_json(stored) == creds
