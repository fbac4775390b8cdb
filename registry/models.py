"""ORM tables of the catalog (SQLAlchemy 2.x typed mappings). Changing them needs a migration."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime: SQLite hands timezone-aware columns back naive (they hold UTC)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp read back as aware UTC on every database (SQLite hands it back naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}


class BaseModelRecord(Base):
    """A base model an adapter can be applied to, identified by name (or Hub id) and revision."""

    __tablename__ = "base_models"
    __table_args__ = (UniqueConstraint("name", "revision_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    revision: Mapped[str | None] = mapped_column(String(255))
    # ``revision`` with NULL folded to '' so that the unique constraint also holds for "no revision".
    revision_key: Mapped[str] = mapped_column(String(255), default="")
    local_path: Mapped[str | None] = mapped_column(Text)
    # A short name given with ``adreg base add`` (``llama-tiny``); usable wherever a base model is named.
    short_name: Mapped[str | None] = mapped_column(String(64), unique=True)
    architecture: Mapped[str | None] = mapped_column(String(255))
    model_type: Mapped[str | None] = mapped_column(String(128), index=True)
    config_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    # module path -> {"kind": "linear"|"embedding"|"conv", "in": int, "out": int}
    module_shapes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    trust_remote_code: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Adapter(Base):
    """A named adapter: a series of versions."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Last version number handed out; bumped with one UPDATE so concurrent registrations serialise.
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    versions: Mapped[list[AdapterVersion]] = relationship(back_populates="adapter")


