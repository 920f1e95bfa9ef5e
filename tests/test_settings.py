from __future__ import annotations

from pathlib import Path

import pytest

from erp_sync import settings as settings_mod
from erp_sync.errors import ConfigError
from erp_sync.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "APP_ENV",
        "PORT",
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_PASSWORD",
        "REDIS_PASSWORD_FILE",
        "ENABLE_BULLBOARD",
        "BULLBOARD_USER",
        "BULLBOARD_PASS",
        "BULLBOARD_PASS_FILE",
        "ENCRYPTION_KEY",
        "ENCRYPTION_KEY_FILE",
        "API_TOKEN",
        "API_TOKEN_FILE",
        "RETENTION_DAYS_JOBRUN",
        "LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setattr(settings_mod, "DEFAULT_REDIS_PASSWORD_FILE", tmp_path / "absent")


def test_defaults_match_the_runbook() -> None:
    s = load_settings()
    assert s.port == 3000
    assert s.retention_days_jobrun == 90
    assert s.app_env == "development"
    assert s.enable_bullboard is False


def test_bullboard_without_credentials_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENABLE_BULLBOARD", "true")
    monkeypatch.setenv("BULLBOARD_USER", "admin")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert "ENABLE_BULLBOARD=true" in message and "BULLBOARD_PASS" in message
    assert message.count("\n") == 0


def test_production_requires_an_encryption_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("API_TOKEN", "x" * 32)
    with pytest.raises(ConfigError, match="APP_ENV=production needs ENCRYPTION_KEY"):
        load_settings()


def test_production_refuses_a_short_admin_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("API_TOKEN", "x" * 32)
    monkeypatch.setenv("ENCRYPTION_KEY", "k" * 44)
    monkeypatch.setenv("ENABLE_BULLBOARD", "true")
    monkeypatch.setenv("BULLBOARD_USER", "admin")
    monkeypatch.setenv("BULLBOARD_PASS", "short")
    with pytest.raises(ConfigError, match="at least 12 characters"):
        load_settings()


def test_every_secret_accepts_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in settings_mod.SECRET_NAMES:
        path = tmp_path / name.lower()
        path.write_text(f"{name.lower()}-from-file\n")
        monkeypatch.setenv(f"{name}_FILE", str(path))
    s = load_settings()
    for name in settings_mod.SECRET_NAMES:
        secret = getattr(s, name.lower())
        assert secret.get_secret_value() == f"{name.lower()}-from-file"


def test_a_missing_secret_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("API_TOKEN_FILE", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"API_TOKEN_FILE points to .*nope, which does not exist"):
        load_settings()


def test_the_runbook_redis_secret_file_is_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("from-the-runbook-file\n")
    monkeypatch.setattr(settings_mod, "DEFAULT_REDIS_PASSWORD_FILE", secret)
    s = load_settings()
    assert s.current_redis_password() == "from-the-runbook-file"
    # and a rotated file is read again, without building new settings
    secret.write_text("rotated\n")
    assert s.current_redis_password() == "rotated"


def test_an_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "http")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value).startswith("PORT ")
    monkeypatch.setenv("PORT", "3000")
    monkeypatch.setenv("DATABASE_URL", "mysql://x@y/z")
    with pytest.raises(ConfigError, match="DATABASE_URL must be a postgresql:// URL"):
        load_settings()


def test_database_password_file_is_used_for_connections(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "pg"
    secret.write_text("p@ss/word")
    s = Settings(
        _env_file=None,
        database_url="postgresql://merxios@db:5432/merxios",
        database_password_file=secret,
    )
    assert s.libpq_url() == "postgresql://merxios:p%40ss%2Fword@db:5432/merxios"
    # the SQLAlchemy URL carries no password: it is supplied per connection
    assert "p%40ss" not in s.sqlalchemy_url() and "merxios@db" in s.sqlalchemy_url()
