"""The server's half of running a job on a worker without catalog access (``adreg worker`` with ``ADREG_URL``).

The remote worker claims the job row through the server (the same conditional UPDATE as a local claim), receives
the job's inputs as detached rows (:class:`~workers.host.JobInputs`), beats its lease, and finally sends either a
failure or its :class:`~workers.host.Outcome` with the outputs' weights already uploaded by sha256. The server
commits that outcome with :func:`~workers.host.commit_outcome`: the same checks and the same single transaction
as a job run beside the catalog. Publish jobs (Hub I/O with the server's token) run in the server itself.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry import catalog
from registry import models as m
from registry.errors import InvalidAdapter, RegistryError
from registry.jobs import parse_spec
from registry.service import Service
from workers.context import JobCancelled, lease_seconds
from workers.host import DatasetOutput, Outcome, Output, commit_outcome, load_inputs
from workers.runners import advance_run_of, beat, claim, finish, run_job

log = logging.getLogger("adreg.remote")
RUN_ON_SERVER = ("publish",)  # kinds the server runs itself when a remote worker receives them


@dataclass(frozen=True)
class Held:
    """A job attempt held by a remote worker (what ``complete``/``finish`` match the row on)."""

    job_id: int
    attempt: int


def claim_job(svc: Service, job_id: int, worker: str) -> dict[str, Any]:
    """Claim ``job_id`` for ``worker``: its attempt, spec and inputs, or ``attempt: None`` with the job's status."""
    with svc.sessions() as s:
        row = s.get(m.Job, job_id)
        if row is None:
            raise RegistryError(f"no job {job_id}")
        kind, status = row.kind, row.status
    if kind in RUN_ON_SERVER:
        threading.Thread(target=run_job, args=(svc, job_id), daemon=True, name=f"adreg-job-{job_id}").start()
        return {"attempt": None, "status": "running on the server"}
    attempt = claim(svc, job_id, worker=worker)
    if attempt is None:
        return {"attempt": None, "status": status}
    try:
        with svc.sessions() as s:
            spec = parse_spec(s.get(m.Job, job_id).spec)  # type: ignore[union-attr]
        inputs = load_inputs(svc, spec)
    except Exception as exc:  # inputs gone or changed: the job fails here, as it would on a local worker
        fail_job(svc, job_id, attempt, "failed", type(exc).__name__, str(exc), {})
        return {"attempt": None, "status": "failed"}
    return {"attempt": attempt, "spec": spec.model_dump(mode="json"), "inputs": inputs.to_dict(),
            "lease_seconds": lease_seconds()}


def heartbeat(svc: Service, job_id: int, attempt: int, progress: float | None, message: str | None) -> dict[str, Any]:
    """Extend the lease (recording progress); ``cancel`` tells the worker to stop (cancelled, or not ours now)."""
    values: dict[str, Any] = {}
    if progress is not None:
        values.update(progress=max(0.0, min(1.0, progress)), progress_message=(message or "")[:500] or None)
    held = beat(svc, Held(job_id, attempt), **values)  # type: ignore[arg-type]
    with svc.sessions() as s:
        row = s.get(m.Job, job_id)
        cancel = not held or row is None or bool(row.cancel_requested)
    return {"cancel": cancel}


def fail_job(svc: Service, job_id: int, attempt: int, status: str, error_type: str | None,
             error_message: str | None, report: dict[str, Any]) -> dict[str, Any]:
    """End the attempt ``failed`` or ``cancelled`` (a no-op once it is not the worker's any more)."""
    if status not in ("failed", "cancelled"):
        raise RegistryError("status must be failed or cancelled")
    values: dict[str, Any] = {"progress_message": "cancelled"} if status == "cancelled" else {
        "error_type": (error_type or "Error")[:100], "error_message": (error_message or "")[:10_000],
        "report": report or {}}
    ended = finish(svc, Held(job_id, attempt), status, **values)  # type: ignore[arg-type]
    if ended:
        advance_run_of(svc, job_id)
    return {"status": status if ended else "not held"}


def complete_job(svc: Service, job_id: int, attempt: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Commit a remote worker's outcome: rebuild each output folder from its uploaded weights and config, then
    :func:`commit_outcome` (every registration check, one transaction with marking the job succeeded)."""
    with svc.sessions() as s:
        row = s.get(m.Job, job_id)
        if row is None:
            raise RegistryError(f"no job {job_id}")
        spec = parse_spec(row.spec)
    with ExitStack() as staged:  # the outputs' folders live until the commit is done
        outputs = []
        for i, item in enumerate(payload.get("outputs") or []):
            sha = str(item["weights_sha256"])
            if not svc.store.has_blob(sha):
                raise InvalidAdapter(f"output {i}", [f"weights {sha[:12]} were not uploaded (PUT /v1/blobs/{sha})"])
            folder = staged.enter_context(svc.store.staged_adapter(sha, item["config"], f"remote-{job_id}"))
            outputs.append(Output(
                name=str(item["name"]), folder=folder, base_model_id=item.get("base_model_id"),
                description=item.get("description"),
                parents=[catalog.ParentSpec(int(p["parent_id"]), str(p["relation"]), p.get("weight"),
                                            int(p.get("position", 0)), dict(p.get("params") or {}))
                         for p in item.get("parents") or []]))
        datasets = []
        for item in payload.get("datasets") or []:
            sha, suffix = str(item["sha256"]), str(item["suffix"])
            file = svc.store.data_file(sha, suffix)
            if not file.is_file():
                raise RegistryError(f"dataset {str(item['name'])[:64]!r}: no uploaded data file {sha[:12]}{suffix} "
                                    f"(PUT /v1/data/{sha} first)")
            datasets.append(DatasetOutput(
                name=str(item["name"]), role=str(item["role"]), file=file, sha256=sha, format=str(item["format"]),
                rows=int(item["rows"]), columns=[str(c) for c in item.get("columns") or []],
                task_type=item.get("task_type")))
        validated = payload.get("validated")
        outcome = Outcome(report=dict(payload.get("report") or {}), message=str(payload.get("message") or "done"),
                          outputs=outputs, datasets=datasets, validated=tuple(validated) if validated else None,  # type: ignore[arg-type]
                          result_version_id=payload.get("result_version_id"))
        try:
            results = commit_outcome(svc, Held(job_id, attempt), spec, outcome)  # type: ignore[arg-type]
        except JobCancelled:
            return {"status": "not held", "registered": []}
        except RegistryError as exc:  # an output the catalog refuses fails the job, as it would locally
            fail_job(svc, job_id, attempt, "failed", type(exc).__name__, str(exc), {})
            raise
    advance_run_of(svc, job_id)
    return {"status": "succeeded", "registered": [ref for _, ref in results]}


def data_path(svc: Service, job_id: int, sha256: str | None = None) -> Path:
    """The training-data file of a train job, or a dataset with ``sha256`` the job pinned: an eval job's, or a merge
    or validation's parents' held-out data (``parent_evals``). A remote worker fetches it and checks its sha256."""
    with svc.sessions() as s:
        row = s.get(m.Job, job_id)
        if row is not None and row.kind in ("eval", "merge", "validate"):
            pinned = list(row.spec.get("datasets") or []) + [
                data for parent in row.spec.get("parent_evals") or [] for data in parent.get("datasets") or []]
            for data in pinned:
                if data.get("sha256") == sha256:
                    return Path(data["path"])
            raise RegistryError(f"job {job_id} pinned no dataset with sha256 {str(sha256)[:12]}")
        if row is None or row.kind != "train":
            raise RegistryError(f"job {job_id} is not a train or eval job")
        return Path(row.spec["data"]["path"])
