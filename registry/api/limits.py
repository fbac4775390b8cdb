"""Bounds on every request, applied before any route runs: body size and how slowly a body may arrive.

A pure ASGI middleware (it sees the raw ``receive`` channel, so it also bounds chunked bodies that carry no
``Content-Length``): uploads may be as large as the configured adapter limit, every other body 1 MiB; a client
that sends nothing for ``idle_seconds`` while its body is incomplete gets 408, and the route's cleanup runs
(an upload's temporary file is removed).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from registry.problems import MEDIA_TYPE

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

JSON_BODY_LIMIT = 1 << 20
UPLOAD_PREFIXES = ("/v1/blobs/", "/v1/data/")


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class RequestLimits:
    """Refuse bodies over their size limit (413) and bodies that stall (408), as problem+json."""

    def __init__(self, app: ASGIApp, *, upload_limit: int, idle_seconds: float) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope["path"].startswith(UPLOAD_PREFIXES)
        limit = self.upload_limit + 1024 if is_upload else JSON_BODY_LIMIT
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _problem(send, 413, "RequestTooLarge", f"the request body is larger than {limit:,} bytes")
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            try:
                with anyio.fail_after(self.idle_seconds):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except (BodyTooLarge, BodyTooSlow) as exc:
            if started:
                raise
            if isinstance(exc, BodyTooLarge):
                await _problem(send, 413, "RequestTooLarge", f"the request body is larger than {limit:,} bytes")
            else:
                await _problem(send, 408, "RequestTimeout",
                               f"the request body stalled for more than {self.idle_seconds:g} s")


async def _problem(send: Callable[[Message], Awaitable[None]], status: int, name: str, detail: str) -> None:
    body = json.dumps({"type": f"urn:adreg:error:{name}", "title": name, "status": status, "detail": detail,
                       "error": name}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
