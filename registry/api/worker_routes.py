"""Routes for workers on other hosts: claim, heartbeat, fail, complete, and the files a job reads.

A remote worker holds an admin token (a worker acts for every submitter). The work is done by
:mod:`workers.remote_protocol`, on the same job rows and with the same commit as a worker beside the catalog.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name local objects.
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from registry import auth
from registry.api.common import PROBLEM_RESPONSES
from registry.errors import AdapterNotFound
from registry.service import Service

SHA256 = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$")]
MAX_ID = 2**31 - 1  # ids and attempts are INTEGER columns
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
Attempt = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker: str = Field(max_length=255, description="host:pid of the worker")


class BeatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempt: Attempt
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    message: str | None = Field(default=None, max_length=500)


class FailRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempt: Attempt
    status: str = Field(pattern="^(failed|cancelled)$")
    error_type: str | None = Field(default=None, max_length=100)
    error_message: str | None = Field(default=None, max_length=10_000)
    report: dict[str, Any] = Field(default_factory=dict)


class ParentEdge(BaseModel):
    """One lineage edge of an output (``catalog.ParentSpec``)."""

    model_config = ConfigDict(extra="forbid")
    parent_id: Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
    relation: str = Field(pattern="^(merge|finetune)$")
    weight: float | None = None
    position: Annotated[int, Field(strict=True, ge=0, le=10_000)] = 0
    params: dict[str, Any] = Field(default_factory=dict)


class JobOutput(BaseModel):
    """A new version a remote job made: its uploaded weights, its config and how to register it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=128)
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    config: dict[str, Any]
    base_model_id: Annotated[int, Field(strict=True, ge=1, le=MAX_ID)] | None = None
    description: str | None = Field(default=None, max_length=10_000)
    parents: list[ParentEdge] = Field(default_factory=list, max_length=64)


class JobDataset(BaseModel):
    """A data file a remote job made (a training split), uploaded first with ``PUT /v1/data/{sha256}``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    role: Literal["train", "heldout", "eval"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    suffix: Literal[".jsonl", ".json", ".txt", ".text", ".parquet", ".csv"]
    format: Literal["json", "text", "parquet", "csv"]
    rows: Annotated[int, Field(strict=True, ge=1, le=1 << 40)]
    columns: list[Annotated[str, Field(max_length=1024)]] = Field(default_factory=list, max_length=256)
    task_type: str | None = Field(default=None, max_length=64)


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempt: Attempt
    report: dict[str, Any] = Field(default_factory=dict)
    message: str = Field(default="done", max_length=200)
    outputs: list[JobOutput] = Field(default_factory=list, max_length=64)
    datasets: list[JobDataset] = Field(default_factory=list, max_length=16)
    validated: list[Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]] | None = Field(
        default=None, min_length=2, max_length=2)
    result_version_id: Annotated[int, Field(strict=True, ge=1, le=MAX_ID)] | None = None


def _worker(who: auth.Principal) -> None:
    who.require("admin")


def add_routes(app: FastAPI, svc: Service, caller: Any) -> None:
    """The worker routes, and ``GET /v1/blobs/{sha256}`` (weights by content, for any reader)."""
    from workers import remote_protocol as protocol

    @app.get("/v1/blobs/{sha256}", tags=["artifacts"], response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {"schema": {
                 "type": "string", "format": "binary"}}}, "description": "the weights file"}, **PROBLEM_RESPONSES})
    def blob(who: caller, sha256: SHA256) -> FileResponse:
        """Stored weights by their sha256."""
        if not svc.store.has_blob(sha256):
            raise AdapterNotFound(f"no stored weights with sha256 {sha256[:12]}")
        return FileResponse(svc.store.blob_path(sha256), media_type="application/octet-stream")

    @app.post("/v1/worker/jobs/{job_id}/claim", tags=["worker"], responses=PROBLEM_RESPONSES)
    def claim(who: caller, job_id: JobId, body: ClaimRequest) -> dict[str, Any]:
        """Take a job for a remote worker: its attempt, spec and inputs (``attempt: null`` when not claimable)."""
        _worker(who)
        return protocol.claim_job(svc.acting_as(who), job_id, body.worker)

    @app.post("/v1/worker/jobs/{job_id}/heartbeat", tags=["worker"], responses=PROBLEM_RESPONSES)
    def heartbeat(who: caller, job_id: JobId, body: BeatRequest) -> dict[str, Any]:
        """Extend the attempt's lease and record progress; ``cancel: true`` asks the worker to stop."""
        _worker(who)
        return protocol.heartbeat(svc, job_id, body.attempt, body.progress, body.message)

    @app.post("/v1/worker/jobs/{job_id}/fail", tags=["worker"], responses=PROBLEM_RESPONSES)
    def fail(who: caller, job_id: JobId, body: FailRequest) -> dict[str, Any]:
        _worker(who)
        return protocol.fail_job(svc, job_id, body.attempt, body.status, body.error_type, body.error_message,
                                 body.report)

    @app.post("/v1/worker/jobs/{job_id}/complete", tags=["worker"], responses=PROBLEM_RESPONSES)
    def complete(who: caller, job_id: JobId, body: CompleteRequest) -> dict[str, Any]:
        """Register the outputs (uploaded first by sha256) and mark the job succeeded, in one transaction."""
        _worker(who)
        return protocol.complete_job(svc.acting_as(who), job_id, body.attempt, body.model_dump())

    @app.get("/v1/worker/jobs/{job_id}/data", tags=["worker"], response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {"schema": {
                 "type": "string", "format": "binary"}}}, "description": "the data file"}, **PROBLEM_RESPONSES})
    def data(who: caller, job_id: JobId, sha256: str | None = None) -> FileResponse:
        """The training data of a train job (or the dataset with ``sha256`` of an eval job)."""
        _worker(who)
        return FileResponse(protocol.data_path(svc, job_id, sha256), media_type="application/octet-stream")
