"""Migrations and schema checks on both databases."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic import command
from sqlalchemy import inspect

from registry import Registry
from registry.db import alembic_config, current_revision, downgrade, head_revision, make_engine, upgrade
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
                "base_models", "version_targets"} <= set(inspect(engine).get_table_names())
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
