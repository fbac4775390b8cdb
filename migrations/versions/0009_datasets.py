"""datasets in the catalog: named, versioned data files pinned by sha256, and their links to versions

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 02:00:00.000000

``datasets`` holds one row per (name, version); the same bytes under one name are one version (unique
(name, sha256)). ``version_datasets`` links a version to the datasets it was trained on (``train``), held out
(``heldout``) or is evaluated on (``eval``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("suffix", sa.String(length=16), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("columns", sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("task_type", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", "sha256", name=op.f("uq_datasets_name_sha256")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_datasets_name_version")),
    )
    op.create_index(op.f("ix_datasets_sha256"), "datasets", ["sha256"], unique=False)
    op.create_table(
        "version_datasets",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("linked_by", sa.String(length=255), nullable=True),
        sa.CheckConstraint("role IN ('train', 'eval', 'heldout')", name=op.f("ck_version_datasets_role")),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_version_datasets_dataset_id_datasets"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["adapter_versions.id"],
                                name=op.f("fk_version_datasets_version_id_adapter_versions"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", "dataset_id", "role", name=op.f("pk_version_datasets")),
    )
    op.create_index(op.f("ix_version_datasets_dataset_id"), "version_datasets", ["dataset_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_version_datasets_dataset_id"), table_name="version_datasets")
    op.drop_table("version_datasets")
    op.drop_index(op.f("ix_datasets_sha256"), table_name="datasets")
    op.drop_table("datasets")