class AdapterVersion(Base):
    """One immutable version of an adapter, its weights identified by sha256."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "version"),
        # A version is its weights *and* its config: the same bytes with another config are another version.
        UniqueConstraint("adapter_id", "weights_sha256", "config_sha256"),
        # Tag search on PostgreSQL (``tag_doc @> '{"team": "ml"}'``) through GIN; a plain index on SQLite.
        Index("ix_adapter_versions_tag_doc", "tag_doc", postgresql_using="gin",
              postgresql_ops={"tag_doc": "jsonb_path_ops"}),
        # A listing of one base ("adreg list --base-model X", newest first, with its total) read from the index
        # alone: the table's rows are wide (config and module JSON), and visiting one per match dominated.
        Index("ix_adapter_versions_base_listing", "base_model_id", "status", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    # Indexed by ix_adapter_versions_base_listing (below), which leads with it.
    base_model_id: Mapped[int | None] = mapped_column(ForeignKey("base_models.id"))
    # Lifecycle: ``ready``, ``deprecated`` (still resolvable by exact reference) or ``deleted`` (a tombstone kept
    # for lineage; hidden from listings and references). ``status_reason/at/by`` say why, when and who.
    status: Mapped[str] = mapped_column(String(32), default="ready", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status_by: Mapped[str | None] = mapped_column(String(255))
    # Set by a hard delete: the version's files may be reclaimed (``adreg gc``) once no other version shares them.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    peft_type: Mapped[str] = mapped_column(String(32), index=True)
    task_type: Mapped[str | None] = mapped_column(String(64), index=True)
    r: Mapped[int] = mapped_column(Integer, index=True)
    lora_alpha: Mapped[float] = mapped_column(Float)
    use_rslora: Mapped[bool] = mapped_column(Boolean, default=False)
    use_dora: Mapped[bool] = mapped_column(Boolean, default=False)
    fan_in_fan_out: Mapped[bool] = mapped_column(Boolean, default=False)
    rank_pattern: Mapped[dict[str, Any]] = mapped_column(default=dict)
    alpha_pattern: Mapped[dict[str, Any]] = mapped_column(default=dict)
    target_modules: Mapped[list[Any]] = mapped_column(default=list)
    modules_to_save: Mapped[list[Any]] = mapped_column(default=list)
    peft_version: Mapped[str | None] = mapped_column(String(32))
    adapter_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    weights_sha256: Mapped[str] = mapped_column(String(64), index=True)
    config_sha256: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical adapter_config JSON
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    param_count: Mapped[int] = mapped_column(BigInteger)
    dtypes: Mapped[list[Any]] = mapped_column(default=list)
    # module path -> ModuleTensors fields (kind, rank, in/out features, A/B shapes, dtype, flags)
    module_tensors: Mapped[dict[str, Any]] = mapped_column(default=dict)
    module_count: Mapped[int] = mapped_column(Integer, default=0)  # len(module_tensors), without loading it
    # Non-LoRA tensors (modules_to_save copies, trainable tokens): key -> shape, so that checks on stored
    # metadata see everything a check on the folder would.
    extra_tensors: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The version's tags as one object, kept in step with its ``tags`` rows by catalog (which holds the
    # version's row lock while it writes both); searched with one GIN lookup instead of one join per tag.
    tag_doc: Mapped[dict[str, Any]] = mapped_column(default=dict)
    storage_path: Mapped[str] = mapped_column(Text)  # relative to the artifact store's root
    source_uri: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    # What full-text search reads: the adapter's name and description, the version's description and its tags,
    # rewritten by catalog whenever one of them changes. PostgreSQL indexes it through the generated column
    # ``search_vector`` (tsvector, GIN; not mapped here), SQLite through the FTS5 table ``version_fts``.
    search_text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # Who registered it (a user name, or the OS user of an embedded catalog); NULL before revision 0007.
    created_by: Mapped[str | None] = mapped_column(String(255))

    adapter: Mapped[Adapter] = relationship(back_populates="versions")
    base_model: Mapped[BaseModelRecord | None] = relationship()


class FormerName(Base):
    """A name an adapter had before ``adreg rename``; it keeps resolving to the adapter until it is reused."""

    __tablename__ = "former_names"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    renamed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    renamed_by: Mapped[str | None] = mapped_column(String(255))


class Metric(Base):
    """One named number about a version (``eval_loss``), optionally on a dataset; logging it again replaces it."""

    __tablename__ = "version_metrics"
    __table_args__ = (
        UniqueConstraint("version_id", "name", "dataset"),
        # Sorting and filtering versions by one metric: an index range scan in value order.
        Index("ix_version_metrics_name_dataset_value", "name", "dataset", "value", "version_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(255), default="")  # '' when the metric names no dataset
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(32), default="user")  # user, train, validate, merge, eval
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    recorded_by: Mapped[str | None] = mapped_column(String(255))


class Dataset(Base):
    """One version of a named dataset: a data file pinned by its sha256 and kept content-addressed in the store
    (``data/<sha256><suffix>``). The same bytes under the same name are the same version."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        UniqueConstraint("name", "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(16))  # json, text, parquet, csv (the datasets loader)
    suffix: Mapped[str] = mapped_column(String(16))  # the stored file's suffix (.jsonl, .csv, ...)
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[Any]] = mapped_column(default=list)
    task_type: Mapped[str | None] = mapped_column(String(64))  # the task its columns were checked for, if any
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    source_uri: Mapped[str | None] = mapped_column(Text)  # the file it was read from, or job:<id>
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(255))


class VersionDataset(Base):
    """A dataset linked to a version: what it was trained on (``train``), held out (``heldout``) or is evaluated
    on (``eval``)."""

    __tablename__ = "version_datasets"
    __table_args__ = (CheckConstraint("role IN ('train', 'eval', 'heldout')", name="role"),)

    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True,
                                            index=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    linked_by: Mapped[str | None] = mapped_column(String(255))


