from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from erp_sync.models import Base
from erp_sync.settings import Settings, load_settings

config = context.config
settings: Settings = config.attributes.get("settings") or load_settings()
target_metadata = Base.metadata


def _url() -> str:
    return settings.libpq_url().replace("postgresql://", "postgresql+psycopg://", 1)


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
