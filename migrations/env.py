"""Alembic environment: runs against the engine handed over by ``registry.db`` or the configured URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from registry.models import Base

config = context.config
target_metadata = Base.metadata


def _engine():
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("ADREG_DATABASE_URL")
    if not url:
        from registry.config import Settings

        url = Settings.from_env().database_url
    from registry.db import make_engine

    return make_engine(url) if url.startswith("sqlite") else create_engine(url)


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        if connection.in_transaction():
            connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; point ADREG_DATABASE_URL at the catalog")
run_migrations_online()
