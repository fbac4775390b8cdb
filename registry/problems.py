"""SDK errors as RFC 9457 problem details, and back: the one mapping the server and the remote client share.

The server answers a :class:`~registry.errors.RegistryError` with ``application/problem+json`` carrying the
error's type name, message, hint and (where it has them) problems; the remote ``Registry`` raises the same
typed error from it, so ``except AdapterNotFound`` works against a server exactly as embedded.
"""

from __future__ import annotations

from typing import Any

from registry import errors
from registry.hub_client import HubError
from registry.jobs import JobFailed, JobTimeout
from registry.recipes import InvalidRecipe
from registry.schedules import InvalidCron
from registry.store import StorageError, StorageFull
from registry.trainset import InvalidDataset
from registry.where import InvalidWhere

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:adreg:error:"

#: HTTP status per error type; a subclass not listed takes its nearest listed base class's status.
STATUS: dict[type[errors.RegistryError], int] = {
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.AdapterNotFound: 404,
    errors.BaseModelNotFound: 404,
    errors.DatasetNotFound: 404,
    errors.AuthRecordNotFound: 404,
    errors.ConflictError: 409,
    errors.SchemaOutdated: 503,
    errors.ServiceUnavailable: 503,
    errors.InvalidAdapter: 422,
    errors.IncompatibleAdapters: 422,
    errors.IncompatibleBaseModel: 422,
    errors.UnsafePath: 400,
    errors.InvalidReference: 400,
    errors.InvalidName: 400,
    errors.RegistryError: 400,
}

_KNOWN: dict[str, type[errors.RegistryError]] = {
    cls.__name__: cls
    for cls in [*STATUS, errors.BrokerUnavailable, JobFailed, JobTimeout, InvalidDataset, InvalidRecipe, InvalidCron,
                HubError, StorageError, StorageFull, errors.ProtectedAlias]
}
STATUS.update({InvalidDataset: 422, InvalidRecipe: 422, InvalidCron: 400, HubError: 502, StorageError: 507,
               StorageFull: 507})
_KNOWN[InvalidWhere.__name__] = InvalidWhere  # a where filter's grammar error (400, as RegistryError)


def status_of(exc: errors.RegistryError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 400


def to_problem(exc: errors.RegistryError, status: int | None = None) -> dict[str, Any]:
    """The problem document for ``exc`` (``status`` overrides the type's own)."""
    name = type(exc).__name__ if type(exc).__name__ in _KNOWN else _nearest_known(exc)
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + name, "title": name, "status": status or status_of(exc), "detail": str(exc),
        "error": name,
    }
    if exc.hint:
        body["hint"] = exc.hint
    for attribute in ("problems", "source", "job_id"):
        if getattr(exc, attribute, None) is not None:
            body[attribute] = getattr(exc, attribute)
    return body


def from_problem(body: dict[str, Any], status: int) -> errors.RegistryError:
    """The typed error a problem document describes (a :class:`RegistryError` for an unknown type)."""
    cls = _KNOWN.get(str(body.get("error") or ""), errors.RegistryError)
    if status in (502, 503, 504) and cls is errors.RegistryError:
        cls = errors.ServiceUnavailable
    exc = cls.__new__(cls)
    errors.RegistryError.__init__(exc, str(body.get("detail") or body.get("title") or f"HTTP {status}"),
                                  hint=body.get("hint"))
    for attribute in ("problems", "source", "job_id"):
        if attribute in body:
            setattr(exc, attribute, body[attribute])
    return exc


def _nearest_known(exc: errors.RegistryError) -> str:
    return next(cls.__name__ for cls in type(exc).__mro__ if cls.__name__ in _KNOWN)


def raise_for_problem(response: Any, where: str = "the server") -> Any:
    """Return an HTTP ``response`` below 400; otherwise raise the SDK error its problem document names (for any
    client of the API: the remote ``Registry`` and remote workers)."""
    if response.status_code < 400:
        return response
    try:
        body = response.json()
    except ValueError:
        body = {"detail": f"HTTP {response.status_code} from {where}: {response.text[:200]}"}
    raise from_problem(body if isinstance(body, dict) else {"detail": str(body)}, response.status_code)
