"""Engine and session factory; schema upgrades through Alembic.

The embedded SQLite catalog is created and upgraded on first use. Any other database must be upgraded
explicitly (``adreg init``): a catalog whose schema is behind the code is refused with that advice.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from registry.errors import SchemaOutdated, ServiceUnavailable

# The top-level folder migrations/, installed as the package ``adreg_migrations`` (see pyproject.toml): found
# through the import system, so the same lookup works from a checkout, an editable install and a wheel.
MIGRATIONS_DIR = Path(str(importlib.resources.files("adreg_migrations")))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _report_unreachable(engine: Engine) -> None:
    """Turn "cannot connect" / "connection lost" errors into :class:`ServiceUnavailable` naming the database
    (password hidden), for every statement and every connection attempt of this engine."""
    where = engine.url.render_as_string(hide_password=True)

    @event.listens_for(engine, "handle_error")
    def _unreachable(context) -> None:  # type: ignore[no-untyped-def]
        original = context.original_exception
        connecting = context.connection is None or context.is_pre_ping
        if context.is_disconnect or (connecting and type(original).__name__ == "OperationalError"):
            raise ServiceUnavailable(f"database unreachable at {where}: {_first_line(original)}",
                                     hint="check that the database is running and ADREG_DATABASE_URL / --db") \
                from original


def make_engine(url: str) -> Engine:
    """Create an engine; on SQLite, enforce foreign keys, use WAL and wait for locks instead of failing.

    Failing to reach the database raises :class:`ServiceUnavailable` (never a driver traceback).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ServiceUnavailable(f"cannot create the catalog's folder {folder}: {exc.strerror}") from None
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN itself
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
            # IMMEDIATE takes the write lock up front: two writers never deadlock on a lock upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        _report_unreachable(engine)
        return engine
    engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    _report_unreachable(engine)
    return engine


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest)."""
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)


def ensure_schema(engine: Engine) -> None:
    """Upgrade an embedded SQLite catalog; refuse any other catalog whose schema is not at head."""
    current = current_revision(engine)
    if current == head_revision():
        return
    if engine.dialect.name == "sqlite":
        upgrade(engine)
        return
    where = "empty" if current is None else f"at revision {current}"
    raise SchemaOutdated(
        f"the catalog at {engine.url.render_as_string(hide_password=True)} is {where}, "
        f"but this version of adreg needs revision {head_revision()}",
        hint="run `adreg init` to create or upgrade it",
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session in one transaction: committed on success, rolled back on any error."""
    with factory() as session, session.begin():
        yield session
