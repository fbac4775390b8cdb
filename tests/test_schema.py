"""Migrations and schema checks on both databases."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

import registry
from registry import Registry
from registry.db import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from registry.errors import SchemaOutdated


def test_upgrade_downgrade_round_trip_and_no_drift(db_url):
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        command.check(alembic_config(engine))  # raises if the models and the migrations disagree
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert {"adapters", "adapter_versions", "tags", "aliases", "lineage_edges", "compatibility",
                "base_models", "version_targets", "users", "api_tokens", "grants", "audit_events"} \
            <= set(inspect(engine).get_table_names())
        assert "created_by" in {c["name"] for c in inspect(engine).get_columns("adapter_versions")}
    finally:
        engine.dispose()


def test_sqlite_catalog_is_created_on_first_use(tmp_path):
    reg = Registry(home=tmp_path / "fresh")
    assert (tmp_path / "fresh" / "catalog.db").exists()
    assert current_revision(reg.engine) == head_revision()
    reg.close()


def test_postgres_catalog_behind_is_refused(pg_schema_url):
    with pytest.raises(SchemaOutdated, match="is empty") as info:
        Registry(pg_schema_url)
    assert "adreg init" in (info.value.hint or "")
    Registry.init(pg_schema_url)
    Registry(pg_schema_url).close()


def test_sqlite_enforces_foreign_keys(tmp_path):
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(f"sqlite:///{tmp_path / 'fk.db'}")
    upgrade(engine)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO tags (version_id, key, value) VALUES (999, 'k', 'v')"))


def test_registry_package_imports_without_torch():
    code = "import sys, registry, registry.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_migrations_ship_as_the_adreg_migrations_package():
    """The top-level migrations/ folder is installed as the package ``adreg_migrations``, which is where
    ``adreg init`` finds the Alembic environment (also from a wheel): it holds every revision of the folder."""
    repo = Path(__file__).resolve().parents[1]
    folder_revisions = sorted(p.name for p in (repo / "migrations" / "versions").glob("*.py"))
    assert len(folder_revisions) >= 6
    shipped = importlib.resources.files("adreg_migrations")
    assert Path(str(shipped)) == MIGRATIONS_DIR
    assert shipped.joinpath("env.py").is_file() and shipped.joinpath("script.py.mako").is_file()
    assert sorted(f.name for f in shipped.joinpath("versions").iterdir() if f.name.endswith(".py")) == folder_revisions
    assert len(list(ScriptDirectory.from_config(alembic_config()).walk_revisions())) == len(folder_revisions)
    assert not (repo / "registry" / "migrations" / "env.py").exists(), "the old location must not come back"
    if Path(registry.__file__).resolve().is_relative_to(repo):  # a checkout or an editable install
        assert MIGRATIONS_DIR.resolve() == (repo / "migrations").resolve()
