"""References to adapters, as users type them.

``name`` (latest version), ``name:3`` (exact version), ``name@production`` (alias),
``hf://org/repo[@revision]`` (a Hub repository) and paths (``./dir``, ``/abs/dir``, ``~/dir``).

Bounds (every refusal is an :class:`InvalidReference` or :class:`InvalidName`, never another exception):

* a reference is at most ``MAX_REF_CHARS`` (4096, the usual ``PATH_MAX``) characters, valid Unicode, with no
  control characters;
* a version number is ASCII digits, from 1 to ``MAX_VERSION`` (2**31 - 1, the catalog's integer column);
* a Hub repository id follows the Hub's own rules (``huggingface_hub.utils.validate_repo_id``): ``name`` or
  ``namespace/name``, each 1-96 of ``A-Z a-z 0-9 . _ -``, not starting or ending with ``.`` or ``-``, no ``--``
  or ``..``, not ending with ``.git``;
* a Hub revision (branch, tag, ``refs/pr/N`` or commit) follows git's ref-name rules as the Hub enforces them,
  within ``A-Z a-z 0-9 . _ - /``: 1-255 characters starting with a letter or digit, slash-separated parts that
  are not empty and do not start with ``.`` or end with ``.lock``, no ``..``, not ending with ``.``
  (:data:`REVISION_PATTERN`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from registry.errors import InvalidName, InvalidReference

SLUG = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TAG_VALUE_CHARS = 255
MAX_REF_CHARS = 4096
MAX_VERSION = 2**31 - 1  # versions are a 32-bit integer column (PostgreSQL ``integer``)
_VERSION = re.compile(r"[0-9]{1,10}")

# The Hub's repository id (huggingface_hub's REPO_ID_REGEX and validate_repo_id, ASCII only).
_HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
MAX_REVISION_CHARS = 255
# A git ref name as the Hub accepts it, written without look-arounds so that pydantic's (Rust) regex engine runs
# it too: slash-separated parts; each part dot-separated runs of [A-Za-z0-9_-] (so no leading or trailing '.',
# no '..'), and a part of several runs does not end with the run 'lock' (git refuses '.lock' at a part's end).
_RUN = r"[A-Za-z0-9_-]+"
_NOT_LOCK = (r"(?:[A-Za-z0-9_-]{1,3}|[A-Za-z0-9_-]{5,}|[A-Za-km-z0-9_-][A-Za-z0-9_-]{3}"
             r"|l[A-Za-np-z0-9_-][A-Za-z0-9_-]{2}|lo[A-Za-bd-z0-9_-][A-Za-z0-9_-]|loc[A-Za-jl-z0-9_-])")
_PART = rf"(?:{_RUN}|(?:{_RUN}\.)+{_NOT_LOCK})"
_FIRST_RUN = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # a revision starts with a letter or digit (never '-': not an option)
_FIRST_PART = rf"(?:{_FIRST_RUN}|{_FIRST_RUN}\.(?:{_RUN}\.)*{_NOT_LOCK})"
REVISION_PATTERN = rf"^{_FIRST_PART}(?:/{_PART})*$"
_REVISION = re.compile(REVISION_PATTERN)


def check_slug(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe slug (lowercase letters, digits, '.', '_', '-'), else raise."""
    if not isinstance(value, str) or not SLUG.fullmatch(value) or ".." in value:
        raise InvalidName(
            f"{what} {value!r} is not allowed: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _printable(value: str) -> bool:
    """No control characters and valid Unicode (a lone surrogate cannot be stored or encoded)."""
    return not any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value)


def check_tag(key: str, value: str) -> tuple[str, str]:
    if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
        raise InvalidName(f"tag key {key!r} is not allowed: use letters, digits, '.', '_' or '-' (max 64)")
    if not isinstance(value, str) or len(value) > MAX_TAG_VALUE_CHARS or not _printable(value):
        raise InvalidName(f"tag value for {key!r} must be at most {MAX_TAG_VALUE_CHARS} printable characters")
    return key, value


def parse_tag(text: str) -> tuple[str, str]:
    """Parse ``key=value``."""
    if not isinstance(text, str):
        raise InvalidName(f"tag {text!r} must be written key=value")
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidName(f"tag {text!r} must be written key=value")
    return check_tag(key.strip(), value.strip())


