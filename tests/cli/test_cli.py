"""The `erp-sync` command, run as a real process against real PostgreSQL and Redis."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from erp_sync.settings import Settings
from tests.conftest import closed_port, run_cli, service_env

COMMANDS = [
    [],
    ["api"],
    ["migrate"],
    ["health"],
    ["keygen"],
    ["tenants"],
    ["tenants", "add"],
    ["tenants", "list"],
    ["tenants", "show"],
    ["tenants", "disable"],
    ["tenants", "enable"],
    ["tenants", "set-schedule"],
    ["tenants", "set-connection"],
    ["tokens"],
    ["tokens", "create"],
    ["tokens", "list"],
    ["tokens", "revoke"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(settings: Settings, cmd: list[str]) -> None:
    r = run_cli(settings, *cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage:" in r.stdout


def _one_line_error(r: object) -> str:
    stderr: str = r.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_tenant_lifecycle(settings: Settings) -> None:
    r = run_cli(
        settings, "tenants", "add", "Acme Ltda", "--id", "acme", "--document", "11222333000181"
    )
    assert r.returncode == 0, r.stderr
    assert "created tenant acme" in r.stdout
    r = run_cli(settings, "tenants", "set-schedule", "acme", "0 */2 * * *")
    assert r.returncode == 0, r.stderr
    r = run_cli(settings, "tenants", "show", "acme", "--json")
    shown = json.loads(r.stdout)
    assert shown["schedule"] == "0 */2 * * *"
    assert shown["document"] == "11222333000181"
    r = run_cli(settings, "tenants", "disable", "acme")
    assert r.returncode == 0
    listed = json.loads(run_cli(settings, "tenants", "list", "--json").stdout)
    assert [(t["id"], t["active"]) for t in listed] == [("acme", False)]
    table = run_cli(settings, "tenants", "list").stdout
    assert "acme" in table and "Acme Ltda" in table


def test_set_connection_from_a_file_stores_credentials_encrypted(
    settings: Settings, tmp_path: Path
) -> None:
    run_cli(settings, "tenants", "add", "Acme", "--id", "acme")
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"login": "sync", "password": "Arquivo-Secreto-99"}))
    r = run_cli(
        settings,
        "tenants",
        "set-connection",
        "acme",
        "--provider",
        "tryton",
        "--setting",
        "url=http://127.0.0.1:8000/",
        "--setting",
        "database=acme",
        "--credentials-file",
        str(creds),
    )
    assert r.returncode == 0, r.stderr
    r = run_cli(settings, "tenants", "show", "acme")
    assert "tryton (ACTIVE)" in r.stdout
    assert "Arquivo-Secreto-99" not in r.stdout + r.stderr
    with psycopg.connect(settings.database_url) as conn:
        dump = conn.execute('SELECT t::text FROM "ErpConnection" t').fetchone()[0]
    assert "Arquivo-Secreto-99" not in dump
    assert "http://127.0.0.1:8000/" in dump


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["tenants", "show", "ghost"], "tenant 'ghost' does not exist"),
        (["tenants", "disable", "ghost"], "tenant 'ghost' does not exist"),
        (
            ["tenants", "add", "X", "--schedule", "not cron"],
            "schedule: 'not cron' is not a valid cron",
        ),
        (["tenants", "add", "X", "--document", "123"], "document: '123' is neither a CNPJ"),
        (
            ["tenants", "set-connection", "ghost", "--provider", "bling", "-s", "novalue"],
            "--setting takes KEY=VALUE",
        ),
        (["tokens", "create", "ghost", "--name", "shop"], "tenant 'ghost' does not exist"),
        (["tokens", "list", "ghost"], "tenant 'ghost' does not exist"),
        (["tokens", "revoke", "no-such-token"], "token 'no-such-token' does not exist"),
        (["tokens", "create", "ghost", "--name", " "], "name: String should have at least 1"),
    ],
)
def test_errors_are_one_line_without_traceback(
    settings: Settings, args: list[str], words: str
) -> None:
    r = run_cli(settings, *args)
    assert r.returncode != 0
    assert words in _one_line_error(r)


def test_a_connection_setting_the_connector_refuses_is_a_one_line_error(
    settings: Settings,
) -> None:
    run_cli(settings, "tenants", "add", "Acme", "--id", "acme")
    r = run_cli(
        settings, "tenants", "set-connection", "acme", "--provider", "bling",
        "-s", "base_url=ftp://erp.example", "-c", "client_id=app", "-c", "client_secret=s3cr3t-x",
    )  # fmt: skip
    assert r.returncode == 1
    line = _one_line_error(r)
    assert line.startswith("error: settings.base_url: must start with https://"), line
    assert "s3cr3t-x" not in r.stdout + r.stderr
    r = run_cli(settings, "tenants", "show", "acme")
    assert "connection: none" in r.stdout


def test_duplicate_tenant_is_a_one_line_error(settings: Settings) -> None:
    run_cli(settings, "tenants", "add", "Acme", "--id", "acme")
    r = run_cli(settings, "tenants", "add", "Acme", "--id", "acme")
    assert r.returncode == 1
    assert "tenant 'acme' already exists" in _one_line_error(r)


def test_bad_configuration_stops_with_one_sentence(settings: Settings) -> None:
    env = service_env(settings, ENABLE_BULLBOARD="true", BULLBOARD_USER="admin")
    r = run_cli(settings, "tenants", "list", env=env)
    assert r.returncode == 2
    assert "ENABLE_BULLBOARD=true needs BULLBOARD_USER and BULLBOARD_PASS" in _one_line_error(r)
    env = service_env(settings, APP_ENV="production", ENCRYPTION_KEY="")
    env.pop("ENCRYPTION_KEY")
    r = run_cli(settings, "api", env=env)
    assert r.returncode == 2
    assert "APP_ENV=production needs ENCRYPTION_KEY" in _one_line_error(r)


def test_credentials_without_encryption_key_is_a_clear_error(settings: Settings) -> None:
    run_cli(settings, "tenants", "add", "Acme", "--id", "acme")
    env = service_env(settings)
    env.pop("ENCRYPTION_KEY")
    r = run_cli(
        settings, "tenants", "set-connection", "acme", "--provider", "bling", "-c", "x=y", env=env
    )
    assert r.returncode == 2
    assert "ENCRYPTION_KEY is not set" in _one_line_error(r)


def test_health_exit_codes(settings: Settings) -> None:
    r = run_cli(settings, "health")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "postgres" in r.stdout and "redis" in r.stdout
    env = service_env(settings, REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    r = run_cli(settings, "health", env=env)
    assert r.returncode == 1
    assert "redis     DOWN" in r.stdout
    assert "Traceback" not in r.stderr


def test_unreachable_database_is_a_one_line_error(settings: Settings) -> None:
    env = service_env(settings, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port()}/x")
    r = run_cli(settings, "tenants", "list", env=env)
    assert r.returncode != 0
    assert "PostgreSQL" in _one_line_error(r)
    r = run_cli(settings, "migrate", env=env)
    assert r.returncode != 0
    assert "cannot connect to PostgreSQL" in _one_line_error(r)


def test_keygen_makes_a_usable_key(settings: Settings) -> None:
    from erp_sync.kit.crypto import Box

    key = run_cli(settings, "keygen").stdout.strip()
    assert Box(key).decrypt_json(Box(key).encrypt_json({"a": 1})) == {"a": 1}
