"""Routes that move files: weights and training data in (streamed, size-bounded, re-hashed), versions out.

Registering over HTTP is two steps: ``PUT /v1/blobs/{sha256}`` streams the weights (skipped when
``HEAD /v1/blobs/{sha256}`` says the server has them), then ``POST /v1/versions`` registers a version from the
stored blob and the adapter config sent as JSON, through the same service operation as an embedded
registration (every check, then one transaction). A refused or interrupted upload leaves no file behind.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name local objects.
import json
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from registry import auth
from registry import types as t
from registry.api.common import PROBLEM_RESPONSES
from registry.errors import Forbidden, InvalidAdapter
from registry.inspect import CONFIG_FILE, MAX_CONFIG_BYTES, WEIGHTS_FILE
from registry.operations import versions
from registry.refs import check_slug
from registry.service import Service

SHA256 = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file, lowercase hex")]
FILES = (CONFIG_FILE, WEIGHTS_FILE)


class RegisterRequest(BaseModel):
    """Register a version from weights already uploaded (``weights_sha256``) and this ``adapter_config.json``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128)
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    config: dict[str, Any]
    tags: dict[str, str] | None = None
    base: str | None = Field(default=None, max_length=1024)
    base_path: str | None = Field(default=None, max_length=4096)
    revision: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=10_000)
    source_uri: str | None = Field(default=None, max_length=2048)


class UploadReceipt(BaseModel):
    sha256: str
    size: int
    stored: bool


class LargeChunkFileResponse(FileResponse):
    """A file sent 1 MiB at a time (Starlette's default is 64 KiB: one thread hop and one send per 64 KiB)."""

    chunk_size = 1 << 20


def require_write_scope(who: auth.Principal) -> None:
    if who.scope == "read":
        raise Forbidden(f"{who.name} may not upload: its token has scope read, which never allows writes")


async def receive_file(request: Request, svc: Service, target: Path, sha256: str, limit: int) -> int:
    """Stream the request body into ``target`` through a temporary file, hashed on the way; returns the size."""
    from registry.store import IncomingBlob

    incoming = await anyio.to_thread.run_sync(lambda: IncomingBlob(target, sha256, limit))
    try:
        async for chunk in request.stream():
            if chunk:
                await anyio.to_thread.run_sync(incoming.write, chunk)
        await anyio.to_thread.run_sync(incoming.commit)
        return incoming.size
    finally:
        await anyio.to_thread.run_sync(incoming.discard)


def add_routes(app: FastAPI, svc: Service, caller: Any) -> None:
    """The upload, registration and download routes."""

    @app.head("/v1/blobs/{sha256}", tags=["artifacts"], response_class=Response, responses={
        **PROBLEM_RESPONSES, 200: {"description": "stored (no body: HEAD)"},
        404: {"description": "no weights with this sha256 are stored (no body: HEAD)"}})
    def has_blob(who: caller, sha256: SHA256) -> Response:
        """200 when the server stores weights with this sha256 (an upload can be skipped), else 404."""
        return Response(status_code=200 if svc.store.has_blob(sha256) else 404)

    @app.put("/v1/blobs/{sha256}", tags=["artifacts"], response_model=UploadReceipt, responses=PROBLEM_RESPONSES,
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {
                 "type": "string", "format": "binary"}}}, "required": True}})
    async def upload_blob(who: caller, sha256: SHA256, request: Request) -> UploadReceipt:
        """Stream a weights file (``application/octet-stream``); refused unless its bytes hash to ``sha256``."""
        require_write_scope(who)
        _require_octets(request)
        if svc.store.has_blob(sha256):
            return UploadReceipt(sha256=sha256, size=svc.store.blob_path(sha256).stat().st_size, stored=False)
        size = await receive_file(request, svc, svc.store.blob_path(sha256), sha256, svc.settings.max_adapter_bytes)
        return UploadReceipt(sha256=sha256, size=size, stored=True)

    @app.put("/v1/data/{sha256}", tags=["artifacts"], response_model=UploadReceipt, responses=PROBLEM_RESPONSES,
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {
                 "type": "string", "format": "binary"}}}, "required": True}})
    async def upload_data(who: caller, sha256: SHA256, request: Request,
                          suffix: str = ".jsonl") -> UploadReceipt:
        """Stream a training-data file; a train request then names it as ``upload:<sha256><suffix>``."""
        require_write_scope(who)
        _require_octets(request)
        target = svc.store.data_file(sha256, suffix)
        if target.is_file():
            return UploadReceipt(sha256=sha256, size=target.stat().st_size, stored=False)
        size = await receive_file(request, svc, target, sha256, svc.settings.max_adapter_bytes)
        return UploadReceipt(sha256=sha256, size=size, stored=True)

    @app.post("/v1/versions", tags=["versions"], response_model=t.AdapterVersion, responses=PROBLEM_RESPONSES)
    def register(who: caller, body: RegisterRequest) -> t.AdapterVersion:
        """Register uploaded weights with this config as the next version of ``name`` (all checks first)."""
        who.require("write", check_slug(body.name))
        if not svc.store.has_blob(body.weights_sha256):
            raise InvalidAdapter("the request", [f"no uploaded weights with sha256 {body.weights_sha256[:12]}: "
                                                 f"PUT them to /v1/blobs/{body.weights_sha256} first"])
        if len(json.dumps(body.config)) > MAX_CONFIG_BYTES:
            raise InvalidAdapter("the request", [f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES:,} bytes"])
        with svc.store.staged_adapter(body.weights_sha256, body.config, "upload") as folder:
            return versions.register(
                svc.acting_as(who), folder, name=body.name, tags=body.tags, base=body.base,
                base_path=body.base_path, revision=body.revision, description=body.description,
                source_uri=body.source_uri or f"upload:{body.weights_sha256}")

    @app.get("/v1/versions/{ref}/files/{filename}", tags=["artifacts"], response_class=FileResponse, responses={
        **PROBLEM_RESPONSES, 200: {"description": "the file", "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    def download(who: caller, ref: str, filename: str) -> FileResponse:
        """A stored file of a version: ``adapter_config.json`` or ``adapter_model.safetensors``."""
        if filename not in FILES:
            raise InvalidAdapter(ref, [f"{filename[:100]!r} is not a stored file ({', '.join(FILES)})"])
        version = versions.get(svc, ref)
        path = svc.store.path(str(Path(version.path).relative_to(svc.store.root))) / filename
        media = "application/json" if filename == CONFIG_FILE else "application/octet-stream"
        headers = {"X-Weights-Sha256": version.weights_sha256, "X-Adapter-Ref": version.ref}
        return LargeChunkFileResponse(path, media_type=media, filename=filename, headers=headers)


def _require_octets(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/octet-stream":
        raise InvalidAdapter("the upload", [f"content type must be application/octet-stream, not {kind[:60]!r}"])
