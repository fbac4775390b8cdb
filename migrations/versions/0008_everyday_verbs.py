"""everyday verbs: lifecycle, full-text search, metrics, former names, protected aliases, base short names

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 00:30:00.000000

``adapter_versions.search_text`` holds what text search reads (adapter name and description, version description,
tags). PostgreSQL indexes it through a generated ``tsvector`` column with a GIN index; SQLite through the FTS5
table ``version_fts`` (rowid = version id), which the catalog writes together with ``search_text`` (no triggers:
a later batch migration that rebuilds ``adapter_versions`` on SQLite would drop them silently). Neither is in the
ORM models; ``migrations/env.py`` leaves them out of the drift check.
"""

from __future__ import annotations

import re
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FTS_TOKENIZER = "porter unicode61"  # English stemming on both databases ('english' on PostgreSQL)


def _words(value: str) -> list[str]:
    """Lowercased letters-and-digits words, accents removed: registry.fulltext.words as of this revision (a
    migration keeps its own copy, so that it means the same thing whatever later code does)."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))
    return re.findall(r"[^\W_]+", folded.lower())


def _backfill_search_text() -> None:
    """search_text of every existing version: its adapter's name and description, its description, its tags."""
    bind = op.get_bind()
    tags: dict[int, list[str]] = {}
    for vid, key, value in bind.execute(sa.text("SELECT version_id, key, value FROM tags ORDER BY key")):
        tags.setdefault(vid, []).append(f"{key} {value}")
    rows = bind.execute(sa.text(
        "SELECT v.id, a.name, a.description, v.description FROM adapter_versions AS v"
        " JOIN adapters AS a ON a.id = v.adapter_id"
    )).all()
    updates = [{"id": vid, "text": " ".join(_words(" ".join(
        part for part in (name, adapter_text, version_text, *tags.get(vid, [])) if part)))}
        for vid, name, adapter_text, version_text in rows]
    if updates:
        bind.execute(sa.text("UPDATE adapter_versions SET search_text = :text WHERE id = :id"), updates)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # Plain ADD COLUMNs (no batch rebuild of the table on SQLite).
    op.add_column("adapter_versions", sa.Column("status_reason", sa.Text(), nullable=True))
    op.add_column("adapter_versions", sa.Column("status_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("adapter_versions", sa.Column("status_by", sa.String(length=255), nullable=True))
    op.add_column("adapter_versions", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("adapter_versions", sa.Column("search_text", sa.Text(), nullable=False, server_default=""))
    op.add_column("aliases", sa.Column("protected", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("base_models", schema=None) as batch_op:  # a rebuild on SQLite: no FTS here
        batch_op.add_column(sa.Column("short_name", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_base_models_short_name"), ["short_name"])

    op.create_index("ix_adapter_versions_base_listing", "adapter_versions",
                    ["base_model_id", "status", "created_at", "id"], unique=False)
    op.drop_index("ix_adapter_versions_base_model_id", table_name="adapter_versions")
    op.create_table(
        "former_names",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("renamed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renamed_by", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_former_names_adapter_id_adapters"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_former_names")),
    )
    op.create_index(op.f("ix_former_names_adapter_id"), "former_names", ["adapter_id"], unique=False)

    op.create_table(
        "version_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("dataset", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_version_metrics_job_id_jobs"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["version_id"], ["adapter_versions.id"],
                                name=op.f("fk_version_metrics_version_id_adapter_versions"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version_metrics")),
        sa.UniqueConstraint("version_id", "name", "dataset", name=op.f("uq_version_metrics_version_id_name_dataset")),
    )
    op.create_index(op.f("ix_version_metrics_job_id"), "version_metrics", ["job_id"], unique=False)
    op.create_index("ix_version_metrics_name_dataset_value", "version_metrics",
                    ["name", "dataset", "value", "version_id"], unique=False)

    _backfill_search_text()
    if postgres:
        op.execute(
            "ALTER TABLE adapter_versions ADD COLUMN search_vector tsvector"
            " GENERATED ALWAYS AS (to_tsvector('english', search_text)) STORED"
        )
        op.execute("CREATE INDEX ix_adapter_versions_search_vector ON adapter_versions USING gin (search_vector)")
    else:
        op.execute(f"CREATE VIRTUAL TABLE version_fts USING fts5(body, tokenize='{FTS_TOKENIZER}')")
        op.execute("INSERT INTO version_fts(rowid, body) SELECT id, search_text FROM adapter_versions")
    with op.batch_alter_table("adapter_versions", schema=None, recreate="never") as batch_op:
        if postgres:
            batch_op.alter_column("search_text", server_default=None)
    with op.batch_alter_table("aliases", schema=None, recreate="never") as batch_op:
        if postgres:
            batch_op.alter_column("protected", server_default=None)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("DROP INDEX IF EXISTS ix_adapter_versions_search_vector")
        op.execute("ALTER TABLE adapter_versions DROP COLUMN search_vector")
    else:
        op.execute("DROP TABLE IF EXISTS version_fts")
    op.create_index("ix_adapter_versions_base_model_id", "adapter_versions", ["base_model_id"], unique=False)
    op.drop_index("ix_adapter_versions_base_listing", table_name="adapter_versions")
    op.drop_index("ix_version_metrics_name_dataset_value", table_name="version_metrics")
    op.drop_index(op.f("ix_version_metrics_job_id"), table_name="version_metrics")
    op.drop_table("version_metrics")
    op.drop_index(op.f("ix_former_names_adapter_id"), table_name="former_names")
    op.drop_table("former_names")
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_base_models_short_name"), type_="unique")
        batch_op.drop_column("short_name")
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.drop_column("protected")
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        for column in ("search_text", "purged_at", "status_by", "status_at", "status_reason"):
            batch_op.drop_column(column)
