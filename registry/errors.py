"""Typed errors of the SDK. Each carries what a user needs to act; the CLI prints ``str(err)`` and exits 1."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """Base class of every error caused by user input or catalog state (never a bug)."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class InvalidReference(RegistryError):
    """A reference string (``name``, ``name:3``, ``name@alias``, ``hf://...``, path) does not parse."""


class InvalidName(RegistryError):
    """A name, alias or tag key is not a safe slug."""


class AdapterNotFound(RegistryError):
    """No adapter, version or alias matches the reference."""


class DatasetNotFound(RegistryError):
    """No catalog dataset (or dataset version) matches the name."""


class BaseModelNotFound(RegistryError):
    """No base model record matches."""


class InvalidAdapter(RegistryError):
    """An adapter folder or its tensors fail validation; ``problems`` lists every issue found."""

    def __init__(self, source: str, problems: list[str], *, hint: str | None = None) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} is not a valid LoRA adapter:\n{lines}", hint=hint)


class IncompatibleAdapters(RegistryError):
    """Adapters cannot be combined (or applied) as asked; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"the merge is not valid ({len(self.problems)} problem(s)):\n{lines}")


class IncompatibleBaseModel(RegistryError):
    """An adapter's tensors do not fit a base model's module shapes."""


class UnsafePath(RegistryError):
    """A path would read or write outside the place it is confined to."""


class SchemaOutdated(RegistryError):
    """The catalog's schema is behind the code's migrations."""


class ServiceUnavailable(RegistryError):
    """The catalog database (or, as :class:`BrokerUnavailable`, the job broker) cannot be reached."""


class BrokerUnavailable(ServiceUnavailable):
    """A job was recorded in the catalog but its message could not be sent to the broker: ``job_id`` exists and
    a worker's recovery sweep sends it once the broker is back."""

    def __init__(self, message: str, *, job_id: int, hint: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(message, hint=hint)


class ConflictError(RegistryError):
    """The catalog already holds something that contradicts the request."""


class Unauthenticated(RegistryError):
    """No valid credential was presented: a malformed, unknown, wrong, revoked or expired token, or a disabled
    user. An unknown token and a wrong secret are refused with the same message."""


class Forbidden(RegistryError):
    """The principal is known but lacks a permission (or its token's scope does not reach it); the message names
    what is missing."""


class ProtectedAlias(Forbidden):
    """A protected alias (``adreg alias set --protect``) may be moved or removed only by an admin, or by a recipe's
    promote step whose gates passed; the message names the alias and who may move it."""


class AuthRecordNotFound(RegistryError):
    """No user, API token or grant matches."""


def field_problems(exc: Any, whole: str) -> list[str]:
    """A pydantic ``ValidationError`` as one ``field.path: message`` line per error (``whole`` names the
    object itself when an error is not about one field)."""
    return [f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in exc.errors()]
