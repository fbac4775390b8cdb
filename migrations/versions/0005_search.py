"""search: adapter_versions.tag_doc (GIN on PostgreSQL) and module_count

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 23:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("module_count", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("tag_doc", JSON_TYPE, nullable=False, server_default=sa.text("'{}'")))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE adapter_versions SET module_count = (SELECT count(*) FROM jsonb_object_keys(module_tensors))"
        )
        op.execute(
            "UPDATE adapter_versions AS v SET tag_doc = t.doc FROM (SELECT version_id, jsonb_object_agg(key, value)"
            " AS doc FROM tags GROUP BY version_id) AS t WHERE t.version_id = v.id"
        )
    else:
        op.execute("UPDATE adapter_versions SET module_count = (SELECT count(*) FROM json_each(module_tensors))")
        op.execute(
            "UPDATE adapter_versions SET tag_doc = (SELECT json_group_object(key, value) FROM tags"
            " WHERE tags.version_id = adapter_versions.id) WHERE id IN (SELECT version_id FROM tags)"
        )
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.alter_column("module_count", server_default=None)
        batch_op.alter_column("tag_doc", server_default=None)
        batch_op.create_index(
            "ix_adapter_versions_tag_doc", ["tag_doc"], unique=False, postgresql_using="gin",
            postgresql_ops={"tag_doc": "jsonb_path_ops"},
        )


def downgrade() -> None:
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_adapter_versions_tag_doc")
        batch_op.drop_column("tag_doc")
        batch_op.drop_column("module_count")
