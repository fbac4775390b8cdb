"""identity: a version is its weights *and* its canonical config; unchecked base shapes are not 'exact'

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 18:40:00.000000

Before this revision, registering the same weights with another adapter_config.json under the same name
returned the old version and dropped the new config. ``config_sha256`` (sha256 of the canonical JSON of
the config, as the artifact store keys its folders) joins the unique key. ``extra_tensors`` keeps the shapes of
non-LoRA tensors (modules_to_save) so that checks on stored metadata see what a check on the folder sees
(empty for versions registered before this revision). Compatibility rows recorded
for a declared base whose shapes were never read become level ``declared`` instead of ``exact``.
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _config_sha(config: object) -> str:
    if isinstance(config, str):  # SQLite hands JSON back as text through a lightweight table
        config = json.loads(config)
    canonical = json.dumps(config or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(canonical).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("config_sha256", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("extra_tensors", JSON_TYPE, nullable=False, server_default=sa.text("'{}'")))
    versions = sa.table("adapter_versions", sa.column("id", sa.Integer), sa.column("adapter_config", sa.JSON),
                        sa.column("config_sha256", sa.String))
    bind = op.get_bind()
    rows = bind.execute(sa.select(versions.c.id, versions.c.adapter_config)).all()
    for row_id, config in rows:
        bind.execute(versions.update().where(versions.c.id == row_id).values(config_sha256=_config_sha(config)))
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.alter_column("config_sha256", server_default=None)
        batch_op.alter_column("extra_tensors", server_default=None)
        batch_op.drop_constraint("uq_adapter_versions_adapter_id_weights_sha256", type_="unique")
        batch_op.create_unique_constraint(
            "uq_adapter_versions_adapter_id_weights_sha256_config_sha256",
            ["adapter_id", "weights_sha256", "config_sha256"],
        )
    if bind.dialect.name == "postgresql":
        op.execute("UPDATE compatibility SET level = 'declared' WHERE level = 'exact' "
                   "AND (evidence->>'shapes_checked') = 'false'")
    else:
        op.execute("UPDATE compatibility SET level = 'declared' WHERE level = 'exact' "
                   "AND json_extract(evidence, '$.shapes_checked') = 0")


def downgrade() -> None:
    op.execute("UPDATE compatibility SET level = 'exact' WHERE level = 'declared'")
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_adapter_versions_adapter_id_weights_sha256_config_sha256", type_="unique")
        batch_op.create_unique_constraint(
            "uq_adapter_versions_adapter_id_weights_sha256", ["adapter_id", "weights_sha256"]
        )
        batch_op.drop_column("extra_tensors")
        batch_op.drop_column("config_sha256")
