"""References to adapters, as users type them.

``name`` (latest version), ``name:3`` (exact version), ``name@production`` (alias),
``hf://org/repo[@revision]`` (a Hub repository) and paths (``./dir``, ``/abs/dir``, ``~/dir``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from registry.errors import InvalidName, InvalidReference

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
TAG_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


def check_slug(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe slug (lowercase letters, digits, '.', '_', '-'), else raise."""
    if not isinstance(value, str) or not SLUG.match(value) or ".." in value:
        raise InvalidName(
            f"{what} {value!r} is not allowed: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_tag(key: str, value: str) -> tuple[str, str]:
    if not TAG_KEY.match(key or ""):
        raise InvalidName(f"tag key {key!r} is not allowed: use letters, digits, '.', '_' or '-' (max 64)")
    if len(value) > 255 or any(ord(c) < 32 for c in value):
        raise InvalidName(f"tag value for {key!r} must be at most 255 printable characters")
    return key, value


def parse_tag(text: str) -> tuple[str, str]:
    """Parse ``key=value``."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidName(f"tag {text!r} must be written key=value")
    return check_tag(key.strip(), value.strip())


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
    """Parse a reference string; raises InvalidReference with the accepted forms."""
    text = (text or "").strip()
    if not text:
        raise InvalidReference("empty reference")
    if text.startswith("hf://"):
        repo, at, rev = text[5:].partition("@")
        if not _HF_REPO.match(repo) or (at and not _REVISION.match(rev)) or ".." in repo:
            raise InvalidReference(f"{text!r} is not a Hub reference of the form hf://org/repo[@revision]")
        return Ref(hub_repo=repo, hub_revision=rev or None)
    if looks_like_path(text):
        return Ref(path=Path(text).expanduser())
    name, sep, rest = text.partition(":")
    if sep:
        if not rest.isdigit() or int(rest) < 1:
            raise InvalidReference(f"{text!r}: the version after ':' must be a positive integer")
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
