"""The remote ``Registry``: the same methods, results and typed errors as the embedded one, over HTTP."""

from __future__ import annotations

import os


def remote_target(location: str | None) -> str | None:
    """The server URL a ``Registry(location)`` means, or None for a catalog opened in this process.

    An ``http(s)://`` location is a server; with no location, ``ADREG_URL`` names one (unless a database URL is
    set explicitly in ``ADREG_DATABASE_URL``, which opens that catalog directly).
    """
    if location is not None:
        return location if location.startswith(("http://", "https://")) else None
    url = os.environ.get("ADREG_URL")
    return url if url and not os.environ.get("ADREG_DATABASE_URL") else None