def check_hub_repo(repo: str) -> str:
    """Return ``repo`` if the Hub accepts it as a repository id (``name`` or ``namespace/name``), else raise."""
    parts = repo.split("/") if isinstance(repo, str) else []
    if not 1 <= len(parts) <= 2 or not all(_HUB_NAME.fullmatch(p) for p in parts) or "--" in repo \
            or ".." in repo or repo.endswith(".git"):
        raise InvalidReference(
            f"{repo!r} is not a Hub repository id: use name or namespace/name, each 1-96 letters, digits, '.', '_' "
            "or '-', not starting or ending with '.' or '-', without '--' or '..', not ending with '.git'"
        )
    return repo


def check_revision(revision: str, what: str = "revision") -> str:
    """Return ``revision`` if the Hub accepts it as a branch, tag or commit name (git's ref rules), else raise."""
    if not isinstance(revision, str) or len(revision) > MAX_REVISION_CHARS or not _REVISION.fullmatch(revision):
        raise InvalidReference(
            f"{what} {revision!r} is not a valid Hub revision: use 1-{MAX_REVISION_CHARS} letters, digits, '.', '_', "
            "'-' or '/', in '/'-separated parts that are not empty, do not start with '.' or end with '.lock', "
            "without '..' and not ending with '.'"
        )
    return revision


@dataclass(frozen=True)
class Ref:
    """A parsed reference; exactly one of the groups (catalog, hub, path) is set."""

    name: str | None = None
    version: int | None = None
    alias: str | None = None
    hub_repo: str | None = None
    hub_revision: str | None = None
    path: Path | None = None

    @property
    def is_catalog(self) -> bool:
        return self.name is not None

    def __str__(self) -> str:
        if self.hub_repo:
            return f"hf://{self.hub_repo}" + (f"@{self.hub_revision}" if self.hub_revision else "")
        if self.path is not None:
            return str(self.path)
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return str(self.name)


def looks_like_path(text: str) -> bool:
    return text.startswith(("./", "../", "/", "~")) or text in (".", "..") or "/" in text and "@" not in text


def parse_ref(text: str) -> Ref:
    """Parse a reference string; raises InvalidReference (or InvalidName) with the accepted forms."""
    if text is not None and not isinstance(text, str):
        raise InvalidReference(f"a reference is a string, not {type(text).__name__}")
    text = (text or "").strip()
    if not text:
        raise InvalidReference("empty reference")
    if len(text) > MAX_REF_CHARS:
        raise InvalidReference(f"a reference is at most {MAX_REF_CHARS} characters (got {len(text)})")
    if not _printable(text):
        raise InvalidReference(f"{text!r} is not a reference: control characters and invalid Unicode are refused")
    if text.startswith("hf://"):
        repo, at, rev = text[5:].partition("@")
        try:
            check_hub_repo(repo)
            if at:
                check_revision(rev)
        except InvalidReference as exc:
            raise InvalidReference(f"{text!r} is not a Hub reference of the form hf://org/repo[@revision]: {exc}") \
                from None
        return Ref(hub_repo=repo, hub_revision=rev or None)
    if looks_like_path(text):
        try:
            return Ref(path=Path(text).expanduser())
        except RuntimeError:  # ~user of a user that does not exist (or no home directory)
            raise InvalidReference(f"{text!r}: cannot expand {text.split('/')[0]!r} (no such user or home)") from None
    name, sep, rest = text.partition(":")
    if sep:
        if not _VERSION.fullmatch(rest) or not 1 <= int(rest) <= MAX_VERSION:
            raise InvalidReference(
                f"{text!r}: the version after ':' must be an integer from 1 to {MAX_VERSION}")
        return Ref(name=check_slug(name), version=int(rest))
    name, sep, alias = text.partition("@")
    if sep:
        return Ref(name=check_slug(name), alias=check_slug(alias, "alias"))
    try:
        return Ref(name=check_slug(text))
    except InvalidName:
        raise InvalidReference(
            f"{text!r} is not a reference: use name, name:3, name@alias, hf://org/repo[@rev] or ./path"
        ) from None
