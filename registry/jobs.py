"""Jobs: validated specs, submission, status and waiting; the local and Celery executors.

A job is a ``jobs`` row first (committed before anything is enqueued); an executor then only carries
its id. The same runner (``workers.runners.run_job``) executes it in-process or on a Celery worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry import models as m
from registry.errors import RegistryError
from registry.refs import MAX_REVISION_CHARS, REVISION_PATTERN, check_slug, check_tag

if TYPE_CHECKING:
    from registry.types import AdapterVersion


class JobSource(Protocol):
    """What a job handle refreshes itself from: the embedded or the remote ``Registry``."""

    def job(self, job_id: int) -> Job: ...

    def get(self, ref: str) -> AdapterVersion: ...

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
TASK_NAME = "adreg.run_job"


class JobFailed(RegistryError):
    """A job ended ``failed`` (or ``cancelled``); carries its error type and message."""

    def __init__(self, job_id: int, status: str, error_type: str | None, message: str | None) -> None:
        self.job_id = job_id
        self.status = status
        self.error_type = error_type
        super().__init__(f"job {job_id} {status}: {message or error_type or 'no message'}")


class JobTimeout(RegistryError):
    """``Job.wait(timeout=...)`` ran out before the job finished."""


class SourceRef(BaseModel):
    """An exact input version, pinned by id and sha256 when the job was submitted."""

    model_config = ConfigDict(frozen=True)

    ref: str
    version_id: int
    weights_sha256: str
    storage_path: str


def _checked_tags(tags: dict[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        check_tag(key, value)
    return tags


Slug = Annotated[str, AfterValidator(check_slug)]  # an adapter name the output is registered under
Tags = Annotated[dict[str, str], AfterValidator(_checked_tags)]  # tags for the output versions

_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"


class PublishTarget(BaseModel):
    """Where a version goes on the Hub."""

    repo_id: str = Field(pattern=_REPO_ID)
    branch: str = Field(default="main", pattern=REVISION_PATTERN, max_length=MAX_REVISION_CHARS)  # Hub/git rules
    private: bool = False
    create_pr: bool = False
    base_model_id: str | None = Field(default=None, pattern=_REPO_ID)  # the card's base_model, if not the base's


class MergeParams(BaseModel):
    density: float | None = None
    svd_rank: int | None = None
    svd_clamp: float | None = None
    majority_sign_method: Literal["total", "frequency"] = "total"
    seed: int | None = None
    scale: float | None = None
    tsv_fraction: float | None = None
    common_fraction: float | None = None
    knots_inner: Literal["linear", "ties"] | None = None
    core_inner: Literal["linear", "ties"] | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None


class DataSpec(BaseModel):
    """A local dataset file, fingerprinted when the job was submitted."""

    path: str
    sha256: str
    format: Literal["json", "text", "parquet", "csv"]
    # text | prompt_completion | messages (CAUSAL_LM), text_label (SEQ_CLS), token_labels (TOKEN_CLS),
    # text_target (SEQ_2_SEQ_LM); see registry.trainset
    fields: Literal["text", "prompt_completion", "messages", "text_label", "token_labels", "text_target"]
    rows: int = Field(gt=0)
    num_labels: int | None = Field(default=None, gt=0)  # classification: the largest class id in the file + 1


class EvalData(DataSpec):
    """A catalog dataset to evaluate on, pinned by id and sha256 at submission."""

    dataset_id: int
    ref: str  # the dataset's name:version (the metrics' dataset)


class ParentEval(BaseModel):
    """A merge parent's held-out data (its ``eval`` datasets, else its ``heldout`` split), pinned at submission:
    what retention is measured on and what learned weights are fitted to."""

    version_id: int
    ref: str
    datasets: list[EvalData] = Field(min_length=1, max_length=16)


LearnObjective = Literal["mean", "worst"]  # what the weight search minimises (workers.learn_weights)
LEARN_OBJECTIVES: tuple[str, ...] = get_args(LearnObjective)


class LearnWeights(BaseModel):
    """Learn a merge's weights first (LoraHub-style, ``workers.learn_weights``): Adam for ``budget`` steps on the
    mixture coefficients, minimising the mean loss on ``examples`` rows of each parent's held-out data plus
    ``l1 * sum |w|`` (``objective`` ``mean``, LoraHub's), or the smooth maximum of the parents' normalised losses
    plus the same term (``worst``: aimed at the worst-off parent); the merge's ``weights`` are the starting point;
    ``seed`` draws the rows."""

    examples: int = Field(default=32, ge=1, le=4096)  # rows per parent
    budget: int = Field(default=40, ge=1, le=2000)  # optimiser steps
    seed: int = 0
    l1: float = Field(default=0.05, ge=0, allow_inf_nan=False)
    lr: float = Field(default=0.05, gt=0, le=10, allow_inf_nan=False)
    max_length: int = Field(default=256, ge=8, le=8192)
    objective: LearnObjective = "mean"


class MergeSpec(BaseModel):
    """Merge ``sources`` with ``weights`` by ``method`` and register the result as ``name`` (with ``learn``: the
    weights are learned first, from ``weights``, and the learned ones are used and recorded)."""

    kind: Literal["merge"] = "merge"
    spec_version: Literal[1] = 1
    submitted_by: str | None = None  # the user the job acts for (created_by of what it registers)
    sources: list[SourceRef] = Field(min_length=1)
    weights: list[float]
    method: str
    params: MergeParams = Field(default_factory=MergeParams)
    name: Slug
    tags: Tags = Field(default_factory=dict)
    description: str | None = None
    allow_cross_base: bool = False
    validate_after: bool = False
    publish_to: PublishTarget | None = None  # implies validate_after: publish only a validated merge
    warnings: list[str] = Field(default_factory=list)  # said at submission (a deprecated input), shown with the job
    parent_evals: list[ParentEval] = Field(default_factory=list)  # the parents' held-out data, for retention
    learn: LearnWeights | None = None  # learn the weights on parent_evals first (weights: the starting point)

    @field_validator("weights")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        if not all(math.isfinite(w) for w in v):
            raise ValueError("weights must be finite numbers")
        return v


class PublishSpec(BaseModel):
    """Push a version (weights, config with the base's Hub id, model card) to a Hub repository."""

    kind: Literal["publish"] = "publish"
    spec_version: Literal[1] = 1
    submitted_by: str | None = None  # the user the job acts for (created_by of what it registers)
    version_id: int
    ref: str
    target: PublishTarget


class ValidateSpec(BaseModel):
    """Load a version on its base model with PEFT and check it at run time."""

    kind: Literal["validate"] = "validate"
    spec_version: Literal[1] = 1
    submitted_by: str | None = None  # the user the job acts for (created_by of what it registers)
    version_id: int
    ref: str
    probe_count: int = Field(default=4, ge=1, le=64)
    probe_length: int = Field(default=16, ge=2, le=512)
    atol: float = Field(default=1e-3, gt=0)
    publish_after: PublishTarget | None = None  # publish only if every check passes
    parent_evals: list[ParentEval] = Field(default_factory=list)  # a merge's parents' held-out data: retention
    # how the held-out data is read for retention (as an eval job reads it)
    max_length: int = Field(default=256, ge=8, le=8192)
    batch_size: int = Field(default=8, ge=1, le=512)
    max_rows: int | None = Field(default=200, ge=1)


class LoraSpec(BaseModel):
    """A fresh adapter: explicit target module names (``all-linear`` is expanded before it gets here)."""

    r: int = Field(default=16, gt=0, le=4096)
    alpha: float = Field(default=32, gt=0)
    targets: list[str] = Field(min_length=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    use_rslora: bool = False


class TrainSpec(BaseModel):
    """Continue one adapter, create one (``new``), or train several jointly; register one version each."""

    kind: Literal["train"] = "train"
    spec_version: Literal[1] = 1
    submitted_by: str | None = None  # the user the job acts for (created_by of what it registers)
    sources: list[SourceRef] = Field(default_factory=list)
    new: LoraSpec | None = None
    base_model_id: int
    names: list[Slug] = Field(min_length=1)  # the output adapter name for each trained adapter
    task_type: Literal["CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS", "SEQ_2_SEQ_LM"] = "CAUSAL_LM"
    num_labels: int | None = Field(default=None, gt=0)  # classes of a head the job creates (base without one)
    active: list[int] | None = None  # indices of the adapters to activate; default: all
    data: DataSpec
    steps: int = Field(default=100, gt=0)
    lr: float = Field(default=1e-4, gt=0)
    lrs: list[float] | None = None  # per-adapter learning rates (joint mode)
    batch_size: int = Field(default=4, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    max_length: int = Field(default=256, ge=8)
    eval_rows: int | None = Field(default=None, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(default=50, gt=0)
    bf16: bool = False
    gradient_checkpointing: bool = False
    tags: Tags = Field(default_factory=dict)
    validate_after: bool = False
    warnings: list[str] = Field(default_factory=list)  # said at submission (a deprecated input), shown with the job


class EvalSpec(BaseModel):
    """Measure a version and its bare base on catalog datasets (causal LMs: loss, perplexity, token accuracy;
    classifiers: loss, accuracy, macro-F1)."""

    kind: Literal["eval"] = "eval"
    spec_version: Literal[1] = 1
    submitted_by: str | None = None  # the user the job acts for
    version_id: int
    ref: str
    datasets: list[EvalData] = Field(min_length=1, max_length=16)
    max_length: int = Field(default=256, ge=8, le=8192)
    batch_size: int = Field(default=8, ge=1, le=512)
    max_rows: int | None = Field(default=1000, ge=1)  # rows read from each dataset (its first ones); None: all


AnySpec = MergeSpec | ValidateSpec | TrainSpec | PublishSpec | EvalSpec
JobSpec = Annotated[AnySpec, Field(discriminator="kind")]
_SPEC = TypeAdapter(JobSpec)
DEFAULT_QUEUE = {"merge": "cpu", "validate": "gpu", "train": "gpu", "publish": "cpu", "eval": "gpu"}


def queue_for(spec: AnySpec) -> str:
    """The queue a job goes to: its kind's (``DEFAULT_QUEUE``), the GPU's for a merge that learns its weights
    (it runs the base model)."""
    if isinstance(spec, MergeSpec) and spec.learn is not None:
        return "gpu"
    return DEFAULT_QUEUE[spec.kind]


def written_names(spec: AnySpec) -> list[str]:
    """The adapter names a job registers versions of or acts on (what a permission check and the audit log name)."""
    if isinstance(spec, MergeSpec):
        return [spec.name]
    if isinstance(spec, TrainSpec):
        return list(spec.names)
    return [spec.ref.rpartition(":")[0] or spec.ref]


def parse_spec(data: dict[str, Any]) -> AnySpec:
    return _SPEC.validate_python(data)


@dataclass
class Job:
    """A handle on a job row: ``refresh()``, ``wait()``, ``result`` (the new version, once succeeded)."""

    id: int
    kind: str
    status: str
    queue: str
    progress: float
    message: str | None
    attempts: int
    error_type: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result_ref: str | None
    report: dict[str, Any]
    parent_job_id: int | None
    spec: dict[str, Any] = field(repr=False, default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the submission warned about (a deprecated input)

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def bind(self, source: JobSource) -> Job:
        """Let ``refresh()``, ``wait()`` and ``result`` ask ``source`` (the facade that returned this handle)."""
        self._source: JobSource | None = source  # not a field: a handle's data is only the job's own
        return self

    def refresh(self) -> Job:
        source = getattr(self, "_source", None)
        if source is None:
            raise RegistryError(f"job {self.id} is a detached record: get a handle from Registry.job({self.id})")
        fresh = source.job(self.id)
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))
        return self

    def wait(self, timeout: float | None = None, *, poll: float = 0.2,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """Block until the job finishes; raise :class:`JobFailed` unless it succeeded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"job {self.id} still {self.status} after {timeout:g}s")
            time.sleep(poll)
            self.refresh()
            if on_progress is not None:
                on_progress(self)
        if self.status != "succeeded":
            raise JobFailed(self.id, self.status, self.error_type, self.error)
        return self

    @property
    def result(self) -> AdapterVersion | None:
        """The version this job registered (None until it has succeeded, or for jobs that register none)."""
        source = getattr(self, "_source", None)
        if self.result_ref is None or source is None:
            return None
        return source.get(self.result_ref)

    def to_dict(self) -> dict[str, Any]:
        from registry.types import jsonable

        return jsonable({k: getattr(self, k) for k in self.__dataclass_fields__})


def job_from_row(session: Session, row: m.Job) -> Job:
    """A detached job record (the facade binds it, see :meth:`Job.bind`)."""
    result_ref = None
    if row.result_version_id is not None:
        name, version = session.execute(
            select(m.Adapter.name, m.AdapterVersion.version).join(m.AdapterVersion)
            .where(m.AdapterVersion.id == row.result_version_id)
        ).one()
        result_ref = f"{name}:{version}"
    return Job(
        id=row.id, kind=row.kind, status=row.status, queue=row.queue, progress=row.progress,
        message=row.progress_message, attempts=row.attempts, error_type=row.error_type, error=row.error_message,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at, result_ref=result_ref,
        report=dict(row.report or {}), parent_job_id=row.parent_job_id, spec=dict(row.spec or {}),
        warnings=list((row.spec or {}).get("warnings") or []),
    )


def insert_job(
    session: Session,
    spec: AnySpec,
    *,
    queue: str,
    idempotency_key: str | None = None,
    parent_job_id: int | None = None,
    run_id: int | None = None,
) -> tuple[m.Job, bool]:
    """Write a queued job row, or return the existing one with the same idempotency key."""
    if idempotency_key is not None:
        existing = session.scalars(select(m.Job).where(m.Job.idempotency_key == idempotency_key)).one_or_none()
        if existing is not None:
            return existing, False
    row = m.Job(
        kind=spec.kind, status="queued", queue=queue, spec=spec.model_dump(mode="json"),
        spec_version=spec.spec_version, idempotency_key=idempotency_key, parent_job_id=parent_job_id, run_id=run_id,
        attempts=0, progress=0.0, cancel_requested=False, report={}, created_at=m.utcnow(),
    )
    session.add(row)
    session.flush()
    return row, True


def request_cancel(session: Session, job_id: int) -> str:
    """Cancel a queued job at once; ask a running one to stop at its next check. Returns the new status."""
    row = session.get(m.Job, job_id)
    if row is None:
        raise RegistryError(f"no job {job_id}")
    if row.status in FINISHED:
        raise RegistryError(f"job {job_id} already {row.status}")
    done = session.execute(
        update(m.Job.__table__)
        .where(m.Job.__table__.c.id == job_id, m.Job.__table__.c.status == "queued")
        .values(status="cancelled", finished_at=m.utcnow(), cancel_requested=True)
    ).rowcount
    if done:
        return "cancelled"
    session.execute(
        update(m.Job.__table__).where(m.Job.__table__.c.id == job_id).values(cancel_requested=True)
    )
    return "cancelling"


def _process_gone(worker_host: str | None) -> bool:
    """True when ``host:pid`` names a process of this host that no longer exists."""
    import os
    import socket

    host, _, pid = (worker_host or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def fail_orphaned_local_jobs(session: Session, store_root: Path, lease: float) -> list[int]:
    """In the embedded default (no workers, so no recovery sweep), end the jobs no process will finish: running
    jobs whose process is gone or whose lease expired, and queued jobs older than a lease (their process died
    before running them). Each is marked ``failed`` (never re-run: submit it again) and its scratch and
    checkpoint folders are removed. Returns their ids."""
    import shutil
    from datetime import timedelta

    now = m.utcnow()
    t = m.Job.__table__
    candidates = session.execute(select(t.c.id, t.c.status, t.c.attempts, t.c.worker_host, t.c.lease_expires_at,
                                        t.c.created_at).where(t.c.status.in_(("queued", "running")))).all()
    ended = []
    for job_id, status, attempts, host, lease_end, created in candidates:
        if status == "running":
            expired = lease_end is not None and _aware(lease_end) < now
            if not (expired or _process_gone(host)):
                continue
            reason = f"the process that ran it ({host or 'unknown'}) is gone"
        elif _aware(created) < now - timedelta(seconds=lease):
            reason = "the process that submitted it ended before running it"
        else:
            continue
        done = session.execute(
            update(t).where(t.c.id == job_id, t.c.status == status, t.c.attempts == attempts)
            .values(status="failed", finished_at=now, lease_expires_at=None, error_type="WorkerLost",
                    error_message=f"{reason}; it was not re-run: submit it again")
        ).rowcount
        if done:
            ended.append(job_id)
            for folder in ("scratch", "checkpoints"):
                shutil.rmtree(store_root / folder / f"job-{job_id}", ignore_errors=True)
    return ended


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    from datetime import timezone

    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
