"""catalog: base models, adapters, versions, tags, aliases, lineage, compatibility

Revision ID: 0001
Revises:
Create Date: 2026-11-24 22:24:57.475491
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
        sa.UniqueConstraint("name", name=op.f("uq_adapters_name")),
    )
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("revision", sa.String(length=255), nullable=True),
        sa.Column("revision_key", sa.String(length=255), nullable=False),
        sa.Column("local_path", sa.Text(), nullable=True),
        sa.Column("architecture", sa.String(length=255), nullable=True),
        sa.Column("model_type", sa.String(length=128), nullable=True),
        sa.Column("config_hash", sa.String(length=64), nullable=True),
        sa.Column("vocab_size", sa.Integer(), nullable=True),
        sa.Column(
            "module_shapes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("trust_remote_code", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_models")),
        sa.UniqueConstraint("name", "revision_key", name=op.f("uq_base_models_name_revision_key")),
    )
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_base_models_config_hash"), ["config_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_base_models_model_type"), ["model_type"], unique=False)

    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("peft_type", sa.String(length=32), nullable=False),
        sa.Column("task_type", sa.String(length=64), nullable=True),
        sa.Column("r", sa.Integer(), nullable=False),
        sa.Column("lora_alpha", sa.Float(), nullable=False),
        sa.Column("use_rslora", sa.Boolean(), nullable=False),
        sa.Column("use_dora", sa.Boolean(), nullable=False),
        sa.Column("fan_in_fan_out", sa.Boolean(), nullable=False),
        sa.Column(
            "rank_pattern",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "alpha_pattern",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "target_modules",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "modules_to_save",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("peft_version", sa.String(length=32), nullable=True),
        sa.Column(
            "adapter_config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("param_count", sa.BigInteger(), nullable=False),
        sa.Column(
            "dtypes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "module_tensors",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("storage_path", sa.Text(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
            name=op.f("fk_adapter_versions_adapter_id_adapters"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["base_model_id"], ["base_models.id"], name=op.f("fk_adapter_versions_base_model_id_base_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapter_versions")),
        sa.UniqueConstraint("adapter_id", "version", name=op.f("uq_adapter_versions_adapter_id_version")),
        sa.UniqueConstraint(
            "adapter_id", "weights_sha256", name=op.f("uq_adapter_versions_adapter_id_weights_sha256")
        ),
    )
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_adapter_versions_base_model_id"), ["base_model_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_adapter_versions_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_adapter_versions_peft_type"), ["peft_type"], unique=False)
        batch_op.create_index(batch_op.f("ix_adapter_versions_r"), ["r"], unique=False)
        batch_op.create_index(batch_op.f("ix_adapter_versions_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_adapter_versions_task_type"), ["task_type"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_adapter_versions_weights_sha256"), ["weights_sha256"], unique=False
        )

    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_aliases_adapter_id_adapters"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_aliases_version_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("adapter_id", "name", name=op.f("uq_aliases_adapter_id_name")),
    )
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aliases_version_id"), ["version_id"], unique=False)

    op.create_table(
        "compatibility",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column(
            "evidence",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_compatibility_base_model_id_base_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_compatibility_version_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compatibility")),
        sa.UniqueConstraint(
            "version_id",
            "base_model_id",
            "level",
            name=op.f("uq_compatibility_version_id_base_model_id_level"),
        ),
    )
    with op.batch_alter_table("compatibility", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_compatibility_base_model_id"), ["base_model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_compatibility_version_id"), ["version_id"], unique=False)

    op.create_table(
        "lineage_edges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("child_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("relation", sa.String(length=32), nullable=False),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["child_id"],
            ["adapter_versions.id"],
            name=op.f("fk_lineage_edges_child_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["adapter_versions.id"],
            name=op.f("fk_lineage_edges_parent_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lineage_edges")),
        sa.UniqueConstraint(
            "child_id", "parent_id", "relation", name=op.f("uq_lineage_edges_child_id_parent_id_relation")
        ),
    )
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.create_index("ix_lineage_edges_child_parent", ["child_id", "parent_id"], unique=False)
        batch_op.create_index("ix_lineage_edges_parent_child", ["parent_id", "child_id"], unique=False)

    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_tags_version_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tags")),
        sa.UniqueConstraint("version_id", "key", name=op.f("uq_tags_version_id_key")),
    )
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.create_index("ix_tags_key_value", ["key", "value", "version_id"], unique=False)

    op.create_table(
        "version_targets",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_version_targets_version_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "module", name=op.f("pk_version_targets")),
    )
    with op.batch_alter_table("version_targets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_version_targets_module"), ["module"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("version_targets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_version_targets_module"))

    op.drop_table("version_targets")
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.drop_index("ix_tags_key_value")

    op.drop_table("tags")
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.drop_index("ix_lineage_edges_parent_child")
        batch_op.drop_index("ix_lineage_edges_child_parent")

    op.drop_table("lineage_edges")
    with op.batch_alter_table("compatibility", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_compatibility_version_id"))
        batch_op.drop_index(batch_op.f("ix_compatibility_base_model_id"))

    op.drop_table("compatibility")
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aliases_version_id"))

    op.drop_table("aliases")
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adapter_versions_weights_sha256"))
        batch_op.drop_index(batch_op.f("ix_adapter_versions_task_type"))
        batch_op.drop_index(batch_op.f("ix_adapter_versions_status"))
        batch_op.drop_index(batch_op.f("ix_adapter_versions_r"))
        batch_op.drop_index(batch_op.f("ix_adapter_versions_peft_type"))
        batch_op.drop_index(batch_op.f("ix_adapter_versions_created_at"))
        batch_op.drop_index(batch_op.f("ix_adapter_versions_base_model_id"))

    op.drop_table("adapter_versions")
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_base_models_model_type"))
        batch_op.drop_index(batch_op.f("ix_base_models_config_hash"))

    op.drop_table("base_models")
    op.drop_table("adapters")
