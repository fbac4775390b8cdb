"""What every route of the API shares: problem responses and the request-body time limit."""

from __future__ import annotations

import os
from typing import Any

from fastapi.responses import JSONResponse

from registry.errors import RegistryError
from registry.problems import MEDIA_TYPE, to_problem


def problem_response(exc: RegistryError, status: int | None = None) -> JSONResponse:
    body = to_problem(exc, status)
    headers = {"WWW-Authenticate": 'Bearer realm="adreg"'} if body["status"] == 401 else None
    return JSONResponse(body, status_code=body["status"], media_type=MEDIA_TYPE, headers=headers)


def idle_seconds() -> float:
    """How long a request body may stall (``ADREG_REQUEST_IDLE_SECONDS``, default 30)."""
    return float(os.environ.get("ADREG_REQUEST_IDLE_SECONDS", "30"))


#: Every route may answer with a problem document.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": "a problem document (RFC 9457)", "content": {MEDIA_TYPE: {"schema": {"type": "object"}}}}
    for status in (400, 401, 403, 404, 408, 409, 413, 422, 503)
}
