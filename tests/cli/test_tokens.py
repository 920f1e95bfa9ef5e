"""`erp-sync tokens`: create (shown once), list (never the token), revoke; the token the
CLI prints opens its tenant's API, and stops when revoked."""

from __future__ import annotations

import hashlib
import json

import psycopg

from erp_sync.settings import Settings
from tests.conftest import app_client, run_cli


def _token_line(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith("mxs_")]
    return line


async def _status(settings: Settings, token: str, path: str = "/api/v1/tenants/acme") -> int:
    async with app_client(settings, token) as client:
        return (await client.get(path)).status_code


async def test_create_list_revoke(settings: Settings) -> None:
    run_cli(settings, "tenants", "add", "Acme", "--id", "acme")
    run_cli(settings, "tenants", "add", "Beta", "--id", "beta")
    r = run_cli(settings, "tokens", "create", "acme", "--name", "storefront")
    assert r.returncode == 0, r.stderr
    token = _token_line(r.stdout)
    assert len(token) == 47
    assert "will not be shown again" in r.stdout
    assert f"({token[:12]}...) for tenant acme" in r.stdout
    r = run_cli(
        settings, "tokens", "create", "beta", "--name", "erp bridge", "--expires-in-days", "30"
    )
    assert r.returncode == 0, r.stderr
    assert ", expires " in r.stdout
    other = _token_line(r.stdout)

    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute('SELECT t::text, "tokenHash" FROM "ApiToken" t').fetchall()
    assert {h for _, h in rows} == {hashlib.sha256(t.encode()).hexdigest() for t in (token, other)}
    assert not [text for text, _ in rows if token in text or other in text]

    assert await _status(settings, token) == 200
    assert await _status(settings, token, "/api/v1/tenants/beta") == 404

    listed = run_cli(settings, "tokens", "list")
    assert listed.returncode == 0, listed.stderr
    assert token not in listed.stdout and other not in listed.stdout
    assert token[:12] in listed.stdout and "storefront" in listed.stdout
    assert "erp bridge" in listed.stdout
    mine = json.loads(run_cli(settings, "tokens", "list", "acme", "--json").stdout)
    assert [(t["name"], t["status"], t["tenantId"]) for t in mine] == [
        ("storefront", "active", "acme")
    ]
    assert mine[0]["lastUsedAt"] is not None  # the API request above
    assert "token" not in mine[0] and "tokenHash" not in mine[0]

    r = run_cli(settings, "tokens", "revoke", mine[0]["id"])
    assert r.returncode == 0, r.stderr
    assert "revoked; requests with it now get 401" in r.stdout
    assert await _status(settings, token) == 401
    assert await _status(settings, other, "/api/v1/tenants/beta") == 200
    again = run_cli(settings, "tokens", "revoke", mine[0]["id"])
    assert again.returncode == 0 and "was already revoked" in again.stdout
    mine = json.loads(run_cli(settings, "tokens", "list", "acme", "--json").stdout)
    assert mine[0]["status"] == "revoked"


def test_create_json_holds_the_token_once(settings: Settings) -> None:
    run_cli(settings, "tenants", "add", "Acme", "--id", "acme")
    r = run_cli(settings, "tokens", "create", "acme", "--name", "ci", "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["token"].startswith("mxs_") and created["prefix"] == created["token"][:12]
    assert created["tenantId"] == "acme" and created["expiresAt"] is None


def test_list_without_tokens_says_how_to_create_one(settings: Settings) -> None:
    r = run_cli(settings, "tokens", "list")
    assert r.returncode == 0, r.stderr
    assert "no tokens yet" in r.stdout
