"""Secrets never reach the logs: not configured ones, not ERP credentials."""

from __future__ import annotations

import io
import json
import logging

from erp_sync.kit.logging import configure_logging, get_logger
from erp_sync.settings import Settings
from tests.conftest import API_TOKEN, app_client, make_settings, run_cli, service_env

ERP_PASSWORD = "Erp-Senha-Do-Cliente-42"
ADMIN_PASSWORD = "Bull-Board-Admin-Pass-77"


async def test_no_secret_in_api_logs(clean_db: str) -> None:
    settings = make_settings(
        clean_db, enable_bullboard=True, bullboard_user="admin", bullboard_pass=ADMIN_PASSWORD
    )
    out = io.StringIO()
    configure_logging("DEBUG", json=True, secrets=settings.secret_values(), stream=out)
    async with app_client(settings) as c:
        await c.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
        r = await c.put(
            "/api/v1/tenants/acme/connection",
            json={
                "provider": "tryton",
                "settings": {"url": "http://erp.example/", "database": "acme"},
                "credentials": {"login": "u", "password": ERP_PASSWORD},
            },
        )
        assert r.status_code == 200, r.text
    log = get_logger("test")
    # A careless log line from anywhere: the value is masked by key and by value.
    log.error("erp.login_failed", password=ERP_PASSWORD, detail=f"rejected {ERP_PASSWORD}")
    logging.getLogger("thirdparty").warning("auth with %s failed", ADMIN_PASSWORD)
    text = out.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert any(e.get("event") == "connection.set" and e.get("tenant_id") == "acme" for e in lines)
    assert any(e.get("event") == "erp.login_failed" for e in lines)
    assert "auth with *** failed" in text
    assert ERP_PASSWORD not in text
    assert ADMIN_PASSWORD not in text
    assert API_TOKEN not in text


def test_no_secret_in_cli_output(settings: Settings, tmp_path: object) -> None:
    env = service_env(settings, LOG_LEVEL="DEBUG", BULLBOARD_PASS=ADMIN_PASSWORD)
    run_cli(settings, "tenants", "add", "Acme", "--id", "acme", env=env)
    r = run_cli(
        settings,
        "tenants",
        "set-connection",
        "acme",
        "--provider",
        "tryton",
        "-s",
        "url=http://erp.example/",
        "-s",
        "database=acme",
        "-c",
        "login=u",
        "-c",
        f"password={ERP_PASSWORD}",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    r2 = run_cli(settings, "tenants", "show", "acme", env=env)
    combined = r.stdout + r.stderr + r2.stdout + r2.stderr
    assert "connection.set" in combined  # DEBUG logging really was on
    assert ERP_PASSWORD not in combined
    assert ADMIN_PASSWORD not in combined


def test_production_logs_are_json(clean_db: str) -> None:
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    get_logger("x").info("tenant.synced", tenant_id="acme", job_id="sync:acme")
    event = json.loads(out.getvalue().splitlines()[-1])
    assert event["event"] == "tenant.synced"
    assert event["tenant_id"] == "acme" and event["job_id"] == "sync:acme"
    assert event["level"] == "info" and "timestamp" in event


def test_only_secret_fields_of_credentials_are_masked() -> None:
    from erp_sync.kit.logging import redact_text, register_secrets_in

    register_secrets_in(
        {
            "login": "operator-login",
            "password": "pw-abcdef-1",
            "oauth": {"refresh_token": "rt-xyz-123"},
        }
    )
    text = redact_text("operator-login used pw-abcdef-1 and rt-xyz-123")
    assert text == "operator-login used *** and ***"


def test_tenant_tokens_are_masked_by_their_shape() -> None:
    # Tenant tokens are never held in plain text, so they cannot be registered one by
    # one: any token-shaped string is masked, in our lines and in other libraries'.
    from erp_sync.tokens.service import mint

    token = mint()
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    get_logger("test").warning("client.sent", detail=f"Bearer {token}", note=token)
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /api/v1/x?t=%s HTTP/1.1" 200', token)
    get_logger("test").info("api_token.created", prefix=token[:12])
    text = out.getvalue()
    assert token not in text and token[12:] not in text
    assert "Bearer ***" in text and "?t=*** HTTP/1.1" in text
    assert token[:12] in text  # the display prefix stays readable
