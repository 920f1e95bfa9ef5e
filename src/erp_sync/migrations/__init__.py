"""Alembic migrations, shipped inside the package so an installed image can migrate."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from erp_sync.errors import ConfigError
from erp_sync.settings import Settings

HERE = Path(__file__).parent


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["settings"] = settings
    return cfg


def _ensure_database(settings: Settings) -> None:
    """Create the database named in DATABASE_URL if it is missing (a first install)."""
    try:
        with psycopg.connect(settings.libpq_url(), connect_timeout=5):
            return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise ConfigError(
                f"cannot connect to PostgreSQL at DATABASE_URL: {_first_line(exc)}; "
                "check that it runs and that DATABASE_URL is right."
            ) from None
    name = settings.libpq_url().rsplit("/", 1)[-1].split("?", 1)[0]
    try:
        with psycopg.connect(
            settings.libpq_url("postgres"), autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
    except psycopg.Error as exc:
        raise ConfigError(
            f"database {name!r} does not exist and could not be created ({_first_line(exc)}); "
            "create it or give the user CREATEDB."
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def upgrade(settings: Settings, *, create_database: bool = True, revision: str = "head") -> str:
    if create_database:
        _ensure_database(settings)
    try:
        command.upgrade(alembic_config(settings), revision)
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot migrate the database: {_first_line(exc)}") from None
    return current_revision(settings) or "base"


def current_revision(settings: Settings) -> str | None:
    engine = create_engine(
        settings.libpq_url().replace("postgresql://", "postgresql+psycopg://", 1)
    )
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