class TargetModule(Base):
    """One explicit target-module name of a version (for ``--target`` searches)."""

    __tablename__ = "version_targets"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True
    )
    module: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class Tag(Base):
    """A key/value label on a version; one value per key."""

    __tablename__ = "tags"
    __table_args__ = (
        UniqueConstraint("version_id", "key"),
        Index("ix_tags_key_value", "key", "value", "version_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(255))


class Alias(Base):
    """A movable name (``production``) pointing at one version of an adapter."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("adapter_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # Only an admin, or a recipe's promote step whose gates passed, may move or remove a protected alias.
    protected: Mapped[bool] = mapped_column(Boolean, default=False)


class LineageEdge(Base):
    """``child`` was made from ``parent`` by ``relation`` (merge, finetune, ...)."""

    __tablename__ = "lineage_edges"
    __table_args__ = (
        UniqueConstraint("child_id", "parent_id", "relation"),
        Index("ix_lineage_edges_parent_child", "parent_id", "child_id"),
        Index("ix_lineage_edges_child_parent", "child_id", "parent_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"))
    parent_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"))
    relation: Mapped[str] = mapped_column(String(32))
    weight: Mapped[float | None] = mapped_column(Float)
    position: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Compatibility(Base):
    """Evidence that a version fits a base model, at level ``exact``, ``shape`` or ``validated``."""

    __tablename__ = "compatibility"
    __table_args__ = (UniqueConstraint("version_id", "base_model_id", "level"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """A unit of work (merge, validate, ...). The catalog is its source of truth; brokers only carry ids."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    queue: Mapped[str] = mapped_column(String(32), default="cpu")
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    spec_version: Mapped[int] = mapped_column(Integer, default=1)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_type: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    worker_host: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    result_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="SET NULL"), index=True
    )
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    parent_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)


class Publication(Base):
    """A version pushed to a Hub repository (one commit); publishing it again to the same place is a no-op."""

    __tablename__ = "publications"
    __table_args__ = (UniqueConstraint("version_id", "repo_id", "branch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True)
    repo_id: Mapped[str] = mapped_column(String(255), index=True)
    branch: Mapped[str] = mapped_column(String(255), default="main")
    commit_oid: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    pr_url: Mapped[str | None] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Run(Base):
    """One execution of a recipe: a chain of jobs, advanced step by step."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recipe_name: Mapped[str] = mapped_column(String(128), index=True)
    recipe: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    trigger: Mapped[str] = mapped_column(String(32), default="manual")
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id", ondelete="SET NULL"), index=True)
    fire_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    inputs_key: Mapped[str] = mapped_column(String(64), index=True)
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)  # step name -> result reference
    step_jobs: Mapped[dict[str, Any]] = mapped_column(default=dict)  # step name -> job id
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Schedule(Base):
    """A recipe fired by a cron expression in a time zone, and/or by alias moves."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    recipe: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cron: Mapped[str | None] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    catch_up: Mapped[str] = mapped_column(String(16), default="latest")
    on_alias: Mapped[str | None] = mapped_column(String(140), index=True)  # "adapter@alias"
    last_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Event(Base):
    """Something a trigger can react to; written in the same transaction as the change it records."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(140), index=True)  # "adapter@alias"
    version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class User(Base):
    """Someone who holds API tokens. ``groups`` name the groups whose grants (``group:NAME``) apply to them."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    groups: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    """A bearer token of a user. Only the sha256 of its secret is stored; the plaintext is shown once."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("scope IN ('read', 'write', 'admin')", name="scope"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str | None] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex sha256 of the secret
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()


class Grant(Base):
    """``subject`` (a user name or ``group:NAME``) may ``permission`` adapters whose name matches ``pattern``."""

    __tablename__ = "grants"
    __table_args__ = (
        UniqueConstraint("subject", "pattern"),
        CheckConstraint("permission IN ('read', 'write', 'manage')", name="permission"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(80))
    pattern: Mapped[str] = mapped_column(String(64))  # an fnmatch glob over adapter names: ``cx-*``
    permission: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEvent(Base):
    """One change to the catalog or its access rules, by whom; append-only, never holds a secret."""

    __tablename__ = "audit_events"
    # Newest events of one adapter: an index on (adapter_name, at), which also serves adapter_name alone.
    __table_args__ = (Index("ix_audit_events_adapter_name_at", "adapter_name", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))  # ``version.register``, ``alias.set``, ``token.create``...
    adapter_name: Mapped[str | None] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column()
    after: Mapped[dict[str, Any] | None] = mapped_column()
