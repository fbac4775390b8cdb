"""Where a ``Registry`` with no explicit location points: ``ADREG_URL``, a database, or the server ``adreg login``
saved (a 0600 file under the user's config directory)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

LOGIN_FILE = "login.json"


def config_dir() -> Path:
    """Where ``adreg login`` keeps its file: ``$ADREG_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/adreg``, else ~/.config."""
    if os.environ.get("ADREG_CONFIG_DIR"):
        return Path(os.environ["ADREG_CONFIG_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser() / "adreg"


def saved_login() -> dict[str, str] | None:
    """The ``{"url", "token"}`` that ``adreg login`` saved, if any."""
    try:
        data = json.loads((config_dir() / LOGIN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("url") and data.get("token") else None


def save_login(url: str, token: str) -> Path:
    """Save the server URL and token in a file only the user can read (0600, written under that mode)."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / LOGIN_FILE
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"url": url, "token": token}, out)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def forget_login() -> bool:
    path = config_dir() / LOGIN_FILE
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def server_url(location: str | None) -> str | None:
    """The server URL a ``Registry(location)`` means, or None for a catalog opened in this process.

    An ``http(s)://`` location is a server. With no location: ``ADREG_URL``; else, unless a database is named by
    ``ADREG_DATABASE_URL``, the server ``adreg login`` saved.
    """
    if location is not None:
        return location if location.startswith(("http://", "https://")) else None
    if os.environ.get("ADREG_URL"):
        return os.environ["ADREG_URL"]
    if os.environ.get("ADREG_DATABASE_URL"):
        return None
    login = saved_login()
    return login["url"] if login else None
