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


# Full-text search structures written by SQL in the migrations, not by the ORM models (revision 0008).
UNMAPPED = ("version_fts", "search_vector", "ix_adapter_versions_search_vector")


def _include_name(name: str | None, type_: str, _parents: dict) -> bool:  # type: ignore[type-arg]
    return not (name or "").startswith(UNMAPPED)


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # A batch migration rebuilds a table (copy, DROP, rename). With foreign keys on, dropping a table that
            # other rows reference fails ("FOREIGN KEY constraint failed" on any catalog with versions). The pragma
            # only takes effect outside a transaction: set on the driver's connection before SQLAlchemy begins one;
            # the references are checked before the commit instead, and the pragma is restored for the pool.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                compare_type=True,
                include_name=_include_name,
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration left rows with dangling references: {broken[:5]}")
            if connection.in_transaction():
                connection.commit()
        finally:
            if sqlite:
                if connection.in_transaction():
                    connection.rollback()
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; point ADREG_DATABASE_URL at the catalog")
run_migrations_online()
